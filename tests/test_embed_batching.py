"""`embed`'s batches: finer length buckets, no row padded past its own bucket however the texts
are split (Spark partitions), and the counts `EmbedStats` reports."""

from __future__ import annotations

import numpy as np
import pytest

from biomed_jax import embed, from_pretrained
from biomed_jax.pipelines import EmbedStats
from biomed_jax.pipelines._common import (
    MIN_BUCKET,
    bucket,
    bucketed_batches,
    length_bucket,
    length_sorted_batches,
    row_bucket,
)


def test_length_and_row_buckets():
    lengths = [1, 8, 9, 12, 13, 16, 17, 24, 25, 100, 129, 300, 385, 600]
    assert [length_bucket(n, 512) for n in lengths] == [
        8, 8, 12, 12, 16, 16, 24, 24, 32, 128, 192, 384, 512, 512
    ]  # fmt: skip
    assert [row_bucket(k, 32) for k in (1, 3, 5, 8, 9, 17, 25, 32)] == [1, 4, 8, 8, 16, 24, 32, 32]
    assert [row_bucket(k, 6) for k in (3, 5, 6)] == [4, 6, 6]


def _old_padded(lengths, batch_size=32, max_length=512):
    """The scheme `embed` used before: sorted chunks, power-of-two lengths and rows."""
    total = 0
    for index in length_sorted_batches(lengths, batch_size):
        length = bucket(int(max(lengths[i] for i in index)), MIN_BUCKET, max_length)
        total += bucket(len(index), 1, batch_size) * length
    return total


def _padded(lengths, batch_size=32, max_length=512):
    return sum(r * t for _, (r, t) in bucketed_batches(lengths, batch_size, max_length))


def test_bucketed_batches_cover_every_row_once_within_its_own_bucket():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(4.5, 0.7, 500).astype(int) + 2, 512).tolist()
    seen = []
    for index, (rows, length) in bucketed_batches(lengths, 32, 512):
        assert len(index) <= rows <= 32
        assert {length_bucket(lengths[i], 512) for i in index} == {length}
        seen += index.tolist()
    assert sorted(seen) == list(range(len(lengths)))


@pytest.mark.parametrize("mu, sigma", [(3.5, 0.35), (5.6, 0.4)], ids=["titles", "abstracts"])
def test_partitions_pad_about_as_little_as_the_whole_corpus(mu, sigma):
    """2,000 texts split into 16 partitions (each batched alone, as Spark's) against all at once.
    Token counts as PubMed titles (73k real tokens: the corpus of the issue, whose cluster run
    padded 141k tokens against the direct call's 108k) or abstracts. The new batches pad the
    split corpus less than the old ones padded the whole one, within 15 % of the new
    whole-corpus count."""
    rng = np.random.default_rng(1)
    lengths = np.minimum(rng.lognormal(mu, sigma, 2000).astype(int) + 2, 512)
    parts = np.array_split(lengths, 16)
    whole_old, split_old = _old_padded(lengths), sum(_old_padded(p) for p in parts)
    whole_new, split_new = _padded(lengths), sum(_padded(p) for p in parts)
    assert split_old > 1.1 * whole_old  # the old overhead of partitions
    assert split_new < whole_old
    assert split_new <= 1.15 * whole_new
    assert whole_new < 0.9 * whole_old


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from _tiny_models import save_tiny_bert

    return from_pretrained(save_tiny_bert(tmp_path_factory.mktemp("bert")))


def test_embed_stats_count_texts_truncation_tokens_and_padding(bert):
    texts = ["the patient was treated with aspirin", "fever", "the " * 60, "mice " * 70]
    stats = EmbedStats()
    with pytest.warns(UserWarning, match="2 of 4 texts are longer"):
        embed(texts, model=bert, stats=stats, batch_size=2)
    assert (stats.texts, stats.truncated) == (4, 2)
    tok, limit = bert.tokenizer, bert.config.max_position_embeddings
    lengths = [min(len(tok(t)["input_ids"]), limit) for t in texts]
    assert stats.tokens == sum(lengths)
    assert stats.padded_tokens == _padded(lengths, 2, limit)
    embed(texts[:2], model=bert, stats=stats, batch_size=2)  # counts add up over calls
    assert (stats.texts, stats.truncated, stats.tokens) == (6, 2, sum(lengths) + sum(lengths[:2]))
