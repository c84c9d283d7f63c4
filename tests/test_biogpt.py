"""BioGPT: config and constants against the reference, conversion, cache behaviour, errors.

Numerical agreement with transformers (every output, both padding sides, cached path) lives in
tests/test_biogpt_conformance.py.
"""

from __future__ import annotations

import logging
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from biomed_jax import (
    BioGptConfig,
    BioGptForCausalLM,
    BioGptForSequenceClassification,
    CheckpointError,
    ConfigError,
    convert,
    from_pretrained,
    load_params,
)
from biomed_jax.generation import decode
from biomed_jax.nn.attention import REORDER_SLOTS, KVCache
from biomed_jax.trees import flatten

SMALL = dict(
    vocab_size=67,
    hidden_size=30,
    num_hidden_layers=2,
    num_attention_heads=5,
    intermediate_size=44,
    max_position_embeddings=24,
)


@pytest.fixture(scope="module")
def hf_lm(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.BioGptForCausalLM(transformers.BioGptConfig(**SMALL)).eval()
    path = tmp_path_factory.mktemp("hf_biogpt")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def lm(hf_lm):
    return from_pretrained(hf_lm[1])


def _ids(batch=2, length=7, seed=0, vocab=SMALL["vocab_size"]):
    return jnp.asarray(np.random.RandomState(seed).randint(2, vocab, (batch, length)), jnp.int32)


def _same_tree(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_config_defaults_are_microsoft_biogpt_and_round_trip_through_transformers():
    ours, ref = BioGptConfig(), transformers.BioGptConfig()
    for key, value in ours.to_dict().items():
        if key not in ("id2label", "label2id", "architectures", "classifier_dropout"):
            assert getattr(ref, key) == value, key
    assert (ours.vocab_size, ours.hidden_size, ours.num_hidden_layers) == (42384, 1024, 24)
    assert (ours.num_attention_heads, ours.intermediate_size) == (16, 4096)
    assert BioGptConfig.from_dict(ref.to_dict()).replace(id2label=None) == ours
    back = transformers.BioGptConfig(**ours.to_dict())
    assert back.scale_embedding and back.pad_token_id == 1


def test_microsoft_biogpt_config_json_is_accepted():
    """The keys of the published microsoft/biogpt config.json (written by transformers 4.x)."""
    published = {
        "activation_dropout": 0.0,
        "architectures": ["BioGptForCausalLM"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-12,
        "layerdrop": 0.0,
        "max_position_embeddings": 1024,
        "model_type": "biogpt",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "pad_token_id": 1,
        "scale_embedding": True,
        "torch_dtype": "float32",
        "transformers_version": "4.25.0.dev0",
        "use_cache": True,
        "vocab_size": 42384,
    }
    assert BioGptConfig.from_dict(published) == BioGptConfig()


def test_constants_are_the_ones_the_reference_really_uses(hf_lm):
    """LayerNorm eps (not config.layer_norm_eps), position offset, embed scale, q scaling, tying."""
    model, _ = hf_lm
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * SMALL["num_hidden_layers"] + 1
    assert {m.eps for m in norms} == {BioGptConfig.REFERENCE_LAYER_NORM_EPS}
    assert model.config.layer_norm_eps != BioGptConfig.REFERENCE_LAYER_NORM_EPS
    biogpt = model.biogpt
    assert biogpt.embed_positions.offset == BioGptConfig.POSITION_OFFSET
    config = BioGptConfig(**SMALL)
    assert biogpt.embed_tokens.embed_scale == pytest.approx(config.embed_scale)
    assert BioGptConfig(**SMALL, scale_embedding=False).embed_scale == 1.0
    attn = biogpt.layers[0].self_attn
    assert attn.scaling == pytest.approx(config.head_dim**-0.5)
    assert model.output_projection.weight is biogpt.embed_tokens.weight


def test_config_refuses_what_is_not_implemented():
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        BioGptConfig.from_dict({"model_type": "biogpt", "tie_word_embeddings": False})
    with pytest.raises(ConfigError, match="rope_theta"):
        BioGptConfig.from_dict({"model_type": "biogpt", "rope_theta": 1e4})
    with pytest.raises(ConfigError, match="multiple"):
        BioGptConfig(hidden_size=30, num_attention_heads=4)


def test_pytorch_bin_with_tied_copy_loads_like_safetensors(hf_lm, tmp_path):
    model, path = hf_lm
    state = model.state_dict()
    assert "output_projection.weight" in state  # the tied copy that the table drops
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    _same_tree(from_pretrained(tmp_path).params, from_pretrained(path).params)


def test_convert_writes_our_format_and_reloads(hf_lm, lm, tmp_path):
    dst = convert(hf_lm[1], tmp_path / "out")
    _same_tree(load_params(dst), lm.params)
    again = from_pretrained(dst)
    assert type(again.module) is BioGptForCausalLM
    ids = _ids()
    np.testing.assert_array_equal(again(ids).logits, lm(ids).logits)


def test_base_model_and_heads_from_a_causal_lm_checkpoint(hf_lm, caplog):
    _, path = hf_lm
    base = from_pretrained(path, architecture="BioGptModel")
    lm = from_pretrained(path)
    _same_tree(base.params, lm.params["biogpt"])
    with caplog.at_level(logging.WARNING):
        clf = from_pretrained(path, architecture="BioGptForSequenceClassification", num_labels=3)
    assert "score/kernel" in caplog.text
    assert clf.params["score"]["kernel"].shape == (SMALL["hidden_size"], 3)
    assert "bias" not in clf.params["score"]


def test_missing_and_unexpected_tensors_reported_together(hf_lm, tmp_path):
    model, path = hf_lm
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["biogpt.layers.1.fc2.bias"]
    state["biogpt.layers.0.extra.weight"] = np.zeros(3, np.float32)
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path)
    assert "fc_out/bias" in str(err.value) and "layers.0.extra.weight" in str(err.value)


def test_decode_steps_reuse_one_compilation_and_write_in_place(lm):
    """A whole decode under jit: prefill + steps compile twice in all; the cache shape is fixed."""
    ids = _ids(batch=2, length=9)
    cache = lm.config.init_cache(2, 12)
    step = jax.jit(lambda p, ids, c: lm.module.apply({"params": p}, ids, cache=c))
    out = step(lm.params, ids[:, :4], cache)
    shapes = jax.tree.map(jnp.shape, out.cache)
    for t in range(4, 9):
        out = step(lm.params, ids[:, t : t + 1], out.cache)
        assert jax.tree.map(jnp.shape, out.cache) == shapes
    assert step._cache_size() == 2
    assert int(out.cache.index) == 9
    for key in out.cache.key:
        np.testing.assert_array_equal(key[:, :, 9:], 0.0)  # unwritten slots untouched
    full = lm(ids)
    np.testing.assert_allclose(out.logits[:, 0], full.logits[:, -1], atol=1e-5)


def test_a_decode_step_attends_over_the_cache_as_stored(lm):
    """The cache is one heads-major [B, N, S, H] array per layer, as the attention matmuls read
    it: a compiled decode step transposes, slices or copies nothing of cache size (a [B, S, N, H]
    cache cost one transposed copy of every layer's keys and values per generated token, a
    stacked [L, B, N, S, H] one a sliced copy of every layer)."""
    slots = 37  # a size no other axis has
    cache = lm.config.init_cache(2, slots)
    heads, head_dim = lm.config.num_attention_heads, lm.config.head_dim
    assert len(cache.key) == len(cache.value) == SMALL["num_hidden_layers"]
    assert {x.shape for x in cache.key + cache.value} == {(2, heads, slots, head_dim)}
    # the cache donated, as a decoding loop carries it: written in place, not copied first
    step = jax.jit(lambda p, ids, c: lm.module.apply({"params": p}, ids, cache=c), donate_argnums=2)
    hlo = step.lower(lm.params, _ids(batch=2, length=1), cache).compile().as_text()
    # every instruction's (result dims, opcode), e.g. ("2,5,37,6", "transpose")
    ops = re.findall(r"= \w+\[([\d,]*)\]\{[^}]*\} ([\w-]+)\(", hlo)
    with_slots = [(dims, op) for dims, op in ops if str(slots) in dims.split(",")]
    assert with_slots, "found no instruction over the cache slots: the check below proves nothing"
    size = 2 * heads * slots * head_dim
    big = [(dims, op) for dims, op in with_slots if math.prod(map(int, dims.split(","))) >= size]
    assert big, "found no instruction of a layer's cache size"
    assert [(dims, op) for dims, op in big if op in ("transpose", "slice", "copy")] == []


def test_beam_search_moves_no_whole_cache(lm):
    """A compiled beam search (`decode` under jit) reorders the cache by its written slots, in
    place: no instruction gathers, transposes, slices or copies a whole layer's cache (the
    stacked cache was gathered whole, every layer sliced out, at every step)."""
    ids = _ids(batch=1, length=5)
    run = jax.jit(lambda p, ids: decode(lm.module, p, ids, max_new_tokens=18, num_beams=5))
    hlo = run.lower(lm.params, ids).compile().as_text()
    heads, head_dim = lm.config.num_attention_heads, lm.config.head_dim
    size = 5 * heads * (16 + 32) * head_dim  # 5 beams, 16 prompt + 32 slots for new tokens
    ops = re.findall(r"= \w+\[([\d,]*)\]\{[^}]*\} ([\w-]+)\(", hlo)
    big = [(d, op) for d, op in ops if d and math.prod(map(int, d.split(","))) >= size]
    assert "dynamic-update-slice" in {op for _, op in big}, "no cache write: this proves nothing"
    moves = ("gather", "transpose", "slice", "dynamic-slice", "copy")
    assert [(d, op) for d, op in big if op in moves] == []


def test_reorder_moves_the_written_slots_of_every_layer():
    rng = np.random.default_rng(0)
    for slots, index in ((48, 21), (48, 48), (37, 9)):  # 37: not a multiple of REORDER_SLOTS
        cache = KVCache.zeros(2, 3, slots, 2, 4)
        cache = cache.replace(
            key=tuple(jnp.asarray(rng.standard_normal(k.shape, np.float32)) for k in cache.key),
            value=tuple(jnp.asarray(rng.standard_normal(v.shape, np.float32)) for v in cache.value),
            index=jnp.int32(index),
        )
        rows = jnp.asarray([2, 2, 0])
        moved = jax.jit(KVCache.reorder)(cache, rows)
        for old, new in zip(cache.key + cache.value, moved.key + moved.value, strict=True):
            np.testing.assert_array_equal(new[:, :, :index], old[rows][:, :, :index])
            if slots % REORDER_SLOTS == 0:  # whole blocks of written slots move, no others
                kept = -(-index // REORDER_SLOTS) * REORDER_SLOTS
                np.testing.assert_array_equal(new[:, :, kept:], old[:, :, kept:])
        assert int(moved.index) == index


def test_cache_overflow_is_an_error_eagerly_and_nan_under_jit(lm):
    ids = _ids(batch=1, length=3)
    cache = lm.config.init_cache(1, 4)
    out = lm(ids, cache=cache)
    with pytest.raises(ValueError, match="cache is full"):
        lm(ids[:, :2], cache=out.cache)
    jitted = jax.jit(lambda c: lm.module.apply({"params": lm.params}, ids[:, :2], cache=c))
    assert np.isnan(np.asarray(jitted(out.cache).logits)).all()
    assert np.isfinite(np.asarray(jitted(cache).logits)).all()


def test_bad_inputs_are_clear_errors(lm):
    ids = _ids(batch=2, length=5)
    with pytest.raises(ValueError, match="attention_mask must be"):
        lm(ids, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask must be"):
        lm(ids, jnp.ones((2, 5), jnp.int32), cache=lm.config.init_cache(2, 8))
    with pytest.raises(ValueError, match="cache batch"):
        lm(ids, cache=lm.config.init_cache(3, 8))
    with pytest.raises(ValueError, match="outside"):
        lm(ids.at[0, 0].set(SMALL["vocab_size"]))
    too_long = _ids(batch=1, length=SMALL["max_position_embeddings"] + 1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm(too_long)


def test_left_padding_gives_the_unpadded_result(lm):
    """Positions come from the mask: a left-padded row equals the same tokens unpadded."""
    ids = _ids(batch=1, length=6)
    padded = jnp.concatenate([jnp.ones((1, 3), jnp.int32), ids], axis=1)
    mask = jnp.asarray([[0, 0, 0] + [1] * 6], jnp.int32)
    np.testing.assert_allclose(lm(padded, mask).logits[:, 3:], lm(ids).logits, atol=1e-5)


def test_sequence_classifier_without_pad_id_needs_batch_one():
    config = BioGptConfig(**SMALL, pad_token_id=None)
    module = BioGptForSequenceClassification(config)
    ids = _ids(batch=2, length=5)
    params = module.init(jax.random.key(0), ids[:1])["params"]
    assert module.apply({"params": params}, ids[:1]).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="pad_token_id"):
        module.apply({"params": params}, ids)
    # a classifier's output has no cache to hand back: decoding with one is refused, not dropped
    cache = KVCache.zeros(2, 1, 8, 5, 6)
    with pytest.raises(ValueError, match="does not return a KV cache"):
        module.apply({"params": params}, ids[:1], cache=cache)


@pytest.mark.slow
def test_gradient_checkpointing_and_dropout(lm):
    ids = _ids()
    remat = lm.module.clone(gradient_checkpointing=True)

    def loss(module, params, **kw):
        return module.apply({"params": params}, ids, **kw).logits.sum()

    g_plain = jax.grad(lambda p: loss(lm.module, p))(lm.params)
    g_remat = jax.grad(lambda p: loss(remat, p))(lm.params)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(g_plain["biogpt"]["embed_positions"]["embedding"]).sum()) > 0

    def train(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return lm.module.apply({"params": lm.params}, ids, deterministic=False, rngs=rngs).logits

    assert not np.allclose(train(0), lm(ids).logits)
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
