"""int8 weight-only inference through Google's qwix (extra `qwix`).

Every matched Dense kernel is stored as int8 with one float scale per output feature (absmax:
scale = max |w| over the input axis / 127.5, q = round(w / scale) in [-128, 127], qwix's symmetric
int8), a quarter of its float32 bytes;
activations stay in the compute dtype and the matmul runs on the dequantized kernel, so the only
error is the weights' rounding, at most scale / 2 per weight. Embedding tables (and the LM head
tied to one) stay float: the lookup reads them.

    qmodule, qparams = quantization.quantize_int8(model.module, model.params)
    logits = qmodule.apply({"params": qparams}, input_ids, attention_mask).logits
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from biomed_jax.extras import require
from biomed_jax.lora import check_policy
from biomed_jax.models.common import to_layout

# Every Dense of both models: attention, MLP, pooler, MLM transform and the task heads.
DENSE_TARGETS = r"(.*/)?(query|key|value|out|fc_in|fc_out|pooler|transform|classifier|score)"


def quantize_int8(
    module: nn.Module, params: Mapping[str, Any], targets: str = DENSE_TARGETS
) -> tuple[nn.Module, dict[str, Any]]:
    """(module, params) for int8 weight-only inference of the Dense layers whose module path
    matches `targets` (a regex, qwix's `module_path`).

    The layers run unrolled (qwix quantizes a kernel as one tensor: a scanned [L, in, out] stack
    would share scales across layers), so a `scan_layers` module comes back unrolled with its
    params; apply the returned module to the returned params.
    """
    qwix = require("qwix")
    check_policy(module, "int8 quantization")
    module = module.clone(scan_layers=False)
    params = to_layout(jax.tree.map(jnp.asarray, params), scan_layers=False)
    rule = qwix.QuantizationRule(module_path=targets, weight_qtype=jnp.int8)
    qmodule = qwix.quantize_model(module, qwix.PtqProvider([rule]))
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(qmodule.init, jax.random.key(0), ids)["params"]
    return qmodule, qwix.quantize_params(params, abstract)
