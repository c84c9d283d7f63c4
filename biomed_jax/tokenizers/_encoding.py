"""Post-processing shared by our tokenizers: HF's `__call__`, truncation, padding, decode.

Semantics follow the Rust `tokenizers` library behind `transformers` (TemplateProcessing,
`truncate_encodings`, `Encoding.truncate/merge_with/pad`), so overflow windows, offsets and masks
come out identical.

Subclass hooks (everything else lives here, once):
- `__init__` calls `super().__init__(vocab, special_tokens, model_max_length=..., ...)` with the
  token -> id dict and the named special tokens {"unk_token": "[UNK]", "cls_token": ..., ...};
  every special token must be in the vocab (ValueError otherwise).
- `_encode_text(self, text) -> (ids, offsets)`: one text, no special tokens; offsets are
  (start, end) character spans into `text`, one per id.
- `_template(self, pair) -> tuple[Piece, ...]`: the special-token template, pieces as in Rust's
  TemplateProcessing: ("A", type_id), ("B", type_id) or (special_token_id, type_id).
  e.g. BERT single: ((cls, 0), ("A", 0), (sep, 0)).
- `convert_tokens_to_string(self, tokens) -> str`: join tokens back into text (decode).
- optional: `tokenize(self, text) -> list[str]` (default: the tokens of `_encode_text`'s ids);
  `_id_to_token(self, i) -> str | None` (default: vocab lookup, None outside it, which decode skips);
  `model_input_names` (class attribute: which of token_type_ids / attention_mask are returned
  by default); `_clean_up(self, text)` (the `clean_up_tokenization_spaces` step of decode).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from biomed_jax.files import atomic_write_text

Piece = tuple[Any, int]
Offsets = tuple[int, int]

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")
LARGE_INTEGER = int(1e20)  # HF: model_max_length above this means "no limit"


class _Enc:
    """One encoded sequence with its overflow windows (Rust `Encoding`, the fields we need)."""

    __slots__ = ("attention", "ids", "offsets", "overflowing", "special", "type_ids")

    def __init__(self, ids, type_ids, offsets, special, attention=None, overflowing=None):
        self.ids = ids
        self.type_ids = type_ids
        self.offsets = offsets
        self.special = special
        self.attention = [1] * len(ids) if attention is None else attention
        self.overflowing = [] if overflowing is None else overflowing

    def copy(self) -> _Enc:
        return _Enc(
            self.ids[:],
            self.type_ids[:],
            self.offsets[:],
            self.special[:],
            self.attention[:],
            [o.copy() for o in self.overflowing],
        )

    def slice(self, start: int, stop: int) -> _Enc:
        return _Enc(
            self.ids[start:stop],
            self.type_ids[start:stop],
            self.offsets[start:stop],
            self.special[start:stop],
            self.attention[start:stop],
        )

    def truncate(self, max_len: int, stride: int, direction: str) -> None:
        """Keep a window of `max_len` and move the rest into `overflowing` (Rust Encoding::truncate)."""
        n = len(self.ids)
        if max_len >= n:
            return
        if max_len == 0:
            self.overflowing.append(self.copy())
            self.ids, self.type_ids, self.offsets, self.special, self.attention = [], [], [], [], []
            return
        if stride >= max_len:
            raise ValueError(
                f"stride ({stride}) must be smaller than the room left for this sequence ({max_len} "
                "tokens, after the special tokens and the other sequence of a pair)"
            )
        step = max_len - stride
        ranges = []
        if direction == "right":
            for start in range(0, n, step):
                stop = min(start + max_len, n)
                ranges.append((start, stop))
                if stop == n:
                    break
        else:
            for last in range(n - 1, -1, -step):
                stop = last + 1
                start = max(stop - max_len, 0)
                ranges.append((start, stop))
                if start == 0:
                    break
        first = self.slice(*ranges[0])
        first.overflowing = [self.slice(*r) for r in ranges[1:]]
        self.ids, self.type_ids, self.offsets = first.ids, first.type_ids, first.offsets
        self.special, self.attention, self.overflowing = (
            first.special,
            first.attention,
            first.overflowing,
        )

    def concat(self, other: _Enc) -> _Enc:
        """self + other, without overflow windows."""
        return _Enc(
            self.ids + other.ids,
            self.type_ids + other.type_ids,
            self.offsets + other.offsets,
            self.special + other.special,
            self.attention + other.attention,
        )

    def merge_with(self, pair: _Enc) -> None:
        """Append `pair`, combining overflow windows in Rust Encoding::merge_with's order.

        Rust also keeps windows of windows (nested); HF only reads the top level, so we drop them.
        """
        overflowing = []
        for self_o in self.overflowing:
            overflowing.append(self_o.concat(pair))
            overflowing += [self_o.concat(other_o) for other_o in pair.overflowing]
        overflowing += [self.concat(other_o) for other_o in pair.overflowing]
        self.ids += pair.ids
        self.type_ids += pair.type_ids
        self.offsets += pair.offsets
        self.special += pair.special
        self.attention += pair.attention
        self.overflowing = overflowing

    def pad(self, length: int, pad_id: int, pad_type_id: int, side: str) -> None:
        for o in self.overflowing:
            o.pad(length, pad_id, pad_type_id, side)
        n = length - len(self.ids)
        if n <= 0:
            return
        if side == "right":
            self.ids += [pad_id] * n
            self.type_ids += [pad_type_id] * n
            self.offsets += [(0, 0)] * n
            self.special += [1] * n
            self.attention += [0] * n
        else:
            self.ids = [pad_id] * n + self.ids
            self.type_ids = [pad_type_id] * n + self.type_ids
            self.offsets = [(0, 0)] * n + self.offsets
            self.special = [1] * n + self.special
            self.attention = [0] * n + self.attention


def truncate_like_rust(
    a: _Enc, b: _Enc | None, max_length: int, strategy: str, stride: int, side: str
) -> None:
    """Rust `truncate_encodings`: `max_length` is what is left after the special tokens."""
    if max_length == 0:
        a.truncate(0, stride, side)
        if b is not None:
            b.truncate(0, stride, side)
        return
    total = len(a.ids) + (len(b.ids) if b is not None else 0)
    if total <= max_length:
        return
    to_remove = total - max_length
    if strategy == "longest_first":
        if b is None:
            a.truncate(total - to_remove, stride, side)
            return
        n1, n2 = len(a.ids), len(b.ids)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > max_length else max(n1, max_length - n1)
        if n1 + n2 > max_length:
            n1 = max_length // 2
            n2 = n1 + max_length % 2
        if swap:
            n1, n2 = n2, n1
        a.truncate(n1, stride, side)
        b.truncate(n2, stride, side)
        return
    if strategy == "only_second" and b is None:
        raise ValueError("truncation='only_second' needs a text_pair")
    target = a if strategy == "only_first" else b
    if len(target.ids) <= to_remove:
        which = "first" if strategy == "only_first" else "second"
        raise ValueError(
            f"truncation={strategy!r} cannot fit max_length: the {which} sequence has "
            f"{len(target.ids)} tokens but {to_remove} must go; use 'longest_first' or a larger max_length"
        )
    target.truncate(len(target.ids) - to_remove, stride, side)


def truncate_like_python(
    a: _Enc, b: _Enc | None, max_length: int, strategy: str, stride: int, side: str
) -> None:
    """HF `PythonBackend.truncate_sequences`; `max_length` is what is left after the special tokens.

    Differs from Rust in 'longest_first' on a pair: the longer sequence first loses the
    difference in length, then both lose half of the rest, the second sequence the odd token
    ("aspirin" / "liver" at max_length 3 keeps "aspirin"). Where HF would return a sequence longer
    than `max_length` ('only_first' / 'only_second' removing more than the sequence has, or
    'only_second' without a pair), this raises, as `truncate_like_rust` does.
    """
    total = len(a.ids) + (len(b.ids) if b is not None else 0)
    if total <= max_length:
        return
    to_remove = total - max_length
    if strategy == "longest_first" and b is not None:
        n1, n2 = len(a.ids), len(b.ids)
        first = min(abs(n2 - n1), to_remove)
        second = to_remove - first
        if n1 > n2:
            from_a, from_b = first + second // 2, second - second // 2
        else:
            from_a, from_b = second // 2, first + second - second // 2
        a.truncate(n1 - from_a, 0, side)  # no windows: HF refuses overflow here (see __call__)
        b.truncate(n2 - from_b, 0, side)
        return
    if strategy == "only_second" and b is None:
        raise ValueError("truncation='only_second' needs a text_pair")
    target = b if strategy == "only_second" else a
    if len(target.ids) < to_remove:
        which = "second" if strategy == "only_second" else "first"
        raise ValueError(
            f"truncation={strategy!r} cannot fit max_length: the {which} sequence has "
            f"{len(target.ids)} tokens but {to_remove} must go; use 'longest_first' or a larger max_length"
        )
    target.truncate(len(target.ids) - to_remove, stride, side)


@dataclasses.dataclass(frozen=True)
class PairRules:
    """How a tokenizer family treats pairs; HF's Rust `tokenizers` and its Python tokenizers differ.

    truncate: `truncate_like_rust` or `truncate_like_python`.
    empty_pair_is_pair: whether `text_pair=""` adds the pair template (Python) or is no pair (Rust).
    longest_first_pair_windows: whether overflow windows exist for a pair truncated
        'longest_first' (Rust), or asking for them raises (Python).
    """

    truncate: Callable[..., None]
    empty_pair_is_pair: bool
    longest_first_pair_windows: bool


RUST_RULES = PairRules(truncate_like_rust, False, True)  # BERT: the fast tokenizer's behaviour
PYTHON_RULES = PairRules(truncate_like_python, True, False)  # BioGPT: HF has only a Python one


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


class EncodingBase:
    """The HF tokenizer call interface over a subclass's `_encode_text` and `_template`."""

    model_input_names: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
    pair_rules: ClassVar[PairRules] = RUST_RULES

    def __init__(
        self,
        vocab: dict[str, int],
        special_tokens: dict[str, str],
        *,
        model_max_length: int = 512,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        pad_token_type_id: int = 0,
    ) -> None:
        for name, token in special_tokens.items():
            if not isinstance(token, str) or not token:
                raise TypeError(f"{name} must be a non-empty str, got {token!r}")
        if not vocab:
            raise ValueError("the vocabulary is empty")
        ids_to_tokens: dict[int, str] = {}
        for token, i in vocab.items():
            if i in ids_to_tokens:
                raise ValueError(
                    f"vocabulary id {i} is used by both {ids_to_tokens[i]!r} and {token!r}"
                )
            ids_to_tokens[i] = token
        missing = {k: v for k, v in special_tokens.items() if v is not None and v not in vocab}
        if missing:
            raise ValueError(
                "special tokens missing from the vocabulary: "
                + ", ".join(f"{k}={v!r}" for k, v in missing.items())
            )
        for side, name in ((padding_side, "padding_side"), (truncation_side, "truncation_side")):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        self.vocab = vocab
        self.ids_to_tokens = ids_to_tokens
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        for name, token in self.special_tokens.items():
            setattr(self, name, token)
            setattr(self, name + "_id", vocab[token])
        self.all_special_tokens = list(dict.fromkeys(self.special_tokens.values()))
        self.all_special_ids = [vocab[t] for t in self.all_special_tokens]
        self.model_max_length = int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.pad_token_type_id = pad_token_type_id

    def tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json's fields every tokenizer has (HF's names); subclasses add theirs."""
        return {
            "tokenizer_class": type(self).__name__,
            **self.special_tokens,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }

    def _save_config(self, directory: str | Path) -> None:
        text = json.dumps(self.tokenizer_config(), indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(Path(directory) / "tokenizer_config.json", text)

    # -- subclass hooks ---------------------------------------------------------------------------
    def _encode_text(self, text: str) -> tuple[list[int], list[Offsets]]:
        raise NotImplementedError

    def _template(self, pair: bool) -> tuple[Piece, ...]:
        raise NotImplementedError

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        raise NotImplementedError

    # -- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Vocab ids; tokens not in the vocab map to the unknown token's id."""
        unk = getattr(self, "unk_token_id", None)
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        return [self.vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str] | None:
        """Vocab tokens (`_id_to_token`: None for an id outside the vocab, as HF Rust)."""
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in skip]

    def _id_to_token(self, i: int) -> str | None:
        """The token of id `i`; None for an id outside the vocab (HF Rust), which decode skips."""
        return self.ids_to_tokens.get(i)

    def tokenize(self, text: str) -> list[str]:
        _check_text(text, "text")
        ids, _ = self._encode_text(text)
        return [self.ids_to_tokens[i] for i in ids]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return sum(1 for kind, _ in self._template(pair) if kind not in ("A", "B"))

    # -- encoding ---------------------------------------------------------------------------------
    def _resolve(self, padding, truncation, max_length, pad_to_multiple_of):
        """HF `_get_padding_truncation_strategies`."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            padding = "longest"
        elif padding is False or padding == "do_not_pad" or padding is None:
            padding = None
        elif padding not in PADDING_STRATEGIES:
            raise ValueError(
                f"padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        if truncation is True:
            truncation = "longest_first"
        elif truncation is False or truncation is None or truncation == "do_not_truncate":
            truncation = None
        elif truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(
                f"truncation must be True, False or one of {TRUNCATION_STRATEGIES}, got {truncation!r}"
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if max_length is None:
            if padding == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    padding = None
                else:
                    max_length = self.model_max_length
            if truncation is not None:
                if self.model_max_length > LARGE_INTEGER:
                    truncation = None
                else:
                    max_length = self.model_max_length
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0
        ):
            raise ValueError(
                f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}"
            )
        if (
            truncation is not None
            and padding is not None
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of
        ):
            raise ValueError(
                f"Truncation and padding are both activated but truncation length ({max_length}) "
                f"is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return padding, truncation, max_length

    def _post_process(
        self,
        a: tuple[list[int], list[Offsets]],
        b: tuple[list[int], list[Offsets]] | None,
        add_special_tokens: bool,
        truncation: str | None,
        max_length: int | None,
        stride: int,
    ) -> _Enc:
        """Truncate, then add special tokens (Rust `Tokenizer::post_process` minus padding)."""
        template = self._template(b is not None)
        if truncation is None:  # fast path: no windows
            if not add_special_tokens:
                ids, offsets = a[0][:], a[1][:]
                type_ids = [0] * len(ids)
                if b is not None:
                    ids += b[0]
                    offsets += b[1]
                    type_ids += [1] * len(b[0])
                return _Enc(ids, type_ids, offsets, [0] * len(ids))
            ids, type_ids, offsets, special = [], [], [], []
            for kind, type_id in template:
                if kind == "A" or kind == "B":
                    seq_ids, seq_offsets = a if kind == "A" else b
                    ids += seq_ids
                    offsets += seq_offsets
                    type_ids += [type_id] * len(seq_ids)
                    special += [0] * len(seq_ids)
                else:
                    ids.append(kind)
                    offsets.append((0, 0))
                    type_ids.append(type_id)
                    special.append(1)
            return _Enc(ids, type_ids, offsets, special)

        enc_a = _Enc(a[0][:], [0] * len(a[0]), a[1][:], [0] * len(a[0]))
        enc_b = None if b is None else _Enc(b[0][:], [1] * len(b[0]), b[1][:], [0] * len(b[0]))
        room = max_length
        if add_special_tokens:
            room -= self.num_special_tokens_to_add(b is not None)
            if room < 0:
                raise ValueError(
                    f"max_length={max_length} is smaller than the {max_length - room} special tokens "
                    "added to each sequence"
                )
        self.pair_rules.truncate(enc_a, enc_b, room, truncation, stride, self.truncation_side)
        if not add_special_tokens:
            if enc_b is not None:
                enc_a.merge_with(enc_b)
            return enc_a
        out = _Enc([], [], [], [])
        for kind, type_id in template:
            if kind == "A" or kind == "B":
                seq = enc_a if kind == "A" else enc_b
                seq.type_ids = [type_id] * len(seq.ids)
                for o in seq.overflowing:
                    o.type_ids = [type_id] * len(o.ids)
                out.merge_with(seq)
            else:
                out.merge_with(_Enc([kind], [type_id], [(0, 0)], [1]))
        return out

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_length: bool = False,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode a text, a batch of texts, or (batches of) pairs; HF keys and semantics."""
        batched = isinstance(text, (list, tuple))
        if batched:
            texts = list(text)
            if not texts:
                raise ValueError("text is an empty list: nothing to tokenize")
            for i, t in enumerate(texts):
                _check_text(t, f"text[{i}]")
            if text_pair is None:
                pairs = [None] * len(texts)
            elif isinstance(text_pair, (list, tuple)):
                if len(text_pair) != len(texts):
                    raise ValueError(
                        f"batch length of `text`: {len(texts)} does not match batch length of "
                        f"`text_pair`: {len(text_pair)}."
                    )
                for i, t in enumerate(text_pair):
                    _check_text(t, f"text_pair[{i}]")
                pairs = list(text_pair)
            else:
                raise TypeError(
                    "when text is a batch (list), text_pair must be a list of the same length"
                )
        else:
            _check_text(text, "text")
            if text_pair is not None:
                _check_text(text_pair, "text_pair")
            texts = [text]
            empty_is_none = text_pair == "" and not self.pair_rules.empty_pair_is_pair
            pairs = [None if empty_is_none else text_pair]
        if not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        padding, truncation, max_length = self._resolve(
            padding, truncation, max_length, pad_to_multiple_of
        )
        if (
            return_overflowing_tokens
            and truncation == "longest_first"
            and not self.pair_rules.longest_first_pair_windows
            and any(p is not None for p in pairs)
        ):
            raise ValueError(
                "return_overflowing_tokens=True cannot be used for pairs with truncation "
                "'longest_first' (as in transformers); use 'only_first' or 'only_second'"
            )
        if truncation is not None and stride > max_length - self.num_special_tokens_to_add(False):
            raise ValueError(
                f"stride ({stride}) is larger than max_length ({max_length}) minus the special tokens"
            )

        encode = self._encode_text
        encs = [
            self._post_process(
                encode(t),
                None if p is None else encode(p),
                add_special_tokens,
                truncation,
                max_length,
                stride,
            )
            for t, p in zip(texts, pairs)
        ]
        if padding is not None:
            length = max_length if padding == "max_length" else max(len(e.ids) for e in encs)
            if pad_to_multiple_of and length % pad_to_multiple_of:
                length += pad_to_multiple_of - length % pad_to_multiple_of
            for e in encs:
                e.pad(length, self.pad_token_id, self.pad_token_type_id, side)

        rows, sample = [], []
        for i, e in enumerate(encs):
            rows.append(e)
            sample.append(i)
            if return_overflowing_tokens:
                rows += e.overflowing
                sample += [i] * len(e.overflowing)
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        out: dict[str, Any] = {"input_ids": [r.ids for r in rows]}
        if return_token_type_ids:
            out["token_type_ids"] = [r.type_ids for r in rows]
        if return_attention_mask:
            out["attention_mask"] = [r.attention for r in rows]
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [r.special for r in rows]
        if return_offsets_mapping:
            out["offset_mapping"] = [r.offsets for r in rows]
        if return_length:
            out["length"] = [len(r.ids) for r in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = sample
        if return_tensors == "np":
            return {k: _to_array(k, v) for k, v in out.items()}
        if not batched and not return_overflowing_tokens:
            return {k: v[0] if k != "length" else v for k, v in out.items()}  # as HF
        return out

    # -- decoding ---------------------------------------------------------------------------------
    def decode(
        self,
        token_ids: int | Sequence[int] | np.ndarray,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Ids back to text; ids outside the vocab are skipped (as HF Rust does)."""
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [token_ids]
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(
                f"decode takes one sequence of int ids, got shape {ids.shape} {ids.dtype}"
            )
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        to_token = self._id_to_token
        tokens = [t for i in ids.tolist() if i not in skip and (t := to_token(i)) is not None]
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self._clean_up(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | np.ndarray, **kwargs: Any
    ) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]

    @staticmethod
    def _clean_up(text: str) -> str:
        return clean_up(text)


# HF `clean_up_tokenization`: spaces before punctuation and in abbreviated forms, in this order.
CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up(text: str, replacements: Sequence[tuple[str, str]] = CLEAN_UP) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def _to_array(key: str, rows: list) -> np.ndarray:
    if key in ("overflow_to_sample_mapping", "length"):
        return np.asarray(rows, np.int32)
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make one array of {key}: the sequences have lengths {sorted(lengths)}; "
            "pass padding=True (or 'max_length') with return_tensors='np'"
        )
    if key == "offset_mapping":
        return np.asarray(rows, np.int32).reshape(len(rows), -1, 2)
    return np.asarray(rows, np.int32).reshape(len(rows), -1)
