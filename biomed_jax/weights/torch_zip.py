"""Read `pytorch_model.bin` (torch's zip format) without torch and without unpickling.

data.pkl is never unpickled: a small interpreter walks its opcodes (`pickletools.genops`) and
understands only what `torch.save` of a state dict writes (dicts, tuples, strings, ints, bools,
None, the tensor-rebuild calls, storage references). Globals become inert markers that are never
called; every value is built for this load alone, so nothing a file does outlives its load. Any
other opcode or global is an `UnsafeCheckpointError`. `load_pickle` (fairseq's checkpoints)
opts into more plain data (lists, floats, bytes) and a caller's extra globals, whose calls
become inert per-load `Record`s that the caller's converter turns into plain data.

Each tensor is then checked against its storage before a byte of it is read:
  - at most MAX_NDIM dimensions, sizes >= 0, storage offset >= 0, stride >= 1 on every dimension
    longer than 1 (no negative, zero or overlapping-broadcast tricks);
  - element count <= the storage's, and the view's extent (offset + sum((size - 1) * stride) + 1)
    within the storage;
  - the storage's zip member is stored uncompressed (as torch writes it) and holds exactly
    numel * itemsize bytes, and the storages read add up to no more bytes than the file has
    (no deflate bombs, no overlapping members);
  - the copies of non-contiguous views add up to no more bytes than the file has;
so the reader allocates at most about twice the file's own size. dtypes are reported as stored
(`dtypes.READABLE_DTYPES`); complex, float8, quantized etc. are refused. Every failure is a
`CheckpointError` naming the file, the tensor and the problem.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pickletools
import re
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from biomed_jax.errors import CheckpointError, UnsafeCheckpointError, cut, shown
from biomed_jax.weights.dtypes import READABLE_NAMES

MAX_NDIM = 8
# data.pkl is interpreted in Python (~1-2 us an opcode): 4 MiB is ~100x a BERT-base state dict's
# pickle and bounds the worst case to seconds.
MAX_PICKLE_BYTES = 4 << 20
MAX_DIM = 1 << 62  # any one size or stride
# Zip members: torch.save writes one per storage plus a few; a fairseq checkpoint with its
# optimizer state has a few thousand. Python's zipfile holds ~0.5 KB per member.
MAX_MEMBERS = 1 << 16
# `load_pickle`'s plain data: fairseq's is a few levels deep and a few thousand values.
MAX_DEPTH = 64
MAX_VALUES = 1 << 20

_READABLE_STORAGES = {
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
# Storages torch writes for dtypes no model here can use: named in the error.
_UNUSABLE_STORAGES = {
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
# dtypes without a legacy storage class (torch writes them with `_rebuild_tensor_v3`), and the
# quantization schemes of `_rebuild_qtensor`: understood only to name them in the error.
_UNUSABLE_TORCH_NAMES = (
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "uint16",
    "uint32",
    "uint64",
    "complex32",
    "complex64",
    "complex128",
    "per_tensor_affine",
    "per_channel_affine",
    "per_channel_affine_float_qparams",
)


@dataclasses.dataclass(frozen=True, repr=False)
class Global:
    """An allowed global, as an inert marker: never called, never imported."""

    module: str
    name: str

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


_ORDERED_DICT = Global("collections", "OrderedDict")
_REBUILD_TENSOR = Global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_TENSOR_V3 = Global("torch._utils", "_rebuild_tensor_v3")
_REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
_REBUILD_QTENSOR = Global("torch._utils", "_rebuild_qtensor")
_ALLOWED_GLOBALS = {
    (g.module, g.name): g
    for g in (
        _ORDERED_DICT,
        _REBUILD_TENSOR,
        _REBUILD_TENSOR_V3,
        _REBUILD_PARAMETER,
        _REBUILD_QTENSOR,
        Global("torch.storage", "UntypedStorage"),
        *(
            Global("torch", n)
            for n in (*_READABLE_STORAGES, *_UNUSABLE_STORAGES, *_UNUSABLE_TORCH_NAMES)
        ),
    )
}


@dataclasses.dataclass(eq=False)
class Record:
    """A call of an allowed extra global (`load_pickle`), as data: made for one load, never
    called. BUILD sets `state` (once), SETITEM(S) fill `items` (a defaultdict's entries)."""

    func: Global
    args: tuple
    kwargs: dict[str, Any]
    state: Any = None
    built: bool = False
    items: dict[Any, Any] = dataclasses.field(default_factory=dict)


# load_pickle's converter: (a record or bare global, plain(part, step)) -> plain data.
Convert = Callable[[Record | Global, Callable[[Any, str], Any]], Any]


@dataclasses.dataclass(frozen=True)
class _Persistent:
    """A BINPERSID reference; torch's is ('storage', storage type, key, location, numel)."""

    pid: Any


@dataclasses.dataclass(frozen=True)
class _TensorCall:
    """The arguments of `_rebuild_tensor_v2`, checked once the tensor's name is known."""

    args: tuple


@dataclasses.dataclass(frozen=True)
class _Unusable:
    """A tensor of a kind no model here can use (its description)."""

    what: str


def load_torch_zip(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a torch.save zip checkpoint as numpy arrays, by name, in their stored dtypes."""
    return _open(Path(path), _state_dict)


def load_pickle(
    path: str | Path,
    extra_globals: Collection[tuple[str, str]],
    convert: Convert,
) -> Any:
    """The object a torch.save zip file holds, as plain data, tensors as checked numpy arrays.

    Beyond torch.save's grammar this reads lists, floats and bytes, and the globals
    `extra_globals` ((module, name) pairs): a call of one (REDUCE, NEWOBJ, NEWOBJ_EX) becomes a
    `Record` of its arguments, BUILD stores its state and SETITEM(S) its items there; nothing is
    called. The tree is then copied from the top (at most MAX_DEPTH deep, MAX_VALUES values):
    each Record, and each global named as a value, becomes `convert(it, plain)`, plain data or a
    CheckpointError; `plain(part, step)` gives a part of it (an argument, its state) as plain
    data, so only the parts a converter asks for are read.
    """
    extra = {key: Global(*key) for key in extra_globals if key not in _ALLOWED_GLOBALS}
    return _open(Path(path), lambda archive, p: _any_object(archive, p, extra, convert))


def _open(path: Path, read: Callable[[zipfile.ZipFile, Path], Any]) -> Any:
    if not path.is_file():  # a FIFO or device would block or never end
        raise CheckpointError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(b"PK"):
        raise UnsafeCheckpointError(
            f"{path} is not a torch zip checkpoint (the legacy pre-1.6 torch format is not "
            "supported: re-save it with a recent torch, or convert it to safetensors)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            return read(archive, path)
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
        RuntimeError,
        struct.error,
        zlib.error,
    ) as e:
        raise CheckpointError(
            f"{path}: corrupt or truncated zip archive ({type(e).__name__}: {e})"
        ) from e


def _data_pkl(archive: zipfile.ZipFile, path: Path) -> tuple[_Members, bytes, str]:
    """The load's members, data.pkl's bytes and its name for errors."""
    names = archive.namelist()
    if len(names) > MAX_MEMBERS:
        raise CheckpointError(
            f"{path}: {len(names)} zip members, more than {MAX_MEMBERS}; torch.save writes one per "
            "storage"
        )
    counts = collections.Counter(names)
    if len(counts) != len(names):
        dup = sorted(n for n, c in counts.items() if c > 1)
        raise CheckpointError(f"{path}: zip members appear twice: {shown(dup)}")
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one data.pkl, found {shown(pickles)}")
    prefix = pickles[0][: -len("/data.pkl")]
    members = _Members(archive, prefix, path)
    if f"{prefix}/byteorder" in counts and members.read("byteorder").strip() != b"little":
        raise CheckpointError(f"{path}: only little-endian torch checkpoints are supported")
    if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{path}: {pickles[0]} is larger than {MAX_PICKLE_BYTES} bytes; a state dict's "
            "pickle is a few hundred bytes per tensor"
        )
    return members, members.read("data.pkl"), f"{path}: {pickles[0]}"


def _state_dict(archive: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    members, data, where = _data_pkl(archive, path)
    state = _interpret(data, where, None)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    bad = [
        k
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, _TensorCall | _Unusable)
    ]
    if bad:
        raise CheckpointError(
            f"{path}: entries that are not named tensors: {reprlib.repr(bad[:10])}"
        )
    return {k: _tensor(f"{path}: tensor {shown(k)}", v, members) for k, v in state.items()}


def _any_object(
    archive: zipfile.ZipFile,
    path: Path,
    extra: dict[tuple[str, str], Global],
    convert: Convert,
) -> Any:
    members, data, where = _data_pkl(archive, path)
    return _Rebuild(members, str(path), convert).value(_interpret(data, where, extra), ())


class _Members:
    """The zip members of one load: stored uncompressed (as torch writes them), each storage read
    once, all together within a byte budget of the file's size."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        self._archive, self._prefix, self._path = archive, prefix, path
        self._budget = self._copy_budget = path.stat().st_size
        self._storages: dict[str, np.ndarray] = {}

    def read(self, name: str, nbytes: int | None = None, where: str = "") -> bytes:
        """Member `prefix/name`; `nbytes`: the exact size it must have."""
        member = f"{self._prefix}/{name}"
        where = where or str(self._path)
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise CheckpointError(f"{where}: zip member {member} is missing") from None
        if nbytes is not None and info.file_size != nbytes:
            raise CheckpointError(
                f"{where}: zip member {member} holds {info.file_size} bytes, but the pickle "
                f"declares {nbytes}"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{where}: zip member {member} is compressed (method {info.compress_type}); torch "
                "stores members uncompressed, and compressed ones are refused (zip bombs)"
            )
        self._budget -= info.file_size
        if self._budget < 0:
            raise CheckpointError(
                f"{where}: the zip members read add up to more bytes than the file holds "
                f"(overlapping members?) at {member}"
            )
        return self._archive.read(info)

    def charge_copy(self, where: str, nbytes: int) -> None:
        """A non-contiguous view is copied: all copies together at most the file's size (many
        entries viewing one big storage must not multiply it)."""
        self._copy_budget -= nbytes
        if self._copy_budget < 0:
            raise CheckpointError(
                f"{where}: the non-contiguous views copied add up to more bytes than the file "
                "holds (many views of one storage?)"
            )

    def storage(self, where: str, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        if key in self._storages:
            data = self._storages[key]
            if data.dtype != dtype or data.size != numel:
                raise CheckpointError(
                    f"{where}: storage {key} was read as {data.size} x {data.dtype}, "
                    f"this tensor declares it {numel} x {dtype}"
                )
            return data
        raw = self.read(f"data/{key}", numel * dtype.itemsize, where)
        self._storages[key] = data = np.frombuffer(raw, dtype)
        return data


def _tensor(where: str, value: _TensorCall | _Unusable, members: _Members) -> np.ndarray:
    """Check a `_rebuild_tensor_v2` call against its storage, then build the array."""
    if isinstance(value, _Unusable):
        raise CheckpointError(
            f"{where}: {value.what} tensors are not supported (readable: {READABLE_NAMES})"
        )
    args = value.args
    if len(args) not in (6, 7):
        raise CheckpointError(
            f"{where}: _rebuild_tensor_v2 takes 6 or 7 arguments, got {len(args)}"
        )
    storage, offset, size, stride = args[:4]
    key, dtype, numel = _storage_ref(where, storage)
    if not _is_int(offset) or not all(isinstance(t, tuple) for t in (size, stride)):
        raise CheckpointError(f"{where}: offset, size and stride must be an int and two tuples")
    shape = f"size {reprlib.repr(size)} and stride {reprlib.repr(stride)}"
    if not all(_is_int(v) for v in (*size, *stride)):
        raise CheckpointError(f"{where}: {shape} must hold ints")
    if len(size) != len(stride) or len(size) > MAX_NDIM:
        raise CheckpointError(f"{where}: {shape} must have the same length, at most {MAX_NDIM}")
    if offset < 0 or any(s < 0 or s > MAX_DIM for s in size):
        raise CheckpointError(f"{where}: negative or huge storage offset {offset} or size {size}")
    if any(st < (1 if s > 1 else 0) or st > MAX_DIM for s, st in zip(size, stride)):
        raise CheckpointError(
            f"{where}: stride {stride} for size {size}: every dimension longer than 1 needs a "
            "stride >= 1"
        )
    count = math.prod(size)
    if count == 0:
        if math.prod(s for s in size if s) * dtype.itemsize >= MAX_DIM:
            raise CheckpointError(f"{where}: empty tensor of impossible shape {size}")
        return np.zeros(size, dtype)
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if count > numel or extent > numel:
        raise CheckpointError(
            f"{where}: view (offset {offset}, size {size}, stride {stride}) needs {count} elements "
            f"up to element {extent}, but its storage has {numel}"
        )
    data = members.storage(where, key, dtype, numel)
    if all(st == math.prod(size[i + 1 :]) for i, (s, st) in enumerate(zip(size, stride)) if s > 1):
        return data[offset : offset + count].reshape(size)
    members.charge_copy(where, count * dtype.itemsize)
    strides = tuple(st * dtype.itemsize if s > 1 else 0 for s, st in zip(size, stride))
    return np.lib.stride_tricks.as_strided(data[offset:extent], size, strides).copy()


class _Rebuild:
    """One pass over a `load_pickle` tree, from the top: containers copied, tensors checked and
    read (each call once), records and bare globals handed to the caller's `convert`, which
    rebuilds the parts it wants; depth and size bounded (cycles, or containers shared 2**n
    times, end in an error)."""

    def __init__(self, members: _Members, path: str, convert: Convert):
        self._members, self._path, self._convert = members, path, convert
        self._tensors: dict[int, np.ndarray] = {}
        self._count = 0

    def value(self, obj: Any, at: tuple) -> Any:
        """`obj` (found at the keys `at`) as plain data."""
        self._count += 1
        if len(at) > MAX_DEPTH:
            raise CheckpointError(
                f"{self._path}: nested more than {MAX_DEPTH} levels deep (a cycle?) at {_at(at)}"
            )
        if self._count > MAX_VALUES:
            raise CheckpointError(
                f"{self._path}: more than {MAX_VALUES} values (containers shared many times?) at "
                f"{_at(at)}"
            )
        if obj is None or isinstance(obj, bool | int | float | str | bytes):
            return obj
        if isinstance(obj, _TensorCall | _Unusable):
            if id(obj) not in self._tensors:
                where = f"{self._path}: tensor {_at(at)}"
                self._tensors[id(obj)] = _tensor(where, obj, self._members)
            return self._tensors[id(obj)]
        if type(obj) in (dict, collections.OrderedDict):
            return type(obj)((k, self.value(v, (*at, k))) for k, v in obj.items())
        if type(obj) in (list, tuple):
            return type(obj)(self.value(v, (*at, i)) for i, v in enumerate(obj))
        if not isinstance(obj, Record | Global):  # a _Persistent outside a tensor
            raise CheckpointError(
                f"{self._path}: a storage reference outside a tensor at {_at(at)}"
            )
        here = (*at, obj.func if isinstance(obj, Record) else obj)
        try:
            return self._convert(obj, lambda child, step: self.value(child, (*here, step)))
        except CheckpointError as e:
            if str(e).startswith(self._path):  # from a part of `obj`: already says where
                raise
            raise type(e)(f"{self._path}: at {_at(here)}: {e}") from None


def _at(keys: tuple) -> str:
    """The keys leading to a value, e.g. 'model'/'decoder.version' (long paths shortened)."""
    steps = [_KEY_REPR.repr(k) if isinstance(k, str) else str(k) for k in keys]
    if len(steps) > 10:
        steps[4:-4] = [f"...{len(steps) - 8} more..."]
    return "/".join(steps) or "the top"


_KEY_REPR = reprlib.Repr()
_KEY_REPR.maxstring = 200


def _storage_ref(where: str, storage: Any) -> tuple[str, np.dtype, int]:
    pid = storage.pid if isinstance(storage, _Persistent) else None
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise CheckpointError(
            f"{where}: its storage is not a ('storage', ...) reference: {reprlib.repr(pid)}"
        )
    _, kind, key, location, numel = pid
    if not (isinstance(kind, Global) and kind.module == "torch"):
        raise CheckpointError(f"{where}: unexpected storage type {reprlib.repr(kind)}")
    if kind.name in _UNUSABLE_STORAGES:
        raise CheckpointError(
            f"{where}: dtype {_UNUSABLE_STORAGES[kind.name]} is not supported "
            f"(readable: {READABLE_NAMES})"
        )
    if kind.name not in _READABLE_STORAGES:
        raise CheckpointError(f"{where}: unexpected storage type torch.{kind.name}")
    if not (isinstance(key, str) and re.fullmatch(r"[0-9]{1,20}", key)):
        raise CheckpointError(f"{where}: storage key {reprlib.repr(key)} is not a number")
    if not isinstance(location, str) or not _is_int(numel) or not 0 <= numel <= MAX_DIM:
        raise CheckpointError(
            f"{where}: bad storage location {reprlib.repr(location)} or size {reprlib.repr(numel)}"
        )
    return key, np.dtype(_READABLE_STORAGES[kind.name]), numel


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- the pickle interpreter -----------------------------------------------------------------------

_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_LITERALS = frozenset(
    {"BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# Read by `load_pickle` only (fairseq's args, optimizer state, numpy scalars' bytes).
_DATA_LITERALS = frozenset({"BINFLOAT", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})


def _opcodes(data: bytes, where: str) -> Iterator[tuple[str, Any, int]]:
    ops = pickletools.genops(data)
    while True:
        try:
            op, arg, pos = next(ops)
        except StopIteration:
            return
        except (ValueError, EOFError, struct.error) as e:  # genops on malformed bytes
            raise CheckpointError(f"{where}: malformed pickle ({e})") from e
        yield op.name, arg, pos


def _interpret(data: bytes, where: str, extra: Mapping[tuple[str, str], Global] | None) -> Any:
    """The value a pickle describes, with tensors as `_TensorCall`s. `extra` None: torch.save's
    grammar only; else also lists, floats, bytes and `Record`s of the `extra` globals."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    for name, arg, pos in _opcodes(data, where):
        try:
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1 or marks:
                    raise CheckpointError(f"{where}: pickle stops with {len(stack)} values")
                return stack[0]
            if name == "MARK":
                marks.append(len(stack))
            elif name in _LITERALS or (extra is not None and name in _DATA_LITERALS):
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in _TUPLE_N:
                n = _TUPLE_N[name]
                if len(stack) < n:
                    raise IndexError
                stack[-n:] = [tuple(stack[-n:])]
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise CheckpointError(f"{where}: byte {pos}: memo entry {arg} was never set")
                stack.append(memo[arg])
            elif name == "GLOBAL":
                stack.append(_global(*arg.split(" ", 1), extra, where))
            elif name == "STACK_GLOBAL":
                qualname = stack.pop()
                module = stack.pop()
                if not isinstance(module, str) or not isinstance(qualname, str):
                    raise UnsafeCheckpointError(f"{where}: byte {pos}: STACK_GLOBAL of non-strings")
                stack.append(_global(module, qualname, extra, where))
            elif name == "BINPERSID":
                stack.append(_Persistent(stack.pop()))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_reduce(stack.pop(), args, extra, where, pos))
            elif name == "NEWOBJ" and extra is not None:
                args = stack.pop()
                stack.append(_record(stack.pop(), args, {}, extra, where, pos))
            elif name == "NEWOBJ_EX" and extra is not None:
                kwargs = stack.pop()
                args = stack.pop()
                stack.append(_record(stack.pop(), args, kwargs, extra, where, pos))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state, where, pos)
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                _set_items(stack[-1], [key, value], where, pos)
            elif name == "SETITEMS":
                items = pop_mark()
                _set_items(stack[-1], items, where, pos)
            elif name == "EMPTY_LIST" and extra is not None:
                stack.append([])
            elif name in ("APPEND", "APPENDS") and extra is not None:
                items = [stack.pop()] if name == "APPEND" else pop_mark()
                if type(stack[-1]) is not list:
                    raise CheckpointError(f"{where}: byte {pos}: {name} on a {_kind(stack[-1])}")
                stack[-1].extend(items)
            else:
                raise UnsafeCheckpointError(
                    f"{where}: byte {pos}: refusing opcode {name} (torch.save of "
                    f"{'tensors' if extra is None else 'plain data'} never writes it; this file "
                    "may try to run code)"
                )
        except IndexError:
            raise CheckpointError(
                f"{where}: byte {pos}: malformed pickle ({name} on too short a stack)"
            ) from None
    raise CheckpointError(f"{where}: pickle ends without STOP")


def _global(
    module: str, name: str, extra: Mapping[tuple[str, str], Global] | None, where: str
) -> Global:
    found = _ALLOWED_GLOBALS.get((module, name)) or (extra or {}).get((module, name))
    if found is None:
        raise UnsafeCheckpointError(
            f"{where}: refusing to load {cut(f'{module}.{name}')}: a torch checkpoint may only "
            "contain tensors and plain containers (this file would run code if unpickled)"
        )
    return found


def _reduce(
    func: Any, args: Any, extra: Mapping[tuple[str, str], Global] | None, where: str, pos: int
) -> Any:
    """The calls torch.save writes, as values, or a `Record` of an extra global; nothing is
    called."""
    if not isinstance(args, tuple):
        raise CheckpointError(f"{where}: byte {pos}: REDUCE arguments are not a tuple")
    if func == _ORDERED_DICT and args == ():
        return collections.OrderedDict()
    if func == _REBUILD_TENSOR:
        return _TensorCall(args)
    if func == _REBUILD_PARAMETER and args and isinstance(args[0], _TensorCall | _Unusable):
        return args[0]
    if func == _REBUILD_TENSOR_V3:
        dtype = next((a.name for a in args if isinstance(a, Global) and a.module == "torch"), "?")
        return _Unusable(f"dtype {dtype}")
    if func == _REBUILD_QTENSOR:
        return _Unusable("quantized")
    return _record(func, args, {}, extra, where, pos)


def _record(
    func: Any,
    args: Any,
    kwargs: Any,
    extra: Mapping[tuple[str, str], Global] | None,
    where: str,
    pos: int,
) -> Record:
    if not (isinstance(func, Global) and extra and extra.get((func.module, func.name)) is func):
        raise UnsafeCheckpointError(
            f"{where}: byte {pos}: refusing the call {reprlib.repr(func)}{reprlib.repr(args)}: "
            "torch.save never writes it"
        )
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: byte {pos}: the arguments of {func} are not a tuple")
    if not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"{where}: byte {pos}: keyword arguments of {func} not strings")
    return Record(func, args, kwargs)


def _build(target: Any, state: Any, where: str, pos: int) -> None:
    """BUILD: a record of this load takes its state once; torch.save's OrderedDict carries
    `_metadata` (module versions, not needed); nothing else may change."""
    if isinstance(target, Record) and not target.built:
        target.state, target.built = state, True
    elif type(target) is not collections.OrderedDict or not isinstance(state, dict):
        raise UnsafeCheckpointError(
            f"{where}: byte {pos}: BUILD on {_kind(target)}: only a record of this load may take "
            "its state, once, and torch.save's OrderedDict its attributes"
        )


def _set_items(target: Any, items: list[Any], where: str, pos: int) -> None:
    if isinstance(target, Record):
        target = target.items
    if not isinstance(target, dict) or len(items) % 2:
        raise CheckpointError(f"{where}: byte {pos}: SETITEM(S) on a {_kind(target)}")
    for key, value in zip(items[::2], items[1::2]):
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise CheckpointError(
                f"{where}: byte {pos}: dict key {reprlib.repr(key)} is not a str or int"
            )
        if key in target:
            raise CheckpointError(f"{where}: byte {pos}: key {shown(key)} appears twice")
        target[key] = value


def _kind(value: Any) -> str:
    if isinstance(value, Record):
        return f"a {value.func} record" + (" that has its state" if value.built else "")
    return repr(value) if isinstance(value, Global) else type(value).__name__
