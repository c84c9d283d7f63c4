"""fairseq's `dict.txt` as fairseq's `Dictionary` reads it, and its BPE-piece -> vocab.json rewrite.

Ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then one row per dict.txt line (`word count`,
optionally followed by the `#fairseq:overwrite` flag), then the words a task adds at run time
(BioGPT's prompt task appends `learned1`..`learnedN` unless present). Word-internal BPE pieces end
in `@@` in fairseq; vocab.json (transformers' layout, what our tokenizer reads) drops the `@@` and
marks every other piece with `</w>` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from biomed_jax.errors import ConfigError, shown
from biomed_jax.text_files import read_lines

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_OVERWRITE = "#fairseq:overwrite"
CONTINUATION = "@@"
END_OF_WORD = "</w>"


@dataclasses.dataclass(frozen=True)
class FairseqDictionary:
    """symbols: one per embedding row, in id order; indices: word -> id (an overwritten word's
    earlier row keeps its place but is no longer looked up)."""

    symbols: tuple[str, ...]
    indices: dict[str, int]

    def __len__(self) -> int:
        return len(self.symbols)

    def add_symbols(self, words: Iterable[str]) -> FairseqDictionary:
        """fairseq `add_symbol` for each word: appended unless already present."""
        symbols, indices = list(self.symbols), dict(self.indices)
        for word in words:
            if word not in indices:
                indices[word] = len(symbols)
                symbols.append(word)
        return FairseqDictionary(tuple(symbols), indices)

    def hf_vocab(self) -> dict[str, int]:
        """The vocab.json of the same ids (transformers' BioGPT conversion rule)."""
        vocab: dict[str, int] = {}
        for word, i in self.indices.items():
            key = hf_token(word)
            if key in vocab:
                raise ValueError(
                    f"dict.txt words {shown(self.symbols[vocab[key]])} and {shown(word)} both "
                    f"become {shown(key)} in vocab.json"
                )
            vocab[key] = i
        return vocab


def hf_token(word: str) -> str:
    """One fairseq word as its vocab.json key."""
    if word in SPECIALS:
        return word
    if word.endswith(CONTINUATION):
        return word[: -len(CONTINUATION)]
    return word + END_OF_WORD


def read_dict_txt(path: str | Path) -> FairseqDictionary:
    """dict.txt -> the dictionary fairseq's `Dictionary.load` builds (specials first). Errors
    are `ConfigError`s naming the file and line, the line shown cut to ~100 characters."""
    path = Path(path)
    symbols = list(SPECIALS)
    indices = {w: i for i, w in enumerate(SPECIALS)}
    for n, line in enumerate(read_lines(path), 1):  # UTF-8, at most 64 MiB, a regular file
        fields = line.rstrip().rsplit(" ", 1)
        overwrite = len(fields) == 2 and fields[1] == _OVERWRITE
        if overwrite:
            fields = fields[0].rsplit(" ", 1)
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ConfigError(
                f"{path} line {n}: expected '<word> <count> [flags]', got {shown(line)}"
            )
        word = fields[0]
        if word in indices and not overwrite:
            raise ConfigError(
                f"{path} line {n}: duplicate word {shown(word)} (fairseq needs the "
                f"{_OVERWRITE} flag to repeat a word)"
            )
        indices[word] = len(symbols)
        symbols.append(word)
    return FairseqDictionary(tuple(symbols), indices)
