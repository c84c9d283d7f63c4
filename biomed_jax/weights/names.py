"""Name tables: how one architecture's HF checkpoint keys map onto our parameter paths.

A table is declarative: rules (HF key template -> our '/'-path in the scanned layout, `{i}` = the
layer index, transposes named), a drop list of keys knowingly ignored, and the task heads a
checkpoint may lack. `weights.plan` consumes it exhaustively.
"""

from __future__ import annotations

import dataclasses
import functools
import re

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF key template (dotted, `{i}` = layer index) -> our '/'-path; `transpose` for Linear weights
    (torch stores them [out, in], our kernels are [in, out])."""

    hf: str
    ours: str
    transpose: bool = False

    def regex(self, hf_prefix: str) -> re.Pattern[str]:
        body = re.escape(self.hf).replace(re.escape("{i}"), r"(\d+)")
        return re.compile(f"^{hf_prefix}{body}$")


@dataclasses.dataclass(frozen=True)
class Match:
    """Where one checkpoint key goes: our path (scanned layout), its layer as written in the key
    (None: not per-layer), transposed?"""

    path: str
    layer: str | None = None
    transpose: bool = False


@dataclasses.dataclass(frozen=True)
class NameTable:
    """groups: (hf_prefix regex, our prefix, rules), e.g. the backbone under `(?:bert\\.)?`.
    drop: regexes of HF keys knowingly ignored (tied copies, buffers, heads this model lacks).
    fresh: our path prefixes a checkpoint may lack (task heads): initialized anew, with a warning.
    """

    groups: tuple[tuple[str, str, tuple[Rule, ...]], ...]
    drop: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()

    @functools.cached_property
    def _compiled(self) -> list[tuple[re.Pattern[str], str, bool]]:
        return [
            (rule.regex(hf_prefix), our_prefix + rule.ours, rule.transpose)
            for hf_prefix, our_prefix, rules in self.groups
            for rule in rules
        ]

    def match(self, key: str) -> Match | None:
        """Where `key` goes, or None if no rule maps it (legacy LayerNorm gamma/beta accepted)."""
        key = _normalize_key(key)
        for regex, path, transpose in self._compiled:
            found = regex.match(key)
            if found:
                return Match(path, found.group(1) if found.groups() else None, transpose)
        return None

    def drops(self, key: str) -> bool:
        key = _normalize_key(key)
        return any(re.search(pattern, key) for pattern in self.drop)


def _normalize_key(key: str) -> str:
    for old, new in _LEGACY_SUFFIXES:
        if key.endswith(old) and "LayerNorm" in key:
            return key[: -len(old)] + new
    return key
