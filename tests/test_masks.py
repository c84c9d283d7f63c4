"""Attention masks beyond [B, T]: [B, T, S] and [B, N, T, S], boolean or additive, and packing.

Against transformers where it takes the same mask (its 4-D additive masks, its packed-sequence
detection from `position_ids`), judged by the conformance rule (float64 reference); packed rows
against the same sequences run one by one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import biomed_jax
from biomed_jax import from_pretrained
from biomed_jax.models.common import init_params
from biomed_jax.nn.attention import make_attention_mask, packed_sequence_ids
from conformance.report import judge

N_HEADS = 4
BERT = dict(
    vocab_size=61,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=N_HEADS,
    intermediate_size=44,
    max_position_embeddings=40,
    initializer_range=0.2,
)
BIOGPT = dict(BERT, max_position_embeddings=40, pad_token_id=1)
MIN32 = float(np.finfo(np.float32).min)
LENGTHS = ((5, 3, 4), (7, 5))  # two rows of 12 tokens, each packing sequences of these lengths


def _save(tmp_path_factory, arch: str, config: dict):
    torch.manual_seed(0)
    family = transformers.BertConfig if arch.startswith("Bert") else transformers.BioGptConfig
    model = getattr(transformers, arch)(family(**config, attn_implementation="eager")).eval()
    path = tmp_path_factory.mktemp(arch)
    model.save_pretrained(path)
    return model, from_pretrained(path)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _save(tmp_path_factory, "BertForMaskedLM", BERT)


@pytest.fixture(scope="module")
def biogpt(tmp_path_factory):
    return _save(tmp_path_factory, "BioGptForCausalLM", BIOGPT)


def _ids(shape, seed=0):
    return np.random.RandomState(seed).randint(2, BERT["vocab_size"], shape).astype(np.int32)


def test_mask_forms_build_the_same_boolean_matrix():
    valid = np.array([[0, 1, 1, 1]])
    causal = make_attention_mask(valid, jnp.arange(4))[0, 0]
    expected = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], bool)
    np.testing.assert_array_equal(causal, expected)  # the docstring's matrix (row 0: padding)
    segments = packed_sequence_ids(np.array([[0, 1, 0, 1, 2]]))
    np.testing.assert_array_equal(segments, [[0, 0, 1, 1, 1]])
    packed = make_attention_mask(np.ones((1, 5)), jnp.arange(5), segments)[0, 0]
    block = np.tril(np.ones((5, 5), bool))
    block[2:, :2] = False
    np.testing.assert_array_equal(packed, block)
    # 3-D and 4-D forms are the whole mask, whatever their type: bool, 0/1 ints, additive floats
    pattern = np.random.RandomState(0).rand(2, 5, 5) > 0.4
    additive = np.where(pattern, 0.0, MIN32).astype(np.float32)
    for form in (
        pattern,
        pattern.astype(np.int32),
        additive,
        np.where(pattern, 0.0, -np.inf).astype(np.float32),
        additive.astype(jnp.bfloat16),
        pattern[:, None],
    ):
        out = make_attention_mask(jnp.asarray(form))
        assert out.dtype == bool and out.shape == (2, 1, 5, 5)
        np.testing.assert_array_equal(out, pattern[:, None])
    heads = np.random.RandomState(1).rand(2, N_HEADS, 1, 5) > 0.5  # per head, broadcast over T
    np.testing.assert_array_equal(make_attention_mask(heads), heads)


def _hf(model, **inputs):
    """transformers' float32 and float64 outputs (hidden states and logits) for numpy inputs."""
    tensors = {
        k: torch.tensor(x) if x.dtype != np.int32 else torch.tensor(x, dtype=torch.long)
        for k, x in inputs.items()
    }
    outs = []
    for dtype in (torch.float32, torch.float64):
        args = {
            k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()
        }  # additive masks in the model's dtype, as transformers builds them
        with torch.no_grad():
            out = model.to(dtype)(**args, output_hidden_states=True)
        outs.append([h.numpy() for h in (*out.hidden_states, out.logits)])
    model.to(torch.float32)
    return outs


def _judge_all(suite, ours, ref32, ref64, valid):
    rows = [
        judge(suite, f"output[{i}]", "float32", a, b, c, b, 0.0, valid)
        for i, (a, b, c) in enumerate(zip(ours, ref32, ref64, strict=True))
    ]
    failed = [r for r in rows if not r.passed]
    assert not failed, "\n".join(map(str, failed))


def _ours(model, *args, **kwargs):
    out = model(*args, **kwargs, output_hidden_states=True)
    return [np.asarray(h) for h in (*out.hidden_states, out.logits)]


@pytest.mark.parametrize("heads", [1, N_HEADS])
def test_bert_4d_additive_mask_matches_transformers(bert, heads):
    hf, ours = bert
    ids = _ids((2, 9))
    allowed = np.random.RandomState(heads).rand(2, heads, 9, 9) > 0.5
    allowed |= np.eye(9, dtype=bool)  # every query sees at least itself
    additive = np.where(allowed, 0.0, MIN32).astype(np.float32)
    ref32, ref64 = _hf(hf, input_ids=ids, attention_mask=additive)
    _judge_all("bert-4d", _ours(ours, ids, additive), ref32, ref64, None)
    # the boolean form of the same mask computes the same thing
    same = _ours(ours, ids, jnp.asarray(allowed))
    for a, b in zip(same, _ours(ours, ids, additive), strict=True):
        np.testing.assert_array_equal(a, b)


def test_biogpt_4d_mask_matches_transformers(biogpt):
    """A custom pattern (causal, plus a prefix all queries see) with explicit positions."""
    hf, ours = biogpt
    ids = _ids((2, 10), seed=1)
    allowed = np.tril(np.ones((10, 10), bool))
    allowed[:, :3] = True  # prefix-LM: the first 3 tokens are visible to every query
    allowed = np.broadcast_to(allowed, (2, 1, 10, 10))
    additive = np.where(allowed, 0.0, MIN32).astype(np.float32)
    positions = np.broadcast_to(np.arange(10, dtype=np.int32), (2, 10))
    ref32, ref64 = _hf(hf, input_ids=ids, attention_mask=additive, position_ids=positions)
    _judge_all("biogpt-4d", _ours(ours, ids, additive, positions), ref32, ref64, None)
    # positions default to the slots 0..T-1 with a 4-D mask, as transformers' own default
    for a, b in zip(_ours(ours, ids, jnp.asarray(allowed)), ref32, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _packed(lengths_per_row, causal: bool):
    """ids [R, L], block-diagonal mask [R, L, L] (causal within blocks), per-sequence positions,
    and the sequences [(row, start, ids [1, n])]."""
    total = sum(lengths_per_row[0])
    ids = _ids((len(lengths_per_row), total), seed=2)
    mask = np.zeros((len(lengths_per_row), total, total), bool)
    positions = np.zeros_like(ids)
    pieces = []
    for row, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths:
            block = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
            mask[row, start : start + n, start : start + n] = block
            positions[row, start : start + n] = np.arange(n)
            pieces.append((row, start, ids[row : row + 1, start : start + n]))
            start += n
    return ids, mask, positions, pieces


def _assert_packed_equals_separate(hf, packed_outputs, pieces):
    """Each sequence's slice of every packed output, judged by the conformance rule against
    transformers' float64 run of that sequence alone (no mask, positions 0..n-1)."""
    for row, start, seq in pieces:
        ref32, ref64 = _hf(hf, input_ids=seq)
        n = seq.shape[1]
        alone = [p[row : row + 1, start : start + n] for p in packed_outputs]
        _judge_all(f"packed row {row} at {start}", alone, ref32, ref64, None)


def test_bert_packing_equals_separate_runs(bert):
    hf, model = bert
    ids, mask, positions, pieces = _packed(LENGTHS, causal=False)
    packed = _ours(model, ids, mask, position_ids=positions)
    _assert_packed_equals_separate(hf, packed, pieces)
    # transformers' convention: position_ids alone (no mask) mark the packed sequences
    from_positions = _ours(model, ids, position_ids=positions)
    for a, b in zip(from_positions, packed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bert_packing_from_position_ids_matches_transformers(bert):
    hf, ours = bert
    ids, _, positions, _ = _packed(LENGTHS, causal=False)
    ref32, ref64 = _hf(hf, input_ids=ids, position_ids=positions)
    _judge_all("bert-packed", _ours(ours, ids, position_ids=positions), ref32, ref64, None)


def test_biogpt_packing_equals_separate_runs_and_transformers(biogpt):
    hf, model = biogpt
    ids, mask, positions, pieces = _packed(LENGTHS, causal=True)
    packed = _ours(model, ids, mask, positions)
    _assert_packed_equals_separate(hf, packed, pieces)
    additive = np.where(mask, 0.0, MIN32).astype(np.float32)[:, None]
    ref32, ref64 = _hf(hf, input_ids=ids, attention_mask=additive, position_ids=positions)
    _judge_all("biogpt-packed", packed, ref32, ref64, None)


@pytest.mark.parametrize(
    "arch",
    [
        "BertForTokenClassification",
        "BertForSequenceClassification",
        "BioGptForSequenceClassification",
        "BioGptForTokenClassification",
    ],
)
def test_heads_take_every_mask_form(arch):
    """A padding mask [B, T] and the same mask as [B, T, S] bool and [B, 1, T, S] additive."""
    bert = arch.startswith("Bert")
    config_cls = biomed_jax.BertConfig if bert else biomed_jax.BioGptConfig
    config = config_cls(**BIOGPT, num_labels=3)
    module = getattr(biomed_jax, arch)(config)
    params = init_params(module)
    ids = _ids((2, 7))
    valid = np.ones((2, 7), np.int32)
    valid[1, 5:] = 0
    ids[1, 5:] = 1  # pad_token_id: the sequence classifier pools the last non-pad token
    full = valid[:, None, :].astype(bool) & np.ones((7, 7), bool)
    if not bert:
        full &= np.tril(np.ones((7, 7), bool))
    forms = [valid, full, np.where(full, 0.0, -np.inf).astype(np.float32)[:, None]]
    kwargs = {} if bert else {"position_ids": np.broadcast_to(np.arange(7), (2, 7))}
    outs = [np.asarray(module.apply({"params": params}, ids, m, **kwargs).logits) for m in forms]
    rows = np.s_[:] if arch.endswith("SequenceClassification") else np.s_[:, :5]
    for other in outs[1:]:
        np.testing.assert_allclose(other[rows], outs[0][rows], rtol=0, atol=1e-6)


def test_biogpt_heads_and_cache_take_3d_masks(biogpt):
    _, lm = biogpt
    ids = _ids((2, 8), seed=3)
    full = _ours(lm, ids)
    causal = np.broadcast_to(np.tril(np.ones((8, 8), bool)), (2, 8, 8))
    for a, b in zip(_ours(lm, ids, causal), full, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # decoding with per-step [B, 1, S] masks over the cache's slots equals the full forward pass
    slots = 12
    step = jax.jit(lambda p, t, m, c: lm.module.apply({"params": p}, t, m, cache=c))
    allowed = np.tril(np.ones((slots, slots), bool))[None].repeat(2, 0)
    out = step(lm.params, ids[:, :5], allowed[:, :5], lm.config.init_cache(2, slots))
    logits = [np.asarray(out.logits)]
    for t in range(5, 8):
        out = step(lm.params, ids[:, t : t + 1], allowed[:, t : t + 1], out.cache)
        logits.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(logits, 1), full[-1], rtol=0, atol=1e-5)


def test_traced_masks_are_used_as_given(bert):
    _, model = bert
    ids = _ids((2, 6))
    allowed = np.random.RandomState(5).rand(2, 6, 6) > 0.3
    allowed |= np.eye(6, dtype=bool)
    additive = np.where(allowed, 0.0, MIN32).astype(np.float32)
    jitted = jax.jit(lambda m: model.module.apply({"params": model.params}, ids, m).logits)
    traced = np.asarray(jitted(additive))  # no host check: the values are traced
    np.testing.assert_array_equal(traced, np.asarray(jitted(allowed)))
    unmasked = np.asarray(jitted(np.ones((2, 6, 6), bool)))
    assert np.abs(traced - unmasked).max() > 1e-2


BAD_MASKS = [
    ("float [B, T]", np.zeros((2, 6), np.float32), TypeError, "additive float masks are"),
    ("bias values", np.full((2, 6, 6), -1.0, np.float32), ValueError, "a bias is not a mask"),
    ("NaN", np.full((2, 6, 6), np.nan, np.float32), ValueError, "additive float mask"),
    ("2s in [B, T, S]", np.full((2, 6, 6), 2, np.int32), ValueError, "only 0 .masked."),
    ("wrong key length", np.ones((2, 6, 5), bool), ValueError, r"\[batch, length \| 1, length\]"),
    ("wrong heads", np.ones((2, 3, 6, 6), bool), ValueError, r"heads \| 1"),
    ("wrong batch", np.ones((1, 6, 6), bool), ValueError, "got shape .1, 6, 6."),
    ("5-D", np.ones((2, 1, 1, 6, 6), bool), ValueError, "attention_mask must be"),
    ("strings", np.full((2, 6, 6), "a"), TypeError, "booleans, integers or floats"),
]


@pytest.mark.parametrize(
    ("case", "mask", "error", "match"), BAD_MASKS, ids=[c[0] for c in BAD_MASKS]
)
def test_bad_masks_are_refused_naming_the_argument(bert, biogpt, case, mask, error, match):
    for _, model in (bert, biogpt):
        with pytest.raises(error, match=match) as info:
            model(_ids((2, 6)), mask)
        assert "attention_mask" in str(info.value)
