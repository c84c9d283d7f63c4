"""Losses against torch.nn.functional, with HF's problem-type rules and ignore index -100."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomed_jax import train
from biomed_jax.train.losses import problem_type_for

RTOL = 1e-6  # float32


def _close(ours, ref):
    assert float(ours) == pytest.approx(float(ref), rel=RTOL)


def test_single_label_cross_entropy_matches_torch():
    rng = np.random.RandomState(0)
    logits, labels = rng.randn(5, 4).astype(np.float32) * 3, rng.randint(0, 4, 5)
    ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    _close(train.sequence_classification_loss(jnp.asarray(logits), jnp.asarray(labels)), ref)


def test_multi_label_bce_matches_torch():
    rng = np.random.RandomState(1)
    logits = rng.randn(5, 4).astype(np.float32) * 20  # large logits: stable log-sigmoid needed
    labels = (rng.rand(5, 4) > 0.5).astype(np.float32)
    ref = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels))
    _close(train.sequence_classification_loss(jnp.asarray(logits), jnp.asarray(labels)), ref)


def test_regression_squeezes_one_label_as_hf():
    rng = np.random.RandomState(2)
    logits, labels = rng.randn(6, 1).astype(np.float32), rng.randn(6).astype(np.float32)
    ref = F.mse_loss(torch.tensor(logits).squeeze(), torch.tensor(labels))
    _close(train.sequence_classification_loss(jnp.asarray(logits), jnp.asarray(labels)), ref)


def test_token_loss_ignores_minus_100_as_torch():
    rng = np.random.RandomState(3)
    logits = rng.randn(2, 7, 5).astype(np.float32)
    labels = rng.randint(0, 5, (2, 7))
    labels[0, :2] = labels[1, 5:] = -100
    ref = F.cross_entropy(torch.tensor(logits).view(-1, 5), torch.tensor(labels).view(-1))
    _close(train.token_classification_loss(jnp.asarray(logits), jnp.asarray(labels)), ref)


def test_token_loss_with_no_labelled_token_is_zero_not_nan():
    loss = train.token_classification_loss(jnp.ones((1, 3, 2)), jnp.full((1, 3), -100))
    assert float(loss) == 0.0


def test_problem_type_rules_follow_hf():
    assert problem_type_for(1, np.zeros(2, np.float32)) == "regression"
    assert problem_type_for(3, np.zeros(2, np.int32)) == "single_label_classification"
    assert problem_type_for(3, np.zeros((2, 3), np.float32)) == "multi_label_classification"
    with pytest.raises(ValueError, match="problem_type"):
        problem_type_for(3, np.zeros(2), "ranking")


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="multi-label labels"):
        train.sequence_classification_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="single-label labels"):
        train.sequence_classification_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="token logits"):
        train.token_classification_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 4), jnp.int32))


def test_loss_for_model_rejects_models_without_a_task():
    from biomed_jax import BertConfig, BertModel

    with pytest.raises(ValueError, match="no default loss"):
        train.loss_for_model(BertModel(BertConfig()))
