"""Fused attention (`nn.kernels`) against the XLA reference, on CPU.

splash runs for real, in Pallas' interpreter. cuDNN cannot run on a CPU: its wrapper's plumbing
(layout, mask broadcast, scale) is checked with `jax.nn.dot_product_attention`'s XLA
implementation swapped in, so only the cuDNN kernel itself is left unmeasured here. bfloat16
outputs are judged as the conformance suite judges them: against the float32 computation, within
3x the XLA reference's own bfloat16 error (floor 1e-3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import BertConfig, BertModel, BioGptConfig, BioGptForCausalLM
from biomed_jax.models.common import init_params
from biomed_jax.nn import attention, kernels
from biomed_jax.numerics import PLAIN

B, N, T, H = 2, 4, 128, 16
HIGHEST = jax.lax.Precision.HIGHEST


@pytest.fixture
def cudnn_as_xla(monkeypatch):
    """Route the cuDNN wrapper through jax.nn's XLA implementation (the CPU has no cuDNN)."""
    monkeypatch.setitem(kernels.JAX_NN_IMPLEMENTATION, "cudnn", "xla")


def _qkv(seed=0, dtype=jnp.bfloat16):
    rng = np.random.RandomState(seed)
    return tuple(jnp.asarray(rng.randn(B, N, T, H), dtype) for _ in range(3))


def _padding_and_packing():
    valid = np.ones((B, T), np.int32)
    valid[1, :40] = 0  # left padding
    valid[0, 120:] = 0  # right padding
    segments = np.zeros((B, T), np.int32)
    segments[0, 60:] = 1  # two packed sequences in row 0
    return jnp.asarray(valid), jnp.asarray(segments)


def _judge_bf16(fused, reference_bf16, truth):
    """The conformance rule for bfloat16: fused error <= max(3 x reference error, 1e-3)."""
    fused_err = np.abs(np.asarray(fused, np.float32) - np.asarray(truth, np.float32)).max()
    ref_err = np.abs(np.asarray(reference_bf16, np.float32) - np.asarray(truth, np.float32)).max()
    assert fused_err <= max(3 * ref_err, 1e-3), (fused_err, ref_err)


@pytest.mark.parametrize("causal", [False, True])
def test_segment_mask_is_the_boolean_mask(causal):
    valid, segments = _padding_and_packing()
    seg = kernels.segment_mask(valid, segments, causal)
    dense = seg.query[:, :, None] == seg.key[:, None, :]  # [B, T, S]
    if causal:
        dense &= np.tril(np.ones((T, T), bool))
    slots = jnp.arange(T) if causal else None
    expected = attention.make_attention_mask(valid, slots, segments)
    np.testing.assert_array_equal(dense, np.broadcast_to(expected[:, 0], (B, T, T)))


@pytest.mark.parametrize("causal", [False, True])
def test_splash_matches_the_reference(causal):
    q, k, v = _qkv()
    valid, segments = _padding_and_packing()
    mask = attention.make_attention_mask(valid, jnp.arange(T) if causal else None, segments)
    fused = kernels.splash_attention(q, k, v, kernels.segment_mask(valid, segments, causal))
    reference, _ = attention._attend(q, k, v, mask, HIGHEST, None, 1.0)
    truth, _ = attention._attend(
        *(x.astype(jnp.float32) for x in (q, k, v)), mask, HIGHEST, None, 1.0
    )
    _judge_bf16(fused, reference, truth)
    assert np.isfinite(np.asarray(fused, np.float32)).all()


@pytest.mark.parametrize("mask_shape", [(B, 1, 1, T), (B, 1, T, T), (B, N, T, T)])
def test_cudnn_wrapper_plumbing(cudnn_as_xla, mask_shape):
    q, k, v = _qkv(1)
    mask = jnp.asarray(np.random.RandomState(2).rand(*mask_shape) > 0.3)
    mask = mask | jnp.eye(T, dtype=bool)  # every query sees a key
    fused = kernels.cudnn_attention(q, k, v, mask)
    assert fused.shape == q.shape and fused.dtype == q.dtype
    reference, _ = attention._attend(q, k, v, mask, HIGHEST, None, 1.0)
    truth, _ = attention._attend(
        *(x.astype(jnp.float32) for x in (q, k, v)), mask, HIGHEST, None, 1.0
    )
    _judge_bf16(fused, reference, truth)


def _policies(kind):
    return PLAIN, PLAIN.replace(attention=kind, half_precision=jax.lax.Precision.DEFAULT)


BERT = BertConfig(
    vocab_size=61,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=T,
)
BIOGPT = BioGptConfig(
    vocab_size=61,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=T,
)


def _model_outputs(cls, config, policy, dtype, ids, mask, **kwargs):
    module = cls(config, dtype=dtype, policy=policy)
    params = init_params(cls(config), seed=3)
    out = module.apply({"params": params}, ids, mask, output_hidden_states=True, **kwargs)
    return [np.asarray(h, np.float32) for h in out.hidden_states]


@pytest.mark.parametrize(
    ("cls", "config", "kind"),
    [
        (BertModel, BERT, "splash"),
        (BioGptForCausalLM, BIOGPT, "splash"),
        (BertModel, BERT, "cudnn"),
        (BioGptForCausalLM, BIOGPT, "cudnn"),
    ],
    ids=["bert-splash", "biogpt-splash", "bert-cudnn", "biogpt-cudnn"],
)
def test_models_run_the_fused_kernel_where_the_policy_names_it(cls, config, kind, monkeypatch):
    """bfloat16 hidden states with the fused kernel, judged against float32 by the bf16 rule;
    and the dispatch really ran it (the kernel's function was called)."""
    monkeypatch.setitem(kernels.JAX_NN_IMPLEMENTATION, "cudnn", "xla")
    calls = []
    name = f"{kind}_attention"
    real = getattr(attention, name)
    monkeypatch.setattr(attention, name, lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 61, (B, T)).astype(np.int32)
    valid, _ = _padding_and_packing()
    plain, fused_policy = _policies(kind)
    truth = _model_outputs(cls, config, plain, jnp.float32, ids, valid)
    reference = _model_outputs(cls, config, plain, jnp.bfloat16, ids, valid)
    assert not calls
    fused = _model_outputs(cls, config, fused_policy, jnp.bfloat16, ids, valid)
    assert len(calls) == config.num_hidden_layers
    rows = np.asarray(valid, bool)
    for f, r, t in zip(fused, reference, truth, strict=True):
        _judge_bf16(f[rows], r[rows], t[rows])
    # attention maps asked for: the reference runs (kernels return none), maps come back
    module = cls(config, dtype=jnp.bfloat16, policy=fused_policy)
    out = module.apply({"params": init_params(cls(config))}, ids, valid, output_attentions=True)
    assert len(calls) == config.num_hidden_layers and out.attentions[0].shape == (B, N, T, T)


def test_float32_and_unfit_shapes_keep_the_reference():
    fused = PLAIN.replace(attention="cudnn")
    assert fused.attention_for(jnp.bfloat16, 64, 128, 128) == "cudnn"
    assert fused.attention_for(jnp.float16, 64, 128, 128) == "cudnn"
    assert fused.attention_for(jnp.float32, 64, 128, 128) == "xla"  # measured error: reference
    assert fused.attention_for(jnp.bfloat16, 64, 1, 128) == "xla"  # odd length (decode step)
    assert fused.attention_for(jnp.bfloat16, 60, 128, 128) == "xla"  # head dim % 8
    assert fused.attention_for(jnp.bfloat16, 256, 128, 128) == "xla"  # head dim > 128
    assert fused.attention_for(jnp.bfloat16, 64, 128, 128, dropout=True) == "xla"
    assert fused.attention_for(jnp.bfloat16, 64, 128, 128, probs=True) == "xla"
    assert fused.attention_for(jnp.bfloat16, 64, 128, 128, sharded=True) == "xla"
    splash = PLAIN.replace(attention="splash")
    assert splash.attention_for(jnp.bfloat16, 64, 256, 256, segments=True) == "splash"
    assert splash.attention_for(jnp.bfloat16, 64, 256, 256) == "xla"  # a 3-D/4-D mask, a cache
    assert splash.attention_for(jnp.bfloat16, 64, 100, 100, segments=True) == "xla"  # blocks
    assert splash.attention_for(jnp.float32, 64, 256, 256, segments=True) == "xla"
    assert PLAIN.attention_for(jnp.bfloat16, 64, 128, 128, segments=True) == "xla"


@pytest.mark.parametrize("family", ["bert", "biogpt"])
def test_conformance_judges_the_fused_path_without_attention_maps(
    cudnn_as_xla, monkeypatch, family
):
    """The suite's extra rows where a policy names a kernel (here a GPU policy, cuDNN routed
    through jax.nn's XLA code): every output but the maps, from a call without maps."""
    from biomed_jax.numerics import Policy
    from conformance import bert as bert_suite
    from conformance import biogpt as biogpt_suite

    calls = []
    real = attention.cudnn_attention
    monkeypatch.setattr(attention, "cudnn_attention", lambda *a: calls.append(1) or real(*a))
    suite = bert_suite if family == "bert" else biogpt_suite
    case = suite.SMALL_CASES[0]
    arch = case.architectures[0]
    kwargs = {} if family == "bert" else {"cached": False}
    rows = suite.check_architecture(
        case.name, arch, case.hf_config, ("bfloat16",), policy=Policy.fast("cuda"), **kwargs
    )
    fused = [r for r in rows if r.name.startswith("fused attention: ")]
    assert fused and not any("attentions" in r.name for r in fused) and calls
    failed = [r for r in rows if not r.passed]
    assert not failed, "\n".join(map(str, failed))
