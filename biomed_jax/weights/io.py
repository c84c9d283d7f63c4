"""Files: atomic writes, and our safetensors layout (flat '/'-joined parameter paths)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError
from biomed_jax.weights.dtypes import READABLE_NAMES, SAFETENSORS_DTYPES
from biomed_jax.weights.torch_zip import load_torch_zip


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_params(
    params: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a param tree as safetensors with '/'-joined keys, atomically."""
    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(params).items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata or {"format": "biomed_jax"}))


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (memory-mapped), with a clear error if it is corrupt."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {}
            for key in f.keys():  # noqa: SIM118
                dtype = f.get_slice(key).get_dtype()
                if dtype not in SAFETENSORS_DTYPES:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} has dtype {dtype}, which no model here can use "
                        f"(readable: {READABLE_NAMES})"
                    )
                tensors[key] = f.get_tensor(key)
            return tensors
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors ({e})") from e


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors ({e})") from e


def read_hf_state_dict(directory: str | Path) -> dict[str, np.ndarray]:
    """The tensors of an HF checkpoint directory: model.safetensors (or shards) or pytorch_model.bin."""
    directory = Path(directory)
    single = directory / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    if shards:
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(read_safetensors(shard))
        return state
    torch_bin = directory / "pytorch_model.bin"
    if torch_bin.is_file():
        return load_torch_zip(torch_bin)
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin"
    )
