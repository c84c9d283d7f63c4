"""Our parameter tree -> a checkpoint's names: a name table's rules read backwards.

The inverse of reading through a name table (`weights.plan`), for writing transformers-loadable
files: each rule's key template, under the group's literal key prefix (our path prefix with `.`
for `/`: `bert/` -> `bert.`, as transformers names its submodules), receives our tensor,
transposed back where the rule says, unstacked over layers for `{i}` keys. Every parameter must be
named by a rule; leftovers are an error listing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError
from biomed_jax.trees import flatten
from biomed_jax.weights.names import NameTable


def export_state_dict(
    params: Mapping[str, Any], table: NameTable, num_layers: int
) -> dict[str, np.ndarray]:
    """Scanned-layout `params` (per-layer tensors stacked [L, ...]) -> {checkpoint key: array}."""
    flat = flatten(params)
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    problems: list[str] = []
    for _, our_prefix, rules in table.groups:
        key_prefix = our_prefix.replace("/", ".")
        for rule in rules:
            path = our_prefix + rule.ours
            if path not in flat:
                problems.append(f"no parameter {path} for {key_prefix}{rule.hf}")
                continue
            used.add(path)
            value = np.asarray(flat[path])
            if "{i}" in rule.hf:
                if value.shape[0] != num_layers:
                    problems.append(
                        f"{path}: {value.shape[0]} layers stacked, expected {num_layers}"
                    )
                    continue
                per_key = {rule.hf.replace("{i}", str(i)): value[i] for i in range(num_layers)}
            else:
                per_key = {rule.hf: value}
            for key, v in per_key.items():
                out[key_prefix + key] = np.ascontiguousarray(v.T if rule.transpose else v)
    problems += [f"parameter {p} has no checkpoint name" for p in sorted(set(flat) - used)]
    if problems:
        raise CheckpointError("cannot export the parameters:\n  " + "\n  ".join(problems))
    return out
