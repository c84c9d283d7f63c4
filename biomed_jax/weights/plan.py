"""One plan per load: every parameter of the model's template -> where it lives in the checkpoint.

Built from three things (checkpoint keys x name table x template) and validated in one place:
every key is mapped or knowingly dropped, no two keys map to the same parameter (an unprefixed
copy beside the prefixed one, `gamma` beside `weight`, `layer.00` beside `layer.0`: layer indices
must be written canonically), each layer stack is complete, every parameter is found (or is a task
head to initialize anew), shapes fit, and tensors are floats. All problems are reported together in
one CheckpointError; no partial plan exists.

Files hold the layer stack scanned (HF: one key per layer; ours: one tensor [L, ...]); the plan
addresses whichever layout the template has (`...layer/...` [L, ...] or `...layer_0/...`, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax

from biomed_jax.errors import CheckpointError
from biomed_jax.models.common import STACKED, layer_name
from biomed_jax.trees import flatten
from biomed_jax.weights.dtypes import FLOAT_DTYPES
from biomed_jax.weights.formats import Checkpoint
from biomed_jax.weights.names import Match, NameTable

Template = Mapping[str, object]  # nested dict of jax.ShapeDtypeStruct (jax.eval_shape of init)


@dataclasses.dataclass(frozen=True)
class Source:
    """One checkpoint tensor, transposed or not, or the block [layer, ...] of one."""

    key: str
    transpose: bool = False
    layer: int | None = None


# A parameter is one Source, or several stacked on a new leading axis (HF layers, scanned layout).
Entry = Source | tuple[Source, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """entries: our flat path -> its Entry, for every parameter the checkpoint holds;
    fresh: the paths it lacks that the table allows (task heads), to initialize anew;
    shapes/dtypes: every parameter's, from the template."""

    entries: Mapping[str, Entry]
    fresh: tuple[str, ...]
    specs: Mapping[str, jax.ShapeDtypeStruct]


def _unrolled(path: str, layer: int) -> str:
    return "/".join(layer_name(layer) if p == STACKED else p for p in path.split("/"))


def _layer_count(specs: Mapping[str, object], path: str, scanned: bool) -> int | None:
    """How many layers the template stacks at `path` (scanned layout); None: not a param of it."""
    if scanned:
        return specs[path].shape[0] if path in specs else None  # type: ignore[attr-defined]
    count = 0
    while _unrolled(path, count) in specs:
        count += 1
    return count or None


def _canonical(layer: str) -> bool:
    return layer == str(int(layer))


def match_keys(
    checkpoint: Checkpoint, table: NameTable | None
) -> tuple[dict[str, Match], list[str]]:
    """Each key's Match (table None: our own format, keys are our paths) and the problems: keys
    neither mapped nor dropped, non-canonical layer indices, two keys for one parameter, non-float
    tensors."""
    matches: dict[str, Match] = {}
    problems: list[str] = []
    claimed: dict[tuple[str, int | None], list[str]] = {}
    for key in checkpoint.owner:
        match = Match(key) if table is None else table.match(key)
        if match is None:
            if table is None or not table.drops(key):
                problems.append(f"unexpected checkpoint tensor {key}")
            continue
        if match.layer is not None and not _canonical(match.layer):
            problems.append(f"{key}: layer index {match.layer!r} is not written canonically")
            continue
        dtype = checkpoint.owner[key].dtype(key)
        if dtype not in FLOAT_DTYPES:
            problems.append(f"{key}: dtype {dtype} cannot hold a float parameter")
        layer = None if match.layer is None else int(match.layer)
        claimed.setdefault((match.path, layer), []).append(key)
        matches[key] = match
    for (path, layer), keys in claimed.items():
        if len(keys) > 1:
            where = path if layer is None else f"{path} (layer {layer})"
            problems.append(f"{' and '.join(sorted(keys))} all map to {where}")
    return matches, problems


def _shape(checkpoint: Checkpoint, source: Source) -> tuple[int, ...]:
    shape = checkpoint.owner[source.key].shape(source.key)
    shape = shape[::-1] if source.transpose else shape
    return shape[1:] if source.layer is not None else shape


def _entry_shape(checkpoint: Checkpoint, entry: Entry) -> tuple[int, ...] | set:
    if isinstance(entry, Source):
        return _shape(checkpoint, entry)
    shapes = {_shape(checkpoint, s) for s in entry}
    return (len(entry), *next(iter(shapes))) if len(shapes) == 1 else shapes


def make_plan(checkpoint: Checkpoint, table: NameTable | None, template: Template) -> Plan:
    """The validated plan for reading `template`'s parameters from `checkpoint` (see module doc)."""
    specs: dict[str, jax.ShapeDtypeStruct] = flatten(template)
    scanned = any(STACKED in path.split("/") for path in specs)
    matches, problems = match_keys(checkpoint, table)

    entries: dict[str, Entry] = {}
    layers: dict[str, dict[int, Source]] = {}  # HF: one key per layer
    stacks: dict[str, Source] = {}  # ours: one tensor [L, ...], for unrolled templates
    for key, match in matches.items():
        source = Source(key, match.transpose)
        if match.layer is not None:
            layers.setdefault(match.path, {})[int(match.layer)] = source
        elif not scanned and STACKED in match.path.split("/"):
            stacks[match.path] = source
        else:
            entries[match.path] = source
    for path, by_layer in layers.items():
        count = _layer_count(specs, path, scanned)
        if count is None:
            problems.append(f"checkpoint maps to {path}, which this model does not have")
        elif sorted(by_layer) != list(range(count)):
            problems.append(f"{path}: layers {sorted(by_layer)} present, expected 0..{count - 1}")
        elif scanned:
            entries[path] = tuple(by_layer[i] for i in range(count))
        else:
            entries.update((_unrolled(path, i), by_layer[i]) for i in range(count))
    for path, source in stacks.items():
        count = _layer_count(specs, path, scanned)
        shape = checkpoint.owner[source.key].shape(source.key)
        if count is None:
            problems.append(f"checkpoint maps to {path}, which this model does not have")
        elif shape[:1] != (count,):
            problems.append(
                f"{path}: checkpoint {shape} holds no stack of the model's {count} layers"
            )
        else:
            entries.update(
                (_unrolled(path, i), dataclasses.replace(source, layer=i)) for i in range(count)
            )

    fresh_prefixes = table.fresh if table is not None else ()
    missing = sorted(set(specs) - set(entries))
    fresh = tuple(p for p in missing if p.startswith(fresh_prefixes))
    problems += [
        f"missing parameter {p} {tuple(specs[p].shape)}" for p in missing if p not in fresh
    ]
    problems += [
        f"checkpoint maps to {p}, which this model does not have"
        for p in sorted(set(entries) - set(specs))
    ]
    for path in sorted(set(entries) & set(specs)):
        got, want = _entry_shape(checkpoint, entries[path]), tuple(specs[path].shape)
        if got != want:
            problems.append(f"shape mismatch for {path}: checkpoint {got}, model {want}")
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise CheckpointError(f"{checkpoint.name} does not fit the model:\n  {shown}{more}")
    return Plan(entries, fresh, specs)
