"""Pure-function use: `generate` / `decode` inside a caller's `jax.jit` and `jax.vmap`, and
`jax.export` of the forward passes with symbolic batch and length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from biomed_jax import (
    BertConfig,
    BertForMaskedLM,
    BioGptConfig,
    BioGptForCausalLM,
    BioGptForSequenceClassification,
    generate,
)
from biomed_jax.generation import DecodeOutput, decode
from biomed_jax.models.common import init_params
from conformance import generation as suite

STRATEGIES = {
    "greedy": dict(),
    "beam3-early": dict(num_beams=3, early_stopping=True, num_return_sequences=2),
    "sample": dict(do_sample=True, top_k=20, temperature=0.8),
}


@pytest.fixture(scope="module")
def lm():
    """A small seeded BioGPT whose EOS wins on some rows, so rows end at different lengths."""
    _, ours = suite.build_models(dict(suite.SMALL, vocab_size=500), eos_scale=6.0)
    return ours


def _prompts(batch=3, length=6, seed=0):
    ids = np.random.default_rng(seed).integers(4, 500, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :2] = 0  # one left-padded row
    ids[0, :2] = 1
    return ids, mask


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_generate_runs_inside_a_callers_jit(lm, strategy):
    ids, mask = _prompts()
    kwargs = dict(STRATEGIES[strategy], max_new_tokens=12, rng=jax.random.key(0))
    host = np.asarray(generate(lm.module, lm.params, ids, mask, **kwargs))

    @jax.jit
    def run(params, ids, mask):
        return generate(lm.module, params, ids, mask, **kwargs)

    traced = np.asarray(run(lm.params, ids, mask))
    rows = host.shape[0]
    assert traced.shape == (rows, ids.shape[1] + 12)  # fixed: prompt + max_new_tokens
    np.testing.assert_array_equal(traced[:, : host.shape[1]], host)
    np.testing.assert_array_equal(traced[:, host.shape[1] :], lm.config.pad_token_id)
    out = decode(lm.module, lm.params, ids, mask, **kwargs)  # the public jittable function
    assert isinstance(out, DecodeOutput) and int(out.length) == host.shape[1]
    np.testing.assert_array_equal(np.asarray(out.sequences), traced)


def test_decode_vmaps_over_prompt_sets_and_keys(lm):
    sets = np.stack([_prompts(seed=s)[0] for s in range(3)])  # [K, B, T]
    masks = np.stack([_prompts(seed=s)[1] for s in range(3)])
    kwargs = dict(max_new_tokens=8)
    batched = jax.vmap(lambda i, m: decode(lm.module, lm.params, i, m, **kwargs))(sets, masks)
    for k in range(3):
        alone = decode(lm.module, lm.params, sets[k], masks[k], **kwargs)
        np.testing.assert_array_equal(batched.sequences[k], alone.sequences)
        assert int(batched.length[k]) == int(alone.length)
    keys = jax.random.split(jax.random.key(1), 4)
    ids, mask = _prompts()
    sampled = jax.vmap(
        lambda key: generate(
            lm.module, lm.params, ids, mask, max_new_tokens=8, do_sample=True, rng=key
        )
    )(keys)
    for k in range(4):
        alone = decode(
            lm.module, lm.params, ids, mask, max_new_tokens=8, do_sample=True, rng=keys[k]
        )
        np.testing.assert_array_equal(sampled[k], alone.sequences)
    assert len({np.asarray(s).tobytes() for s in sampled}) > 1  # the keys differ


def test_traced_inputs_still_get_their_shape_checks(lm):
    ids, mask = _prompts()

    @jax.jit
    def wrong_mask(ids):
        return generate(lm.module, lm.params, ids, mask[:, :3], max_new_tokens=4)

    with pytest.raises(ValueError, match="attention_mask shape"):
        wrong_mask(ids)
    with pytest.raises(TypeError, match="input_ids must be integers"):
        jax.jit(lambda x: generate(lm.module, lm.params, x, max_new_tokens=4))(ids * 1.0)
    with pytest.raises(ValueError, match="max_position_embeddings"):  # static: still refused
        jax.jit(lambda x: generate(lm.module, lm.params, x, max_new_tokens=500))(ids)


BERT = BertConfig(
    vocab_size=61,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    max_position_embeddings=64,
)
BIOGPT = BioGptConfig(**{k: getattr(BERT, k) for k in BERT.to_dict() if k in (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings")})  # fmt: skip


@pytest.mark.parametrize(
    "module",
    [BertForMaskedLM(BERT), BioGptForCausalLM(BIOGPT), BioGptForSequenceClassification(BIOGPT)],
    ids=lambda m: type(m).__name__,
)
def test_export_with_symbolic_batch_and_length(module):
    params = init_params(module, seed=1)
    b, t = export.symbolic_shape("b, t")
    spec = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def forward(params, ids, mask):
        return module.apply({"params": params}, ids, mask).logits

    exported = export.export(jax.jit(forward))(params, spec, spec)
    assert [str(a.shape) for a in exported.in_avals[-2:]] == ["(b, t)"] * 2
    for shape in [(2, 7), (3, 12)]:
        rng = np.random.default_rng(shape[1])
        ids = rng.integers(2, 61, shape).astype(np.int32)
        mask = np.ones(shape, np.int32)
        mask[0, -2:] = 0
        ids[0, -2:] = 1  # pad_token_id, for the sequence classifier's pooling
        got = np.asarray(exported.call(params, ids, mask))
        want = np.asarray(jax.jit(forward)(params, ids, mask))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
