"""Named-entity labels through word pieces: character spans -> BIO tags per piece, and back.

Axis legend: N sequences, T pieces. A span is (start, end, type) in characters, end exclusive.
A piece belongs to a span when their character ranges overlap. Labelling schemes:
- "first": the first piece of each word carries the word's tag, continuation pieces ("##...")
  are ignored (-100) in the loss; predictions are read per word and cover the whole word.
- "all": every piece carries a tag (B on the span's first piece, I after); predictions are read
  per piece.
Special tokens and padding are always ignored (-100).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from biomed_jax.train.losses import IGNORE_INDEX

Span = tuple[int, int, str]
SCHEMES = ("first", "all")
CONTINUATION_PREFIX = "##"  # WordPiece's marker of a piece that continues a word


def bio_tags(entity_types: Sequence[str]) -> tuple[str, ...]:
    """("O", "B-T1", "I-T1", "B-T2", "I-T2", ...): the label names, id = index."""
    return ("O", *(f"{p}-{t}" for t in entity_types for p in ("B", "I")))


@dataclasses.dataclass(frozen=True)
class NerEncoding:
    """Model inputs and labels for N texts, plus what is needed to map predictions back."""

    input_ids: np.ndarray  # [N, T] int32
    attention_mask: np.ndarray  # [N, T] int32
    token_type_ids: np.ndarray  # [N, T] int32
    labels: np.ndarray  # [N, T] int32, IGNORE_INDEX where no loss
    offsets: np.ndarray  # [N, T, 2] character (start, end) per piece; (0, 0) for specials
    word_start: np.ndarray  # [N, T] bool: first piece of a word (False for specials, padding)
    piece: np.ndarray  # [N, T] bool: a real piece of text (not special, not padding)
    scheme: str

    def batch(self, rows: Any = slice(None)) -> dict[str, np.ndarray]:
        """The train_step batch for `rows`."""
        return {
            "input_ids": self.input_ids[rows],
            "attention_mask": self.attention_mask[rows],
            "token_type_ids": self.token_type_ids[rows],
            "labels": self.labels[rows],
        }


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def span_tags(
    offsets: np.ndarray, piece: np.ndarray, spans: Sequence[Span], tags: Sequence[str]
) -> np.ndarray:
    """Per-piece BIO tag ids [T] (0 = O) for one text; overlapping spans: the earlier one wins."""
    tag_id = {t: i for i, t in enumerate(tags)}
    owner = np.full(len(offsets), -1)  # [T] index of the span each piece belongs to
    ordered = sorted(spans, key=lambda s: (s[0], -s[1]))
    for k, (start, end, kind) in enumerate(ordered):
        if f"B-{kind}" not in tag_id:
            raise ValueError(f"entity type {kind!r} is not among the labels {list(tags)}")
        if not 0 <= start < end:
            raise ValueError(f"bad span ({start}, {end}, {kind!r}): need 0 <= start < end")
        hit = piece & (offsets[:, 0] < end) & (offsets[:, 1] > start) & (owner < 0)
        owner[hit] = k
    out = np.zeros(len(offsets), np.int32)
    previous = -1
    for i in np.flatnonzero(piece):
        k = owner[i]
        if k >= 0:
            kind = ordered[k][2]
            out[i] = tag_id[f"I-{kind}" if k == previous else f"B-{kind}"]
        previous = k
    return out


def encode_for_ner(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    entity_types: Sequence[str],
    *,
    max_length: int = 128,
    scheme: str = "first",
) -> NerEncoding:
    """Tokenize `texts` (truncated, padded to `max_length`) and tag their pieces from `spans`."""
    _check_scheme(scheme)
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} span lists")
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="np",
    )
    offsets = enc["offset_mapping"].astype(np.int64)  # [N, T, 2]
    piece = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)  # [N, T]
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in enc["input_ids"]]
    continuation = np.array(
        [[t.startswith(CONTINUATION_PREFIX) for t in row] for row in tokens], bool
    ).reshape(piece.shape)
    word_start = piece & ~continuation
    tags = bio_tags(entity_types)
    labels = np.stack([span_tags(o, p, s, tags) for o, p, s in zip(offsets, piece, spans)])
    keep = word_start if scheme == "first" else piece
    labels = np.where(keep, labels, IGNORE_INDEX).astype(np.int32)
    return NerEncoding(
        enc["input_ids"].astype(np.int32),
        enc["attention_mask"].astype(np.int32),
        enc["token_type_ids"].astype(np.int32),
        labels,
        offsets,
        word_start,
        piece,
        scheme,
    )


def _units(offsets, piece, word_start, tag_ids, scheme) -> list[tuple[int, int, int]]:
    """(start, end, tag id) per word ("first") or per piece ("all")."""
    units: list[tuple[int, int, int]] = []
    for i in np.flatnonzero(piece):
        start, end = int(offsets[i, 0]), int(offsets[i, 1])
        if scheme == "first" and not word_start[i] and units:
            units[-1] = (units[-1][0], end, units[-1][2])  # a continuation extends its word
        else:
            units.append((start, end, int(tag_ids[i])))
    return units


def tags_to_spans(units: Sequence[tuple[int, int, int]], tags: Sequence[str]) -> set[Span]:
    """BIO decoding: B-X opens an entity, I-X continues one of type X (or opens one, as
    seqeval's default mode does), O and any other tag close it."""
    spans: set[Span] = set()
    current: list | None = None  # [start, end, type]
    for start, end, tag_id in units:
        tag = tags[tag_id]
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and current is not None and current[2] == kind:
            current[1] = end
            continue
        if current is not None:
            spans.add(tuple(current))
        current = [start, end, kind] if prefix in ("B", "I") else None
    if current is not None:
        spans.add(tuple(current))
    return spans


def decode_spans(
    predictions: np.ndarray, encoding: NerEncoding, entity_types: Sequence[str]
) -> list[set[Span]]:
    """Predicted tag ids [N, T] -> one set of character spans per text."""
    tags = bio_tags(entity_types)
    predictions = np.asarray(predictions)
    if predictions.shape != encoding.input_ids.shape:
        raise ValueError(f"predictions {predictions.shape} != inputs {encoding.input_ids.shape}")
    return [
        tags_to_spans(_units(o, p, w, t, encoding.scheme), tags)
        for o, p, w, t in zip(encoding.offsets, encoding.piece, encoding.word_start, predictions)
    ]
