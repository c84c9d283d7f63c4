"""BERT's tokenizer: normalize -> pre-tokenize -> WordPiece, with offsets into the original text.

Identical to HF `transformers.BertTokenizer` (Rust `tokenizers`: BertNormalizer, BertPreTokenizer,
WordPiece, TemplateProcessing), character classes included (`_unicode_tables`). Text is cut at
special tokens, then at whitespace into chunks; each chunk's pieces and relative offsets are
cached, so a repeated chunk ("the", "patients.") costs one dict lookup. Chunks of plain ASCII
skip the per-character path.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from biomed_jax.errors import ConfigError
from biomed_jax.files import atomic_write_text
from biomed_jax.text_files import read_lines
from biomed_jax.tokenizers import _unicode_tables as tables
from biomed_jax.tokenizers._encoding import (
    CLEAN_UP,
    LARGE_INTEGER,
    EncodingBase,
    Offsets,
    Piece,
    clean_up,
)
from biomed_jax.tokenizers._files import read_tokenizer_config, token_content

CACHE_LIMIT = 1 << 18  # entries per cache before it is cleared
_ASCII_PUNCT = r"!-/:-@\[-`{-~"
_ASCII_WORD = re.compile(rf"[^{_ASCII_PUNCT}]+|[{_ASCII_PUNCT}]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = " " + "".join(chr(c) for a, b in tables.WHITESPACE for c in range(a, b + 1))
_CHUNK = re.compile("[^" + re.escape(_WHITESPACE) + "]+")
_SURROGATE = re.compile("[\ud800-\udfff]")

# character kinds after cleaning
_KEEP, _REMOVED, _CHINESE = 0, 1, 2


def _in(ranges: list[tuple[int, int]], starts: list[int], cp: int) -> bool:
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= ranges[i][1]


_STARTS = {
    name: [a for a, _ in getattr(tables, name)]
    for name in ("REMOVED", "PUNCTUATION", "NONSPACING_MARKS", "CHINESE")
}


def _has(name: str, c: str) -> bool:
    return _in(getattr(tables, name), _STARTS[name], ord(c))


def is_chinese_char(c: str) -> bool:
    """CJK ideographs that BERT splits out as words (Rust's ranges; they differ from HF Python's)."""
    return _has("CHINESE", c)


def is_punctuation(c: str) -> bool:
    """BertPreTokenizer punctuation: ASCII symbols or Unicode P* (Rust's tables)."""
    return _has("PUNCTUATION", c)


def is_whitespace(c: str) -> bool:
    return c in _WHITESPACE


def strip_accents_char(c: str) -> str:
    """NFD, then drop nonspacing marks (Rust's Mn table)."""
    override = tables.NFD_STRIPPED_OVERRIDES.get(ord(c))
    if override is not None:
        return override
    return "".join(x for x in unicodedata.normalize("NFD", c) if not _has("NONSPACING_MARKS", x))


def lower_char(c: str) -> str:
    """Rust char::to_lowercase (no context: a final sigma stays σ, unlike str.lower)."""
    override = tables.LOWER_OVERRIDES.get(ord(c))
    return c.lower() if override is None else override


def load_vocab(vocab_file: str | Path) -> dict[str, int]:
    """vocab.txt: one token a line, id = line number (as HF reads it); duplicates are an error."""
    vocab: dict[str, int] = {}
    for i, line in enumerate(read_lines(vocab_file)):
        token = line.rstrip("\n")
        if token in vocab:
            raise ConfigError(
                f"{vocab_file}: duplicate vocabulary entry {token!r} on lines "
                f"{vocab[token] + 1} and {i + 1}"
            )
        vocab[token] = i
    if not vocab:
        raise ConfigError(f"{vocab_file}: the vocabulary is empty")
    return vocab


class BertTokenizer(EncodingBase):
    """BERT WordPiece tokenizer; `__call__`, `decode` etc. as HF's (see `_encoding`)."""

    def __init__(
        self,
        vocab_file: str | Path | None = None,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        never_split: Iterable[str] | None = None,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        model_max_length: int = 512,
        *,
        vocab: dict[str, int] | None = None,
        max_input_chars_per_word: int = 100,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        if (vocab_file is None) == (vocab is None):
            raise ValueError("pass exactly one of vocab_file and vocab")
        if vocab is None:
            vocab = load_vocab(vocab_file)
        specials = {
            "unk_token": unk_token,
            "sep_token": sep_token,
            "pad_token": pad_token,
            "cls_token": cls_token,
            "mask_token": mask_token,
        }
        super().__init__(
            vocab,
            specials,
            model_max_length=model_max_length,
            padding_side=padding_side,
            truncation_side=truncation_side,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        extra = sorted(set(never_split or ()) - set(self.all_special_tokens))
        if extra:
            raise NotImplementedError(
                f"never_split={extra}: only special tokens can be kept whole (HF's Rust BertTokenizer "
                "ignores never_split)"
            )
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.max_input_chars_per_word = max_input_chars_per_word
        self._strip = do_lower_case if strip_accents is None else strip_accents
        self._max_piece = max(len(t) for t in vocab)
        by_length = sorted(self.all_special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in by_length))
        self._special_starts = frozenset(t[0] for t in by_length)
        self._chunk_cache: dict[str, tuple[tuple[int, ...], tuple[Offsets, ...]]] = {}
        self._word_cache: dict[str, tuple[tuple[int, int, int], ...]] = {}
        self._char_cache: dict[str, tuple[int, str]] = {}

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, default_model_max_length: int = 512, **overrides: Any
    ) -> BertTokenizer:
        """Read vocab.txt and, when present, tokenizer_config.json and special_tokens_map.json.

        model_max_length: `overrides`, else tokenizer_config.json (values above 1e20 count as
        absent), else `default_model_max_length` (the loader passes max_position_embeddings).
        """
        directory = Path(directory)
        vocab_file = directory / "vocab.txt"
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{directory} has no vocab.txt")
        kwargs = read_tokenizer_config(directory)
        known = (
            "do_lower_case",
            "tokenize_chinese_chars",
            "strip_accents",
            "never_split",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
            "model_max_length",
            "padding_side",
            "truncation_side",
            "clean_up_tokenization_spaces",
        )
        args = {k: token_content(kwargs[k]) for k in known if kwargs.get(k) is not None}
        if args.get("model_max_length", LARGE_INTEGER + 1) > LARGE_INTEGER:
            args["model_max_length"] = default_model_max_length
        args.update(overrides)
        try:
            tokenizer = cls(vocab_file, **args)
        except ConfigError:
            raise
        except ValueError as e:  # e.g. a special token missing from vocab.txt
            raise ConfigError(f"{directory}: {e}") from e
        tokenizer._refuse_added_tokens(kwargs)
        return tokenizer

    def tokenizer_config(self) -> dict[str, Any]:
        return {
            **super().tokenizer_config(),
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """vocab.txt and tokenizer_config.json into `directory`: what `from_pretrained` (ours and
        transformers') reads back as this tokenizer."""
        tokens = [self.ids_to_tokens.get(i) for i in range(len(self.vocab))]
        if None in tokens:
            raise ValueError("vocab.txt lists tokens by id: the vocabulary ids must be 0..n-1")
        atomic_write_text(Path(directory) / "vocab.txt", "".join(t + "\n" for t in tokens))
        self._save_config(directory)

    def _refuse_added_tokens(self, config: dict[str, Any]) -> None:
        """Tokens added on top of vocab.txt are not implemented: refuse them, never drop them."""
        added = {
            int(i): token_content(t) for i, t in (config.get("added_tokens_decoder") or {}).items()
        }
        extra = [
            f"{t!r} (id {i})"
            for i, t in added.items()
            if t not in self.all_special_tokens or self.vocab.get(t) != i
        ]
        extra += [repr(t) for t in config.get("additional_special_tokens") or ()]
        if extra:
            raise NotImplementedError(
                f"added tokens beyond vocab.txt's special tokens are not supported: {', '.join(extra)}"
            )

    def _template(self, pair: bool) -> tuple[Piece, ...]:
        cls, sep = self.cls_token_id, self.sep_token_id
        if pair:
            return ((cls, 0), ("A", 0), (sep, 0), ("B", 1), (sep, 1))
        return ((cls, 0), ("A", 0), (sep, 0))

    # -- encoding ---------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> tuple[list[int], list[Offsets]]:
        ids: list[int] = []
        offsets: list[Offsets] = []
        if not self._special_starts.isdisjoint(text):
            pos = 0
            for m in self._special_re.finditer(text):
                self._encode_span(text, pos, m.start(), ids, offsets)
                ids.append(self.vocab[m.group()])
                offsets.append(m.span())
                pos = m.end()
            self._encode_span(text, pos, len(text), ids, offsets)
        else:
            self._encode_span(text, 0, len(text), ids, offsets)
        return ids, offsets

    def _encode_span(
        self, text: str, pos: int, endpos: int, ids: list[int], offsets: list[Offsets]
    ) -> None:
        """Encode text[pos:endpos] chunk by chunk. A cached chunk is an int when it is one token
        spanning the whole chunk (the common case), else (ids, offsets relative to the chunk)."""
        cache = self._chunk_cache
        add_id, add_offsets = ids.append, offsets.append
        for m in _CHUNK.finditer(text, pos, endpos):
            hit = cache.get(m.group())
            if hit is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                hit = cache[m.group()] = self._encode_chunk(m.group())
            if hit.__class__ is int:
                add_id(hit)
                add_offsets(m.span())
            else:
                ids += hit[0]
                start = m.start()
                offsets += [(start + a, start + b) for a, b in hit[1]]

    def _encode_chunk(self, chunk: str) -> int | tuple[tuple[int, ...], tuple[Offsets, ...]]:
        """Pieces of one whitespace-free chunk, offsets relative to the chunk (see _encode_span)."""
        pieces: list[tuple[int, int, int]] = []
        if chunk.isascii() and chunk.isalnum():  # one plain word
            pieces += self._wordpiece(chunk.lower() if self.do_lower_case else chunk)
        elif chunk.isascii() and not _ASCII_CONTROL.search(chunk):
            norm = chunk.lower() if self.do_lower_case else chunk
            for m in _ASCII_WORD.finditer(norm):
                start = m.start()
                pieces += [(i, start + a, start + b) for i, a, b in self._wordpiece(m.group())]
        else:
            if _SURROGATE.search(chunk):
                raise ValueError(f"text contains a lone surrogate (not valid Unicode): {chunk!r}")
            chars: list[str] = []
            align: list[int] = []
            breaks: list[bool] = []  # a normalized char that is a word on its own
            for i, c in enumerate(chunk):
                kind, norm = self._char(c)
                if kind == _REMOVED:
                    continue
                for x in norm:
                    chars.append(x)
                    align.append(i)
                    breaks.append(kind == _CHINESE or is_punctuation(x))
            word_start = 0
            for j in range(len(chars) + 1):
                if j == len(chars) or breaks[j] or is_whitespace(chars[j]):
                    if word_start < j:
                        self._add_word(chars, align, word_start, j, pieces)
                    if j < len(chars) and breaks[j]:
                        self._add_word(chars, align, j, j + 1, pieces)
                    word_start = j + 1
        if len(pieces) == 1 and pieces[0][1:] == (0, len(chunk)):
            return pieces[0][0]
        return tuple(p[0] for p in pieces), tuple((a, b) for _, a, b in pieces)

    def _add_word(self, chars, align, start, stop, pieces) -> None:
        for i, a, b in self._wordpiece("".join(chars[start:stop])):
            pieces.append((i, align[start + a], align[start + b - 1] + 1))

    def _char(self, c: str) -> tuple[int, str]:
        """(kind, normalized text) of one character: BertNormalizer on a single char."""
        hit = self._char_cache.get(c)
        if hit is not None:
            return hit
        if _has("REMOVED", c):
            out = (_REMOVED, "")
        else:
            kind = _CHINESE if self.tokenize_chinese_chars and is_chinese_char(c) else _KEEP
            norm = " " if c in _WHITESPACE else c
            if self._strip:
                norm = "".join(strip_accents_char(x) for x in norm)
            if self.do_lower_case:
                norm = "".join(lower_char(x) for x in norm)
            out = (kind, norm)
        self._char_cache[c] = out
        return out

    def _wordpiece(self, word: str) -> tuple[tuple[int, int, int], ...]:
        """Greedy longest-match-first pieces (id, start, end) of one word; [UNK] for the whole word."""
        hit = self._word_cache.get(word)
        if hit is not None:
            return hit
        n = len(word)
        vocab = self.vocab
        unk = ((self.unk_token_id, 0, n),)
        if n > self.max_input_chars_per_word:
            out = unk
        else:
            pieces = []
            start = 0
            while start < n:
                end = min(n, start + self._max_piece)
                while start < end:
                    i = vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                    if i is not None:
                        break
                    end -= 1
                else:
                    pieces = None
                    break
                pieces.append((i, start, end))
                start = end
            out = unk if pieces is None else tuple(pieces)
        if len(self._word_cache) >= CACHE_LIMIT:
            self._word_cache.clear()
        self._word_cache[word] = out
        return out

    # -- decoding ---------------------------------------------------------------------------------
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Rust decoders.WordPiece(prefix="##", cleanup=True): join, '##' glues, per-token cleanup."""
        out = []
        for i, token in enumerate(tokens):
            if i:
                token = token[2:] if token.startswith("##") else " " + token
            out.append(clean_up(token, _WORDPIECE_CLEAN_UP))
        return "".join(out)


# Rust `decoders::wordpiece::cleanup`: HF's clean-up with " do not" -> " don't" after " 'm".
_WORDPIECE_CLEAN_UP = (*CLEAN_UP[:7], (" do not", " don't"), *CLEAN_UP[7:])
