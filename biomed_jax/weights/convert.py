"""HF state dict -> our parameter tree, driven by one declarative name table per model.

Every checkpoint key is either mapped by a rule or matched by the table's drop list; anything
else, every missing parameter and every shape mismatch is reported together in one error, and no
partial tree is ever returned. Rules name their transposes (torch Linear weights are [out, in];
our kernels are [in, out]); per-layer keys (`{i}`) are stacked on a leading layer axis, matching
the scanned layer stack.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError
from biomed_jax.weights.io import flatten, unflatten

logger = logging.getLogger(__name__)

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF key template (dotted, `{i}` = layer index) -> our '/'-path; `transpose` for Linear weights."""

    hf: str
    ours: str
    transpose: bool = False

    def regex(self, hf_prefix: str) -> re.Pattern[str]:
        body = re.escape(self.hf).replace(re.escape("{i}"), r"(\d+)")
        return re.compile(f"^{hf_prefix}{body}$")


@dataclasses.dataclass(frozen=True)
class NameTable:
    """How one architecture's HF checkpoint maps onto our tree.

    rules: (hf_prefix regex, our prefix, rules) groups, e.g. the backbone under `(?:bert\\.)?`.
    drop: regexes of HF keys knowingly ignored (tied copies, buffers, heads this model lacks).
    fresh: our path prefixes a checkpoint may lack (task heads): initialized anew, with a warning.
    """

    groups: tuple[tuple[str, str, tuple[Rule, ...]], ...]
    drop: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()


def _normalize_key(key: str) -> str:
    for old, new in _LEGACY_SUFFIXES:
        if key.endswith(old) and "LayerNorm" in key:
            return key[: -len(old)] + new
    return key


@dataclasses.dataclass(frozen=True)
class Match:
    """Where one checkpoint key goes: our path, its layer (None: not per-layer), transposed?"""

    path: str
    layer: int | None
    transpose: bool


def match_keys(table: NameTable, keys: Iterable[str]) -> tuple[dict[str, Match], list[str]]:
    """Each raw key a rule maps -> its Match, and the keys neither mapped nor on the drop list."""
    compiled = [
        (rule.regex(hf_prefix), our_prefix + rule.ours, rule.transpose)
        for hf_prefix, our_prefix, rules in table.groups
        for rule in rules
    ]
    drops = [re.compile(p) for p in table.drop]
    matched: dict[str, Match] = {}
    unexpected: list[str] = []
    for raw_key in keys:
        key = _normalize_key(raw_key)
        for regex, path, transpose in compiled:
            found = regex.match(key)
            if found:
                layer = int(found.group(1)) if found.groups() else None
                matched[raw_key] = Match(path, layer, transpose)
                break
        else:
            if not any(d.search(key) for d in drops):
                unexpected.append(raw_key)
    return matched, unexpected


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    table: NameTable,
    template: Mapping[str, Any],
    num_layers: int,
    *,
    init_fresh: Callable[[], Mapping[str, Any]] | None = None,
    dtype: Any = None,
) -> dict[str, Any]:
    """Map an HF state dict onto `template` (a tree of ShapeDtypeStructs from `jax.eval_shape`).

    Returns a nested dict of numpy arrays. Raises CheckpointError listing every unmapped key,
    missing parameter and shape mismatch.
    """
    expected = flatten(template)
    matched, unexpected = match_keys(table, state)
    flat: dict[str, np.ndarray] = {}
    layered: dict[str, dict[int, np.ndarray]] = {}
    for raw_key, m in matched.items():
        value = np.asarray(state[raw_key])
        value = value.T if m.transpose else value
        if m.layer is None:
            flat[m.path] = value
        else:
            layered.setdefault(m.path, {})[m.layer] = value

    problems: list[str] = []
    for path, by_layer in layered.items():
        if sorted(by_layer) != list(range(num_layers)):
            problems.append(
                f"{path}: layers {sorted(by_layer)} present, expected 0..{num_layers - 1}"
            )
            continue
        shapes = {i: tuple(v.shape) for i, v in by_layer.items()}
        if len(set(shapes.values())) > 1:
            problems.append(f"{path}: layers disagree on shape {shapes}")
            continue
        flat[path] = np.stack([by_layer[i] for i in range(num_layers)])

    missing = sorted(set(expected) - set(flat))
    fresh_missing = [p for p in missing if any(p.startswith(f) for f in table.fresh)]
    missing = [p for p in missing if p not in fresh_missing]
    problems += [f"missing parameter {p} {tuple(expected[p].shape)}" for p in missing]
    problems += [f"unexpected checkpoint tensor {k}" for k in sorted(unexpected)]
    for path in sorted(set(flat) - set(expected)):
        problems.append(f"checkpoint maps to {path}, which this model does not have")
    for path in sorted(set(flat) & set(expected)):
        if tuple(flat[path].shape) != tuple(expected[path].shape):
            problems.append(
                f"shape mismatch for {path}: checkpoint {tuple(flat[path].shape)}, "
                f"model {tuple(expected[path].shape)}"
            )
    if problems:
        raise CheckpointError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))

    if fresh_missing:
        if init_fresh is None:
            raise CheckpointError(f"checkpoint lacks {fresh_missing} and no initializer was given")
        logger.warning("newly initialized (not in the checkpoint): %s", ", ".join(fresh_missing))
        initial = flatten(init_fresh())
        for path in fresh_missing:
            flat[path] = np.asarray(initial[path])

    out = {}
    for path, spec in expected.items():
        target = dtype if dtype is not None else spec.dtype
        out[path] = np.asarray(flat[path], dtype=target)
    return unflatten(out)
