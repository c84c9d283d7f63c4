"""Tiny seeded random checkpoints in Hugging Face's layout, to try biomed_jax without the hub.

    python -m conformance.tiny bert tiny-bert       # BertForMaskedLM + vocab.txt
    python -m conformance.tiny biogpt tiny-biogpt   # BioGptForCausalLM + vocab.json, merges.txt

Random weights (outputs mean nothing; shapes, files and code paths are the real ones), saved by
`transformers` (extra `conformance`). The vocabularies come from the text shipped in
`conformance/data`, so the prompts and sentences of the docs (`corpus.DOC_TEXTS`) tokenize with
no unknown token: BERT gets [PAD] [UNK] [CLS] [SEP] [MASK], ASCII punctuation, letters and digits
(alone and as ##continuations) and the words of the shipped PubMed titles and sentences and of
the docs' texts; BioGPT gets the shipped subset of the real vocabulary (which covers the same
texts), renumbered 0..n-1 in id order (the special tokens keep ids 0..3). The docs test puts
these under the hub ids microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext and
microsoft/biogpt.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import sys
from pathlib import Path

from conformance import corpus

SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=128,
    initializer_range=0.2,
)


def bert_vocab() -> list[str]:
    """WordPiece entries: specials, punctuation, single characters (alone and as ##continuations),
    words."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    texts = [t for a in corpus.pubmed_articles() for t in a.values()] + list(corpus.DOC_TEXTS)
    words = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})
    return list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *chars]
            + [f"##{c}" for c in chars]
            + words
        )
    )


def biogpt_vocab() -> dict[str, int]:
    """The shipped BioGPT vocabulary subset, renumbered 0..n-1 in id order."""
    vocab = json.loads(corpus.BIOGPT_VOCAB.read_text(encoding="utf-8"))
    return {token: i for i, token in enumerate(sorted(vocab, key=vocab.__getitem__))}


def _padded(vocab: list[str], size: int | None, unused: str) -> list[str]:
    """`vocab` filled up to `size` entries with unused tokens (a full-size model's table)."""
    if size is not None and size < len(vocab):
        raise ValueError(f"vocab_size {size} is smaller than the {len(vocab)}-entry vocabulary")
    return vocab + [unused.format(i) for i in range((size or len(vocab)) - len(vocab))]


def save_bert(path: str | Path, seed: int = 0, **overrides: object) -> Path:
    """A random BertForMaskedLM with `bert_vocab()`, saved to `path`; `overrides` replace SHAPE
    (e.g. `conformance.bert.BASE`: the vocabulary is filled up to its vocab_size)."""
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _padded(bert_vocab(), overrides.pop("vocab_size", None), "[unused{}]")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**SHAPE, **overrides, "vocab_size": len(vocab)})
    transformers.BertForMaskedLM(config).eval().save_pretrained(path)
    return path


def save_biogpt(path: str | Path, seed: int = 0, **overrides: object) -> Path:
    """A random BioGptForCausalLM with the shipped BioGPT vocabulary subset, saved to `path`;
    `overrides` replace SHAPE (e.g. `conformance.biogpt.FULL`: the vocabulary is filled up)."""
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ordered = _padded(list(biogpt_vocab()), overrides.pop("vocab_size", None), "<unused{}>")
    (path / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(ordered)}, ensure_ascii=False), encoding="utf-8"
    )
    shutil.copyfile(corpus.BIOGPT_MERGES, path / "merges.txt")
    torch.manual_seed(seed)
    config = transformers.BioGptConfig(**{**SHAPE, **overrides, "vocab_size": len(ordered)})
    transformers.BioGptForCausalLM(config).eval().save_pretrained(path)
    return path


MAKERS = {"bert": save_bert, "biogpt": save_biogpt}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in MAKERS:
        print(f"usage: python -m conformance.tiny {{{','.join(MAKERS)}}} DIR", file=sys.stderr)
        return 2
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Writing model shards" bar for a 1 MB file
    print(MAKERS[argv[0]](argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
