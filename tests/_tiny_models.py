"""Tiny seeded HF checkpoints saved with transformers, shared by the CLI, hub and pipeline tests."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

BIOMEDBERT_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
BIOGPT_ID = "microsoft/biogpt"

WORDS = [
    "the",
    "patient",
    "was",
    "treated",
    "with",
    "aspirin",
    "for",
    "fever",
    "and",
    "cancer",
    "cells",
    "in",
    "mice",
    "protein",
    "gene",
    "expression",
    "of",
    "a",
    "is",
    "to",
    "we",
    "found",
    "that",
    "tumor",
    "growth",
    "inhibits",
    "induced",
    "by",
    "human",
    "disease",
]
BERT_VOCAB = list(
    dict.fromkeys(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(".,;:()-'")
        + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
        + [str(d) for d in range(10)]
        + ["##ed", "##ing"]
        + WORDS
    )
)
SENTENCES = [
    "The patient was treated with aspirin for fever.",
    "Tumor growth of human cancer cells in mice.",
    "We found that protein expression inhibits tumor growth, and gene expression is induced.",
    "Aspirin.",
    "Fever induced by disease in mice was treated with aspirin, and tumor growth of cancer "
    "cells was found to be induced by gene expression of a human protein.",
]


def save_tiny_bert(path: Path, *, seed: int = 0, max_position_embeddings: int = 40) -> Path:
    """A random BertForMaskedLM (2 layers, D=32, 4 heads) with a WordPiece vocab, HF layout."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.2,
    )
    transformers.BertForMaskedLM(config).eval().save_pretrained(path)
    transformers.BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    return path


def save_random_init_bert(path: Path, vocab_dir: Path, **config) -> Path:
    """config.json (our BertConfig with `config`) + `vocab_dir`'s vocab.txt: what the examples'
    --random-init needs (no weights)."""
    from biomed_jax import BertConfig

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_bytes((vocab_dir / "vocab.txt").read_bytes())
    BertConfig(**config).save_pretrained(path)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`biomed-jax ARGS` in a subprocess with this interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "biomed_jax.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def save_tiny_biogpt(path: Path, *, seed: int = 0) -> Path:
    """A random BioGptForCausalLM (2 layers, D=32, 4 heads) with the shipped subset of the real
    BioGPT vocabulary (`conformance.tiny.biogpt_vocab`), HF layout."""
    import json

    import torch
    import transformers

    from conformance import corpus, tiny

    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny.biogpt_vocab()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(corpus.BIOGPT_MERGES, path / "merges.txt")
    torch.manual_seed(seed)
    config = transformers.BioGptConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    transformers.BioGptForCausalLM(config).eval().save_pretrained(path)
    return path


def add_snapshot(cache: Path, repo_id: str, revision: str, files_from: Path, ref=None) -> Path:
    """Lay files out as huggingface_hub does: blobs/<hash>, snapshots/<rev>/<name> -> blob, refs/."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in files_from.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(f"../../blobs/{digest}")
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(revision)
    return snapshot


def offline_hub(root: Path) -> dict[str, str]:
    """An HF hub cache under `root` holding tiny seeded stand-ins (`conformance.tiny`) for
    BIOMEDBERT_ID (a BertForMaskedLM + vocab.txt) and BIOGPT_ID (a BioGptForCausalLM +
    vocab.json/merges.txt); returns the environment that makes them resolve offline, with our own caches in `root` too."""
    from conformance import tiny

    cache = root / "hf" / "hub"
    add_snapshot(cache, BIOMEDBERT_ID, "1" * 40, tiny.save_bert(root / "bert"), ref="main")
    add_snapshot(cache, BIOGPT_ID, "2" * 40, tiny.save_biogpt(root / "biogpt"), ref="main")
    return {
        "HF_HOME": str(root / "hf"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "BIOMED_JAX_CACHE": str(root / "biomed_jax"),
        "BIOMED_JAX_COMPILATION_CACHE": "off",
    }
