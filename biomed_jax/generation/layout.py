"""The weight layout of decoding: Dense kernels [out, in], kept for the params that were converted.

A decoding step multiplies a few rows (batch x beams) by every weight. On CPU the policy's
`stream_weight_rows` multiplies an [out, in] weight as weight @ rows^T, which streams the weight
once where an [in, out] kernel is repacked at every call (`benchmarks/kernel_layout.py`: 1.3x at
one row, about 2x at 4 to 16). `decoding_params` gives `decode` the [out, in] copy
(`nn.layers.weights_out_in`): the kernels' copies are made on the first call and kept while those
kernels live (the last set converted only); every other array is the given tree's own, so a tree
that shares the kernels but not its embeddings or biases decodes with its own. It costs the
Dense kernels' bytes once more (BioGPT-347M: 1.21 GB) and one transposition (about a second on
2 cores). Traced params (a caller's `jit`) are converted inside the traced computation, at every
call of it.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from biomed_jax import validation as v
from biomed_jax.models.common import ModelBase
from biomed_jax.nn.layers import convertible_kernels, transposed_kernels, weights_out_in
from biomed_jax.numerics import resolve

# The last conversion: (weak references to the source kernels, their [out, in] copies).
_LAST: list[tuple[list[weakref.ref], list[Any]]] = []


def converts(module: Any) -> bool:
    """Whether `decode` runs `module` on [out, in] weights: one of our models whose policy streams
    weights (CPU's "fast"), without float64 sums (the "exact" policy's matmul takes [in, out])."""
    if not isinstance(module, ModelBase):
        return False
    policy = resolve(module.policy, module.precision)
    return policy.stream_weight_rows is not None and not policy.sums_in_float64(module.dtype)


def decoding_params(module: Any, params: Any, spare: int | None = None) -> Any:
    """`params` as `decode` runs them: with [out, in] Dense weights where `converts(module)` and
    the copy fits in `spare` bytes (None: unknown, assumed to fit); else as they are. Only the
    kernels' copies are kept: every other array (embeddings, biases, norms) is `params`' own."""
    if not converts(module):
        return params
    kernels = convertible_kernels(params)
    if not kernels:
        return params
    if any(v.is_traced(k) for k in kernels):
        return weights_out_in(params)
    if _LAST:
        refs, weights = _LAST[0]
        if len(refs) == len(kernels) and all(r() is k for r, k in zip(refs, kernels, strict=True)):
            return weights_out_in(params, weights)
    _LAST.clear()  # release the previous copy before making the next one
    if spare is not None and _nbytes(kernels) > spare:
        return params
    weights = transposed_kernels(kernels)
    _LAST.append(([weakref.ref(k, _forget) for k in kernels], weights))
    return weights_out_in(params, weights)


def converted_bytes(params: Any) -> int:
    """The bytes a conversion of `params` adds (its Dense kernels, once more)."""
    return _nbytes(convertible_kernels(params))


def _nbytes(arrays: list[Any]) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in arrays)


def _forget(_: weakref.ref) -> None:
    """A source kernel is gone: so is its converted copy."""
    _LAST.clear()


def clear() -> None:
    """Drop the kept [out, in] copy now (it also goes when its params do)."""
    _LAST.clear()
