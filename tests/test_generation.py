"""Generation on a small seeded BioGPT against `transformers` `generate`, and the processors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from biomed_jax import generate
from conformance import generation as suite


def _assert_all_pass(rows):
    failed = [r for r in rows if not r.passed]
    assert rows and not failed, "\n".join(map(str, failed))


def test_processors_match_transformers():
    rows = suite.check_processors()
    _assert_all_pass(rows)
    assert {r.suite.split("/")[1] for r in rows} >= {
        "repetition_penalty 1.4",
        "no_repeat_ngram 3",
        "min_length 13",
        "top_k 5",
        "top_p 0.8 keep 2",
        "sampling chain (HF order)",
    }


@pytest.mark.slow
def test_greedy_and_beam_search_match_transformers_on_pubmed():
    prompts = suite.pubmed_prompts(24)
    assert len({len(p) for p in prompts}) > 5  # the batch is left-padded
    rows = suite.check_model("small", suite.SMALL, prompts, max_new_tokens=20)
    _assert_all_pass(rows)
    names = {(r.suite.split("/")[1], r.name) for r in rows}
    assert {
        ("greedy", "sequences"),
        ("greedy", "rows alone == batched"),
        ("beam5-min_length-early", "sequences"),
        ("beam5-min_length-early", "rows alone == batched"),
        ("beam5-return2", "sequences"),
        ("beam4-never-lp0.5", "sequences"),
    } <= names
    # EOS must end some rows, or finished-hypothesis handling went untested.
    assert all(" 0 rows hit EOS" not in r.note for r in rows if r.name == "sequences")


@pytest.fixture(scope="module")
def tiny():
    config = dict(suite.SMALL, vocab_size=500)
    return suite.build_models(config, eos_scale=6.0)


def test_default_max_length_is_20_new_tokens_as_transformers(tiny):
    hf, ours = tiny
    ids = np.random.default_rng(0).integers(4, 500, (3, 6))
    mask = np.ones_like(ids)
    ref, _ = suite.hf_generate(hf, ids, mask)
    got = np.asarray(generate(ours.module, ours.params, ids))
    np.testing.assert_array_equal(got, ref)


def test_beam_sampling_is_seeded(tiny):
    _, ours = tiny
    ids = np.random.default_rng(1).integers(4, 500, (2, 5))
    kwargs = dict(max_new_tokens=8, num_beams=3, do_sample=True, num_return_sequences=2)
    a = generate(ours.module, ours.params, ids, rng=jax.random.key(0), **kwargs)
    b = generate(ours.module, ours.params, ids, rng=jax.random.key(0), **kwargs)
    assert a.shape[0] == 4
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(num_beams=3), dict(num_beams=3, early_stopping="never", length_penalty=0.5)],
    ids=["greedy", "beam3", "beam3-never"],
)
def test_per_row_max_new_tokens_equal_each_row_alone(tiny, kwargs):
    """One count per row: each row of a left-padded batch decodes exactly as it does alone with
    its own count (the batch does not stop a row early, nor lets it run on)."""
    _, ours = tiny
    rng = np.random.default_rng(2)
    rows = [rng.integers(4, 500, n).tolist() for n in (3, 7, 5, 2)]
    counts = [9, 2, 5, 13]
    width = max(map(len, rows))
    ids = np.ones((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :], mask[r, width - len(row) :] = row, 1
    batched = np.asarray(
        generate(ours.module, ours.params, ids, mask, max_new_tokens=counts, **kwargs)
    )
    for r, (row, count) in enumerate(zip(rows, counts)):
        alone = np.asarray(
            generate(ours.module, ours.params, [row], max_new_tokens=count, **kwargs)
        )
        new = batched[r, width : width + count]
        np.testing.assert_array_equal(new[: alone.shape[1] - len(row)], alone[0, len(row) :])
        assert (batched[r, width + alone.shape[1] - len(row) :] == 1).all()  # then padding


def test_per_row_max_new_tokens_are_checked(tiny):
    _, ours = tiny
    ids = np.asarray([[1, 7, 8], [5, 6, 7]])
    mask = np.asarray([[0, 1, 1], [1, 1, 1]])
    positions = ours.config.max_position_embeddings
    # the left-padded row has one real token less: one more new token fits
    generate(ours.module, ours.params, ids, mask, max_new_tokens=[positions - 2, 1])
    with pytest.raises(ValueError, match=r"row 1: 3 prompt tokens \+ max_new_tokens\[1\]"):
        generate(ours.module, ours.params, ids, mask, max_new_tokens=[1, positions - 2])
    with pytest.raises(ValueError, match="2 counts for 3 prompts"):
        generate(ours.module, ours.params, [[5], [6], [7]], max_new_tokens=[1, 2])
    with pytest.raises(ValueError, match=r"max_new_tokens\[1\] must be in"):
        generate(ours.module, ours.params, ids, mask, max_new_tokens=[1, 0])
