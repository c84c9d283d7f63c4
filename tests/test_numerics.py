"""The numerics policy: presets per backend, resolution, and what `from_pretrained` runs by default."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import from_pretrained, numerics
from biomed_jax.numerics import PLAIN, Policy

HIGHEST = jax.lax.Precision.HIGHEST


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_presets_use_full_float32_matmuls_on_every_backend(backend):
    fast, exact = Policy.fast(backend), Policy.exact(backend)
    assert fast.precision == exact.precision == HIGHEST  # no TF32 / bfloat16 passes
    assert not fast.float64_sums and exact.float64_sums
    per_head = numerics.CPU_PER_HEAD_SCORE_BYTES if backend == "cpu" else None
    assert fast.per_head_score_bytes == exact.per_head_score_bytes == per_head
    assert (fast.name, exact.name) == ("fast", "exact")


def test_resolve_names_policies_and_precision():
    assert numerics.resolve() == numerics.resolve("fast") == Policy.fast()
    assert numerics.resolve("exact") == Policy.exact()
    custom = PLAIN.replace(per_head_score_bytes=0)
    assert numerics.resolve(custom) is custom and custom.name == "custom"
    lowered = numerics.resolve("fast", precision="default")
    assert lowered.precision == jax.lax.Precision.DEFAULT and lowered.name == "custom"
    assert numerics.resolve("fast", precision="highest") == Policy.fast()  # nothing replaced
    with pytest.raises(ValueError, match="policy must be"):
        numerics.resolve("fastest")
    with pytest.raises(TypeError, match="policy must be"):
        numerics.resolve(3)
    with pytest.raises(ValueError, match="precision must be"):
        numerics.resolve("fast", precision="fastest")
    with pytest.raises(ValueError, match="per_head_score_bytes"):
        Policy(per_head_score_bytes=-1)
    hash(Policy.exact())  # a static value for flax modules and jit


def _float64_ops(module, params, ids) -> int:
    """How many float64 values the forward pass's jaxpr mentions (nested jaxprs included)."""
    jaxpr = jax.make_jaxpr(lambda p, i: module.apply({"params": p}, i).logits)(params, ids)
    return str(jaxpr).count("f64[")


def test_from_pretrained_defaults_run_the_fast_path(hf_bert):
    model = from_pretrained(hf_bert)
    assert model.module.policy == Policy.fast()
    assert model.module.dtype == jnp.float32 and model.module.param_dtype == jnp.float32
    ids = jnp.asarray(np.random.RandomState(0).randint(5, 60, (2, 9)), jnp.int32)
    assert _float64_ops(model.module, model.params, ids) == 0  # plain float32 kernels
    exact = from_pretrained(hf_bert, policy="exact")
    assert exact.module.policy == Policy.exact()
    assert _float64_ops(exact.module, exact.params, ids) > 0  # the float64 sums are there
    # Both compute the same function: logits within float32 rounding of each other.
    fast_logits = np.asarray(model(input_ids=ids).logits)
    exact_logits = np.asarray(exact(input_ids=ids).logits)
    np.testing.assert_allclose(fast_logits, exact_logits, rtol=0, atol=2e-5)


def test_precision_argument_maps_onto_the_policy(hf_bert):
    model = from_pretrained(hf_bert, precision="default")
    assert model.module.policy.precision == jax.lax.Precision.DEFAULT
    assert not model.module.policy.float64_sums
    module = model.module.clone(policy="exact", precision=None)  # modules take names as well
    assert module.numerics["policy"] == Policy.exact()
