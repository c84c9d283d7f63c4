"""The numerics policy: presets per backend, resolution, and what `from_pretrained` runs by default."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import from_pretrained, numerics
from biomed_jax.numerics import PLAIN, Policy

HIGHEST = jax.lax.Precision.HIGHEST


DEFAULT = jax.lax.Precision.DEFAULT
# backend -> (bfloat16 / float16 matmul precision, attention implementation)
BACKENDS = {
    "cpu": (HIGHEST, "xla"),
    "gpu": (DEFAULT, "cudnn"),
    "cuda": (DEFAULT, "cudnn"),
    "rocm": (DEFAULT, "xla"),
    "tpu": (DEFAULT, "splash"),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_presets_per_backend(backend):
    fast, exact = Policy.fast(backend), Policy.exact(backend)
    assert fast.precision == exact.precision == HIGHEST  # float32: no TF32 / bfloat16 passes
    half, kernel = BACKENDS[backend]
    assert fast.half_precision == exact.half_precision == half
    assert fast.attention == exact.attention == kernel
    assert fast.matmul_precision(jnp.float32) == HIGHEST
    assert fast.matmul_precision(jnp.bfloat16) == fast.matmul_precision(jnp.float16) == half
    assert not fast.float64_sums and exact.float64_sums
    per_head = numerics.CPU_PER_HEAD_SCORE_BYTES if backend == "cpu" else None
    assert fast.per_head_score_bytes == exact.per_head_score_bytes == per_head
    stream = numerics.CPU_STREAM_WEIGHT_ROWS if backend == "cpu" else None
    assert fast.stream_weight_rows == exact.stream_weight_rows == stream
    assert fast.describe()["stream_weight_rows"] == stream
    assert (fast.name, exact.name) == ("fast", "exact")
    assert fast.describe()["attention"] == kernel
    assert fast.describe()["half_precision"] == half.name.lower()


def test_tpu_without_splash_keeps_the_reference(monkeypatch):
    monkeypatch.setattr(numerics, "splash_available", lambda: False)
    assert Policy.fast("tpu").attention == "xla"


def _compiled(module, params, ids) -> str:
    """The optimized program's instructions, without the precision attributes (the names that
    differ) and the source locations."""
    text = jax.jit(lambda p: module.apply({"params": p}, ids).logits).lower(params).compile()
    text = re.sub(r",? ?(operand_precision|metadata)=\{[^}]*\}", "", text.as_text())
    code = ("HloModule", "%", "ENTRY", " ", "}")  # not the file / stack frame tables
    return "\n".join(line for line in text.splitlines() if line.startswith(code))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_highest_costs_nothing_on_cpu(hf_bert, dtype):
    """XLA:CPU compiles the same program for every matmul precision: HIGHEST is free there."""
    if jax.default_backend() != "cpu":
        pytest.skip("a CPU property")
    model = from_pretrained(hf_bert)
    ids = jnp.asarray(np.random.RandomState(0).randint(5, 60, (2, 9)), jnp.int32)
    highest = model.module.clone(dtype=dtype, policy=Policy.fast("cpu"))
    default = highest.clone(
        policy=Policy.fast("cpu").replace(precision=DEFAULT, half_precision=DEFAULT)
    )
    assert "DEFAULT" not in str(
        jax.make_jaxpr(lambda p: highest.apply({"params": p}, ids))(model.params)
    )
    program = _compiled(highest, model.params, ids)
    assert program.count(" dot(") >= 12  # q, k, v, out, MLP per layer, the LM head
    assert program == _compiled(default, model.params, ids)


def test_resolve_names_policies_and_precision():
    assert numerics.resolve() == numerics.resolve("fast") == Policy.fast()
    assert numerics.resolve("exact") == Policy.exact()
    custom = PLAIN.replace(per_head_score_bytes=0)
    assert numerics.resolve(custom) is custom and custom.name == "custom"
    lowered = numerics.resolve("fast", precision="default")
    assert lowered.precision == lowered.half_precision == DEFAULT and lowered.name == "custom"
    assert numerics.resolve("fast", precision="highest") == Policy.fast()  # nothing replaced
    with pytest.raises(ValueError, match="policy must be"):
        numerics.resolve("fastest")
    with pytest.raises(TypeError, match="policy must be"):
        numerics.resolve(3)
    with pytest.raises(ValueError, match="precision must be"):
        numerics.resolve("fast", precision="fastest")
    with pytest.raises(ValueError, match="per_head_score_bytes"):
        Policy(per_head_score_bytes=-1)
    with pytest.raises(ValueError, match="stream_weight_rows"):
        Policy(stream_weight_rows=0)
    with pytest.raises(ValueError, match="attention must be one of"):
        Policy(attention="flash")
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
