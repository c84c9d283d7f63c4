"""Fused attention kernels behind `Policy.attention`: cuDNN (NVIDIA GPUs) and splash (TPU).

Axis legend: B batch, N heads, T query length, S key length, H head dim.

Both compute softmax(q k^T / sqrt(H)) v without the [B, N, T, S] scores in memory and return no
attention maps. `nn.attention.heads_major_attention` calls them where `Policy.attention_for` says
they apply, and the XLA reference everywhere else. cuDNN takes the boolean mask as it is; splash
takes it as segment ids (`SegmentMask`), the form the models build for padding and packing.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

# Policy.attention -> `jax.nn.dot_product_attention`'s implementation (tests swap in "xla").
JAX_NN_IMPLEMENTATION = {"cudnn": "cudnn"}


@flax.struct.dataclass
class SegmentMask:
    """A mask of the form "same segment" (and causal), as splash takes it.

    Query t of row b sees key s iff query[b, t] == key[b, s], and s <= t when causal (queries and
    keys at the same slots, T == S). Padding keys hold -1, so no query sees them; a padding query
    keeps its segment and sees that segment's keys, as in `make_attention_mask`.
    """

    query: jax.Array  # [B, T] int32
    key: jax.Array  # [B, S] int32
    causal: bool = flax.struct.field(pytree_node=False, default=False)


def segment_mask(
    key_valid: jax.Array,  # [B, S]: 1 = token, 0 = padding
    segment_ids: jax.Array | None = None,  # [B, S]: packed sequences (None: one per row)
    causal: bool = False,
) -> SegmentMask:
    """`make_attention_mask(key_valid, arange(S) if causal, segment_ids)` as segment ids."""
    segments = jnp.zeros(key_valid.shape, jnp.int32) if segment_ids is None else segment_ids
    segments = segments.astype(jnp.int32)
    return SegmentMask(segments, jnp.where(key_valid.astype(bool), segments, -1), causal)


def cudnn_attention(
    query: jax.Array,  # [B, N, T, H]
    key: jax.Array,  # [B, N, S, H]
    value: jax.Array,  # [B, N, S, H]
    mask: jax.Array,  # [B, 1 | N, T | 1, S] bool
) -> jax.Array:  # [B, N, T, H]
    """`jax.nn.dot_product_attention(implementation="cudnn")` on heads-major operands.

    The public function takes [B, T, N, H]; the mask is broadcast to [B, 1 | N, T, S] (cuDNN's
    bias must have both lengths)."""
    batch, _, length, _ = query.shape
    slots = key.shape[2]
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, T|S, N, H]
    mask = jnp.broadcast_to(mask, (batch, mask.shape[1], length, slots))
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, implementation=JAX_NN_IMPLEMENTATION["cudnn"]
    )
    return jnp.swapaxes(out, 1, 2)


def splash_attention(
    query: jax.Array,  # [B, N, T, H]
    key: jax.Array,  # [B, N, S, H]
    value: jax.Array,  # [B, N, S, H]
    segments: SegmentMask,
) -> jax.Array:  # [B, N, T, H]
    """Pallas' splash attention kernel, one batch row at a time (`vmap`), full or causal.

    Off TPU it runs in Pallas' interpreter (slow: for tests). Lengths must be multiples of its
    128 block (`numerics.SPLASH_BLOCK`)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, heads, length, head_dim = query.shape
    shape = (length, key.shape[2])
    base = splash.CausalMask(shape) if segments.causal else splash.FullMask(shape)
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([base] * heads),
        head_shards=1,
        q_seq_shards=1,
        interpret=jax.default_backend() != "tpu",
    )
    ids = splash.SegmentIds(q=segments.query, kv=segments.key)  # [B, T], [B, S]
    scaled = query * jnp.asarray(head_dim**-0.5, query.dtype)
    return jax.vmap(kernel)(scaled, key, value, segment_ids=ids)


def mesh_splits(logical_names: tuple[str, ...]) -> bool:
    """Whether the mesh in force (`sharding.use`) splits any of these logical axes (under the
    logical rules in force) over more than one device; with `()`, whether it has several devices."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return False
    if not logical_names:
        return True
    for axes in nn.logical_to_mesh_axes(logical_names):
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and mesh.shape[axis] > 1:
                return True
    return False
