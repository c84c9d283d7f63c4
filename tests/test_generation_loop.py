"""The decoding loop on fake models (no transformer): stopping, padding, buckets, sampling, errors."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomed_jax import BioGptConfig, generate
from biomed_jax.generation import api
from biomed_jax.models.outputs import CausalLMOutput

CONFIG = BioGptConfig(
    vocab_size=64,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=1,
    intermediate_size=8,
    max_position_embeddings=256,
)


class FakeLM(nn.Module):
    """Next token = last + 1 (logit 10, others 0); or, with `table`, fixed logits at every step."""

    config: Any
    table: tuple[float, ...] | None = None
    dtype: Any = jnp.float32

    def __call__(self, input_ids, attention_mask=None, *, cache=None):
        vocab = self.config.vocab_size
        if self.table is None:
            logits = 10.0 * jax.nn.one_hot((input_ids + 1) % vocab, vocab)
        else:
            logits = jnp.broadcast_to(jnp.asarray(self.table), (*input_ids.shape, vocab))
        return CausalLMOutput(logits, cache=cache.replace(index=cache.index + input_ids.shape[1]))


COUNTER = FakeLM(CONFIG)


def _run(ids, **kwargs):
    return np.asarray(generate(COUNTER, {}, np.asarray(ids), **kwargs))


def test_counts_up_to_max_new_tokens():
    out = _run([[5, 6, 7], [20, 21, 22]], max_new_tokens=6, eos_token_id=60)
    np.testing.assert_array_equal(out[0], np.arange(5, 14))
    np.testing.assert_array_equal(out[1], np.arange(20, 29))


def test_max_length_counts_the_prompt():
    assert _run([[5, 6, 7]], max_length=10, eos_token_id=60).shape == (1, 10)


def test_finished_rows_get_pad_and_loop_stops_when_all_rows_finished():
    out = _run([[5, 6, 7], [10, 11, 12]], max_new_tokens=20, eos_token_id=[9, 16], pad_token_id=1)
    # Row 0 emits 8, 9 (EOS) then padding; row 1 runs 13..16 (EOS); then the loop stops.
    np.testing.assert_array_equal(out[0], [5, 6, 7, 8, 9, 1, 1])
    np.testing.assert_array_equal(out[1], [10, 11, 12, 13, 14, 15, 16])


def test_min_new_tokens_bans_eos():
    out = _run([[5, 6, 7]], max_new_tokens=4, min_new_tokens=2, eos_token_id=9)
    # EOS (9) is the argmax at the second new token: banned, so argmax falls to token 0.
    np.testing.assert_array_equal(out[0], [5, 6, 7, 8, 0, 1, 2])


def test_left_padding_and_bucket_padding_are_invisible():
    ids = np.array([[1, 1, 30, 31], [40, 41, 42, 43]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = _run(ids, attention_mask=mask, max_new_tokens=3, eos_token_id=60)
    np.testing.assert_array_equal(out, [[1, 1, 30, 31, 32, 33, 34], [40, 41, 42, 43, 44, 45, 46]])


def test_one_compilation_per_length_bucket():
    def compiles() -> int:
        return api._decode._cache_size()

    _run([[5] * 5], max_new_tokens=8, eos_token_id=60)
    before = compiles()
    out = _run([[7] * 9], max_new_tokens=8, eos_token_id=60)  # same bucket (16), new length
    assert compiles() == before
    np.testing.assert_array_equal(out[0, 9:], np.arange(8, 16))
    _run([[7] * 3], max_new_tokens=8, min_new_tokens=2, eos_token_id=60)  # values are arrays
    assert compiles() == before
    _run([[7] * 20], max_new_tokens=8, eos_token_id=60)  # bucket 32
    assert compiles() == before + 1


PROBS = np.array([0.5, 0.3, 0.15, 0.05] + [0.0] * 60)
TABLE = FakeLM(CONFIG, tuple(np.log(np.maximum(PROBS, 1e-30)).tolist()))


def _sample(rows: int, key: int, **kwargs) -> np.ndarray:
    ids = np.full((rows, 1), 10)
    out = generate(
        TABLE, {}, ids, max_new_tokens=1, do_sample=True, rng=jax.random.key(key), **kwargs
    )
    return np.asarray(out)[:, 1]


def test_sampling_frequencies_follow_the_processed_distribution():
    rows = 4000
    counts = np.bincount(_sample(rows, 0, eos_token_id=60), minlength=64)
    sigma = np.sqrt(PROBS * (1 - PROBS) * rows)
    assert (np.abs(counts - PROBS * rows) <= 4 * sigma + 1e-9).all(), counts[:5]
    # top_k=2 renormalizes over {0, 1}: 0.5 / 0.8 and 0.3 / 0.8.
    counts = np.bincount(_sample(rows, 1, top_k=2, eos_token_id=60), minlength=64)
    assert counts[2:].sum() == 0
    assert abs(counts[0] / rows - 0.625) < 4 * np.sqrt(0.625 * 0.375 / rows)
    # top_p=0.7 keeps the smallest set with mass >= 0.7: {0, 1}; temperature 0.5 squares probs.
    counts = np.bincount(
        _sample(rows, 2, top_p=0.7, temperature=0.5, eos_token_id=60), minlength=64
    )
    p0 = 0.25 / (0.25 + 0.09)
    assert counts[2:].sum() == 0 and abs(counts[0] / rows - p0) < 4 * np.sqrt(p0 * (1 - p0) / rows)


def test_sampling_is_deterministic_per_key():
    a, b, c = (_sample(64, k, eos_token_id=60) for k in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampling_with_top_k_1_is_greedy():
    ids = [[5, 6, 7], [20, 21, 22]]
    greedy = _run(ids, max_new_tokens=5, eos_token_id=60)
    sampled = _run(
        ids, max_new_tokens=5, eos_token_id=60, do_sample=True, top_k=1, rng=jax.random.key(0)
    )
    np.testing.assert_array_equal(sampled, greedy)


def test_num_return_sequences_repeats_each_prompt_for_sampling():
    ids = np.full((2, 1), 10)
    out = generate(
        TABLE, {}, ids, max_new_tokens=6, do_sample=True, num_return_sequences=3,
        rng=jax.random.key(0), eos_token_id=60,
    )  # fmt: skip
    assert out.shape == (6, 7)
    assert len({tuple(r) for r in np.asarray(out)}) > 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(max_new_tokens=0), ValueError),
        (dict(max_length=3), ValueError),
        (dict(max_length=1000), ValueError),
        (dict(do_sample=True), ValueError),  # no rng
        (dict(num_beams=2, num_return_sequences=3), ValueError),
        (dict(num_return_sequences=2), ValueError),  # greedy
        (dict(early_stopping="sometimes", num_beams=2), ValueError),
        (dict(top_p=0.0), ValueError),
        (dict(do_sample=True, temperature=0.0, rng=jax.random.key(0)), ValueError),
        (dict(repetition_penalty=0.0), ValueError),
        (dict(attention_mask=np.ones((1, 2))), ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        _run([[5, 6, 7]], **kwargs)


def test_bad_input_ids_raise():
    with pytest.raises(ValueError, match="input_ids must lie"):
        _run([[5, 64]])
    with pytest.raises(TypeError, match="integers"):
        _run([[5.0, 6.0]])
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        _run([5, 6])
