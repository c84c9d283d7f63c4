"""Fine-tuning: losses, the HF Trainer's optimizer in optax, a jitted train step, checkpoints, NER.

`import biomed_jax` does not import this package, so inference never imports optax.
"""

from biomed_jax.train.checkpoint import restore_train_state, save_train_state
from biomed_jax.train.losses import (
    IGNORE_INDEX,
    binary_cross_entropy_loss,
    cross_entropy_loss,
    loss_for_model,
    mse_loss,
    sequence_classification_loss,
    token_classification_loss,
)
from biomed_jax.train.metrics import entity_scores, multilabel_micro_f1
from biomed_jax.train.ner import NerEncoding, bio_tags, decode_spans, encode_for_ner
from biomed_jax.train.optim import (
    adamw,
    create_optimizer,
    decay_mask,
    linear_schedule_with_warmup,
)
from biomed_jax.train.step import (
    TrainState,
    compute_loss,
    create_train_state,
    dropout_key,
    predict,
    train_step,
)

__all__ = [
    "IGNORE_INDEX",
    "NerEncoding",
    "TrainState",
    "adamw",
    "binary_cross_entropy_loss",
    "bio_tags",
    "compute_loss",
    "create_optimizer",
    "create_train_state",
    "cross_entropy_loss",
    "decay_mask",
    "decode_spans",
    "dropout_key",
    "encode_for_ner",
    "entity_scores",
    "linear_schedule_with_warmup",
    "loss_for_model",
    "mse_loss",
    "multilabel_micro_f1",
    "predict",
    "restore_train_state",
    "save_train_state",
    "sequence_classification_loss",
    "token_classification_loss",
    "train_step",
]
