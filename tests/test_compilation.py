"""`biomed_jax.compilation`: our entry points' XLA options change speed, never results."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import compilation


def test_options_known_to_this_jaxlib_and_applied():
    options = compilation.compiler_options()
    if options != compilation.CPU_OPTIONS:  # only a jaxlib that refuses the option gets none
        assert options == {}
        with pytest.raises(Exception):  # noqa: B017
            jax.jit(lambda x: x, compiler_options=compilation.CPU_OPTIONS).lower(1.0).compile()

    @compilation.jit(static_argnames=("power",))
    def f(x, power):
        return (x @ x.T) ** power

    x = jnp.asarray(np.random.RandomState(0).randn(16, 8).astype(np.float32))
    np.testing.assert_allclose(np.asarray(f(x, power=2)), np.asarray((x @ x.T) ** 2), rtol=1e-5)
    assert f.__name__ == "f"
    assert f.lower(x, power=2).compile() is not None
    embed_module = importlib.import_module("biomed_jax.pipelines.embed")
    assert isinstance(embed_module._hidden, compilation._Jit)  # pipelines use it


def test_unknown_option_falls_back_to_none(monkeypatch):
    compilation.compiler_options.cache_clear()
    monkeypatch.setattr(
        compilation, "CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"}
    )
    try:
        assert compilation.compiler_options() == {}
    finally:
        compilation.compiler_options.cache_clear()


def test_bert_forward_same_as_plain_jit():
    from biomed_jax.loading import init_params
    from biomed_jax.models.bert import BertModel
    from biomed_jax.models.config import BertConfig

    config = BertConfig(
        vocab_size=99,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=80,
        max_position_embeddings=64,
    )
    module = BertModel(config, precision="default")
    params = init_params(module, 0)
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 99, (4, 40)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 20:].set(0)

    def forward(params, ids, mask):
        return module.apply({"params": params}, ids, mask).last_hidden_state

    ours = compilation.jit(forward)(params, ids, mask)
    plain = jax.jit(forward)(params, ids, mask)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=0, atol=1e-5)
