"""Multi-head attention, its boolean mask and the fixed-size KV cache (shared by BERT and BioGPT).

Axis legend: B batch, T query length, S key length (cache slots), N heads, H head dim, D model dim,
L layers. Logical names of the activations (`sharding` maps them to mesh axes): `HEADS_AXES`,
`CACHE_AXES`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from biomed_jax.nn.kernels import SegmentMask, cudnn_attention, mesh_splits, splash_attention
from biomed_jax.nn.layers import Dense, Dtype, row_reduce
from biomed_jax.numerics import PLAIN, Policy

HEADS_AXES = ("batch", "length", "act_heads", "head_dim")  # q, k, v, attention out [B, T, N, H]
CACHE_AXES = ("batch", "act_heads", "kv_length", "head_dim")  # a layer's cache [B, N, S, H]
REORDER_SLOTS = 16  # `KVCache.reorder` moves the written slots in blocks of this many


@flax.struct.dataclass
class KVCache:
    """Preallocated keys and values, one array per layer; written in place, never grown.

    Per layer [B, N, S, H] (HF's per-layer layout, heads-major): each layer's array is the operand
    of its attention matmuls as it is stored, so no decoding step transposes or slices the cache.
    """

    key: tuple[jax.Array, ...]  # L x [B, N, S, H]
    value: tuple[jax.Array, ...]  # L x [B, N, S, H]
    index: jax.Array  # [] int32: number of slots already written

    @classmethod
    def zeros(
        cls,
        layers: int,
        batch: int,
        slots: int,
        heads: int,
        head_dim: int,
        dtype: Dtype = jnp.float32,
    ) -> KVCache:
        def empty() -> tuple[jax.Array, ...]:
            return tuple(jnp.zeros((batch, heads, slots, head_dim), dtype) for _ in range(layers))

        return cls(empty(), empty(), jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.key[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.key[0].shape[0]

    def reorder(self, rows: jax.Array) -> KVCache:
        """The cache with its batch rows in a new order (beam search's `reorder_cache`): row b
        of the result is row rows[b] [B] of this one. Only the `index` written slots move, in
        place, REORDER_SLOTS at a time (all S at once when S is not a multiple of it)."""
        slots = self.max_length
        size = REORDER_SLOTS if slots % REORDER_SLOTS == 0 else slots
        chunks = (self.index + size - 1) // size

        def chunk(i: jax.Array, arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            start = i * size

            def move(x: jax.Array) -> jax.Array:  # [B, N, S, H]
                block = jax.lax.dynamic_slice_in_dim(x, start, size, 2)[rows]
                return jax.lax.dynamic_update_slice_in_dim(x, block, start, 2)

            return tuple(move(x) for x in arrays)

        arrays = jax.lax.fori_loop(0, chunks, chunk, (*self.key, *self.value))
        layers = len(self.key)
        return self.replace(key=arrays[:layers], value=arrays[layers:])


def make_attention_mask(
    attention_mask: jax.Array,
    query_slots: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask [B, 1 | N, T | 1, S]: True where query t may attend to key s.

    The one place a mask is built; attention applies it with `jnp.where` (masked scores take
    float32's most negative finite value, as transformers' eager attention). `attention_mask`:

    - [B, S], integers or booleans (1 = real token or written cache slot, 0 = padding): combined
      with causality and packing below.
    - [B, T | 1, S] or [B, N | 1, T | 1, S] (transformers' 4-D form): the whole mask, used as
      given (causality and packing are the caller's): booleans or integers (nonzero = attend), or
      an additive float mask (0 = attend; finfo(dtype).min, -inf or any value <= -1e4 = masked),
      converted here once.

    query_slots [T]: causal; the slot of each query, which sees keys s <= slot. None: bidirectional.
    segment_ids [B, S] (T == S): packed sequences; a query sees only keys of its own segment.

    Causal, one left-padded row (key 0 is padding)::

        keys:   0 1 2 3
        q@1     0 1 0 0
        q@2     0 1 1 0
        q@3     0 1 1 1

    Causal and packed: segments [0, 0, 1, 1, 1] (two sequences in one row)::

        keys:   0 1 2 3 4
        q@0     1 0 0 0 0
        q@1     1 1 0 0 0
        q@2     0 0 1 0 0
        q@3     0 0 1 1 0
        q@4     0 0 1 1 1
    """
    if attention_mask.ndim in (3, 4):
        mask = attention_mask if attention_mask.ndim == 4 else attention_mask[:, None]
        if jnp.issubdtype(mask.dtype, jnp.floating):
            return mask == 0  # additive: 0 attends, large negative values are masked
        return mask.astype(bool)
    mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    if query_slots is not None:
        key_slots = jnp.arange(attention_mask.shape[-1])
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        mask = mask & causal[None, None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, S]
        mask = mask & same[:, None]
    return mask


def packed_sequence_ids(position_ids: jax.Array) -> jax.Array:
    """Segment ids [B, T] of sequences packed in a row, read from `position_ids` [B, T]: a new
    sequence starts wherever the position does not follow the previous one by 1 (transformers'
    `find_packed_sequence_indices`). Positions [0, 1, 0, 1, 2] give [0, 0, 1, 1, 1]."""
    step = jnp.diff(position_ids, axis=1, prepend=position_ids[:, :1] - 1)
    return jnp.cumsum(step != 1, axis=1)


def _attend(
    query: jax.Array,  # [..., T, H]
    key: jax.Array,  # [..., S, H]
    value: jax.Array,  # [..., S, H]
    mask: jax.Array,  # [..., T | 1, S] bool
    precision: jax.lax.Precision | None,
    dropout_keep: jax.Array | None,  # [..., T, S] bool: kept after dropout, scaled by 1/keep_rate
    keep_rate: float,
) -> tuple[jax.Array, jax.Array]:
    """Softmax(q k^T / sqrt(H)) v over the trailing two axes: (out [..., T, H], probs [..., T, S]).

    The scale is folded into q ([T, H] multiplies, not [T, S]); the softmax's row max and sum
    come from `row_reduce`, and without dropout the value matmul takes the unnormalised
    exponentials, its [T, H] result divided by the row sums (probs are then only computed where
    a caller returns them). BERT-base's attention core at 8x512: 5 % faster than normalising
    the [T, S] probabilities first, 1.42e-6 from float64 where that order gives 1.37e-6
    (PyTorch's sdpa 1.37e-6).
    """
    scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    scores = jnp.einsum(
        "...th,...sh->...ts",
        query * scale,
        key,
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    top = jax.lax.stop_gradient(row_reduce(scores, jnp.max))
    exp = jnp.exp(scores - top)  # float32 [..., T, S]
    total = row_reduce(exp, jnp.sum)  # [..., T, 1]
    probs = exp / total
    if dropout_keep is None:
        out = jnp.einsum("...ts,...sh->...th", exp.astype(value.dtype), value, precision=precision)
        return (out / total).astype(value.dtype), probs
    weights = jnp.where(dropout_keep, probs / keep_rate, 0.0)
    out = jnp.einsum("...ts,...sh->...th", weights.astype(value.dtype), value, precision=precision)
    return out, probs


def dot_product_attention(
    query: jax.Array,  # [B, T, N, H]
    key: jax.Array,  # [B, S, N, H]
    value: jax.Array,  # [B, S, N, H]
    mask: jax.Array,  # [B, 1 | N, T | 1, S] bool
    *,
    policy: Policy = PLAIN,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    segments: SegmentMask | None = None,
    need_probs: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """Softmax(q k^T / sqrt(H)) v with float32 scores and softmax; returns (out [B,T,N,H], probs [B,N,T,S]).

    Masked scores take float32's most negative finite value, as HF's eager attention does, so a
    row with no visible key gives a uniform (finite) distribution. The same arithmetic runs on
    all heads at once, one batch row at a time or one (batch, head) pair at a time
    (`Policy.attention_loop`); under `jit` unused probs cost nothing in any. Dropout masks come
    from `dropout_rng` alone. In a loop, each batch row's heads are moved to the front inside it
    (no transposed copy of q, k, v and the output outside it: BERT-base's attention at 8x512
    1.2x faster); otherwise this is `heads_major_attention` between two transposes (`segments`,
    `need_probs`: as there).
    """
    batch, length, heads, head_dim = query.shape
    shape = (batch, heads, length, key.shape[1])  # of the scores
    use_dropout = dropout_rng is not None and dropout_rate > 0.0
    kernel = _kernel(policy, query.dtype, head_dim, shape, use_dropout, need_probs, segments)
    loop = policy.attention_loop(shape)
    if kernel == "xla" and loop is not None:
        keep = _keep(dropout_rng, dropout_rate, shape) if use_dropout else None
        prec = policy.matmul_precision(query.dtype)
        return _looped(query, key, value, mask, prec, keep, 1.0 - dropout_rate, 2, loop)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, N, T|S, H]
    out, probs = heads_major_attention(
        q,
        k,
        v,
        mask,
        policy=policy,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        segments=segments,
        need_probs=need_probs,
    )
    return jnp.swapaxes(out, 1, 2), probs


def _looped(
    query: jax.Array,  # [B, T, N, H], or heads-major [B, N, T, H]
    key: jax.Array,  # [B, S, N, H], or [B, N, S, H]
    value: jax.Array,  # as key
    mask: jax.Array,  # [B, 1 | N, T | 1, S] bool
    precision: jax.lax.Precision | None,
    keep: jax.Array | None,  # [B, N, T, S] bool
    keep_rate: float,
    heads_axis: int,  # 2: [B, T, N, H] operands; 1: heads-major
    loop: str,  # "rows" or "heads" (`Policy.attention_loop`)
) -> tuple[jax.Array, jax.Array]:
    """`_attend` one batch row at a time, all its heads at once ("rows") or one head at a time
    ("heads"): (out in the operands' layout, probs [B, N, T, S]). A row's heads move to the front
    inside the loop: no transposed copy of q, k, v or the output outside it."""

    def row(b: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, k, v = (jnp.moveaxis(x[b], heads_axis - 1, 0) for x in (query, key, value))
        row_mask, row_keep = mask[b], None if keep is None else keep[b]  # [1 | N, T | 1, S]
        if loop == "rows":
            out, probs = _attend(q, k, v, row_mask, precision, row_keep, keep_rate)
        else:

            def head(n: jax.Array) -> tuple[jax.Array, jax.Array]:
                head_mask = row_mask[n if row_mask.shape[0] != 1 else 0]
                head_keep = None if row_keep is None else row_keep[n]
                return _attend(q[n], k[n], v[n], head_mask, precision, head_keep, keep_rate)

            out, probs = jax.lax.map(head, jnp.arange(q.shape[0]))  # [N, T, H], [N, T, S]
        return jnp.moveaxis(out, 0, heads_axis - 1), probs

    return jax.lax.map(row, jnp.arange(query.shape[0]))


def _kernel(
    policy: Policy,
    dtype: Dtype,
    head_dim: int,
    shape: tuple[int, ...],  # [B, N, T, S] of the scores
    dropout: bool,
    need_probs: bool,
    segments: SegmentMask | None,
) -> str:
    """`Policy.attention_for` of one attention call."""
    splits = ("act_heads", "length", "kv_length") if policy.attention == "cudnn" else ()
    return policy.attention_for(
        dtype,
        head_dim,
        shape[2],
        shape[3],
        dropout=dropout,
        probs=need_probs,
        segments=segments is not None,
        sharded=policy.attention != "xla" and mesh_splits(splits),
    )


def _keep(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Dropout's keep mask [B, N, T, S], from `rng` alone."""
    return jax.random.bernoulli(rng, 1.0 - rate, shape)


def heads_major_attention(
    query: jax.Array,  # [B, N, T, H]
    key: jax.Array,  # [B, N, S, H]
    value: jax.Array,  # [B, N, S, H]
    mask: jax.Array,  # [B, 1 | N, T | 1, S] bool
    *,
    policy: Policy = PLAIN,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    segments: SegmentMask | None = None,
    need_probs: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """`dot_product_attention` on heads-major operands: (out [B, N, T, H], probs [B, N, T, S]).

    Runs `Policy.attention_for`'s choice: the XLA reference below, or a fused kernel
    (`nn.kernels`; probs None) where the policy names one and it applies. `segments`: the same
    mask as segment ids, where the caller has it (splash needs it); `need_probs`: whether the
    caller returns the attention maps (fused kernels have none).
    """
    batch, heads, length, head_dim = query.shape
    shape = (batch, heads, length, key.shape[2])
    use_dropout = dropout_rng is not None and dropout_rate > 0.0
    kernel = _kernel(policy, query.dtype, head_dim, shape, use_dropout, need_probs, segments)
    if kernel == "cudnn":
        return cudnn_attention(query, key, value, mask), None
    if kernel == "splash":
        return splash_attention(query, key, value, segments), None
    prec = policy.matmul_precision(query.dtype)
    keep = _keep(dropout_rng, dropout_rate, shape) if use_dropout else None
    loop = policy.attention_loop(shape)
    if loop is None:
        return _attend(query, key, value, mask, prec, keep, 1.0 - dropout_rate)
    return _looped(query, key, value, mask, prec, keep, 1.0 - dropout_rate, 1, loop)


class SelfAttention(nn.Module):
    """Projections q, k, v (D -> N*H), attention, output projection (N*H -> D).

    Without a cache: `dot_product_attention` on q, k, v as projected ([B, T, N, H]). With
    `kv_cache=(key [B,N,S,H], value [B,N,S,H])`, this layer's cache, the new keys/values are
    written heads-major at slot `cache_index` with `lax.dynamic_update_slice` (in place under
    jit) and the queries attend over the S slots as stored (never transposed); the updated pair
    is returned. Under logical sharding rules (`sharding.use`), q, k, v, the attention output and
    the cache are constrained to `HEADS_AXES` / `CACHE_AXES`.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: Policy = PLAIN

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        mask: jax.Array,  # [B, 1 | N, T | 1, S] bool
        *,
        segments: SegmentMask | None = None,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        deterministic: bool = True,
        need_probs: bool = True,
    ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array] | None]:
        batch, length, features = x.shape
        inner = self.num_heads * self.head_dim
        dense = functools.partial(
            Dense,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            policy=self.policy,
        )

        def heads(y: jax.Array) -> jax.Array:  # [B, T, N*H] -> [B, T, N, H]
            y = y.reshape(batch, length, self.num_heads, self.head_dim)
            return nn.with_logical_constraint(y, HEADS_AXES)

        query = heads(dense(inner, ("embed", "heads"), name="query")(x))
        key = heads(dense(inner, ("embed", "heads"), name="key")(x))
        value = heads(dense(inner, ("embed", "heads"), name="value")(x))
        use_dropout = not deterministic and self.dropout_rate > 0.0
        options = dict(
            policy=self.policy,
            dropout_rate=self.dropout_rate,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
            need_probs=need_probs,
        )

        new_cache = None
        if kv_cache is None:
            out, probs = dot_product_attention(
                query, key, value, mask, segments=segments, **options
            )
        else:
            if cache_index is None:
                raise ValueError("kv_cache needs cache_index")
            new_cache = tuple(
                nn.with_logical_constraint(
                    jax.lax.dynamic_update_slice_in_dim(
                        cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), cache_index, 2
                    ),
                    CACHE_AXES,
                )
                for cache, new in zip(kv_cache, (key, value), strict=True)
            )  # [B, N, S, H] each
            key, value = (cache.astype(self.dtype) for cache in new_cache)
            out, probs = heads_major_attention(
                jnp.swapaxes(query, 1, 2), key, value, mask, **options
            )  # out [B, N, T, H]
            out = jnp.swapaxes(out, 1, 2)
        out = nn.with_logical_constraint(out, HEADS_AXES)  # [B, T, N, H]
        out = out.reshape(batch, length, inner)
        out = dense(features, ("heads", "embed"), name="out")(out)
        return out, probs, new_cache
