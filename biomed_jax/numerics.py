"""The numerics policy: how the models compute, chosen once, for one backend.

A `Policy` is a frozen value every model module takes (`policy=`, also `from_pretrained(policy=)`)
and passes to its layers; the layers read it and never ask which backend they run on.
Two presets, resolved for the current (or a named) backend by `Policy.fast` / `Policy.exact`:

- "fast" (the default): float32 semantics at full speed. float32 matmuls at full float32 on every
  backend (`precision=HIGHEST`: no TF32 or bfloat16 passes on GPU/TPU, as PyTorch's float32);
  bfloat16 / float16 matmuls at the platform's default precision (bfloat16 inputs, float32 sums:
  what PyTorch's bfloat16 does); attention through the platform's fused kernel where it applies
  (cuDNN on NVIDIA GPUs, splash on TPU: half-precision compute only), else the XLA reference; on
  CPU attention one (batch, head) pair at a time when the score tensor outgrows the caches.
- "exact": as fast, but every float32 weight matmul (`Dense`, the tied LM head) sums its products
  in float64 and rounds once: each output is the correctly rounded float32 of the exact
  product-sum. About half PyTorch's float32 error against float64, at about twice the matmul time.

The compute and parameter dtypes are not part of the policy: modules keep HF-Flax's `dtype` and
`param_dtype` fields; the policy's choices that depend on the dtype take it as an argument
(`matmul_precision`, `sums_in_float64`, `attention_for`). docs/numerics.md has what is measured
on which platform.
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
# Scores bigger than this (bytes, all heads together) are computed in a loop on CPU
# (`Policy.attention_loop`).
CPU_PER_HEAD_SCORE_BYTES = 8 << 20
# Weight matmuls over at most this many rows, by an [out, in] weight, stream it (CPU).
CPU_STREAM_WEIGHT_ROWS = 64
# "xla": the reference (`nn.attention`), any mask, dtype and shape, attention maps, dropout.
# "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, NVIDIA GPUs.
# "splash": Pallas' splash attention kernel (`jax.experimental.pallas.ops.tpu`), TPU.
ATTENTION = ("xla", "cudnn", "splash")
HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
CUDNN_MAX_HEAD_DIM = 128  # cuDNN flash attention before Hopper; Hopper allows 256
SPLASH_BLOCK = 128  # splash's default block: query and key lengths must be multiples of it


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

    precision: matmul precision of every float32 weight matmul and attention einsum.
    half_precision: the same for bfloat16 / float16 operands.
    attention: the attention implementation (`ATTENTION`) used wherever it applies
        (`attention_for`); "xla", the reference, everywhere else.
    float64_sums: sum float32 weight matmuls in float64, rounded once (`nn.layers.dense_float64_sum`).
    per_head_score_bytes: the "xla" attention loops when the [B, N, T, S] float32 scores exceed
        this many bytes (`attention_loop`, `nn.attention.dot_product_attention`): over batch rows,
        a row's heads at once, where there are several and one row's scores fit in twice this;
        else over (batch, head) pairs. None: never.
    stream_weight_rows: a matmul of at most this many rows by a `Dense` weight stored [out, in]
        (after `nn.layers.weights_out_in`) computes weight @ rows^T, which
        XLA:CPU runs streaming the weight once (1.3x to 3x at 1 to 32 rows against an [in, out]
        kernel, which it repacks at every call); `decode` converts the Dense kernels to [out, in]
        when this is set (`generation.layout`). None: never.
    name: the preset it came from: "fast", "exact", "plain" (`Policy()`: the reference math with
        no workaround, full float32 matmuls, batched XLA attention) or "custom".
    """

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
    half_precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
    attention: str = "xla"
    float64_sums: bool = False
    per_head_score_bytes: int | None = None
    stream_weight_rows: int | None = None
    name: str = "plain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", as_precision(self.precision))
        object.__setattr__(self, "half_precision", as_precision(self.half_precision))
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {list(ATTENTION)}, got {self.attention!r}")
        if self.per_head_score_bytes is not None and self.per_head_score_bytes < 0:
            raise ValueError(f"per_head_score_bytes must be >= 0, got {self.per_head_score_bytes}")
        if self.stream_weight_rows is not None and self.stream_weight_rows < 1:
            raise ValueError(f"stream_weight_rows must be >= 1, got {self.stream_weight_rows}")

    @classmethod
    def fast(cls, backend: str | None = None) -> Policy:
        """The default for `backend` ("cpu", "gpu"/"cuda", "rocm", "tpu"; None: this process's)."""
        backend = platform(backend)
        return cls(
            half_precision=_half_precision(backend),
            attention=_attention(backend),
            per_head_score_bytes=_per_head_bytes(backend),
            stream_weight_rows=_stream_rows(backend),
            name="fast",
        )

    @classmethod
    def exact(cls, backend: str | None = None) -> Policy:
        """As `fast`, with float32 weight matmuls summed in float64 (about 2x their time)."""
        fast = cls.fast(backend)
        return dataclasses.replace(fast, float64_sums=True, name="exact")

    def replace(self, **changes: Any) -> Policy:
        """A copy with `changes`; named "custom" unless `name` is among them."""
        return dataclasses.replace(self, **{"name": "custom", **changes})

    def matmul_precision(self, dtype: Dtype) -> jax.lax.Precision:
        """The precision of a matmul whose operands are `dtype`."""
        return self.half_precision if jnp.dtype(dtype) in HALF else self.precision

    def sums_in_float64(self, dtype: Dtype) -> bool:
        """Whether a weight matmul in compute `dtype` sums in float64 (float32 compute only)."""
        return self.float64_sums and jnp.dtype(dtype) == jnp.float32

    def streams_weight(self, rows: Any) -> bool:
        """Whether a matmul of `rows` rows by an [out, in] weight computes weight @ rows^T (a
        symbolic row count, `jax.export`, does not)."""
        limit = self.stream_weight_rows
        return limit is not None and isinstance(rows, int) and rows <= limit

    def attention_loop(self, scores_shape: tuple[int, ...]) -> str | None:
        """How attention over float32 scores [B, N, T, S] runs: None (batched), "rows" (one batch
        row, all its heads, at a time) or "heads" (one (batch, head) pair at a time).

        Rows where there are several and one row's scores fit in twice `per_head_score_bytes`.
        XLA:CPU measured, BERT-base forward by rows against by pairs (12 MiB of scores a row):
        3-4 % faster at 4x512 and 8x512, the same at 2x512, 4 % slower at 1x512; attention over
        BioGPT's 16 heads at 1024 (64 MiB a row) 1.9x slower by rows. A symbolic shape
        (`jax.export`: one program for every size) runs batched."""
        limit = self.per_head_score_bytes
        if limit is None or not all(isinstance(d, int) for d in scores_shape):
            return None
        batch, row_bytes = scores_shape[0], 4 * math.prod(scores_shape[1:])
        if row_bytes * batch <= limit:
            return None
        return "rows" if batch > 1 and row_bytes <= 2 * limit else "heads"

    def attention_for(
        self,
        dtype: Dtype,
        head_dim: int,
        query_length: Any,
        key_length: Any,
        *,
        dropout: bool = False,
        probs: bool = False,
        segments: bool = False,
        sharded: bool = False,
    ) -> str:
        """The implementation one attention call runs: `self.attention` where it applies, else
        "xla". Fused kernels apply to bfloat16 / float16 compute only (float32 keeps the
        reference, whose error is measured), never with attention dropout or when the attention
        maps are asked for (`probs`: they return none), never on symbolic lengths; cuDNN needs
        a head dim that is a multiple of 8 up to 128 and even lengths (its backward pass with a
        mask), and no mesh that splits heads or lengths (`sharded`); splash needs the mask as
        segment ids (`segments`: padding and packing, causal or not; no KV cache), lengths that
        are multiples of its 128 block, and no multi-device mesh."""
        lengths = (query_length, key_length)
        if (
            self.attention == "xla"
            or jnp.dtype(dtype) not in HALF
            or dropout
            or probs
            or not all(isinstance(n, int) for n in lengths)
        ):
            return "xla"
        if self.attention == "cudnn":
            fits = head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
            return "cudnn" if fits and all(n % 2 == 0 for n in lengths) and not sharded else "xla"
        fits = segments and all(n % SPLASH_BLOCK == 0 for n in lengths)
        return "splash" if fits and not sharded else "xla"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (the benchmarks print it)."""
        return {
            "policy": self.name,
            "precision": self.precision.name.lower(),
            "half_precision": self.half_precision.name.lower(),
            "attention": self.attention,
            "float64_sums": self.float64_sums,
            "per_head_score_bytes": self.per_head_score_bytes,
            "stream_weight_rows": self.stream_weight_rows,
        }


PLAIN = Policy()


def platform(backend: str | None = None) -> str:
    """ "cpu", "cuda", "rocm" or "tpu" (or another backend's own name): `backend` normalized ("gpu"
    means CUDA), or this process's default backend, a GPU told apart by its platform version."""
    if backend is None:
        backend = jax.default_backend()
        if backend == "gpu":
            version = getattr(jax.devices()[0].client, "platform_version", "").lower()
            return "rocm" if "rocm" in version else "cuda"
    backend = backend.lower()
    return "cuda" if backend == "gpu" else backend


def _half_precision(backend: str) -> jax.lax.Precision:
    """CPU: HIGHEST (XLA:CPU compiles the same program for every precision:
    `tests/test_numerics.py`); accelerators: their default, bfloat16 inputs with float32 sums."""
    return jax.lax.Precision.HIGHEST if backend == "cpu" else jax.lax.Precision.DEFAULT


def _attention(backend: str) -> str:
    if backend == "cuda":
        return "cudnn"
    if backend == "tpu" and splash_available():
        return "splash"
    return "xla"


def splash_available() -> bool:
    """Whether this jax ships Pallas' splash attention kernel."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _per_head_bytes(backend: str) -> int | None:
    """On CPU, [B, N, T, S] scores beyond the caches make every softmax pass a trip to memory (at
    8x512 BERT-base attention took 3x torch's fused kernel); a row's or one head's block stays
    closer and halves the attention time there. Score tensors that fit the L3 cache (decoding,
    8x128: 6 MiB, where batched ran ~1 % faster) and accelerators keep one batched computation."""
    return CPU_PER_HEAD_SCORE_BYTES if backend == "cpu" else None


def _stream_rows(backend: str) -> int | None:
    """On CPU, YNNPACK repacks the right-hand operand of every matmul: a few rows by an [in, out]
    kernel pay for the packing of the whole weight, an [out, in] weight on the left is read once.
    Beyond about 64 rows the packing pays for itself (BioGPT-347M's kernels: 1.4x at 64 rows,
    1.1x at 128). Accelerators' matmuls need no such choice."""
    return CPU_STREAM_WEIGHT_ROWS if backend == "cpu" else None


def resolve(policy: Policy | str | None = None, precision: PrecisionLike = None) -> Policy:
    """A `Policy` from a preset name ("fast", "exact"; None: "fast") or a Policy, for the current
    backend; `precision` (HF-Flax's argument), when given, replaces the policy's matmul precision
    for every dtype."""
    if policy is None or isinstance(policy, str):
        name = policy or "fast"
        if name not in PRESETS:
            raise ValueError(f"policy must be a Policy or one of {list(PRESETS)}, got {name!r}")
        policy = Policy.fast() if name == "fast" else Policy.exact()
    elif not isinstance(policy, Policy):
        raise TypeError(f"policy must be a Policy or a preset name, got {type(policy).__name__}")
    if precision is not None:
        wanted = as_precision(precision)
        if (policy.precision, policy.half_precision) != (wanted, wanted):
            policy = policy.replace(precision=wanted, half_precision=wanted)
    return policy
