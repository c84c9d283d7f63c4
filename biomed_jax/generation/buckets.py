"""Length buckets: prompts are left-padded to a few fixed lengths so new lengths reuse a compilation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MIN_BUCKET = 16  # shortest prompt bucket; buckets are powers of two from here
ROOM_MULTIPLE = 16  # room for new tokens is rounded up to a multiple of this


def bucket_length(length: int) -> int:
    """The bucket a prompt of `length` tokens is left-padded to: a power of two, at least 16."""
    if length < 1:
        raise ValueError(f"prompt length must be at least 1, got {length}")
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


def room_for(new_tokens: int) -> int:
    """Cache slots reserved after the prompt bucket for `new_tokens` new tokens."""
    return -(-new_tokens // ROOM_MULTIPLE) * ROOM_MULTIPLE


def left_pad(
    input_ids: Any,  # [B, T]
    attention_mask: Any,  # [B, T]
    length: int,
    pad_token_id: int,
) -> tuple[Any, Any]:
    """Left-pad ids with `pad_token_id` and the mask with 0 to `length` columns (NumPy arrays, or
    jax.numpy ones where either is traced)."""
    extra = length - input_ids.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {input_ids.shape[1]} tokens to {length}")
    traced = any(isinstance(a, jax.core.Tracer) for a in (input_ids, attention_mask))
    xp = jnp if traced else np
    ids = xp.pad(input_ids, ((0, 0), (extra, 0)), constant_values=pad_token_id)
    mask = xp.pad(attention_mask, ((0, 0), (extra, 0)), constant_values=0)
    return ids.astype(np.int32), mask.astype(np.int32)
