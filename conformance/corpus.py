"""The real text the conformance suite runs on, shipped with the package (nothing reads ../shared).

`conformance/data/` holds 24 PubMed articles of the BC5CDR test split (pmid, title, first abstract
sentence; from the public microsoft/BioGPT repository, MIT) and the part of the real BioGPT
vocabulary those texts and the docs' examples (`DOC_TEXTS`) use: every vocab.json entry their
tokens need, with its real id, and every merges.txt line whose merged string occurs in one of
their Moses words, in the original order. BPE
on a word only ever applies merges whose result is a substring of that word, so this subset
tokenizes these texts exactly as the full 42,384-entry vocabulary does (checked against it in
tests/test_conformance_suite.py when ../shared/data is present).

Rebuild from the full data: `python -m conformance.corpus ../shared/data`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
ARTICLES = DATA / "pubmed_bc5cdr_test_24.jsonl"
BIOGPT_VOCAB = DATA / "biogpt_vocab_subset.json"
BIOGPT_MERGES = DATA / "biogpt_merges_subset.txt"
COUNT = 24
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# The prompts and sentences README.md and docs/*.md give the tiny models (`conformance.tiny`):
# their pieces are in the subset too, so they tokenize as with the full vocabulary, no <unk>
# (tests/test_docs.py finds every such text in the docs and checks).
DOC_TEXTS = (
    "A newborn with massive tricuspid regurgitation, atrial flutter and lithium toxicity.",
    "Anti-TNF & IL-6R's role",
    "Aspirin for fever.",
    "Aspirin inhibits",
    "Aspirin inhibits COX-1.",
    "Aspirin inhibits tumor growth.",
    "Aspirin is used to treat [MASK].",
    "Aspirin reduces",
    "COVID-19 is",
    "Chemical",
    "Disease",
    "Famotidine is",
    "Famotidine-associated delirium.",
    "Indomethacin induced hypotension in rats.",
    "Lithium carbonate may be a factor in tricuspid valve regurgitation.",
    "Lithium toxicity in a newborn.",
    "Lithium toxicity.",
    "Short one.",
    "Tumor growth in mice.",
    "Tumor growth.",
    "a longer prompt",
    "a prompt",
    "aspirin",
    "aspirin for fever",
    "aspirin reduces fever",
    "protein expression",
    "tumor growth",
    "tumor growth in mice",
)


def pubmed_articles() -> list[dict[str, str]]:
    """The shipped articles: {"pmid", "title", "sentence"} (the abstract's first sentence)."""
    with open(ARTICLES, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def pubmed_texts() -> list[str]:
    """The 48 default texts of `--model` checks: each article's title, then its sentence."""
    return [t for a in pubmed_articles() for t in (a["title"], a["sentence"])]


def biogpt_tokenizer():
    """`transformers.BioGptTokenizer` on the shipped vocabulary subset (real BioGPT ids)."""
    import transformers

    return transformers.BioGptTokenizer(str(BIOGPT_VOCAB), str(BIOGPT_MERGES))


def build(shared_data: Path, out: Path = DATA) -> None:
    """Write the articles and the vocabulary subset from the full data in `shared_data`."""
    import transformers

    with open(shared_data / "pubmed" / "bc5cdr_test.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line, _ in zip(f, range(COUNT))]
    articles = [
        {"pmid": d["pmid"], "title": d["title"], "sentence": d["abstract"].split(". ")[0]}
        for d in docs
    ]
    vocab_file, merges_file = (
        shared_data / "biogpt" / "vocab.json",
        shared_data / "biogpt" / "merges.txt",
    )
    full = transformers.BioGptTokenizer(str(vocab_file), str(merges_file))
    texts = [t for a in articles for t in (a["title"], a["sentence"])] + list(DOC_TEXTS)
    words = {w + "</w>" for t in texts for w in full.moses_tokenize(t, full.lang)}
    needed = set(SPECIALS) | {tok for t in texts for tok in full.tokenize(t)}
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").split("\n")[:-1]
    kept = [line for line in lines if _merged(line) and any(_merged(line) in w for w in words)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ARTICLES.name, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in articles)
    subset = {tok: i for tok, i in vocab.items() if tok in needed}
    (out / BIOGPT_VOCAB.name).write_text(json.dumps(subset, ensure_ascii=False), encoding="utf-8")
    (out / BIOGPT_MERGES.name).write_text("\n".join(kept) + "\n", encoding="utf-8")


def _merged(line: str) -> str:
    fields = line.split()
    return fields[0] + fields[1] if len(fields) >= 2 else ""


if __name__ == "__main__":
    build(Path(sys.argv[1]))
