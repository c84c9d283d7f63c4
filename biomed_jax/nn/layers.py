"""Building blocks shared by BERT and BioGPT: Dense, Embed, LayerNorm, MLP, activations.

Axis legend: B batch, T length, D model dim, F MLP hidden, V vocab.
Every parameter carries logical axis names (`nn.with_logical_partitioning`), the MLP's hidden
activation too (`MLP_AXES`); `biomed_jax.sharding` maps them to mesh axes. Applying a module to plain (unboxed) arrays works as usual.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax.numerics import PLAIN, Policy

Dtype = Any
MLP_AXES = ("batch", "length", "act_mlp")  # the MLP's hidden activation [B, T, F]
WEIGHT = "weight"  # a Dense kernel stored [out, in] (PyTorch Linear's layout): `weights_out_in`


def dense_float64_sum(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """float32 x [..., I] @ kernel [I, O] + bias [O], summed in float64, rounded once to float32.

    The "exact" policy's matmul (`Policy.float64_sums`): each output is the correctly rounded
    float32 of the exact product-sum. XLA:CPU's float32 matmul sums K products in float32 (on
    [96, 1024] x [1024, 4096]: 4e-6 from float64, torch 3.2e-6); this sum is about 2x its time.
    float64 is switched on around the call and inside the body, never globally (vmap and grad
    trace the body at the call, remat and scan later). Gradients are float32 matmuls.
    """
    with jax.enable_x64(True):
        return _float64_sum(x, kernel, bias)


@jax.custom_vjp
def _float64_sum(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    with jax.enable_x64(True):  # again: remat and scan re-trace the body outside the caller's scope
        # float64 operands, not preferred_element_type: a float64 array keeps its dtype when a
        # transformation re-traces this body without the scope (vmap of scan).
        wide = jnp.float64
        y = jax.lax.dot_general(
            x.astype(wide),
            kernel.astype(wide),
            (((x.ndim - 1,), (0,)), ((), ())),
            precision=jax.lax.Precision.HIGHEST,
        )
        return (y + bias.astype(wide)).astype(x.dtype)


def _float64_sum_fwd(x, kernel, bias):
    return _float64_sum(x, kernel, bias), (x, kernel)


def _float64_sum_bwd(residuals, grad):  # grad [..., O]
    x, kernel = residuals
    highest = jax.lax.Precision.HIGHEST
    grad_x = jnp.einsum("...o,io->...i", grad, kernel, precision=highest)
    grad_kernel = jnp.einsum("...i,...o->io", x, grad, precision=highest)
    return grad_x, grad_kernel, grad.reshape(-1, grad.shape[-1]).sum(0)


_float64_sum.defvjp(_float64_sum_fwd, _float64_sum_bwd)


ROW_BLOCK = 16  # `row_reduce`'s first stage


def row_reduce(x: jax.Array, op: Callable[..., jax.Array]) -> jax.Array:
    """op (jnp.sum, jnp.max) over the last axis, keepdims: [..., n] -> [..., 1].

    Rows longer than 32 (and a multiple of ROW_BLOCK) reduce in two stages, blocks of 16 then
    their n/16 partial results, the first behind an optimization barrier. XLA:CPU rewrites a
    long row reduction into a reduce-window of 32 and a reduce, and its reduce-window ran at about
    half the speed of these two fused reductions (BERT-base's attention at 8x512: 25 of 88 ms a
    layer). The sum's order changes with it (rounding within float32's own); the max does not.
    """
    n = x.shape[-1]
    if not isinstance(n, int) or n <= 2 * ROW_BLOCK or n % ROW_BLOCK:
        return op(x, axis=-1, keepdims=True)
    blocks = op(x.reshape(*x.shape[:-1], n // ROW_BLOCK, ROW_BLOCK), axis=-1)  # [..., n / 16]
    return op(jax.lax.optimization_barrier(blocks), axis=-1, keepdims=True)


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU as torch computes it: x * (1 + erf(x / sqrt 2)) / 2.

    Written out because `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU evaluates
    about 6x slower (measured 5.7 ms vs 0.95 ms on [8, 128, 3072] float32); both are within 1.2e-6
    of float64.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """HF `ACT2FN` names: exact-erf gelu, tanh gelus, relu, silu, tanh."""
    table: dict[str, Callable[[jax.Array], jax.Array]] = {
        "gelu": gelu_erf,
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }
    if name not in table:
        raise ValueError(f"activation {name!r} is not implemented; use one of {sorted(table)}")
    return table[name]


def partitioned(init: Callable, *axes: str) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def _weight_matmul(
    x: jax.Array,  # [..., D]
    weight: jax.Array,  # [D, O] (contract=0) or [O, D] (contract=1), in x's dtype
    bias: jax.Array | None,  # [O]
    policy: Policy,
    *,
    contract: int,
    stream: bool = False,
) -> jax.Array:
    """x @ weight (+ bias) -> [..., O], computed as `policy` says: the one path of `Dense` and of the
    tied LM head (`Embed.attend`, which reads its [V, D] table in place).

    All leading positions go through as [N, D] rows: the weight gradient is then one plain
    [N, D]^T [N, O] contraction; given [..., D], XLA:CPU recomputes the output gradient in a
    transposed layout for it (a BERT-base train step 1.14x slower). `stream`: an [O, D] weight
    may be multiplied as weight @ rows^T where the policy says so (`Policy.streams_weight`);
    the tied head does not (its [V, D] table gains nothing there, measured at 1 to 16 rows).
    """
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # [N, D]
    features = weight.shape[1 - contract]
    if policy.sums_in_float64(x.dtype):
        kernel = weight if contract == 0 else weight.T
        zeros = jnp.zeros((features,), x.dtype)
        y = dense_float64_sum(rows, kernel, zeros if bias is None else bias)
    elif contract == 1 and stream and policy.streams_weight(rows.shape[0]):
        # weight [O, D] as the left operand, y^T = weight @ rows^T: XLA:CPU streams the weight
        # once instead of packing it; the barrier keeps XLA from swapping the operands back
        dims = (((1,), (1,)), ((), ()))
        y_t = jax.lax.dot_general(weight, rows, dims, precision=policy.matmul_precision(x.dtype))
        y = jax.lax.optimization_barrier(y_t).T  # [N, O]
        y = y if bias is None else y + bias
    else:
        dims = (((1,), (contract,)), ((), ()))
        y = jax.lax.dot_general(rows, weight, dims, precision=policy.matmul_precision(x.dtype))
        y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], features)


class Dense(nn.Module):
    """y = x @ kernel + bias, kernel [in, out], computed as `policy` says."""

    features: int
    axes: tuple[str, str]
    use_bias: bool = True
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: Policy = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(self.init_std)
        if self.has_variable("params", WEIGHT):  # [out, in]
            shape, axes, contract = (self.features, x.shape[-1]), self.axes[::-1], 1
        else:
            shape, axes, contract = (x.shape[-1], self.features), self.axes, 0
        kernel = self.param(
            WEIGHT if contract else "kernel", partitioned(init, *axes), shape, self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                partitioned(nn.initializers.zeros, self.axes[1]),
                (self.features,),
                self.param_dtype,
            ).astype(self.dtype)
        # flax's promote_dtype, as nn.Dense: quantization libraries (qwix) intercept it to keep
        # a quantized kernel as it is
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return _weight_matmul(x, kernel, bias, self.policy, contract=contract, stream=True)


class Embed(nn.Module):
    """A lookup table [num_embeddings, features]; out-of-range ids give NaN, never a clamped row."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: Policy = PLAIN

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            partitioned(nn.initializers.normal(self.init_std), *self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding.astype(self.dtype)
        ids = jnp.where(ids < 0, self.num_embeddings, ids)  # take() would wrap -1 to the last row
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the table (tied output projection): [..., D] -> [..., V]."""
        x, table = x.astype(self.dtype), self.embedding.astype(self.dtype)  # table [V, D]
        return _weight_matmul(x, table, None, self.policy, contract=1)


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics whatever the compute dtype (biased variance, as torch)."""

    epsilon: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param(
            "scale", partitioned(nn.initializers.ones, "norm"), (features,), self.param_dtype
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros, "norm"), (features,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        mean = row_reduce(x32, jnp.sum) / features
        var = row_reduce(jnp.square(x32 - mean), jnp.sum) / features
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class MLP(nn.Module):
    """Position-wise feed-forward: D -> F (activation) -> D; the hidden activation constrained to
    `MLP_AXES` under logical sharding rules."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    activation_dropout: float = 0.0
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: Policy = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:  # [B, T, D]
        dense = functools.partial(
            Dense,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            policy=self.policy,
        )
        h = dense(self.intermediate_size, ("embed", "mlp"), name="fc_in")(x)  # [B, T, F]
        h = nn.with_logical_constraint(activation(self.hidden_act)(h), MLP_AXES)
        h = nn.Dropout(self.activation_dropout)(h, deterministic=deterministic)
        return dense(self.hidden_size, ("mlp", "embed"), name="fc_out")(h)


def weights_out_in(params: Any, weights: Sequence[Any] | None = None) -> Any:
    """`params` with every Dense `kernel` [in, out] stored as `weight` [out, in] (a transposed
    copy), which `Dense` reads as well (`convertible_kernels` says which: plain float kernels beside
    at most a bias; LoRA adapters' and quantized (qwix) kernels keep their layout). The other
    arrays are the same objects. `weights`: those copies already made (`transposed_kernels` of
    these kernels), in `convertible_kernels` order."""
    transposed = iter(
        transposed_kernels(convertible_kernels(params)) if weights is None else weights
    )

    def convert(tree: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        if _convertible(tree):
            return {**{k: x for k, x in tree.items() if k != "kernel"}, WEIGHT: next(transposed)}
        return {k: convert(x) for k, x in tree.items()}

    return convert(params)


@jax.jit
def transposed_kernels(kernels: list[jax.Array]) -> list[jax.Array]:
    """Every kernel transposed, in one compiled call."""
    return [k.T for k in kernels]


def convertible_kernels(params: Any) -> list[Any]:
    """The kernels `weights_out_in` transposes, in a fixed order."""
    if not isinstance(params, dict):
        return []
    if _convertible(params):
        return [params["kernel"]]
    return [k for x in params.values() for k in convertible_kernels(x)]


def _convertible(params: dict) -> bool:
    """A Dense's params: {"kernel": float [in, out] array} and perhaps a bias, nothing else."""
    kernel = params.get("kernel")
    return (
        isinstance(kernel, jax.Array | np.ndarray)
        and kernel.ndim == 2
        and jnp.issubdtype(kernel.dtype, jnp.floating)
        and set(params) <= {"kernel", "bias"}
    )
