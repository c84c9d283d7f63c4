"""The "exact" policy's workaround: float32 weight matmuls summed in float64 (`dense_float64_sum`)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax.nn.layers import Dense, Embed, dense_float64_sum
from biomed_jax.numerics import PLAIN, Policy


def _data(seed=0, batch=(2, 3), features_in=512, features_out=48):
    rng = np.random.RandomState(seed)
    x = rng.randn(*batch, features_in).astype(np.float32)
    kernel = (rng.randn(features_in, features_out) * 0.05).astype(np.float32)
    bias = rng.randn(features_out).astype(np.float32)
    return x, kernel, bias


def test_float64_sum_is_correctly_rounded_float32():
    x, kernel, bias = _data()
    exact = x.astype(np.float64) @ kernel.astype(np.float64) + bias
    y = jax.jit(dense_float64_sum)(x, kernel, bias)
    assert y.dtype == jnp.float32 and not jax.config.jax_enable_x64
    half_ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) / 2
    assert np.all(np.abs(np.asarray(y, np.float64) - exact) <= half_ulp * (1 + 1e-6))


def test_dense_sums_in_float64_only_when_the_policy_says_and_only_in_float32():
    exact = Policy.exact()
    assert exact.sums_in_float64(jnp.float32) and not exact.sums_in_float64(jnp.bfloat16)
    assert not Policy.fast().sums_in_float64(jnp.float32) and not PLAIN.sums_in_float64(jnp.float32)
    x, kernel, bias = _data(features_out=16)
    params = {"params": {"kernel": kernel, "bias": bias}}
    y = Dense(16, ("embed", "mlp"), policy=exact).apply(params, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(dense_float64_sum(x, kernel, bias)))
    plain = Dense(16, ("embed", "mlp"), policy=PLAIN).apply(params, x)
    # Same function as the plain float32 matmul: within float32 rounding of |y| <= ~8 (K = 512).
    np.testing.assert_allclose(np.asarray(y), np.asarray(plain), rtol=0, atol=1e-5)
    assert np.abs(np.asarray(y) - np.asarray(plain)).max() > 0  # and not the same kernel


def test_tied_projection_sums_in_float64_under_exact():
    rng = np.random.RandomState(3)
    table = rng.randn(50, 512).astype(np.float32) * 0.05  # [V, D]
    x = rng.randn(2, 3, 512).astype(np.float32)
    params = {"params": {"embedding": table}}

    def attend(policy):
        return np.asarray(Embed(50, 512, policy=policy).apply(params, x, method=Embed.attend))

    exact_sum = x.astype(np.float64) @ table.T.astype(np.float64)
    half_ulp = np.spacing(np.abs(exact_sum).astype(np.float32)).astype(np.float64) / 2
    assert np.all(np.abs(attend(Policy.exact()) - exact_sum) <= half_ulp * (1 + 1e-6))
    np.testing.assert_allclose(attend(PLAIN), exact_sum, rtol=0, atol=1e-5)


@pytest.mark.parametrize("transform", ["vmap", "grad", "remat-grad", "vmap-grad", "scan-grad"])
def test_float64_sum_under_transformations(transform):
    """Same values and gradients as the float32 einsum; no float64 warnings, nothing leaks."""
    x, kernel, bias = _data(features_in=8, features_out=8)

    def plain(x, kernel, bias):
        return jnp.einsum("...i,io->...o", x, kernel, precision="highest") + bias

    def run(dense):
        def loss(x, kernel, bias):
            return jnp.sum(jnp.sin(dense(x, kernel, bias)))

        def scanned(x, kernel, bias):
            step = lambda h, _: (jnp.tanh(dense(h, kernel, bias)), None)
            return jnp.sum(jax.lax.scan(step, x, None, length=2)[0])

        fn = {
            "vmap": jax.vmap(dense, in_axes=(0, None, None)),
            "grad": jax.grad(loss, argnums=(0, 1, 2)),
            "remat-grad": jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)),
            "vmap-grad": jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, None, None)),
            "scan-grad": jax.grad(scanned, argnums=(0, 1, 2)),
        }[transform]
        return jax.jit(fn)(x, kernel, bias)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = run(dense_float64_sum)
    expected = run(plain)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert not jax.config.jax_enable_x64


def test_float64_sum_under_vmap_of_scan():
    """vmap re-traces a scanned body outside the call's float64 scope (as BERT/BioGPT's layers)."""
    x, kernel, bias = _data(features_in=8, features_out=8)

    def scanned(x):
        step = lambda h, _: (jnp.tanh(dense_float64_sum(h, kernel, bias)), None)
        return jax.lax.scan(step, x, None, length=2)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_row = jax.jit(jax.vmap(scanned))(x)
    np.testing.assert_allclose(np.asarray(per_row), np.asarray(scanned(x)), rtol=1e-6, atol=1e-6)
