"""Argument checks at the public boundary, on the host, before anything is traced.

One mechanism for every entry point (models' `__call__`, `generate`, pipelines, CLI): each
function takes the argument's name and value and returns the value or raises an error naming it.
A wrong type raises `TypeError`, a value outside its range `ValueError`. Inside `jit` values are
traced and cannot be checked; shapes and dtypes still are (they are static). What happens to an
out-of-range id there is documented in docs/runtime-inputs.md: its row comes out NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

INT32_MAX = 2**31 - 1  # ids, lengths and counts become int32 arrays on the device


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
