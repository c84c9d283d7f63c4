"""Fine-tuning: losses, the HF Trainer's optimizer in optax, a jitted train step, checkpoints, NER."""

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
    predict,
    train_step,
)

__all__ = [
    "IGNORE_INDEX",
    "TrainState",
    "adamw",
    "binary_cross_entropy_loss",
    "compute_loss",
    "create_optimizer",
    "create_train_state",
    "cross_entropy_loss",
    "decay_mask",
    "linear_schedule_with_warmup",
    "loss_for_model",
    "mse_loss",
    "predict",
    "restore_train_state",
    "save_train_state",
    "sequence_classification_loss",
    "token_classification_loss",
    "train_step",
]
