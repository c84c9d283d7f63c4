"""Multi-head attention, its boolean mask and the fixed-size KV cache (shared by BERT and BioGPT).

Axis legend: B batch, T query length, S key length (cache slots), N heads, H head dim, D model dim,
L layers.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from biomed_jax.nn.layers import Dense, Dtype, PrecisionLike, as_precision


@flax.struct.dataclass
class KVCache:
    """Preallocated keys and values of every layer; written in place, never grown."""

    key: jax.Array  # [L, B, S, N, H]
    value: jax.Array  # [L, B, S, N, H]
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
        shape = (layers, batch, slots, heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.key.shape[2]


def make_attention_mask(key_valid: jax.Array, query_slots: jax.Array | None = None) -> jax.Array:
    """Boolean mask [B, 1, T, S]: True where query t may attend to key s.

    key_valid [B, S]: 1 for real tokens, 0 for padding (or unwritten cache slots).
    query_slots [T] (causal): the slot of each query; it sees keys s <= slot. None: bidirectional.

    Causal, one left-padded row (key 0 is padding)::

        keys:   0 1 2 3
        q@1     0 1 0 0
        q@2     0 1 1 0
        q@3     0 1 1 1
    """
    mask = key_valid.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    if query_slots is not None:
        key_slots = jnp.arange(key_valid.shape[-1])
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        mask = mask & causal[None, None]
    return mask


def dot_product_attention(
    query: jax.Array,  # [B, T, N, H]
    key: jax.Array,  # [B, S, N, H]
    value: jax.Array,  # [B, S, N, H]
    mask: jax.Array,  # [B, 1 | N, T, S] bool
    *,
    precision: PrecisionLike = "highest",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Softmax(q k^T / sqrt(H)) v with float32 scores and softmax; returns (out [B,T,N,H], probs [B,N,T,S]).

    Masked scores take float32's most negative finite value, as HF's eager attention does, so a
    row with no visible key gives a uniform (finite) distribution.
    """
    prec = as_precision(precision)
    scale = query.shape[-1] ** -0.5
    scores = (
        jnp.einsum(
            "BTNH,BSNH->BNTS", query, key, precision=prec, preferred_element_type=jnp.float32
        )
        * scale
    )
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, N, T, S] float32
    weights = probs
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        weights = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("BNTS,BSNH->BTNH", weights.astype(value.dtype), value, precision=prec)
    return out, probs


class SelfAttention(nn.Module):
    """Projections q, k, v (D -> N*H), attention, output projection (N*H -> D).

    With `kv_cache=(key [B,S,N,H], value [B,S,N,H])` the new keys/values are written at
    `cache_index` with `lax.dynamic_update_slice` and the queries attend over all S slots.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = "highest"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        mask: jax.Array,  # [B, 1, T, S] bool
        *,
        kv_cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
        batch, length, features = x.shape
        inner = self.num_heads * self.head_dim
        dense = functools.partial(
            Dense,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )

        def heads(y: jax.Array) -> jax.Array:  # [B, T, N*H] -> [B, T, N, H]
            return y.reshape(batch, length, self.num_heads, self.head_dim)

        query = heads(dense(inner, ("embed", "heads"), name="query")(x))
        key = heads(dense(inner, ("embed", "heads"), name="key")(x))
        value = heads(dense(inner, ("embed", "heads"), name="value")(x))

        new_cache = None
        if kv_cache is not None:
            cached_key, cached_value = kv_cache
            start = (0, cache_index, 0, 0)
            key = jax.lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), start)
            value = jax.lax.dynamic_update_slice(
                cached_value, value.astype(cached_value.dtype), start
            )
            new_cache = (key, value)
            key, value = key.astype(self.dtype), value.astype(self.dtype)

        use_dropout = not deterministic and self.dropout_rate > 0.0
        out, probs = dot_product_attention(
            query,
            key,
            value,
            mask,
            precision=self.precision,
            dropout_rate=self.dropout_rate,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
        )
        out = dense(features, ("heads", "embed"), name="out")(out.reshape(batch, length, inner))
        return out, probs, new_cache
