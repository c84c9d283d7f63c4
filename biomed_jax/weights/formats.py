"""Checkpoint files on disk, opened as tensors by name: which files, and only those.

A directory holds exactly one of: `model.safetensors` (HF's, or ours: metadata format=biomed_jax,
keys are our '/'-paths, layers stacked [L, ...]); `model-*-of-*.safetensors` shards listed by
`model.safetensors.index.json`; `pytorch_model.bin` (read without torch, `torch_zip`). Anything
that makes this ambiguous is an error naming the files: a single file beside shards, shards the
index does not list, an index naming files that are missing or keys in the wrong shard, a key in
two shards. (safetensors beside `pytorch_model.bin`: the safetensors win, as in HF.)

Every file is opened as a `TensorFile`: keys, shape and dtype of a key (headers only), and
`read(key, index)` for the whole tensor or one block of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import ml_dtypes
import numpy as np

from biomed_jax.errors import CheckpointError
from biomed_jax.files import atomic_path
from biomed_jax.trees import flatten
from biomed_jax.weights.dtypes import READABLE_NAMES, SAFETENSORS_DTYPES
from biomed_jax.weights.torch_zip import load_torch_zip

FORMAT = "biomed_jax"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TORCH = "pytorch_model.bin"
_SHARD = "model-*-of-*.safetensors"
_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

Index = tuple[slice | int, ...]


class TensorFile(Protocol):
    """One weight file: tensors by name, read whole (index None) or block by block."""

    path: Path

    def names(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> np.dtype | str: ...

    def read(self, key: str, index: Index | None = None) -> np.ndarray: ...


class SafetensorsFile:
    """A safetensors file, memory-mapped: headers at open, tensor bytes only when read."""

    def __init__(self, path: Path, handle: object):
        self.path = path
        self._handle = handle

    def names(self) -> list[str]:
        return list(self._handle.keys())  # type: ignore[attr-defined]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())  # type: ignore[attr-defined]

    def dtype(self, key: str) -> np.dtype | str:
        code = self._handle.get_slice(key).get_dtype()  # type: ignore[attr-defined]
        return _SAFETENSORS_DTYPES.get(code, code)

    def read(self, key: str, index: Index | None = None) -> np.ndarray:
        if index is None:
            return self._handle.get_tensor(key)  # type: ignore[attr-defined]
        return np.asarray(self._handle.get_slice(key)[index])  # type: ignore[attr-defined]


class ArrayFile:
    """Tensors already in host memory (a `pytorch_model.bin`, or a state dict handed over)."""

    def __init__(self, path: Path, arrays: Mapping[str, np.ndarray]):
        self.path = path
        self._arrays = dict(arrays)

    def names(self) -> list[str]:
        return list(self._arrays)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self._arrays[key]))

    def dtype(self, key: str) -> np.dtype:
        return np.asarray(self._arrays[key]).dtype

    def read(self, key: str, index: Index | None = None) -> np.ndarray:
        array = np.asarray(self._arrays[key])
        return array if index is None else array[index]


class Checkpoint:
    """The opened weight files of one checkpoint; every key in exactly one file."""

    def __init__(self, name: str, files: list[TensorFile], metadata: Mapping[str, str]):
        self.name = name
        self.files = files
        self.metadata = dict(metadata)
        self.owner: dict[str, TensorFile] = {}
        twice = []
        for file in files:
            for key in file.names():
                if key in self.owner:
                    twice.append(f"{key} ({self.owner[key].path.name}, {file.path.name})")
                self.owner[key] = file
        if twice:
            raise CheckpointError(f"{name}: tensors stored in two files: {_listing(twice)}")

    @property
    def converted(self) -> bool:
        """Written by `convert` (our '/'-paths, layers stacked)?"""
        return self.metadata.get("format") == FORMAT


def _listing(items: list[str], most: int = 20) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _safetensors_error(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: corrupt or truncated safetensors ({error})")


def weight_files(directory: Path) -> list[Path]:
    """The files that hold `directory`'s weights; CheckpointError if none, or if it is ambiguous."""
    single, index, torch_bin = directory / SINGLE, directory / INDEX, directory / TORCH
    shards = sorted(directory.glob(_SHARD))
    if single.is_file():
        if shards or index.is_file():
            extra = [p.name for p in shards] + ([INDEX] if index.is_file() else [])
            raise CheckpointError(
                f"{directory} holds both {SINGLE} and sharded weights ({_listing(extra)}): "
                "which is current is ambiguous; remove the stale files"
            )
        return [single]
    if index.is_file():
        names = sorted(set(read_index(index).values()))
        missing = [n for n in names if not (directory / n).is_file()]
        unlisted = [p.name for p in shards if p.name not in names]
        problems = [f"listed but missing: {_listing(missing)}"] if missing else []
        problems += [f"not listed (stale?): {_listing(unlisted)}"] if unlisted else []
        if problems:
            raise CheckpointError(f"{index} does not match the shard files: " + "; ".join(problems))
        return [directory / n for n in names]
    if shards:
        raise CheckpointError(
            f"{directory} has shards ({_listing([p.name for p in shards])}) but no {INDEX} "
            "saying which belong together"
        )
    if torch_bin.is_file():
        return [torch_bin]
    raise CheckpointError(
        f"no weights in {directory}: expected {SINGLE}, {INDEX} with its shards, or {TORCH}"
    )


def read_index(index: Path) -> dict[str, str]:
    """`weight_map` of a shard index: tensor name -> shard file name (a plain name beside it)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read {index}: not a shard index ({e!r})") from e
    bad = [
        f"{k!r}: {v!r}"
        for k, v in (weight_map.items() if isinstance(weight_map, dict) else [])
        if not isinstance(k, str) or not isinstance(v, str) or Path(v).name != v or v in (".", "..")
    ]
    if not isinstance(weight_map, dict) or bad:
        raise CheckpointError(
            f"{index}: weight_map must map tensor names to shard file names {bad}"
        )
    return weight_map


def _check_index(checkpoint: Checkpoint, index: Path) -> None:
    weight_map = read_index(index)
    wrong = [
        f"{key} (index: {weight_map.get(key)}, found in {file.path.name})"
        for key, file in checkpoint.owner.items()
        if weight_map.get(key) != file.path.name
    ]
    wrong += [
        f"{key} (index: {name}, not found)"
        for key, name in weight_map.items()
        if key not in checkpoint.owner
    ]
    if wrong:
        raise CheckpointError(f"{index} disagrees with its shards: {_listing(sorted(wrong))}")


@contextlib.contextmanager
def open_checkpoint(path: str | Path) -> Iterator[Checkpoint]:
    """The weight files of a directory (see `weight_files`), or one weight file, open for reading
    while in the block."""
    from safetensors import SafetensorError, safe_open

    directory = Path(path)
    paths = [directory] if directory.is_file() else weight_files(directory)
    if paths[0].suffix == ".bin":
        yield Checkpoint(str(directory), [ArrayFile(paths[0], load_torch_zip(paths[0]))], {})
        return
    with contextlib.ExitStack() as stack:
        files: list[TensorFile] = []
        metadata: dict[str, str] = {}
        for path in paths:
            try:
                handle = stack.enter_context(safe_open(str(path), framework="numpy"))
                metadata = metadata or dict(handle.metadata() or {})
            except (SafetensorError, OSError, ValueError) as e:
                raise _safetensors_error(path, e) from e
            files.append(SafetensorsFile(path, handle))
        checkpoint = Checkpoint(str(directory), files, metadata)
        if (directory / INDEX).is_file():
            _check_index(checkpoint, directory / INDEX)
        yield checkpoint


def in_memory(name: str, arrays: Mapping[str, np.ndarray]) -> Checkpoint:
    """A state dict already in memory (e.g. a torch model's), as a checkpoint."""
    return Checkpoint(name, [ArrayFile(Path(name), arrays)], {})


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _safetensors_error(Path(path), e) from e


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file (e.g. a training state), with a clear error if corrupt."""
    from safetensors import SafetensorError, safe_open

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
        raise _safetensors_error(Path(path), e) from e


def is_converted(directory: Path) -> bool:
    """Does `directory` hold our own format (written by `convert`)?"""
    file = directory / SINGLE
    return file.is_file() and safetensors_metadata(file).get("format") == FORMAT


def save_params(
    params: Mapping[str, object], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a param tree as safetensors with '/'-joined keys, atomically (our format)."""
    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(params).items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"format": FORMAT, **(metadata or {})})
