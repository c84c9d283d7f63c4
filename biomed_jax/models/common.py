"""What every model module shares: numeric options, input checks, the scanned layer stack."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax.nn.layers import Dtype, PrecisionLike, check_token_ids


class ModelBase(nn.Module):
    """Fields of every model: config, compute/param dtypes, matmul precision, remat."""

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = "highest"
    gradient_checkpointing: bool = False

    @property
    def numerics(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}


def check_inputs(
    config: Any, input_ids: Any, position_ids: Any = None, position_limit: int | None = None
) -> None:
    """Errors for ids outside the vocabulary and sequences longer than the position table."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    check_token_ids(input_ids, config.vocab_size)
    limit = config.max_position_embeddings if position_limit is None else position_limit
    if position_ids is None:
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings {limit}"
            )
    elif not isinstance(position_ids, jax.core.Tracer):
        positions = np.asarray(position_ids)
        if positions.size and (positions.min() < 0 or positions.max() >= limit):
            raise ValueError(
                f"position_ids must lie in [0, {limit}), got [{positions.min()}, {positions.max()}]"
            )


def scan_layers(
    layer_cls: type[nn.Module], num_layers: int, remat: bool, in_axes: Any, **layer_kwargs: Any
) -> nn.Module:
    """Layers as one `nn.scan` (params stacked on a leading "layers" axis); optional remat per layer.

    Scanning compiles the stack once instead of num_layers times (see README for measurements).
    """
    cls = nn.remat(layer_cls, prevent_cse=False) if remat else layer_cls
    return nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(**layer_kwargs, name="layer")


def unstack(stacked: jax.Array | None) -> tuple[jax.Array, ...] | None:
    """[L, ...] -> tuple of L arrays."""
    if stacked is None:
        return None
    return tuple(stacked[i] for i in range(stacked.shape[0]))
