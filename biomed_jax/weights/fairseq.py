"""Read a fairseq checkpoint (`checkpoint.pt`, `checkpoint_avg.pt`) as plain data, running no code.

fairseq's `torch.save` dict holds, besides tensors: `args` (an argparse `Namespace`), `cfg` (a
dict, or an omegaconf `DictConfig` in older files, whose `model` may itself be a `Namespace`),
OrderedDicts, defaultdicts and numpy scalars (losses in `extra_state`). `torch_zip.load_pickle`
interprets the pickle without unpickling it, reading only the globals of GLOBALS: each call of
one is an inert `Record` of its arguments and state, which `_plain` turns into dicts, lists and
numbers (a numpy scalar is decoded from its dtype name and bytes); calling any other global, or
one of these in another way, is refused.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError, UnsafeCheckpointError, shown
from biomed_jax.weights.torch_zip import Global, Record, load_pickle

Plain = Callable[[Any, str], Any]  # a part of a record (an argument, its state) as plain data


def _namespace(r: Record, plain: Plain) -> dict[str, Any]:
    """argparse.Namespace (NEWOBJ Namespace, (); BUILD attributes): its attributes."""
    if r.args or r.kwargs or r.items:
        raise CheckpointError(f"{r.func} is made with arguments or items")
    if r.state is None:
        return {}
    if type(r.state) is not dict:
        raise CheckpointError(f"{r.func} state is a {type(r.state).__name__}, not a dict")
    return plain(r.state, "state")


def _container(r: Record, plain: Plain) -> Any:
    """omegaconf DictConfig / ListConfig: `_content` (a dict or list of nodes, or None / "???",
    i.e. missing). `_parent` and `_metadata` are not read."""
    if r.args or r.kwargs or r.items or type(r.state) is not dict:
        raise CheckpointError(f"{r.func} must be made with no arguments and a dict state")
    content = r.state.get("_content")
    expected = dict if r.func.name == "DictConfig" else list
    return plain(content, "_content") if type(content) is expected else None


def _value_node(r: Record, plain: Plain) -> Any:
    """omegaconf AnyNode, StringNode, IntegerNode...: the value is `_val`."""
    if r.args or r.kwargs or r.items or type(r.state) is not dict:
        raise CheckpointError(f"{r.func} must be made with no arguments and a dict state")
    return plain(r.state.get("_val"), "_val")


def _dropped(r: Record, plain: Plain) -> None:
    """omegaconf Metadata / ContainerMetadata: type annotations, not read."""
    return None


def _defaultdict(r: Record, plain: Plain) -> dict:
    """collections.defaultdict(factory) and its SETITEMS: a plain dict."""
    if len(r.args) > 1 or r.kwargs or r.state is not None:
        raise CheckpointError(f"{r.func} takes one argument (its factory) and its items")
    return plain(r.items, "items")


# numpy.dtype names numpy pickles (dtype.str without the byte order): numbers only.
_DTYPES = frozenset(
    f"{kind}{size}"
    for kind, sizes in {"b": "1", "i": "1248", "u": "1248", "f": "248"}.items()
    for size in sizes
) | {"c8", "c16"}


def _dtype(r: Record, plain: Plain) -> np.dtype:
    """numpy.dtype(name, align, copy) + BUILD (version, byte order, ...): numeric kinds only."""
    if (
        not (1 <= len(r.args) <= 3 and isinstance(r.args[0], str) and r.args[0] in _DTYPES)
        or r.kwargs
        or r.items
    ):
        raise UnsafeCheckpointError(
            f"refusing numpy dtype {reprlib.repr(r.args)} (only numbers are data: {sorted(_DTYPES)})"
        )
    order = r.state[1] if isinstance(r.state, tuple) and len(r.state) > 1 else "|"
    if order not in ("<", ">", "|", "="):
        raise CheckpointError(f"numpy dtype {r.args[0]} has byte order {reprlib.repr(order)}")
    dtype = np.dtype(r.args[0])
    return dtype.newbyteorder(order) if order in ("<", ">") else dtype


def _latin1_bytes(r: Record, plain: Plain) -> bytes:
    """_codecs.encode(text, "latin1"): how pickle protocol 2 writes bytes (a numpy scalar's)."""
    if (
        r.args[1:] != ("latin1",)
        or not isinstance(r.args[0], str)
        or r.kwargs
        or r.items
        or r.built
    ):
        raise UnsafeCheckpointError("_codecs.encode is only read as (text, 'latin1')")
    if len(r.args[0]) > 16:
        raise CheckpointError(
            f"_codecs.encode of {len(r.args[0])} characters: not a numpy scalar's"
        )
    return r.args[0].encode("latin1")


def _numpy_scalar(r: Record, plain: Plain) -> Any:
    """numpy.core.multiarray.scalar(dtype, bytes): the number, read with np.frombuffer."""
    if len(r.args) != 2 or r.kwargs or r.items or r.built:
        raise UnsafeCheckpointError("a numpy scalar must be a numeric dtype and its bytes")
    dtype, data = plain(r.args[0], "dtype"), plain(r.args[1], "bytes")
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafeCheckpointError("a numpy scalar must be a numeric dtype and its bytes")
    if len(data) != dtype.itemsize:
        raise CheckpointError(f"numpy scalar of {dtype} has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0].item()


_OMEGACONF_NODES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
    "ValueNode",
)
_TYPES = ("dict", "list", "tuple", "int", "long", "float", "str", "unicode", "bool", "object")

# (module, name) -> how a call of it becomes plain data.
_CALLS: dict[tuple[str, str], Callable[[Record, Plain], Any]] = {
    ("argparse", "Namespace"): _namespace,
    ("omegaconf.dictconfig", "DictConfig"): _container,
    ("omegaconf.listconfig", "ListConfig"): _container,
    ("omegaconf.base", "Metadata"): _dropped,
    ("omegaconf.base", "ContainerMetadata"): _dropped,
    **{("omegaconf.nodes", name): _value_node for name in _OMEGACONF_NODES},
    ("collections", "defaultdict"): _defaultdict,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
# Types named as values (omegaconf's annotations, a defaultdict's factory): read as None.
_TYPE_NAMES = frozenset(
    {("typing", "Any"), *((m, t) for m in ("builtins", "__builtin__") for t in _TYPES)}
)
GLOBALS = frozenset(_CALLS) | _TYPE_NAMES


def _plain(obj: Record | Global, plain: Plain) -> Any:
    """A record of one of GLOBALS as plain data (`torch_zip.load_pickle`'s converter)."""
    if isinstance(obj, Global):
        if (obj.module, obj.name) in _TYPE_NAMES:
            return None
        raise UnsafeCheckpointError(f"{obj} is not data in a fairseq checkpoint")
    convert = _CALLS.get((obj.func.module, obj.func.name))
    if convert is None:
        raise UnsafeCheckpointError(f"refusing the call {obj.func}: it is a type, not data")
    return convert(obj, plain)


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _resolve(value: Any, root: Mapping[str, Any]) -> Any:
    """An omegaconf interpolation "${task.x}" replaced by the value at that path of `root`
    (followed through chains); the value must be a scalar (no structure is copied)."""
    seen: set[str] = set()
    while isinstance(value, str) and (m := _INTERPOLATION.match(value)):
        if value in seen:
            raise CheckpointError(f"cfg interpolation {shown(value)} refers to itself")
        seen.add(value)
        found: Any = root
        for part in m.group(1).split("."):
            if not isinstance(found, Mapping) or part not in found:
                raise CheckpointError(
                    f"cfg interpolation {shown(value)} names nothing in the checkpoint"
                )
            found = found[part]
        if isinstance(found, Mapping | list | tuple):
            raise CheckpointError(f"cfg interpolation {shown(value)} names a section, not a value")
        value = found
    return value


@dataclasses.dataclass(frozen=True)
class FairseqCheckpoint:
    """What a fairseq checkpoint says: tensors by fairseq name and the stored arguments.

    model_args / task_args: `cfg["model"]` / `cfg["task"]` when the checkpoint has a cfg, else
    the flat `args` Namespace (which then serves as both).
    """

    path: Path
    model: dict[str, np.ndarray]
    model_args: dict[str, Any]
    task_args: dict[str, Any]


def read_fairseq_checkpoint(path: str | Path) -> FairseqCheckpoint:
    """Read `path` with the pickle interpreter; raise CheckpointError if it is not a fairseq
    checkpoint (no `model` dict of tensors, no `cfg` or `args`)."""
    path = Path(path)
    raw = load_pickle(path, GLOBALS, _plain)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' dict of tensors)")
    model = dict(raw["model"])
    bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: 'model' entries that are not named tensors: {shown(bad)}")
    cfg, args = raw.get("cfg"), raw.get("args")
    if isinstance(cfg, Mapping) and cfg.get("model") is not None:
        model_args, task_args = cfg["model"], cfg.get("task") or {}
    elif isinstance(args, Mapping):
        cfg, model_args, task_args = {}, args, args
    else:
        raise CheckpointError(
            f"{path}: neither cfg['model'] nor args is stored: the architecture is unknown"
        )
    if not isinstance(model_args, Mapping) or not isinstance(task_args, Mapping):
        raise CheckpointError(f"{path}: the stored model/task arguments are not mappings")
    try:
        model_args, task_args = (
            {k: _resolve(v, cfg) for k, v in section.items()} for section in (model_args, task_args)
        )
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return FairseqCheckpoint(path, model, model_args, task_args)
