"""What every model module shares: numeric options, input checks, the layer stack and its layouts.

The stack of identical layers runs in one of two ways (`scan_layers`), with its own param layout:
- unrolled (default): each layer is its own module, params under `layer_0`, `layer_1`, ...; every
  layer reads its own weight buffers.
- scanned: one `nn.scan`, params under `layer` with a leading layer axis [L, ...]; compiles once
  for all layers, but on CPU XLA copies each layer's weights out of the stack on every call.
`stack_layers` / `unstack_layers` convert between the two (checkpoints on disk are stacked).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import validation as v
from biomed_jax.nn.layers import Dtype
from biomed_jax.numerics import Policy, PrecisionLike, resolve

# `jax.checkpoint_policies` that are policies themselves (the others build one from arguments:
# pass what they return).
REMAT_POLICIES = (
    "everything_saveable",
    "nothing_saveable",
    "dots_saveable",
    "checkpoint_dots",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots_with_no_batch_dims",
)
RematPolicy = str | Callable[..., Any] | None


def check_remat(gradient_checkpointing: bool, remat_policy: RematPolicy) -> Callable | None:
    """The `jax.checkpoint` policy that `remat_policy` names (None: JAX's default, save nothing
    but the layer's inputs); errors name the argument."""
    if not isinstance(gradient_checkpointing, bool):
        raise TypeError(
            f"gradient_checkpointing must be True or False, got {gradient_checkpointing!r}"
        )
    if remat_policy is None:
        return None
    if not gradient_checkpointing:
        raise ValueError("remat_policy applies with gradient_checkpointing=True")
    if isinstance(remat_policy, str):
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy {remat_policy!r} is not one of {REMAT_POLICIES}; the other "
                "jax.checkpoint_policies take arguments: pass the policy they return"
            )
        return getattr(jax.checkpoint_policies, remat_policy)
    if not callable(remat_policy):
        raise TypeError(f"remat_policy must be a policy name or a policy, got {remat_policy!r}")
    return remat_policy


class ModelBase(nn.Module):
    """Fields of every model: config, compute/param dtypes, numerics policy, remat, layer stack.

    `dtype` / `param_dtype` are HF-Flax's; `policy` (`biomed_jax.numerics`: a `Policy` or a preset
    name, default "fast") says how to compute; `precision` (HF-Flax's), when given, replaces the
    policy's matmul precision. `gradient_checkpointing` wraps each layer in `nn.remat`, keeping
    what `remat_policy` (`check_remat`) says.
    """

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: Policy | str = "fast"
    precision: PrecisionLike = None
    gradient_checkpointing: bool = False
    remat_policy: RematPolicy = None
    scan_layers: bool = False

    @property
    def numerics(self) -> dict[str, Any]:
        """dtype, param_dtype and the resolved `Policy`: what every submodule and layer takes."""
        return {
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "policy": resolve(self.policy, self.precision),
        }

    def check_call(self, *args: Any, **kwargs: Any) -> None:
        """Check a call's arguments on the host, as `__call__` does (values too, when concrete):
        what a compiled call (`Pretrained.__call__`) runs first. The models define it."""

    @property
    def stack_options(self) -> dict[str, Any]:
        """How submodules run their layer stack: remat and scan, as this module does."""
        return {
            "gradient_checkpointing": self.gradient_checkpointing,
            "remat_policy": self.remat_policy,
            "scan_layers": self.scan_layers,
        }


def check_inputs(
    config: Any,
    input_ids: Any,
    attention_mask: Any = None,
    token_type_ids: Any = None,
    position_ids: Any = None,
    *,
    mask_slots: int | None = None,
) -> None:
    """A model call's arrays, checked once where every model's `__call__` begins.

    Shapes and dtypes always (they are static under `jit`; symbolic `jax.export` dimensions are
    compared for equality only); values (ids inside their tables, mask entries, positions inside
    the position table) when concrete. `mask_slots`: the key length of the attention mask when it
    is not the input's (a KV cache's slots). Masks: `nn.attention.make_attention_mask`.
    """
    v.int_array("input_ids", input_ids)
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(
            f"input_ids must be [batch, length] with both > 0, got shape {tuple(input_ids.shape)}"
        )
    v.ids_in_range("input_ids", input_ids, 0, config.vocab_size)
    batch, length = input_ids.shape
    if attention_mask is not None:
        slots = length if mask_slots is None else mask_slots
        heads = config.num_attention_heads
        cached = mask_slots is not None
        v.attention_mask("attention_mask", attention_mask, batch, length, slots, heads, cached)
    like_ids = "[batch, length] like input_ids"
    if token_type_ids is not None:
        v.int_array("token_type_ids", token_type_ids, (batch, length), like_ids)
        v.ids_in_range("token_type_ids", token_type_ids, 0, config.type_vocab_size)
    limit = config.max_position_embeddings
    if position_ids is None:
        if v.exceeds(length, limit):
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings {limit}")
        return
    v.int_array("position_ids", position_ids, (batch, length), like_ids)
    v.ids_in_range("position_ids", position_ids, 0, limit)


STACKED = "layer"  # the scanned stack's param name; unrolled layers are layer_0, layer_1, ...
_UNROLLED = re.compile(rf"{STACKED}_(\d+)")


def layer_name(index: int) -> str:
    """The param name of unrolled layer `index`."""
    return f"{STACKED}_{index}"


def layer_stack(
    layer_cls: type[nn.Module],
    num_layers: int,
    *,
    scan: bool,
    remat: bool,
    in_axes: Any,
    remat_policy: RematPolicy = None,
    **layer_kwargs: Any,
) -> Callable[..., tuple[jax.Array, Any]]:
    """`num_layers` copies of `layer_cls`: (h, *args) -> (h, ys), each leaf of ys a tuple of L.

    Call it inside a compact method. Each layer maps (h, *args) -> (h, ys); `in_axes` says per arg
    whether every layer sees it whole (`nn.broadcast`) or its own (0): then the arg is a sequence
    of L trees, layer i's the i-th (the scanned stack stacks them along a new leading axis, one
    copy). Both ways compute the same function; only the param layout and the compiled program
    differ.
    """
    policy = check_remat(remat, remat_policy)
    cls = nn.remat(layer_cls, prevent_cse=not scan, policy=policy) if remat else layer_cls
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,)
    if scan:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(**layer_kwargs, name=STACKED)

        def run_scanned(h: Any, *args: Any) -> tuple[Any, Any]:
            args = [
                a if ax is nn.broadcast else jax.tree.map(lambda *xs: jnp.stack(xs), *a)
                for a, ax in zip(args, axes, strict=True)
            ]
            h, stacked = scanned(h, *args)  # ys leaves [L, ...]
            return h, jax.tree.map(lambda y: tuple(y[i] for i in range(num_layers)), stacked)

        return run_scanned

    layers = [cls(**layer_kwargs, name=layer_name(i)) for i in range(num_layers)]

    def run(h: jax.Array, *args: Any) -> tuple[jax.Array, Any]:
        outputs = []
        for i, layer in enumerate(layers):
            own = [a if ax is nn.broadcast else a[i] for a, ax in zip(args, axes, strict=True)]
            h, ys = layer(h, *own)
            outputs.append(ys)
        return h, jax.tree.map(lambda *ys: ys, *outputs)

    return run


def unstack_layers(params: Any) -> Any:
    """Scanned layout -> unrolled: every `layer` subtree [L, ...] becomes `layer_0` ... `layer_{L-1}`."""
    if not isinstance(params, dict):
        return params
    out = {}
    for name, sub in params.items():
        if name == STACKED:
            count = jax.tree.leaves(sub)[0].shape[0]
            out.update(
                (layer_name(i), jax.tree.map(lambda x, i=i: x[i], sub)) for i in range(count)
            )
        else:
            out[name] = unstack_layers(sub)
    return out


def stack_layers(params: Any) -> Any:
    """Unrolled layout -> scanned (the inverse of `unstack_layers`); stacked params pass through."""
    if not isinstance(params, dict):
        return params
    layers = {
        int(m.group(1)): sub for name, sub in params.items() if (m := _UNROLLED.fullmatch(name))
    }
    out = {name: stack_layers(sub) for name, sub in params.items() if not _UNROLLED.fullmatch(name)}
    if layers:
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"layers {sorted(layers)} are not 0..{len(layers) - 1}")
        out[STACKED] = jax.tree.map(_stack, *(layers[i] for i in range(len(layers))))
    return out


def _stack(*xs: Any) -> Any:
    return np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs)


def to_layout(params: Any, scan_layers: bool) -> Any:
    """Params in either layout, converted to the one a module with `scan_layers` expects."""
    return stack_layers(params) if scan_layers else unstack_layers(params)


def abstract_params(module: nn.Module) -> Any:
    """The parameter template of `module`: a tree of `jax.ShapeDtypeStruct`, boxed with logical axis
    names (`nn.Partitioned`), built without allocating. The one template every loader and sharding
    rule reads; `nn.unbox` it for plain shapes.

    It is traced on the scanned stack (one layer, however deep the model: tracing every unrolled
    layer dominated a small model's load time) and split per layer for unrolled modules."""
    ids = jnp.zeros((1, 1), jnp.int32)
    scanned = module.clone(scan_layers=True)
    params = jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids))["params"]
    return params if module.scan_layers else _unstack_abstract(params)


def _unstack_abstract(tree: Any) -> Any:
    """`unstack_layers` for a template: each `layer` subtree [L, ...] -> L subtrees [...] (the
    layer axis and its logical name dropped)."""
    if not isinstance(tree, dict):
        return tree

    def one(leaf: Any) -> Any:
        if isinstance(leaf, nn.Partitioned):
            return leaf.replace(value=one(leaf.value), names=leaf.names[1:])
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)

    out = {}
    for name, sub in tree.items():
        if name == STACKED:
            is_box = lambda x: isinstance(x, nn.Partitioned)
            count = jax.tree.leaves(sub)[0].shape[0]
            layer = jax.tree.map(one, sub, is_leaf=is_box)
            out.update((layer_name(i), layer) for i in range(count))
        else:
            out[name] = _unstack_abstract(sub)
    return out


def param_template(module: nn.Module) -> dict[str, Any]:
    """`abstract_params` without the logical names: a nested dict of ShapeDtypeStructs."""
    return nn.unbox(abstract_params(module))


def init_params(module: nn.Module, seed: int = 0) -> dict[str, Any]:
    """Freshly initialized parameters of `module` (plain arrays)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return nn.unbox(module.init(jax.random.key(seed), ids)["params"])
