"""The optimizer against PyTorch: HF's linear schedule, the Trainer's no-decay grouping,
`torch.optim.AdamW` steps (clipping included) fed the same gradients, and gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from test_train_grads import SMALL, to_ours, torch_model

from biomed_jax import train
from biomed_jax.trees import flatten

PARAM_ATOL = 1e-6  # float32 parameters after AdamW steps (values ~0.02-1, updates ~lr)


@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_matches_hf(warmup):
    total, lr = 10, 2e-3
    schedule = train.linear_schedule_with_warmup(lr, total, warmup)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    ref = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
    for step in range(total + 1):
        assert float(schedule(step)) == pytest.approx(ref.get_last_lr()[0], rel=1e-6, abs=1e-12)
        opt.step()
        ref.step()


def test_schedule_rejects_bad_lengths():
    with pytest.raises(ValueError, match="warmup_steps"):
        train.linear_schedule_with_warmup(1e-3, 10, 11)
    with pytest.raises(ValueError, match="accumulation_steps"):
        train.adamw(accumulation_steps=0)


def _decay_names(model) -> set[str]:
    return set(transformers.Trainer.get_decay_parameter_names(None, model))


def test_decay_mask_matches_hf_trainer_grouping():
    arch = "BertForSequenceClassification"
    model = torch_model(arch, SMALL, num_labels=3)
    decay = _decay_names(model)
    flags = {k: np.full(v.shape, k in decay, np.float32) for k, v in model.named_parameters()}
    _, expected = to_ours(arch, model, flags)
    mask = flatten(train.decay_mask(expected))
    for path, value in flatten(expected).items():
        assert mask[path] == bool(value.all()), path
    assert 0 < sum(mask.values()) < len(mask)


def test_adamw_steps_match_torch_given_same_gradients():
    arch = "BertForTokenClassification"
    model = torch_model(arch, SMALL, num_labels=4)
    lr, total, warmup, wd, clip = 1e-3, 6, 1, 0.01, 0.5
    decay = _decay_names(model)
    named = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in named.items() if n in decay], "weight_decay": wd},
        {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)

    _, params = to_ours(arch, model, {k: v.detach().numpy() for k, v in named.items()})
    tx = train.create_optimizer(lr, total, warmup_steps=warmup, weight_decay=wd, max_grad_norm=clip)
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    rng = np.random.RandomState(0)
    for _ in range(3):
        grads = {k: rng.randn(*p.shape).astype(np.float32) * 0.1 for k, p in named.items()}
        for k, p in named.items():
            p.grad = torch.tensor(grads[k])
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        _, our_grads = to_ours(arch, model, grads)
        updates, opt_state = update(our_grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        _, ref = to_ours(arch, model, {k: v.detach().numpy() for k, v in named.items()})
        mine = flatten(params)
        for path, theirs in flatten(ref).items():
            np.testing.assert_allclose(mine[path], theirs, rtol=0, atol=PARAM_ATOL, err_msg=path)


def test_accumulation_averages_micro_batch_gradients():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}
    g1 = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.1) * p, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)

    single = train.adamw(1e-2, weight_decay=0.1, max_grad_norm=0.2)
    expected, _ = single.update(mean, single.init(params), params)

    accumulating = train.adamw(1e-2, weight_decay=0.1, max_grad_norm=0.2, accumulation_steps=2)
    state = accumulating.init(params)
    first, state = accumulating.update(g1, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(first))
    second, _ = accumulating.update(g2, state, params)
    for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
