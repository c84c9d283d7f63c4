"""Models and data over device meshes with JAX's own GSPMD sharding.

Parameters carry logical axis names (`nn.with_logical_partitioning` in the model code), and so do
the activations the model constrains (`nn.with_logical_constraint`: the residual stream
("batch", "length", "act_embed"), q / k / v / attention outputs `nn.attention.HEADS_AXES`, the KV
cache `CACHE_AXES`, the MLP hidden `nn.layers.MLP_AXES`); a rule set, a short table of
(logical name, mesh axis) pairs tried in order, maps them onto a 2-D mesh with axes "data" and
"model". A rule applies only if its mesh axis is still unused in that array and
divides the dimension; otherwise the next rule for that name is tried and, failing all, the
dimension is replicated (e.g. BERT's vocabulary of 30522 rows on a mesh axis of 8).

    mesh = make_mesh(data=4, model=2)
    params = shard_params(params, mesh, FSDP_TP, module=module)
    forward = jit_forward(module, mesh, FSDP_TP)
    logits = forward(params, shard_batch(input_ids, mesh), shard_batch(mask, mesh)).logits

Multi-host (TPU pod slice, GPU cluster): call `jax.distributed.initialize()` first, then the same
program runs on every host; `make_mesh` spans all devices and `shard_batch` takes each host's
local batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from biomed_jax.models.common import abstract_params

Rules = tuple[tuple[str, str | None], ...]
DATA, MODEL = "data", "model"

# Data parallel: the batch is split over "data", every parameter is replicated.
DP: Rules = (("batch", DATA),)
# Fully sharded data parallel: as DP, and each parameter is split over "data" too (ZeRO-3 style),
# on its model dim ("embed") where it has one, else on its MLP, head, vocabulary or norm axis.
FSDP: Rules = (
    ("batch", DATA),
    ("embed", DATA),
    ("mlp", DATA),
    ("heads", DATA),
    ("vocab", DATA),
    ("norm", DATA),
)
# Tensor parallel (Megatron): attention heads, MLP hidden and vocabulary split over "model"
# (tables whose vocabulary does not divide it, such as BERT's 30522, on their model dim instead);
# the batch over "data" (a mesh (d, m) is DP x TP). The activations between the split matmuls
# follow: q, k, v, attention outputs and the KV cache by head, the MLP hidden by its units.
TP: Rules = (
    ("batch", DATA),
    ("heads", MODEL),
    ("mlp", MODEL),
    ("vocab", MODEL),
    ("embed", MODEL),
    ("act_heads", MODEL),
    ("act_mlp", MODEL),
)
# FSDP over "data" combined with TP over "model": works on any mesh, scales both ways.
FSDP_TP: Rules = (*TP[:4], *FSDP[1:], *TP[4:])
DEFAULT_RULES = FSDP_TP
RULE_SETS: dict[str, Rules] = {"dp": DP, "fsdp": FSDP, "tp": TP, "fsdp_tp": FSDP_TP}


def make_mesh(
    data: int | None = None, model: int = 1, *, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: all devices of all hosts).

    `data=None` takes every device not used by `model`. data * model must equal the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model={model} must be >= 1 and divide the {len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data < 1 or data * model != len(devices):
        raise ValueError(
            f"mesh data={data} x model={model} needs {data * model} devices, have {len(devices)}"
        )
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=auto, devices=devices)


def resolve_rules(rules: Rules | str | None) -> Rules:
    if rules is None:
        return DEFAULT_RULES
    if isinstance(rules, str):
        if rules.lower() not in RULE_SETS:
            raise ValueError(f"unknown rule set {rules!r}; use one of {sorted(RULE_SETS)}")
        return RULE_SETS[rules.lower()]
    return tuple(rules)


def mesh_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules | str | None = None
) -> PartitionSpec:
    """The PartitionSpec of one array with logical axis `names` and `shape` under `rules`."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    spec: list[str | None] = [None] * len(shape)
    for logical, axis in resolve_rules(rules):
        if logical not in names or axis is None or axis in spec:
            continue
        dim = names.index(logical)
        if spec[dim] is None and shape[dim] % mesh.shape[axis] == 0:
            spec[dim] = axis
    return PartitionSpec(*spec)


def tree_shardings(abstract: Any, mesh: Mesh, rules: Rules | str | None = None) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.Partitioned` boxes (of arrays or
    ShapeDtypeStructs), e.g. `jax.eval_shape(module.init, ...)` or an optimizer state built from
    it; unboxed leaves are replicated. The result has the structure of the unboxed tree."""

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, mesh_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_shardings(module: nn.Module, mesh: Mesh, rules: Rules | str | None = None) -> Any:
    """NamedSharding of every parameter of `module` (a tree like its params)."""
    return tree_shardings(abstract_params(module), mesh, rules)


def state_shardings(
    state: Any, module: nn.Module, mesh: Mesh, rules: Rules | str | None = None
) -> Any:
    """NamedShardings for a tree that holds copies of `module`'s params (a TrainState, optimizer
    moments): a leaf whose trailing dict keys and shape are a parameter's gets that parameter's
    sharding; every other leaf (step counters, scalars) is replicated."""
    specs = {
        tuple(k.key for k in path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_params(module)))[0],
            jax.tree.leaves(param_shardings(module, mesh, rules)),
        )
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys: list[Any] = []
        for entry in reversed(path):
            if not isinstance(entry, jax.tree_util.DictKey):
                break
            keys.insert(0, entry.key)
        shape, sharding = specs.get(tuple(keys), (None, replicated))
        return sharding if shape == getattr(leaf, "shape", None) else replicated

    return jax.tree_util.tree_map_with_path(one, state)


def shard_params(
    params: Any, mesh: Mesh, rules: Rules | str | None = None, *, module: nn.Module | None = None
) -> Any:
    """Place a param tree on `mesh` by the rules (default FSDP_TP).

    `params` is either boxed (straight from `module.init`: names travel with it) or plain arrays
    with `module=` naming the model whose logical axes they carry.
    """
    boxed = any(
        isinstance(x, nn.Partitioned)
        for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    )
    if boxed:
        shardings = tree_shardings(params, mesh, rules)
        params = nn.unbox(params)
    elif module is not None:
        shardings = param_shardings(module, mesh, rules)
    else:
        raise TypeError(
            "shard_params: plain params need module= (the model they belong to); for a loaded "
            "model use pre.shard(mesh, rules)"
        )
    return jax.device_put(params, shardings)


def batch_axes(rules: Rules | str | None = None) -> tuple[str, ...]:
    """The mesh axes the batch is split over under `rules`."""
    return tuple(axis for logical, axis in resolve_rules(rules) if logical == "batch" and axis)


def batch_sharding(mesh: Mesh, rules: Rules | str | None = None) -> NamedSharding:
    """Leading axis split over the rules' batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules | str | None = None) -> Any:
    """Split every array of a pytree along its leading (batch) axis over the batch mesh axes.

    On a mesh spanning several hosts each host passes its own local batch; the global batch is
    their concatenation in process order. A mesh of this host's devices only (as the pipelines
    use) takes the whole batch, whatever the process count.
    """
    sharding = batch_sharding(mesh, rules)
    ways = math.prod(mesh.shape[a] for a in batch_axes(rules))
    local = sharding.is_fully_addressable
    local_ways = ways if local else ways // jax.process_count()

    def one(x: Any) -> jax.Array:
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % local_ways:
            raise ValueError(
                f"batch axis of an array with shape {x.shape} must be a multiple of {local_ways} "
                f"(the {ways} batch shards of mesh {dict(mesh.shape)})"
            )
        if not local:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(one, batch)


@contextlib.contextmanager
def use(mesh: Mesh, rules: Rules | str | None = None) -> Iterator[Mesh]:
    """Mesh and logical rules in force while tracing (activation constraints read them)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(resolve_rules(rules)):
        yield mesh


def jit_sharded(
    fn: Callable[..., Any],
    mesh: Mesh,
    rules: Rules | str | None = None,
    **jit_kwargs: Any,
) -> Callable[..., Any]:
    """`jax.jit(fn, **jit_kwargs)` traced and run under `use(mesh, rules)`."""
    jitted = jax.jit(fn, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with use(mesh, rules):
            return jitted(*args, **kwargs)

    call.jitted = jitted  # type: ignore[attr-defined]
    return call


def jit_forward(
    module: nn.Module,
    mesh: Mesh,
    rules: Rules | str | None = None,
    *,
    num_inputs: int = 2,
    **apply_kwargs: Any,
) -> Callable[..., Any]:
    """forward(params, *inputs) = module.apply({"params": params}, *inputs, **apply_kwargs), jitted
    with params in their rule shardings and the `num_inputs` batch arrays and every output split
    along the batch axis."""
    data = batch_sharding(mesh, rules)

    def forward(params: Any, *inputs: jax.Array) -> Any:
        return module.apply({"params": params}, *inputs, **apply_kwargs)

    return jit_sharded(
        forward,
        mesh,
        rules,
        in_shardings=(param_shardings(module, mesh, rules), *([data] * num_inputs)),
        out_shardings=data,
    )


def jit_train_step(
    step: Callable[..., tuple[Any, Any]],
    mesh: Mesh,
    state_shardings: Any,
    rules: Rules | str | None = None,
    *,
    donate: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """step(state, batch, *rest) -> (state, metrics), jitted: the state keeps `state_shardings` in
    and out (see `state_shardings`), the batch is split along its leading axis, `rest` (an RNG
    key, ...) and the metrics are replicated. With `donate` the input state's buffers are reused:
    arrays it was placed from (device_put may alias them) are invalid afterwards."""
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jit_sharded(
        lambda state, batch, rest: step(state, batch, *rest),
        mesh,
        rules,
        in_shardings=(state_shardings, batch_sharding(mesh, rules), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate else (),
    )

    @functools.wraps(step)
    def call(state: Any, batch: Any, *rest: Any) -> tuple[Any, Any]:
        return jitted(state, batch, rest)

    return call


def local_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of an array split along its leading axis, in global order (each host
    writes these to its own output shard; on one host, the whole array)."""
    blocks = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of the arrays of `tree` held by each device (shards counted where they live)."""
    total: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
    return total
