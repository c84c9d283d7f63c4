"""BERT module behaviour: transformations, dtypes, errors on bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from biomed_jax.loading import init_params

CONFIG = BertConfig(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=16,
)


@pytest.fixture(scope="module")
def model():
    module = BertForMaskedLM(CONFIG)
    return module, init_params(module)


def _batch(batch=3, length=8, seed=0):
    ids = np.random.RandomState(seed).randint(0, CONFIG.vocab_size, (batch, length))
    mask = np.ones((batch, length), np.int32)
    if batch > 1:
        mask[1, 5:] = 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


def test_jit_matches_eager_and_vmap(model):
    module, params = model
    ids, mask = _batch()
    eager = module.apply({"params": params}, ids, mask).logits
    jitted = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)(params, ids, mask)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    per_row = jax.vmap(lambda i, m: module.apply({"params": params}, i[None], m[None]).logits[0])(
        ids, mask
    )
    np.testing.assert_allclose(per_row, eager, atol=1e-5)


def test_grad_is_finite_and_nonzero(model):
    module, params = model
    ids, mask = _batch()

    def loss(p):
        return jnp.mean(module.apply({"params": p}, ids, mask).logits ** 2)

    grads = jax.grad(loss)(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert np.abs(grads["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]).max() > 0


def test_padding_does_not_change_valid_positions(model):
    module, params = model
    ids, _ = _batch(batch=1, length=6)
    short = module.apply({"params": params}, ids[:, :4]).logits
    padded_ids = ids.at[:, 4:].set(0)
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
    padded = module.apply({"params": params}, padded_ids, mask).logits
    np.testing.assert_allclose(padded[:, :4], short, atol=1e-5)


def test_fully_padded_row_is_finite(model):
    module, params = model
    ids, _ = _batch(batch=2)
    mask = jnp.zeros_like(ids).at[0].set(1)
    out = module.apply(
        {"params": params}, ids, mask, output_attentions=True, output_hidden_states=True
    )
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out))


def test_out_of_range_ids_are_an_error(model):
    module, params = model
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"outside \[0, 97\)"):
        module.apply({"params": params}, ids.at[0, 0].set(97), mask)
    with pytest.raises(ValueError, match="outside"):
        module.apply({"params": params}, ids.at[0, 0].set(-1), mask)
    with pytest.raises(ValueError, match="token_type_ids"):
        module.apply({"params": params}, ids, mask, jnp.full_like(ids, 2))


def test_out_of_range_ids_under_jit_give_nan_not_a_clamped_row(model):
    module, params = model
    ids, mask = _batch()
    logits = jax.jit(lambda i: module.apply({"params": params}, i, mask).logits)(
        ids.at[0, 0].set(1000)
    )
    assert np.isnan(np.asarray(logits[0])).all()
    assert np.isfinite(np.asarray(logits[2])).all()


def test_too_long_input_is_an_error(model):
    module, params = model
    ids = jnp.zeros((1, CONFIG.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        module.apply({"params": params}, ids)


def test_output_fields_and_shapes():
    module = BertModel(CONFIG)
    params = init_params(module)
    ids, mask = _batch()
    out = module.apply(
        {"params": params}, ids, mask, output_hidden_states=True, output_attentions=True
    )
    assert out.last_hidden_state.shape == (3, 8, 32)
    assert out.pooler_output.shape == (3, 32)
    assert len(out.hidden_states) == CONFIG.num_hidden_layers + 1
    assert len(out.attentions) == CONFIG.num_hidden_layers
    assert out.attentions[0].shape == (3, 4, 8, 8)
    np.testing.assert_allclose(out.hidden_states[-1], out.last_hidden_state)
    # attention rows are distributions that ignore padded keys
    probs = np.asarray(out.attentions[1])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.abs(probs[1, :, :, 5:]).max() == 0.0


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    module32 = BertForSequenceClassification(CONFIG)
    module16 = BertForSequenceClassification(CONFIG, dtype=jnp.bfloat16)
    params = init_params(module32)
    ids, mask = _batch()
    out32 = module32.apply({"params": params}, ids, mask).logits
    out16 = module16.apply({"params": params}, ids, mask).logits
    assert out16.dtype == jnp.float32  # logits returned in float32
    np.testing.assert_allclose(out16, out32, atol=0.05)
    assert not np.array_equal(np.asarray(out16), np.asarray(out32))


def test_dropout_uses_the_rng_passed_in(model):
    module, params = model
    ids, mask = _batch()

    def run(seed):
        return module.apply(
            {"params": params},
            ids,
            mask,
            deterministic=False,
            rngs={"dropout": jax.random.key(seed)},
        ).logits

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


def test_bad_precision_is_an_error():
    module = BertModel(CONFIG, precision="fastest")
    with pytest.raises(ValueError, match="precision"):
        module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_params_carry_logical_axis_names(scan_layers):
    module = BertModel(CONFIG, scan_layers=scan_layers)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    specs = nn.get_partition_spec(boxed)["params"]
    layer = specs["encoder"]["layer" if scan_layers else "layer_1"]
    stacked = ("layers",) if scan_layers else ()
    assert tuple(layer["attention"]["query"]["kernel"]) == (*stacked, "embed", "heads")
    assert tuple(specs["embeddings"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
