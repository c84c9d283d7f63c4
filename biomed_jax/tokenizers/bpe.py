"""Byte-pair encoding with merge ranks and `</w>` end-of-word markers (fastBPE / fairseq layout).

Identical to HF `BioGptTokenizer.bpe`: the word's characters, the last one carrying `</w>`, are
merged pair by pair, always the adjacent pair with the lowest rank (all of its non-overlapping
occurrences, left to right), until no adjacent pair has a rank. Words are cached with their ids
and each piece's character span in the word.
"""

from __future__ import annotations

import reprlib
from itertools import pairwise
from pathlib import Path

from biomed_jax.errors import ConfigError
from biomed_jax.text_files import read_text

END_OF_WORD = "</w>"
CACHE_LIMIT = 1 << 18  # words cached before the cache is cleared

Pair = tuple[str, str]


def read_merges(merges_file: str | Path) -> dict[Pair, int]:
    """merges.txt -> {(left, right): rank}, read as HF does.

    One merge a line (`left right [count]`); rank = line number; the text after the last newline
    is ignored and a repeated pair keeps its last rank. A line of any other shape is an error
    naming it.
    """
    lines = read_text(merges_file).split("\n")[:-1]
    ranks: dict[Pair, int] = {}
    for rank, line in enumerate(lines):
        fields = line.split()
        if len(fields) not in (2, 3):
            raise ConfigError(
                f"{merges_file}: line {rank + 1}: expected 'left right [count]', "
                f"got {reprlib.repr(line)}"
            )
        ranks[fields[0], fields[1]] = rank
    return ranks


def merge(word: str, ranks: dict[Pair, int]) -> list[str]:
    """The BPE pieces of one non-empty word; the last piece ends with `</w>`."""
    symbols = [*word[:-1], word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        best, best_rank = None, None
        for pair in pairwise(symbols):
            rank = ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = pair, rank
        if best is None:
            break
        first, second = best
        merged, i, n = [], 0, len(symbols)
        while i < n:
            if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


Encoded = tuple[tuple[int, ...], tuple[tuple[int, int], ...], tuple[str, ...]]


class BPE:
    """Word -> (vocab ids, character span of each piece in the word, pieces), cached per word."""

    def __init__(self, vocab: dict[str, int], ranks: dict[Pair, int], unk_id: int):
        self.vocab = vocab
        self.ranks = ranks
        self.unk_id = unk_id
        self._cache: dict[str, Encoded] = {}

    def encode(self, word: str) -> Encoded:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        pieces = merge(word, self.ranks)
        ids = tuple(self.vocab.get(piece, self.unk_id) for piece in pieces)
        ends = [len(piece) for piece in pieces]
        ends[-1] -= len(END_OF_WORD)
        spans, start = [], 0
        for length in ends:
            spans.append((start, start + length))
            start += length
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        hit = self._cache[word] = (ids, tuple(spans), tuple(pieces))
        return hit
