"""The attention schedules (all heads at once, one batch row at a time, one (batch, head) pair at a
time) agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import numerics
from biomed_jax.nn import attention
from biomed_jax.nn.layers import row_reduce

B, T, N, H = 2, 9, 3, 8


def _inputs(seed: int = 0):
    rng = np.random.RandomState(seed)
    q, k, v = (jnp.asarray(rng.randn(B, T, N, H).astype(np.float32)) for _ in range(3))
    valid = np.ones((B, T), np.int32)
    valid[1, 5:] = 0  # a padded row
    return q, k, v, jnp.asarray(valid)


def _policy(loop: str | None) -> numerics.Policy:
    """The plain batched schedule (None), or a loop over "rows" or "heads" at these sizes."""
    row_bytes = 4 * N * T * T
    limit = {None: None, "rows": row_bytes, "heads": 0}[loop]
    policy = numerics.PLAIN.replace(per_head_score_bytes=limit)
    assert policy.attention_loop((B, N, T, T)) == loop
    return policy


MASKS = {
    "bidirectional": lambda valid: attention.make_attention_mask(valid),  # [B, 1, 1, S]
    "causal": lambda valid: attention.make_attention_mask(valid, jnp.arange(T)),  # [B, 1, T, S]
    "per_head": lambda valid: (
        jnp.broadcast_to(  # [B, N, T, S], one head sees nothing
            attention.make_attention_mask(valid), (B, N, T, T)
        )
        .at[0, 1]
        .set(False)
    ),
}


def _heads_major(q, k, v, mask, policy):
    """`heads_major_attention` (the KV cache's path) on the same operands."""
    out, probs = attention.heads_major_attention(
        *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), mask, policy=policy
    )
    return jnp.swapaxes(out, 1, 2), probs


@pytest.mark.parametrize("loop", ["rows", "heads"])
@pytest.mark.parametrize("layout", ["tokens", "heads"])
@pytest.mark.parametrize("mask_kind", sorted(MASKS))
def test_schedules_agree_on_outputs_probs_and_grads(mask_kind, layout, loop):
    """All heads at once or in a loop (by row or by pair), with each row's heads moved to the
    front inside it (`dot_product_attention`), or over heads-major operands."""
    q, k, v, valid = _inputs()
    mask = MASKS[mask_kind](valid)
    attend = attention.dot_product_attention if layout == "tokens" else _heads_major

    def forward_and_grad(policy):
        def loss(q, k, v):
            out, probs = attend(q, k, v, mask, policy=policy)
            return (out**2).sum() + (probs * jnp.arange(T)).sum(), (out, probs)

        (_, (out, probs)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            q, k, v
        )
        return out, probs, grads

    batched = forward_and_grad(_policy(None))
    looped = forward_and_grad(_policy(loop))
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(looped)):  # float32 rounding
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=2e-6)
    out, probs, _ = looped
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)
    if mask_kind == "per_head":  # a head with no visible key: uniform, finite
        np.testing.assert_allclose(np.asarray(probs[0, 1]), 1.0 / T, atol=1e-7)


@pytest.mark.parametrize("loop", ["rows", "heads"])
def test_schedules_share_dropout_masks(loop):
    q, k, v, valid = _inputs(1)
    mask = attention.make_attention_mask(valid)

    def dropped(key, loop):
        return attention.dot_product_attention(
            q,
            k,
            v,
            mask,
            policy=_policy(loop),
            dropout_rate=0.3,
            dropout_rng=jax.random.key(key),
        )[0]

    batched = dropped(0, None)
    looped = dropped(0, loop)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=0, atol=2e-6)
    other_key = dropped(1, loop)
    assert np.abs(np.asarray(other_key) - np.asarray(looped)).max() > 1e-3


def test_schedule_choice_follows_score_size():
    cpu, gpu = numerics.Policy.fast("cpu"), numerics.Policy.fast("gpu")
    assert cpu.attention_loop((8, 12, 512, 512)) == "rows"  # 96 MiB of scores, 12 MiB a row
    assert cpu.attention_loop((1, 12, 512, 512)) == "heads"  # one row
    assert cpu.attention_loop((2, 16, 1024, 1024)) == "heads"  # 64 MiB a row
    assert cpu.attention_loop((1, 16, 1, 1024)) is None  # one decoding step
    assert cpu.attention_loop((1, 12, 128, 128)) is None  # 768 KB
    assert gpu.attention_loop((8, 12, 512, 512)) is None  # accelerators: always batched
    assert numerics.PLAIN.attention_loop((8, 12, 512, 512)) is None


def test_row_reduce_avoids_the_reduce_window():
    """A long row reduces in two short stages: the same sums and maxima, and no reduce-window
    (XLA:CPU's rewrite of a long row reduction, twice the time)."""
    x = jnp.asarray(np.random.RandomState(2).randn(3, 512).astype(np.float32))
    for op in (jnp.sum, jnp.max):
        np.testing.assert_allclose(row_reduce(x, op), op(x, axis=-1, keepdims=True), rtol=1e-6)
    assert row_reduce(x, jnp.sum).shape == (3, 1)
    short = x[:, :20]
    np.testing.assert_array_equal(row_reduce(short, jnp.sum), short.sum(-1, keepdims=True))
    if jax.default_backend() != "cpu":
        return
    compiled = lambda f: jax.jit(f).lower(x).compile().as_text()
    assert "reduce-window" in compiled(lambda x: x.sum(-1))  # the rewrite this avoids
    assert "reduce-window" not in compiled(lambda x: row_reduce(x, jnp.sum))
