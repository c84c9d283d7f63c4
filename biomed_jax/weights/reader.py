"""One reader for every plan: whole tensors into host memory, or each device's block onto a mesh.

Both go through `read_block(entry, index)`: the block `index` (slices into our layout, or None for
all of it) of one parameter, transposed for torch Linear weights, stacked over layers for the
scanned stack, one layer of a stacked tensor for unrolled layers, cast to the parameter's dtype.
With shardings, every parameter is built by `jax.make_array_from_callback`, so a device reads only
its own block and no sharded parameter is ever whole in host memory (on several hosts, each reads
only its own devices' blocks); a `pytorch_model.bin` is a zip that cannot be sliced and is in host
memory already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Sharding

from biomed_jax.errors import CheckpointError
from biomed_jax.trees import flatten, unflatten
from biomed_jax.weights.formats import Checkpoint, Index
from biomed_jax.weights.plan import Entry, Plan, Source

logger = logging.getLogger(__name__)

# init_fresh(shardings or None) -> a param tree holding at least the plan's fresh paths.
InitFresh = Callable[[Mapping[str, object] | None], Mapping[str, object]]


def read_block(
    checkpoint: Checkpoint, entry: Entry, index: Index | None, nonfinite: set[str] | None = None
) -> np.ndarray:
    """Block `index` of the parameter `entry` describes (None: the whole parameter); the keys of
    checkpoint tensors whose block holds NaN or Inf are added to `nonfinite`."""
    if isinstance(entry, tuple):
        layers = range(len(entry)) if index is None else range(len(entry))[index[0]]
        rest = None if index is None else index[1:]
        return np.stack([_read_source(checkpoint, entry[i], rest, nonfinite) for i in layers])
    return _read_source(checkpoint, entry, index, nonfinite)


def _read_source(
    checkpoint: Checkpoint, source: Source, index: Index | None, nonfinite: set[str] | None
) -> np.ndarray:
    file = checkpoint.owner[source.key]
    if index is not None and source.transpose:
        index = index[::-1]
    if source.layer is not None:  # [layer, ...]: stacked tensors are never transposed
        index = (source.layer,) if index is None else (source.layer, *index)
    block = file.read(source.key, index)
    if nonfinite is not None and _is_float(block) and not np.isfinite(block).all():
        nonfinite.add(source.key)
    return block.T if source.transpose else block


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def _warn_nonfinite(checkpoint: Checkpoint, keys: set[str]) -> None:
    """NaN or Inf weights load as they are (a model may mean them), but never silently: a NaN
    weight makes every output NaN, and `generate` then returns token 0 throughout."""
    names = sorted(keys)
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    logger.warning(
        "%s: %d tensor(s) hold NaN or Inf values, so outputs that use them will be NaN: %s%s",
        checkpoint.name,
        len(names),
        ", ".join(names[:10]),
        more,
    )


def read_params(
    checkpoint: Checkpoint,
    plan: Plan,
    shardings: Mapping[str, object] | None = None,
    init_fresh: InitFresh | None = None,
    *,
    on_device: bool = False,
) -> dict[str, object]:
    """The parameters `plan` describes as a nested dict: numpy arrays, jax Arrays on the default
    device (`on_device`: each put there as it is read, so host memory holds one parameter at a
    time beyond them), or jax Arrays placed by `shardings` (a tree like the params). Fresh
    parameters come from `init_fresh(shardings)`."""
    placement = flatten(shardings) if shardings is not None else None
    nonfinite: set[str] = set()  # checkpoint keys holding NaN or Inf
    out: dict[str, object] = {}
    for path, spec in plan.specs.items():
        if path in plan.fresh:
            continue
        entry = plan.entries[path]
        dtype = np.dtype(spec.dtype)

        def read(index: Index | None, entry: Entry = entry, dtype: np.dtype = dtype) -> np.ndarray:
            block = read_block(checkpoint, entry, index, nonfinite)
            return np.ascontiguousarray(block, dtype=dtype)

        if placement is None:
            out[path] = jax.device_put(read(None)) if on_device else read(None)
        else:
            sharding: Sharding = placement[path]
            out[path] = jax.make_array_from_callback(tuple(spec.shape), sharding, read)
    if nonfinite:
        _warn_nonfinite(checkpoint, nonfinite)
    if plan.fresh:
        if init_fresh is None:
            raise CheckpointError(
                f"{checkpoint.name} lacks {list(plan.fresh)}, nothing to init them"
            )
        pooler = any("pooler" in path.split("/") for path in plan.fresh)
        logger.warning(
            "%s: newly initialized (not in the checkpoint): %s%s",
            checkpoint.name,
            ", ".join(plan.fresh),
            "; pooler_output is random until the model is trained (last_hidden_state is not)"
            if pooler
            else "",
        )
        initial = flatten(init_fresh(shardings))
        for path in plan.fresh:
            value = initial[path]
            out[path] = np.asarray(value) if placement is None and not on_device else value
    return unflatten(out)
