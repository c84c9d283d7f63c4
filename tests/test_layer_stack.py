"""The layer stack, unrolled (default) or scanned: same outputs, caches and gradients; layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from biomed_jax import convert, from_pretrained, load_params
from biomed_jax.models.common import stack_layers, to_layout, unstack_layers
from biomed_jax.trees import flatten
from biomed_jax.weights.formats import read_safetensors

LAYERS = 3


def _save_hf(tmp_path_factory, kind: str):
    """A seeded 3-layer HF checkpoint: BioGptForCausalLM or BertForMaskedLM."""
    torch.manual_seed(0)
    config_cls, model_cls = {
        "biogpt": (transformers.BioGptConfig, transformers.BioGptForCausalLM),
        "bert": (transformers.BertConfig, transformers.BertForMaskedLM),
    }[kind]
    config = config_cls(
        vocab_size=61,
        hidden_size=24,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=32,
        initializer_range=0.2,
    )
    path = tmp_path_factory.mktemp(f"hf_{kind}")
    model_cls(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_biogpt(tmp_path_factory):
    return _save_hf(tmp_path_factory, "biogpt")


@pytest.fixture(scope="module")
def hf_bert3(tmp_path_factory):
    return _save_hf(tmp_path_factory, "bert")


def _both(path):
    return from_pretrained(path, scan_layers=False), from_pretrained(path, scan_layers=True)


def _batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(0).randint(4, vocab, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def _assert_trees_close(a, b, atol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_unrolled_params_are_the_scanned_stack_split_by_layer(hf_bert3):
    unrolled, scanned = _both(hf_bert3)
    encoder = unrolled.params["bert"]["encoder"]
    assert sorted(encoder) == [f"layer_{i}" for i in range(LAYERS)]
    stacked = scanned.params["bert"]["encoder"]["layer"]
    kernel = stacked["attention"]["query"]["kernel"]
    assert kernel.shape == (LAYERS, 24, 24)
    for i in range(LAYERS):
        np.testing.assert_array_equal(
            encoder[f"layer_{i}"]["attention"]["query"]["kernel"], kernel[i]
        )
    _assert_trees_close(stack_layers(unrolled.params), scanned.params, atol=0)
    _assert_trees_close(unstack_layers(scanned.params), unrolled.params, atol=0)
    _assert_trees_close(to_layout(unrolled.params, False), unrolled.params, atol=0)
    _assert_trees_close(to_layout(scanned.params, True), scanned.params, atol=0)


def test_stack_layers_refuses_a_gap():
    params = {"layer_0": {"w": np.zeros(2)}, "layer_2": {"w": np.zeros(2)}}
    with pytest.raises(ValueError, match=r"\[0, 2\] are not 0\.\.1"):
        stack_layers(params)


@pytest.mark.parametrize("which", ["bert", "biogpt"])
def test_layouts_give_the_same_outputs(which, hf_bert3, hf_biogpt):
    unrolled, scanned = _both(hf_bert3 if which == "bert" else hf_biogpt)
    ids, mask = _batch(unrolled.config.vocab_size)
    kwargs = dict(output_hidden_states=True, output_attentions=True)
    a = jax.jit(lambda p: unrolled.module.apply({"params": p}, ids, mask, **kwargs))(
        unrolled.params
    )
    b = jax.jit(lambda p: scanned.module.apply({"params": p}, ids, mask, **kwargs))(scanned.params)
    assert len(a.hidden_states) == LAYERS + 1 and len(a.attentions) == LAYERS
    _assert_trees_close(a, b)


@pytest.mark.slow
def test_layouts_give_the_same_decoding_cache(hf_biogpt):
    unrolled, scanned = _both(hf_biogpt)
    ids, _ = _batch(unrolled.config.vocab_size)
    slots = 12
    mask = np.ones((2, slots), np.int32)

    def decode(model):
        cache = model.config.init_cache(2, slots)
        first = model.module.apply({"params": model.params}, ids, mask, cache=cache)
        step = model.module.apply({"params": model.params}, ids[:, -1:], mask, cache=first.cache)
        return step.logits, step.cache

    (logits_a, cache_a), (logits_b, cache_b) = decode(unrolled), decode(scanned)
    for cache in (cache_a, cache_b):
        assert [k.shape for k in cache.key] == [(2, 4, slots, 6)] * LAYERS  # L x [B, N, S, H]
    assert int(cache_a.index) == int(cache_b.index) == 8
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cache_a.key, cache_b.key, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cache_a.value, cache_b.value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("remat", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_layouts_give_the_same_gradients(remat, hf_bert3):
    unrolled, scanned = _both(hf_bert3)
    ids, mask = _batch(unrolled.config.vocab_size)

    def grads(model):
        module = model.module.clone(gradient_checkpointing=remat)

        def loss(p):
            logits = module.apply({"params": p}, ids, mask).logits
            return jnp.mean(logits**2)

        return jax.jit(jax.grad(loss))(model.params)

    grads_unrolled = grads(unrolled)
    assert np.abs(grads_unrolled["bert"]["encoder"]["layer_2"]["mlp"]["fc_in"]["kernel"]).max() > 0
    _assert_trees_close(stack_layers(jax.device_get(grads_unrolled)), grads(scanned), atol=1e-5)


def test_files_hold_the_stack_scanned_and_load_into_either_layout(hf_bert3, tmp_path):
    dst = convert(hf_bert3, tmp_path / "ours")
    keys = read_safetensors(dst / "model.safetensors")
    assert keys["bert/encoder/layer/attention/query/kernel"].shape == (LAYERS, 24, 24)
    assert not any("layer_0" in k for k in keys)
    unrolled = flatten(load_params(dst))
    scanned = flatten(load_params(dst, scan_layers=True))
    assert "bert/encoder/layer_1/attention/query/kernel" in unrolled
    np.testing.assert_array_equal(
        unrolled["bert/encoder/layer_1/attention/query/kernel"],
        scanned["bert/encoder/layer/attention/query/kernel"][1],
    )
    for scan in (False, True):
        model = from_pretrained(dst, scan_layers=scan)
        assert model.module.scan_layers is scan
        _assert_trees_close(model.params, to_layout(load_params(dst), scan), atol=0)
