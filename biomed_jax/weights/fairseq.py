"""Read a fairseq checkpoint (`checkpoint.pt`, `checkpoint_avg.pt`) as plain data, running no code.

fairseq's `torch.save` dict holds, besides tensors: `args` (an argparse `Namespace`), `cfg` (a
dict, or an omegaconf `DictConfig` in older files, whose `model` may itself be a `Namespace`),
OrderedDicts, defaultdicts and numpy scalars (losses in `extra_state`). `torch_zip.load_pickle`
resolves exactly those globals to the stand-ins below, which only record their pickled state;
`_plain` then turns the tree into dicts, lists and numbers. Any other global is refused.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError, UnsafeCheckpointError
from biomed_jax.weights.torch_zip import load_pickle


class _Record:
    """A pickled object's state, kept as data (NEWOBJ + BUILD land here; nothing is called)."""

    state: Any = None  # no BUILD (an empty Namespace): no state

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Namespace(_Record):
    """argparse.Namespace: its attributes."""


class _DictConfig(_Record):
    """omegaconf DictConfig: `_content` maps keys to nodes (or is None / "???")."""


class _ListConfig(_Record):
    """omegaconf ListConfig: `_content` is a list of nodes."""


class _ValueNode(_Record):
    """omegaconf AnyNode, StringNode, IntegerNode...: the value is `_val`."""


class _Metadata(_Record):
    """omegaconf Metadata / ContainerMetadata: type annotations, dropped."""


class _Frozen:
    """Shared by every load, so a pickle's BUILD may not change it."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError(f"the checkpoint tries to modify {self!r}")


class _Marker(_Frozen):
    """A type named in the pickle (typing.Any, builtins.dict): data, never called."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<type {self.name}>"


class _Call(_Frozen):
    """An allowed function (reads its arguments as data)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<{self.fn.__name__}>"


class _DType(_Record):
    """numpy.dtype(name, align, copy) + BUILD (version, byte order, ...): numeric kinds only."""

    def __init__(self, name: Any = None, *_: Any) -> None:
        super().__init__()
        try:
            self.dtype = np.dtype(str(name))
        except TypeError:
            raise UnsafeCheckpointError(f"unknown numpy dtype {name!r}") from None
        if self.dtype.kind not in "biufc":
            raise UnsafeCheckpointError(f"refusing numpy dtype {name!r} (only numbers are data)")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise UnsafeCheckpointError("a numpy scalar must be a numeric dtype and its bytes")
    if len(data) != dtype.dtype.itemsize:
        raise CheckpointError(f"numpy scalar of {dtype.dtype} has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


def _latin1_bytes(text: Any, encoding: Any = None) -> bytes:
    """_codecs.encode(text, "latin1"): how pickle protocol 2 writes bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeCheckpointError("_codecs.encode is only read as latin1 bytes")
    return text.encode("latin1")


def _defaultdict(factory: Any = None, *_: Any) -> dict:
    """collections.defaultdict(factory): a plain dict (its items follow as SETITEMS)."""
    return {}


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

EXTRA_GLOBALS: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): _Namespace,
    ("omegaconf.dictconfig", "DictConfig"): _DictConfig,
    ("omegaconf.listconfig", "ListConfig"): _ListConfig,
    ("omegaconf.base", "Metadata"): _Metadata,
    ("omegaconf.base", "ContainerMetadata"): _Metadata,
    **{("omegaconf.nodes", name): _ValueNode for name in _OMEGACONF_NODES},
    ("typing", "Any"): _Marker("typing.Any"),
    **{(m, t): _Marker(t) for m in ("builtins", "__builtin__") for t in _TYPES},
    ("collections", "defaultdict"): _Call(_defaultdict),
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _Call(_latin1_bytes),
    ("numpy.core.multiarray", "scalar"): _Call(_numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Call(_numpy_scalar),
}

_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _plain(obj: Any) -> Any:
    """The stand-in tree as dicts, lists and scalars (tensors stay numpy arrays)."""
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, _Namespace):
        return {k: _plain(v) for k, v in dict(obj.state or {}).items()}
    if isinstance(obj, _DictConfig):
        content = (obj.state or {}).get("_content")
        if not isinstance(content, Mapping):
            return None  # None or "???" (missing)
        return {k: _plain(v) for k, v in content.items()}
    if isinstance(obj, _ListConfig):
        content = (obj.state or {}).get("_content")
        return [_plain(v) for v in content] if isinstance(content, list) else None
    if isinstance(obj, _ValueNode):
        return _plain((obj.state or {}).get("_val"))
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, (_Record, _Marker)):
        return None
    return obj


def _resolve(tree: Any, root: Mapping[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """Replace omegaconf interpolations "${task.x}" by the value at that path of `root`."""
    if isinstance(tree, dict):
        return {k: _resolve(v, root, seen) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_resolve(v, root, seen) for v in tree]
    if isinstance(tree, str) and (m := _INTERPOLATION.match(tree)):
        if tree in seen:
            raise CheckpointError(f"cfg interpolation {tree} refers to itself")
        value: Any = root
        for part in m.group(1).split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise CheckpointError(f"cfg interpolation {tree} names nothing in the checkpoint")
            value = value[part]
        return _resolve(value, root, seen | {tree})
    return tree


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
    """Read `path` with the restricted unpickler; raise CheckpointError if it is not a fairseq
    checkpoint (no `model` dict of tensors, no `cfg` or `args`)."""
    path = Path(path)
    try:
        raw = load_pickle(path, EXTRA_GLOBALS)
    except CheckpointError:  # refusals (UnsafeCheckpointError) as they are
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, TypeError, ValueError,
            AttributeError, KeyError, IndexError) as e:  # fmt: skip
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e})") from e
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' dict of tensors)")
    state = {k: _plain(v) for k, v in raw.items() if k in ("args", "cfg")}
    model = dict(raw["model"])
    bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: 'model' entries that are not named tensors: {bad[:10]}")
    cfg = state.get("cfg")
    if isinstance(cfg, Mapping) and cfg.get("model") is not None:
        cfg = _resolve(cfg, cfg)
        model_args, task_args = cfg["model"], cfg.get("task") or {}
    elif isinstance(state.get("args"), Mapping):
        model_args = task_args = state["args"]
    else:
        raise CheckpointError(
            f"{path}: neither cfg['model'] nor args is stored: the architecture is unknown"
        )
    if not isinstance(model_args, Mapping) or not isinstance(task_args, Mapping):
        raise CheckpointError(f"{path}: the stored model/task arguments are not mappings")
    return FairseqCheckpoint(path, model, dict(model_args), dict(task_args))
