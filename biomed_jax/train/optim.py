"""The Hugging Face Trainer's optimizer in optax: AdamW, linear warmup then linear decay, global-norm
clipping, no weight decay on biases and LayerNorm parameters, optional gradient accumulation.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def linear_schedule_with_warmup(
    learning_rate: float, num_train_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """`transformers.get_linear_schedule_with_warmup`: 0 -> lr over warmup, then lr -> 0 at the end.

    Counted in optimizer updates from 0, so with warmup the first update uses lr 0, as in HF.
    """
    if num_train_steps <= 0 or not 0 <= warmup_steps <= num_train_steps:
        raise ValueError(
            f"need 0 <= warmup_steps ({warmup_steps}) <= num_train_steps ({num_train_steps}), "
            "num_train_steps > 0"
        )
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    decay = optax.linear_schedule(learning_rate, 0.0, num_train_steps - warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: not biases, not LayerNorm (`scale`) parameters.

    HF's Trainer excludes every parameter whose name contains "bias" and every LayerNorm weight;
    in our trees LayerNorm weights are the only leaves named `scale`.
    """

    def decays(path: tuple, _: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return "bias" not in name and name != "scale"

    return jax.tree_util.tree_map_with_path(decays, params)


def adamw(
    learning_rate: float | optax.Schedule = 5e-5,
    *,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
    """AdamW as `torch.optim.AdamW` with HF's decay grouping (defaults: the Trainer's).

    Clipping (`max_grad_norm`, None to disable) acts on the accumulated gradient; with
    `accumulation_steps` > 1 every call to `update` takes one micro-batch gradient and the
    parameters change on every k-th call, with the mean of the k gradients.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
    parts.append(
        optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask
        )
    )
    tx = optax.chain(*parts)
    if accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation_steps).gradient_transformation()
    return tx


def create_optimizer(
    learning_rate: float,
    num_train_steps: int,
    *,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
    """AdamW on the linear warmup/decay schedule; `num_train_steps` counts optimizer updates."""
    schedule = linear_schedule_with_warmup(learning_rate, num_train_steps, warmup_steps)
    return adamw(
        schedule,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        accumulation_steps=accumulation_steps,
    )
