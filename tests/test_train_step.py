"""train_step behaviour on a small random BERT: dropout from the passed RNG, remat, bfloat16
compute with float32 masters, learning, and exact resume from a checkpoint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_grads import ZERO_GRAD_PATHS, ZERO_GRAD_RTOL

from biomed_jax import BertConfig, BertForTokenClassification, CheckpointError, train
from biomed_jax.loading import init_params
from biomed_jax.trees import flatten

CONFIG = BertConfig(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=24,
    num_labels=3,
)
# Remat recomputes the forward pass inside the backward one; XLA fuses it differently, so gradients
# agree to float32 round-off (measured worst 2e-7 of a tensor's largest gradient), not bitwise.
REMAT_RTOL = 1e-6
# bfloat16 compute (float32 masters) vs float32 over 8 steps of the same run: measured worst
# |loss difference| 1.4e-4 on losses ~1.1 (CPU); the bound is about 7x.
BF16_LOSS_ATOL = 1e-3


def _batches(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        ids = rng.randint(1, CONFIG.vocab_size, (4, 16)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, 10:] = 0
        labels = (ids % 3).astype(np.int32)  # learnable: the label is a function of the token
        labels[mask == 0] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.fixture(scope="module")
def params():
    return init_params(BertForTokenClassification(CONFIG), seed=0)


def _state(params, **kw):
    tx = kw.pop("tx", None) or train.create_optimizer(3e-3, 20, warmup_steps=2, weight_decay=0.01)
    return train.create_train_state(BertForTokenClassification(CONFIG), params, tx, **kw)


def test_dropout_masks_come_from_the_rng(params):
    state = _state(params)
    batch = _batches(1)[0]
    loss = jax.jit(lambda b, r: train.compute_loss(state, state.params, b, r))
    a, b = loss(batch, jax.random.key(1)), loss(batch, jax.random.key(1))
    c, off = loss(batch, jax.random.key(2)), loss(batch, None)
    assert float(a) == float(b)
    assert float(a) != float(c)
    assert float(a) != float(off) and float(c) != float(off)


def test_dropout_draws_from_an_rbg_key_of_the_rng(params):
    """compute_loss's masks are those of `dropout_key(rng)`: an "rbg" key, one per rng whether
    typed or raw, keeping 1 - rate of the units."""
    import flax.linen as nn

    state = _state(params)
    batch = _batches(1)[0]
    derived = train.dropout_key(jax.random.key(5))
    assert str(jax.random.key_impl(derived)) == "rbg"
    raw = train.dropout_key(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(jax.random.key_data(raw), jax.random.key_data(derived))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = state.apply_fn(
        {"params": state.params}, **inputs, deterministic=False, rngs={"dropout": derived}
    )
    want = state.loss_fn(out.logits, batch["labels"])
    assert float(train.compute_loss(state, state.params, batch, jax.random.key(5))) == float(want)
    dropped = nn.Dropout(0.1).apply(
        {}, jnp.ones(200_000), deterministic=False, rngs={"dropout": derived}
    )
    assert 0.895 < float((dropped != 0).mean()) < 0.905


def test_remat_gives_identical_gradients(params):
    batch = _batches(1)[0]
    grads = []
    for remat in (False, True):
        state = _state(params, gradient_checkpointing=remat)
        fn = jax.jit(
            jax.grad(lambda p, s=state: train.compute_loss(s, p, batch, jax.random.key(3)))
        )
        grads.append(jax.device_get(fn(state.params)))
    off, on = flatten(grads[0]), flatten(grads[1])
    largest = max(np.abs(g).max() for g in off.values())
    for path, g in off.items():
        diff = np.abs(on[path] - g).max()
        if path.endswith(ZERO_GRAD_PATHS):  # exact gradient 0: both sides round-off
            assert max(np.abs(g).max(), np.abs(on[path]).max()) <= ZERO_GRAD_RTOL * largest
        else:
            assert diff <= REMAT_RTOL * np.abs(g).max(), (path, diff)


def test_bf16_training_tracks_fp32_and_keeps_fp32_masters(params):
    batches = _batches(8)
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", jnp.bfloat16)):
        state = _state(params, dtype=dtype)
        run = []
        for b in batches:
            state, metrics = train.train_step(state, b, None)
            run.append(float(metrics["loss"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        losses[name] = np.array(run)
    assert np.abs(losses["bf16"] - losses["fp32"]).max() <= BF16_LOSS_ATOL, losses
    assert losses["fp32"][-1] < losses["fp32"][0] - 0.05  # it learns


def test_resume_from_checkpoint_gives_the_same_next_loss(params, tmp_path):
    tx = train.create_optimizer(3e-3, 20, warmup_steps=2, weight_decay=0.01, accumulation_steps=2)
    batches = _batches(6)
    keys = jax.random.split(jax.random.key(7), 6)

    state = _state(params, tx=tx)
    for i in range(3):
        state, _ = train.train_step(state, batches[i], keys[i])
    train.save_train_state(tmp_path / "state.safetensors", state)
    uninterrupted = []
    for i in range(3, 6):
        state, metrics = train.train_step(state, batches[i], keys[i])
        uninterrupted.append(float(metrics["loss"]))

    resumed = train.restore_train_state(tmp_path / "state.safetensors", _state(params, tx=tx))
    assert int(resumed.step) == 3
    again = []
    for i in range(3, 6):
        resumed, metrics = train.train_step(resumed, batches[i], keys[i])
        again.append(float(metrics["loss"]))
    assert again == uninterrupted
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_rejects_a_state_of_another_shape(params, tmp_path):
    train.save_train_state(tmp_path / "s.safetensors", _state(params))
    other = init_params(BertForTokenClassification(CONFIG.replace(num_labels=4)))
    with pytest.raises(CheckpointError, match="classifier"):
        train.restore_train_state(
            tmp_path / "s.safetensors",
            train.create_train_state(
                BertForTokenClassification(CONFIG.replace(num_labels=4)),
                other,
                train.adamw(),
            ),
        )
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        train.restore_train_state(tmp_path / "bad.safetensors", _state(params))


def test_batch_errors_name_the_problem(params):
    state = _state(params)
    batch = _batches(1)[0]
    with pytest.raises(ValueError, match="labels"):
        train.compute_loss(state, state.params, {"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="unknown batch keys"):
        train.compute_loss(state, state.params, {**batch, "label": batch["labels"]})
