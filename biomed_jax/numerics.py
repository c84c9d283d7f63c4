"""The numerics policy: how the models compute, chosen once, for one backend.

A `Policy` is a frozen value every model module takes (`policy=`, also `from_pretrained(policy=)`)
and passes to its layers; the layers read it and never ask which backend they run on.
Two presets, resolved for the current (or a named) backend by `Policy.fast` / `Policy.exact`:

- "fast" (the default): float32 semantics at full speed. Full float32 matmuls on every backend
  (`precision=HIGHEST`: no TF32 or bfloat16 passes on GPU/TPU, as PyTorch's float32), the plain
  float32 kernels on CPU, and on CPU attention one (batch, head) pair at a time when the score
  tensor outgrows the caches. As close to float64 as PyTorch's float32 (`docs/numerics.md`).
- "exact": as fast, but every weight matmul (`Dense`, the tied LM head) sums its float32
  products in float64 and rounds once: each output is the correctly rounded float32 of the exact
  product-sum. About half PyTorch's float32 error against float64, at about twice the matmul time.

The compute and parameter dtypes are not part of the policy: modules keep HF-Flax's `dtype` and
`param_dtype` fields; the policy's choices that depend on the dtype take it as an argument.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

Dtype = Any
PrecisionLike = str | jax.lax.Precision | None

_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}
PRESETS = ("fast", "exact")
# Scores bigger than this (bytes, all heads together) are computed one head at a time on CPU.
CPU_PER_HEAD_SCORE_BYTES = 8 << 20


def as_precision(precision: PrecisionLike) -> jax.lax.Precision:
    """'highest' (full float32 matmuls on every backend), 'high', 'default' or a `jax.lax.Precision`.

    'default' lets GPUs and TPUs use TF32 / bfloat16 passes for float32 matmuls; on CPU all three
    run the same float32 kernel.
    """
    if isinstance(precision, jax.lax.Precision):
        return precision
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {precision!r}")
    return _PRECISIONS[precision]


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the models compute (hashable: modules and jitted functions take it as a static value).

    precision: matmul precision of every weight matmul and attention einsum.
    float64_sums: sum float32 weight matmuls in float64, rounded once (`nn.layers.dense_float64_sum`).
    per_head_score_bytes: attention loops over (batch, head) pairs when the [B, N, T, S] float32
        scores exceed this many bytes (`nn.attention.dot_product_attention`); None: never.
    name: the preset it came from: "fast", "exact", "plain" (`Policy()`: the reference math with
        no workaround, full float32 matmuls, batched attention) or "custom".
    """

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
    float64_sums: bool = False
    per_head_score_bytes: int | None = None
    name: str = "plain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", as_precision(self.precision))
        if self.per_head_score_bytes is not None and self.per_head_score_bytes < 0:
            raise ValueError(f"per_head_score_bytes must be >= 0, got {self.per_head_score_bytes}")

    @classmethod
    def fast(cls, backend: str | None = None) -> Policy:
        """Full float32 matmuls with the backend's plain kernels; per-head attention on CPU."""
        return cls(per_head_score_bytes=_per_head_bytes(backend), name="fast")

    @classmethod
    def exact(cls, backend: str | None = None) -> Policy:
        """As `fast`, with float32 weight matmuls summed in float64 (about 2x their time)."""
        return cls(float64_sums=True, per_head_score_bytes=_per_head_bytes(backend), name="exact")

    def replace(self, **changes: Any) -> Policy:
        """A copy with `changes`; named "custom" unless `name` is among them."""
        return dataclasses.replace(self, **{"name": "custom", **changes})

    def sums_in_float64(self, dtype: Dtype) -> bool:
        """Whether a weight matmul in compute `dtype` sums in float64 (float32 compute only)."""
        return self.float64_sums and jnp.dtype(dtype) == jnp.float32

    def attention_per_head(self, scores_shape: tuple[int, ...]) -> bool:
        """Whether attention over float32 scores [B, N, T, S] loops over (batch, head) pairs.

        A symbolic shape (`jax.export`: one program for every size) runs batched."""
        limit = self.per_head_score_bytes
        if limit is None or not all(isinstance(d, int) for d in scores_shape):
            return False
        return 4 * math.prod(scores_shape) > limit

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (the benchmarks print it)."""
        return {
            "policy": self.name,
            "precision": self.precision.name.lower(),
            "float64_sums": self.float64_sums,
            "per_head_score_bytes": self.per_head_score_bytes,
        }


PLAIN = Policy()


def _per_head_bytes(backend: str | None) -> int | None:
    """On CPU, [B, N, T, S] scores beyond the caches make every softmax pass a trip to memory (at
    8x512 BERT-base attention took 3x torch's fused kernel); one head's [T, S] block stays in
    cache and halves the attention time there. Score tensors that fit the L3 cache (decoding,
    8x128: 6 MiB, where batched ran ~1 % faster) and accelerators keep one batched computation."""
    backend = jax.default_backend() if backend is None else backend
    return CPU_PER_HEAD_SCORE_BYTES if backend == "cpu" else None


def resolve(policy: Policy | str | None = None, precision: PrecisionLike = None) -> Policy:
    """A `Policy` from a preset name ("fast", "exact"; None: "fast") or a Policy, for the current
    backend; `precision` (HF-Flax's argument), when given, replaces the policy's precision."""
    if policy is None or isinstance(policy, str):
        name = policy or "fast"
        if name not in PRESETS:
            raise ValueError(f"policy must be a Policy or one of {list(PRESETS)}, got {name!r}")
        policy = Policy.fast() if name == "fast" else Policy.exact()
    elif not isinstance(policy, Policy):
        raise TypeError(f"policy must be a Policy or a preset name, got {type(policy).__name__}")
    if precision is not None and as_precision(precision) != policy.precision:
        policy = policy.replace(precision=as_precision(precision))
    return policy
