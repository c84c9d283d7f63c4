"""Read `pytorch_model.bin` (torch's zip format) without torch and without executing pickled code.

The pickle inside a torch checkpoint names a handful of globals (OrderedDict, the tensor rebuild
functions, storage types). This reader resolves exactly those to harmless local stand-ins and
refuses every other global or opcode that could run code, so a malicious file fails with
`UnsafeCheckpointError` instead of executing.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from biomed_jax.errors import UnsafeCheckpointError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, data: np.ndarray):
        self.data = data


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any
) -> np.ndarray:
    data = storage.data
    itemsize = data.dtype.itemsize
    if len(size) == 0:
        return np.array(data[offset])
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else offset
    if needed > data.size:
        raise UnsafeCheckpointError("tensor view reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False, *_: Any) -> np.ndarray:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: io.BytesIO,
        archive: zipfile.ZipFile,
        prefix: str,
        allowed: Mapping[tuple[str, str], Any] = _ALLOWED_GLOBALS,
    ):
        super().__init__(file)
        self._allowed = allowed
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a torch checkpoint may only contain tensors "
                "and plain containers (this file would run code if unpickled)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            data = np.frombuffer(raw, dtype=storage_type.dtype)
            if data.size < int(numel):
                raise UnsafeCheckpointError(f"storage {key} is truncated")
            self._storages[key] = _Storage(data)
        return self._storages[key]


def load_pickle(
    path: str | Path, extra_globals: Mapping[tuple[str, str], Any] | None = None
) -> Any:
    """The object a torch.save zip file holds, tensors as numpy arrays.

    Only the tensor/storage globals and `extra_globals` ((module, name) -> harmless stand-in, e.g.
    the fairseq reader's) resolve; any other global is refused with UnsafeCheckpointError.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeCheckpointError(
            f"{path} is not a torch zip checkpoint (the legacy pre-1.6 torch format is not "
            "supported: re-save it with a recent torch, or convert it to safetensors)"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UnsafeCheckpointError(f"{path}: expected one data.pkl, found {pickles}")
        prefix = pickles[0][: -len("/data.pkl")]
        allowed = {**_ALLOWED_GLOBALS, **(extra_globals or {})}
        unpickler = _RestrictedUnpickler(
            io.BytesIO(archive.read(pickles[0])), archive, prefix, allowed
        )
        return unpickler.load()


def load_torch_zip(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a torch.save zip checkpoint as numpy arrays, by name."""
    path = Path(path)
    state = load_pickle(path)
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(
            f"{path}: expected a dict of tensors, got {type(state).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise UnsafeCheckpointError(f"{path}: entries that are not named tensors: {bad[:10]}")
    return dict(state)
