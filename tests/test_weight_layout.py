"""Dense kernels [in, out] or [out, in], the streamed few-row matmul, and decoding's layout."""

from __future__ import annotations

import gc
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import BertConfig, BertModel, BioGptConfig, BioGptForCausalLM, generate
from biomed_jax.generation import layout
from biomed_jax.models.common import init_params
from biomed_jax.nn.layers import Dense, convertible_kernels, weights_out_in
from biomed_jax.numerics import PLAIN, Policy
from biomed_jax.trees import flatten

GPT = BioGptConfig(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
)
BERT = BertConfig(
    vocab_size=80,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
)
STREAM = PLAIN.replace(stream_weight_rows=8)


def _ids(batch, length, vocab, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(3, vocab, (batch, length)), jnp.int32)


@pytest.mark.parametrize("policy", [PLAIN, STREAM], ids=["plain", "stream"])
@pytest.mark.parametrize("model", ["biogpt", "bert"])
def test_dense_reads_either_layout(model, policy):
    """Every Dense kernel [in, out] becomes a `weight` [out, in] (nothing else changes), and the
    model computes the same outputs from either layout, with few rows (streamed when the policy
    says so) and with many."""
    config = GPT if model == "biogpt" else BERT
    module = (BioGptForCausalLM if model == "biogpt" else BertModel)(config, policy=policy)
    params = init_params(module)
    converted = weights_out_in(params)
    before, after = flatten(params), flatten(converted)
    kernels = {k for k in before if k.endswith("/kernel")}
    assert kernels and {k.removesuffix("kernel") + "weight" for k in kernels} == {
        k for k in after if k.endswith("/weight")
    }
    for k in kernels:
        np.testing.assert_array_equal(after[k.removesuffix("kernel") + "weight"], before[k].T)
    assert {k: v for k, v in before.items() if k not in kernels} == {
        k: v for k, v in after.items() if not k.endswith("/weight")
    }
    for batch, length in ((1, 3), (4, 20)):  # 3 rows: streamed under STREAM; 80: not
        ids = _ids(batch, length, config.vocab_size)
        out = [jax.tree.leaves(module.apply({"params": p}, ids))[0] for p in (converted, params)]
        np.testing.assert_allclose(*out, atol=2e-6, rtol=1e-5)


def _dot_operands(hlo: str) -> list[tuple[str, str]]:
    """(left operand shape, right operand shape) of every dot of a compiled program."""
    shapes = dict(re.findall(r"%([\w.-]+) = f32\[([\d,]*)\]", hlo))
    dots = re.findall(r"= f32\[[\d,]*\]\{[^}]*\} dot\(%([\w.-]+), %([\w.-]+)\)", hlo)
    calls = re.findall(r"fusion\(%([\w.-]+), %([\w.-]+)\), kind=kCustom", hlo)  # YNNPACK's
    return [(shapes.get(a, "?"), shapes.get(b, "?")) for a, b in dots + calls]


@pytest.mark.parametrize("rows", [1, 5, 8, 9])
def test_few_rows_stream_the_weight(rows):
    """Up to `stream_weight_rows` rows, an [out, in] weight is the left operand of the compiled
    matmul (weight @ rows^T: read once, not repacked); beyond it, the right one. Same values."""
    dense = Dense(48, ("embed", "mlp"), policy=STREAM)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, 32)), jnp.float32)
    params = weights_out_in(init_dense(dense, x))
    assert params["weight"].shape == (48, 32)
    hlo = jax.jit(lambda p, x: dense.apply({"params": p}, x)).lower(params, x).compile().as_text()
    operands = _dot_operands(hlo)
    assert operands, "no matmul found: the check proves nothing"
    left = [a for a, _ in operands]
    assert ("48,32" in left) == (rows <= 8), operands
    expected = x @ params["weight"].T + params["bias"]
    np.testing.assert_allclose(dense.apply({"params": params}, x), expected, rtol=1e-6, atol=1e-6)


def init_dense(dense, x):
    return nn.unbox(dense.init(jax.random.key(0), x)["params"])


def test_weights_out_in_keeps_what_it_cannot_convert():
    lora = {"kernel": jnp.ones((4, 3)), "kernel_lora_a": jnp.ones((4, 2)), "bias": jnp.ones(3)}
    ints = {"kernel": jnp.ones((4, 3), jnp.int8)}
    stacked = {"kernel": jnp.ones((2, 4, 3))}  # a scanned stack's [L, in, out]
    tree = {"a": lora, "b": ints, "c": stacked, "d": {"kernel": jnp.ones((4, 3))}}
    converted = weights_out_in(tree)
    for name, kept in (("a", lora), ("b", ints), ("c", stacked)):
        assert converted[name].keys() == kept.keys()
        assert all(converted[name][k] is kept[k] for k in kept)
    assert set(converted["d"]) == {"weight"} and converted["d"]["weight"].shape == (3, 4)
    assert convertible_kernels(tree) == [tree["d"]["kernel"]]


@pytest.fixture
def lm():
    layout.clear()
    module = BioGptForCausalLM(GPT, policy=Policy.fast("cpu"))
    yield module, init_params(module)
    layout.clear()


def test_decoding_converts_once_per_params_and_lets_them_go(lm):
    module, params = lm
    first = flatten(layout.decoding_params(module, params))
    assert first.keys() == flatten(weights_out_in(params)).keys()
    again = flatten(layout.decoding_params(module, params))
    assert all(again[k] is first[k] for k in first)  # kept: no second transposition
    kept = layout._LAST[0][1]
    other = init_params(module, seed=1)
    converted = flatten(layout.decoding_params(module, other))
    assert not any(converted[k] is first[k] for k in first if k.endswith("weight"))  # the last only
    assert layout._LAST and layout._LAST[0][1] is not kept
    del other, converted
    gc.collect()
    assert layout._LAST == []  # its kernels are gone, and so is their copy


def test_decoding_keeps_the_layout_where_it_does_not_convert(lm):
    module, params = lm
    assert layout.decoding_params(module.clone(policy="exact"), params) is params  # float64 sums
    assert layout.decoding_params(module.clone(policy=PLAIN), params) is params
    assert layout.decoding_params(module, params, spare=1000) is params  # the copy does not fit
    assert layout._LAST == []
    traced = jax.make_jaxpr(lambda p: layout.decoding_params(module, p))(params)
    assert "transpose" in str(traced) and layout._LAST == []  # in the caller's computation


def test_generate_gives_the_same_tokens_from_either_layout(lm):
    module, params = lm
    ids = np.asarray(_ids(2, 5, GPT.vocab_size))
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    plain = module.clone(policy=PLAIN)  # [in, out] kernels, no streaming
    for beams in (1, 3):
        expected = np.asarray(generate(plain, params, ids, num_beams=beams, **kw))
        for p in (params, weights_out_in(params)):
            got = np.asarray(generate(module, p, ids, num_beams=beams, **kw))
            np.testing.assert_array_equal(got, expected)


def test_a_tree_sharing_the_kernels_decodes_with_its_own_other_arrays(lm):
    """The kept [out, in] copies stand for the kernels only: a tree with the same kernels and
    another final layer norm (a bias and scale that pull every position one way) decodes with
    its own, as the plain layout does."""
    module, params = lm
    ids = np.asarray(_ids(1, 5, GPT.vocab_size))
    kw = dict(max_new_tokens=4, min_new_tokens=4)
    generate(module, params, ids, **kw)  # the kernels' copies are made and kept
    biogpt = params["biogpt"]
    pull = np.random.default_rng(2).normal(0.0, 10.0, GPT.hidden_size).astype(np.float32)
    norm = {"bias": pull, "scale": np.zeros(GPT.hidden_size, np.float32)}
    edited = {**params, "biogpt": {**biogpt, "layer_norm": norm}}
    expected = np.asarray(generate(module.clone(policy=PLAIN), edited, ids, **kw))
    np.testing.assert_array_equal(np.asarray(generate(module, edited, ids, **kw)), expected)
    assert not np.array_equal(expected, np.asarray(generate(module, params, ids, **kw)))
