"""BioGPT's tokenizer: Moses pre-tokenization -> BPE, with offsets into the original text.

Identical to HF `transformers.BioGptTokenizer` (ids, tokens, decoded text): the text is cut at
special tokens ("</s>" in the text stays one token, as HF's added-token split does), each piece is
Moses-tokenized (`moses`, sacremoses' rules, English, aggressive dash splits, XML escaping), then
each Moses token is byte-pair encoded (`bpe`). Every sequence starts with "</s>" (fairseq has no
<s>). Unlike HF, `return_offsets_mapping=True` works: each BPE piece's span in the original text,
through escaping (``&amp;`` spans the one "&") and dash splits (``@-@`` spans the "-").
`from_fairseq` reads fairseq's dict.txt + bpecodes instead (fairseq's ids, plus the prompt tokens
of BioGPT's fine-tuned models as `prompt_ids`, skipped by `decode(skip_special_tokens=True)`).
"""

from __future__ import annotations

import functools
import json
import re
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biomed_jax.errors import ConfigError
from biomed_jax.extras import require
from biomed_jax.files import atomic_write_text
from biomed_jax.text_files import read_json_object
from biomed_jax.tokenizers._encoding import PYTHON_RULES, EncodingBase, Offsets, Piece
from biomed_jax.tokenizers._files import read_tokenizer_config, token_content
from biomed_jax.tokenizers.bpe import BPE, END_OF_WORD, read_merges
from biomed_jax.tokenizers.fairseq_dict import hf_token, read_dict_txt

NO_LIMIT = int(1e30)  # HF's model_max_length when none is configured


def load_vocab(vocab_file: str | Path) -> dict[str, int]:
    """vocab.json: {token: id}, ids non-negative ints."""
    vocab = read_json_object(vocab_file)
    bad = [
        f"{k!r}: {reprlib.repr(v)}"
        for k, v in vocab.items()
        if not isinstance(v, int) or isinstance(v, bool) or v < 0
    ]
    if bad:
        raise ConfigError(
            f"{vocab_file}: token ids must be non-negative integers; bad entries: {', '.join(bad[:5])}"
        )
    owner: dict[int, str] = {}
    for token, i in vocab.items():
        if i in owner:
            raise ConfigError(f"{vocab_file}: id {i} is used by both {owner[i]!r} and {token!r}")
        owner[i] = token
    return vocab


class BioGptTokenizer(EncodingBase):
    """BioGPT Moses + BPE tokenizer; `__call__`, `decode` etc. as HF's (see `_encoding`).

    The Moses step needs `sacremoses` (extra `biogpt`); it is imported at first use, so a model
    loads without it and the tokenizer's first call names the extra.
    """

    model_input_names = ("input_ids", "attention_mask")
    pair_rules = PYTHON_RULES  # transformers has only the Python BioGptTokenizer

    def __init__(
        self,
        vocab_file: str | Path | Mapping[str, int],
        merges_file: str | Path,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        sep_token: str = "</s>",
        pad_token: str = "<pad>",
        *,
        additional_special_tokens: Sequence[str] = (),
        prompt_tokens: Sequence[str] = (),
        model_max_length: int = NO_LIMIT,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        specials = {
            "unk_token": unk_token,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "sep_token": sep_token,
            "pad_token": pad_token,
        }
        vocab = dict(vocab_file) if isinstance(vocab_file, Mapping) else load_vocab(vocab_file)
        super().__init__(
            vocab,
            specials,
            model_max_length=model_max_length,
            padding_side=padding_side,
            truncation_side=truncation_side,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        extra = [*additional_special_tokens, *prompt_tokens]
        missing = [t for t in extra if t not in vocab]
        if missing:
            raise ValueError(
                f"additional_special_tokens / prompt_tokens not in the vocab: {missing}"
            )
        self.additional_special_tokens = list(additional_special_tokens)
        new = [t for t in self.additional_special_tokens if t not in self.all_special_tokens]
        self.all_special_tokens += new
        self.all_special_ids += [vocab[t] for t in new]
        # The task prompt fairseq's prompt-tuned BioGPT models append after the source (ids).
        self.prompt_tokens = tuple(prompt_tokens)
        self.prompt_ids = tuple(vocab[t] for t in self.prompt_tokens)
        self.bpe = BPE(vocab, read_merges(merges_file), self.unk_token_id)
        by_length = sorted(self.all_special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in by_length))
        self._special_starts = frozenset(t[0] for t in by_length)

    @functools.cached_property
    def moses(self):
        """The Moses pre-tokenizer (English, BioGPT's settings); imports sacremoses."""
        require("sacremoses")
        from biomed_jax.tokenizers.moses import MosesPreTokenizer

        return MosesPreTokenizer("en")

    @functools.cached_property
    def _detokenizer(self):
        return require("sacremoses").MosesDetokenizer(lang="en")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> BioGptTokenizer:
        """Read vocab.json, merges.txt and, when present, tokenizer_config.json and
        special_tokens_map.json (special tokens, model_max_length, padding/truncation sides)."""
        directory = Path(directory)
        files = {name: directory / name for name in ("vocab.json", "merges.txt")}
        for name, file in files.items():
            if not file.is_file():
                raise FileNotFoundError(f"{directory} has no {name}")
        config = read_tokenizer_config(directory)
        known = (
            "unk_token",
            "bos_token",
            "eos_token",
            "sep_token",
            "pad_token",
            "model_max_length",
            "padding_side",
            "truncation_side",
            "clean_up_tokenization_spaces",
            "additional_special_tokens",
            "prompt_tokens",
        )
        args = {
            k: [token_content(t) for t in v] if isinstance(v, list) else token_content(v)
            for k in known
            if (v := config.get(k)) is not None
        }
        args.update(overrides)
        try:
            tok = cls(files["vocab.json"], files["merges.txt"], **args)
        except ConfigError:
            raise
        except ValueError as e:  # e.g. a special token missing from vocab.json
            raise ConfigError(f"{directory}: {e}") from e
        added = {
            i: t if isinstance(t, dict) else {"content": t}
            for i, t in (config.get("added_tokens_decoder") or {}).items()
        }
        added_file = directory / "added_tokens.json"
        if added_file.is_file():
            extra_tokens = read_json_object(added_file)
            if not all(isinstance(i, int) and isinstance(t, str) for t, i in extra_tokens.items()):
                raise ConfigError(f"{added_file}: expected an object {{token: id}}")
            added.update({str(i): {"content": t} for t, i in extra_tokens.items()})
        extra = sorted(
            v["content"]
            for v in added.values()
            if v["content"] not in tok.all_special_tokens
            or any(v.get(flag) for flag in ("lstrip", "rstrip", "single_word"))
        )
        if extra:
            raise NotImplementedError(
                f"{directory}: added tokens beyond the plain special tokens are not supported: {extra}"
            )
        return tok

    @classmethod
    def from_fairseq(
        cls,
        dict_file: str | Path,
        bpecodes_file: str | Path,
        *,
        prompt_words: Sequence[str] = (),
        **kwargs: Any,
    ) -> BioGptTokenizer:
        """fairseq's dict.txt + bpecodes, ids as fairseq's `Dictionary` gives them.

        `prompt_words` (fairseq words, e.g. BioGPT's `learned1`..`learned9`) are appended to the
        dictionary where absent, as BioGPT's prompt task does at load time; they become
        `prompt_tokens` / `prompt_ids` and additional special tokens, so
        `decode(..., skip_special_tokens=True)` drops them.
        """
        dictionary = read_dict_txt(dict_file).add_symbols(prompt_words)
        prompt = [hf_token(w) for w in prompt_words]
        return cls(
            dictionary.hf_vocab(),
            bpecodes_file,
            additional_special_tokens=prompt,
            prompt_tokens=prompt,
            **kwargs,
        )

    def tokenizer_config(self) -> dict[str, Any]:
        return {
            **super().tokenizer_config(),
            "additional_special_tokens": list(self.additional_special_tokens),
            "prompt_tokens": list(self.prompt_tokens),
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """vocab.json, merges.txt (the merges in rank order) and tokenizer_config.json into
        `directory`: what `from_pretrained` (ours and transformers') reads back as this tokenizer."""
        directory = Path(directory)
        vocab = json.dumps(self.vocab, ensure_ascii=False, indent=2) + "\n"
        atomic_write_text(directory / "vocab.json", vocab)
        merges = sorted(self.bpe.ranks, key=self.bpe.ranks.__getitem__)
        atomic_write_text(directory / "merges.txt", "".join(f"{a} {b}\n" for a, b in merges))
        self._save_config(directory)

    def _template(self, pair: bool) -> tuple[Piece, ...]:
        sep = self.sep_token_id
        if pair:
            return ((sep, 0), ("A", 0), (sep, 1), ("B", 1))
        return ((sep, 0), ("A", 0))

    # -- encoding ---------------------------------------------------------------------------------
    def _segments(self, text: str):
        """(start, end, special token id or None): the text cut at special tokens."""
        pos = 0
        if not self._special_starts.isdisjoint(text):
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    yield pos, m.start(), None
                yield m.start(), m.end(), self.vocab[m.group()]
                pos = m.end()
        if pos < len(text):
            yield pos, len(text), None

    def _encode_text(self, text: str) -> tuple[list[int], list[Offsets]]:
        moses = self.moses  # first: names the extra when sacremoses is missing
        from biomed_jax.tokenizers.moses import align

        ids: list[int] = []
        offsets: list[Offsets] = []
        for start, end, special in self._segments(text):
            if special is not None:
                ids.append(special)
                offsets.append((start, end))
                continue
            segment = text[start:end]
            tokens = moses.tokenize(segment)
            encode = self.bpe.encode
            for token, (at, chars) in zip(tokens, align(segment, tokens)):
                token_ids, spans, _ = encode(token)
                ids += token_ids
                if chars is None:
                    at += start
                    offsets += [(at + a, at + b) for a, b in spans]
                else:
                    offsets += [(start + chars[a][0], start + chars[b - 1][1]) for a, b in spans]
        return ids, offsets

    def tokenize(self, text: str) -> list[str]:
        """BPE pieces as strings (with `</w>`), special tokens whole, as HF's `tokenize`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        out: list[str] = []
        for start, end, special in self._segments(text):
            if special is not None:
                out.append(text[start:end])
            else:
                for token in self.moses.tokenize(text[start:end]):
                    out += self.bpe.encode(token)[2]
        return out

    # -- decoding ---------------------------------------------------------------------------------
    def _id_to_token(self, i: int) -> str | None:
        """HF's Python BioGptTokenizer: an id outside the vocab reads as the unknown token."""
        return self.ids_to_tokens.get(i, self.unk_token)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join pieces ("</w>" ends a word), then Moses-detokenize (unescaping), as HF."""
        words = "".join(t.replace(" ", "").replace(END_OF_WORD, " ") for t in tokens).split()
        return self._detokenizer.detokenize(words)
