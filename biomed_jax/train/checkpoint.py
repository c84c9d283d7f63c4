"""Training-state checkpoints: step, params and optimizer state in one safetensors file.

Every array leaf of the state pytree is stored under its tree path (`params/bert/...`,
`opt_state/1/0/mu/...`); restoring fills a template state of the same structure (built exactly as
for training) leaf by leaf, so resuming continues bit for bit. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax.errors import CheckpointError
from biomed_jax.files import atomic_path
from biomed_jax.weights.formats import read_safetensors, safetensors_metadata

FORMAT = "biomed_jax.train_state"
_S = TypeVar("_S")


def _path_key(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _leaves(state: Any) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [(_path_key(path), leaf) for path, leaf in flat], treedef


def save_train_state(path: str | Path, state: Any, metadata: dict[str, str] | None = None) -> Path:
    """Write every array of `state` (a TrainState or any pytree of arrays) to `path`, atomically."""
    from safetensors.numpy import save_file

    leaves, _ = _leaves(state)
    tensors = {key: np.ascontiguousarray(np.asarray(jax.device_get(leaf))) for key, leaf in leaves}
    if len(tensors) != len(leaves):
        raise ValueError("state has leaves whose tree paths collide; cannot name them uniquely")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, **(metadata or {})})
    return path


def restore_train_state(path: str | Path, template: _S) -> _S:
    """`template` with every array replaced by the one saved at `path`.

    Raises CheckpointError naming every missing, unexpected or mis-shaped entry.
    """
    if safetensors_metadata(path).get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training-state checkpoint (format {FORMAT!r})")
    saved = read_safetensors(path)
    leaves, treedef = _leaves(template)
    problems = [f"missing {key} {np.shape(leaf)}" for key, leaf in leaves if key not in saved]
    problems += [f"unexpected {key}" for key in sorted(set(saved) - {k for k, _ in leaves})]
    for key, leaf in leaves:
        if key in saved:
            if np.ndim(leaf) == 0 and saved[key].shape == (1,):
                saved[key] = saved[key].reshape(())  # safetensors stores scalars as [1]
            want = (tuple(np.shape(leaf)), np.dtype(jnp.asarray(leaf).dtype))
            got = (tuple(saved[key].shape), saved[key].dtype)
            if want != got:
                problems.append(f"{key}: file {got}, template {want}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit the training state:\n  " + "\n  ".join(problems)
        )
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(saved[key]) for key, _ in leaves])
