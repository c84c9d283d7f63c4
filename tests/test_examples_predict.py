"""The examples' evaluation pass: length-bucketed batches give the logits of the full-width pass,
in input order, and compile one shape per bucket."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import BertConfig, BertForSequenceClassification, BertForTokenClassification, train
from biomed_jax.examples import _common
from biomed_jax.loading import init_params

CONFIG = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=3,
)


def _data(n=11, width=64, seed=0):
    """Right-padded rows of 1..width real tokens, two segments."""
    rng = np.random.RandomState(seed)
    lengths = np.concatenate([[width, 1, 9], rng.randint(2, 40, n - 3)])
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, rng.randint(5, 50, (n, width)), 0).astype(np.int32)
    types = (np.arange(width)[None] >= lengths[:, None] // 2).astype(np.int32) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, lengths


def test_length_bucket():
    assert [_common.length_bucket(n, 64) for n in (0, 1, 8, 9, 16, 17, 33, 64)] == [
        8, 8, 8, 16, 16, 32, 64, 64,
    ]  # fmt: skip
    assert _common.length_bucket(100, 96) == 96  # never past the data's width


@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForTokenClassification])
def test_bucketed_pass_equals_the_full_width_pass(cls):
    module = cls(BertConfig(**CONFIG))
    state = train.create_train_state(
        module, init_params(module, 0), train.create_optimizer(1e-3, 1)
    )
    data, _ = _data()
    full = np.asarray(
        module.apply(
            {"params": state.params}, **{k: jnp.asarray(v) for k, v in data.items()}
        ).logits
    )
    train.predict.clear_cache()
    got = _common.predict_all(state, data, batch_size=4)
    assert got.shape == full.shape
    if got.ndim == 3:  # token logits: compared on real tokens; zero past each batch's bucket
        valid = data["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[valid], full[valid], rtol=0, atol=2e-5)
        assert np.isfinite(got).all()
    else:
        np.testing.assert_allclose(got, full, rtol=0, atol=2e-5)
    # Sorted by length, batches of 4: [64, 39.., ..], [..], [9, .., 1] -> at most 3 buckets.
    assert train.predict._cache_size() <= 3
