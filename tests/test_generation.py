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
