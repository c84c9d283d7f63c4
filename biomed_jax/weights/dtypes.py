"""The tensor dtypes our checkpoint readers return: floats for weights, ints and bool for buffers.

Readers report each tensor's dtype as stored (no casts); anything else (complex, float8,
quantized, unsigned wider than 8 bits) is refused by the reader with the tensor's name.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT_DTYPES = frozenset(
    np.dtype(t) for t in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)
)
READABLE_DTYPES = FLOAT_DTYPES | frozenset(
    np.dtype(t) for t in (np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_)
)

READABLE_NAMES = "float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool"

# The same set in safetensors' header names.
SAFETENSORS_DTYPES = frozenset(
    {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
)
