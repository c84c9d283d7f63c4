"""Argument checks at the public boundary, on the host, before anything is traced.

One mechanism for every entry point (models' `__call__`, `generate`, pipelines, CLI): each
function takes the argument's name and value and returns the value or raises an error naming it.
A wrong type raises `TypeError`, a value outside its range `ValueError`. Inside `jit` values are
traced and cannot be checked; shapes and dtypes still are (they are static), except symbolic
dimensions (`jax.export` with shapes such as "(b, t)"), which are only compared for equality. What
happens to an out-of-range id there is documented in docs/runtime-inputs.md: its row comes out NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

INT32_MAX = 2**31 - 1  # ids, lengths and counts become int32 arrays on the device
# An additive float mask's masked entries are at most this (finfo(dtype).min, -inf, -1e9, -10000):
# exp of it underflows to 0 in every float dtype, so adding it and dropping the key are the same.
ADDITIVE_MASKED_MAX = -1e4


def integer(name: str, value: Any, *, low: int | None = None, high: int = INT32_MAX) -> int:
    """`value` as an int in [low, high]: a Python or NumPy integer, never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or value > high:
        where = f"[{low}, {high}]" if low is not None else f"<= {high}"
        raise ValueError(f"{name} must be in {where}, got {value}")
    return value


def optional_integer(name: str, value: Any, **bounds: Any) -> int | None:
    return None if value is None else integer(name, value, **bounds)


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """`value` as a finite float in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        where = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be a finite number in {where}, got {value}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if not any(value == o and type(value) is type(o) for o in options):
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def token_id(name: str, value: Any, vocab_size: int, source: str = "argument") -> int:
    """A special-token id (pad, eos, ...) inside the vocabulary [0, vocab_size)."""
    value = integer(f"{name} ({source})", value, low=-INT32_MAX)
    if not 0 <= value < vocab_size:
        raise ValueError(
            f"{name}={value} ({source}) is outside the vocabulary [0, {vocab_size}): "
            "set it to a token of the model's vocabulary"
        )
    return value


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def is_static(dim: Any) -> bool:
    """Whether a shape entry is a known int (not a `jax.export` symbolic dimension)."""
    return isinstance(dim, (int, np.integer))


def exceeds(dim: Any, limit: int) -> bool:
    """`dim > limit`, False for a symbolic dimension (its value is not known until it is called)."""
    return is_static(dim) and dim > limit


def int_array(name: str, value: Any, shape: tuple[int, ...] | None = None, what: str = "") -> Any:
    """An integer array (NumPy or JAX, concrete or traced), of `shape` when given.

    `what` names the expected shape in words, e.g. "[batch, length] like input_ids".
    """
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(
            f"{name} must be an integer array (np.ndarray or jax.Array), got "
            f"{type(value).__name__}; tokenizers give arrays with return_tensors='np'"
        )
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_)):
        raise TypeError(f"{name} must hold integers, got dtype {value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        expected = f"be {what} = {tuple(shape)}" if what else f"have shape {tuple(shape)}"
        raise ValueError(f"{name} must {expected}, got shape {tuple(value.shape)}")
    return value


def ids_in_range(name: str, value: Any, low: int, high: int) -> None:
    """Concrete ids must lie in [low, high); traced ones are left to the in-jit rule (NaN)."""
    if is_traced(value):
        return
    ids = np.asarray(value)
    if ids.size and (ids.min() < low or ids.max() >= high):
        bad = ids[(ids < low) | (ids >= high)]
        raise ValueError(
            f"{name} contains values outside [{low}, {high}): {sorted(set(bad.tolist()))[:10]}"
        )


def binary_mask(name: str, value: Any) -> None:
    """A concrete attention mask holds only 0 and 1."""
    if is_traced(value):
        return
    mask = np.asarray(value)
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token), got {np.unique(mask)}")


def attention_mask(
    name: str, value: Any, batch: Any, length: Any, slots: Any, heads: int, cached: bool = False
) -> None:
    """An attention mask in one of the forms of `nn.attention.make_attention_mask`.

    [batch, slots]: integers or booleans, 0 / 1 when concrete. [batch, length | 1, slots] and
    [batch, heads | 1, length | 1, slots]: booleans, integers (0 / 1) or additive floats (0, or
    at most `ADDITIVE_MASKED_MAX`). `slots` is the length, or a KV cache's slots when `cached`.
    """
    keys = "cache slots" if cached else "length"
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(
            f"{name} must be an array (np.ndarray or jax.Array), got {type(value).__name__}"
        )
    floating = jax.numpy.issubdtype(value.dtype, jax.numpy.floating)
    if value.ndim not in (3, 4):
        if floating:
            raise TypeError(
                f"{name} of shape [batch, {keys}] must hold integers or booleans (1 = token, "
                f"0 = padding), got dtype {value.dtype}; additive float masks are [batch, length, "
                f"{keys}] or [batch, heads, length, {keys}]"
            )
        what = f"[batch, {keys}]" if cached else "[batch, length] like input_ids"
        int_array(name, value, (batch, slots), what)
        binary_mask(name, value)
        return
    if not (floating or np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
        raise TypeError(f"{name} must hold booleans, integers or floats, got dtype {value.dtype}")
    wanted = [(batch,), (length, 1), (slots,)]
    words = ["batch", "length | 1", keys]
    if value.ndim == 4:
        wanted.insert(1, (heads, 1))
        words.insert(1, "heads | 1")
    if any(all(d != w for w in ws) for d, ws in zip(value.shape, wanted, strict=True)):
        raise ValueError(
            f"{name} must be [{', '.join(words)}] with batch {batch}, length {length}, "
            f"heads {heads}, {keys} {slots}; got shape {tuple(value.shape)}"
        )
    if is_traced(value):
        return
    mask = np.asarray(value)
    if floating:
        mask = mask.astype(np.float32)
        bad = mask[(mask != 0) & ~(mask <= ADDITIVE_MASKED_MAX)]
        if bad.size:
            raise ValueError(
                f"{name} is an additive float mask: 0 where attention is allowed, a large negative "
                f"value (<= {ADDITIVE_MASKED_MAX:g}: finfo(dtype).min, -inf) where it is not; got "
                f"{np.unique(bad)[:5].tolist()} (a bias is not a mask)"
            )
    elif value.dtype != np.bool_ and mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 (masked) and 1 (attend), got {np.unique(mask)}")
