"""Task losses with Hugging Face's semantics (`BertForSequenceClassification`, `...TokenClassification`).

Axis legend: B batch, T length, C number of labels.
All losses are computed in float32 whatever the compute dtype, and reduce by the mean as torch does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100  # torch CrossEntropyLoss default: labels equal to it carry no loss
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; logits [B, C] float, labels [B] int (no ignored entries)."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def binary_cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean sigmoid BCE over every (example, label) entry, as torch `BCEWithLogitsLoss`; [B, C]."""
    logits = logits.astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()


def mse_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error; one label is squeezed as HF does ([B, 1] logits vs [B] labels)."""
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    if logits.shape[-1] == 1 and labels.ndim == logits.ndim - 1:
        logits = logits[..., 0]
    if logits.shape != labels.shape:
        raise ValueError(f"regression logits {logits.shape} and labels {labels.shape} differ")
    return jnp.square(logits - labels).mean()


def token_classification_loss(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
) -> jax.Array:
    """Mean cross-entropy over tokens whose label is not `ignore_index`; logits [B, T, C], labels [B, T].

    Padding and continuation word pieces carry `ignore_index` (-100, as HF). With no labelled token
    at all the loss is 0 (torch returns NaN there).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"token logits {logits.shape} do not fit labels {labels.shape}")
    valid = labels != ignore_index  # [B, T]
    safe = jnp.where(valid, labels, 0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    count = valid.sum()
    return jnp.where(valid, per_token, 0.0).sum() / jnp.maximum(count, 1)


def problem_type_for(num_labels: int, labels: Any, problem_type: str | None = None) -> str:
    """HF's rule: 1 label -> regression; integer labels -> single label; else multi-label."""
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        return problem_type
    if num_labels == 1:
        return "regression"
    if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(
    logits: jax.Array, labels: jax.Array, problem_type: str | None = None
) -> jax.Array:
    """The loss `BertForSequenceClassification` computes for `labels`; logits [B, C]."""
    kind = problem_type_for(logits.shape[-1], labels, problem_type)
    if kind == "regression":
        return mse_loss(logits, labels)
    if kind == "single_label_classification":
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"single-label labels must be [B], got {labels.shape}")
        return cross_entropy_loss(logits, labels)
    if labels.shape != logits.shape:
        raise ValueError(f"multi-label labels must be [B, C] like logits, got {labels.shape}")
    return binary_cross_entropy_loss(logits, labels)


def loss_for_model(module: Any) -> LossFn:
    """The default loss of a task model: token or sequence classification (config.problem_type)."""
    name = type(module).__name__
    if name.endswith("ForTokenClassification"):
        return token_classification_loss
    if name.endswith("ForSequenceClassification"):
        problem_type = module.config.problem_type
        return lambda logits, labels: sequence_classification_loss(logits, labels, problem_type)
    raise ValueError(f"no default loss for {name}; pass loss_fn=(logits, labels) -> scalar")
