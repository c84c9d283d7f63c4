"""BioGPT tokenizer: documents/s, ours against transformers.BioGptTokenizer, same run.

    python benchmarks/tokenizer_biogpt.py [--data ../shared/data] [--repeats 3]

Corpora: the 1,500 PubMed abstracts (title + " " + abstract) and the 14,919 HoC sentences, one
`tokenizer(text)` call per document, as a user would. Each round encodes a corpus with HF, then with
ours (which computes offsets on every call, so `return_offsets_mapping=True` costs nothing more),
so machine drift hits both alike. Times are process CPU seconds (both are single-threaded Python;
the CPU time is robust on a shared machine). `first` is the first pass over the corpus (word caches
hold only earlier corpora's words); `warm` the median of the later rounds. Also checks that the
ids are identical, and how many BC5CDR entity spans map onto whole tokens through our offsets.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _pubmed(data: Path) -> list[dict]:
    docs = []
    for file in sorted((data / "pubmed").glob("*.jsonl")):
        docs += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return docs


def _corpora(data: Path) -> dict[str, list[str]]:
    hoc = []
    for file in sorted((data / "hoc").glob("*.jsonl")):
        hoc += [json.loads(line)["text"] for line in file.read_text(encoding="utf-8").splitlines()]
    return {"pubmed": [d["title"] + " " + d["abstract"] for d in _pubmed(data)], "hoc": hoc}


def entity_boundaries(tokenizer, data: Path) -> dict:
    """BC5CDR entities (character spans) whose start and end fall on BPE piece boundaries, i.e.
    that map exactly onto whole tokens through `return_offsets_mapping`."""
    total = aligned = 0
    for doc in _pubmed(data):
        text = doc["title"] + " " + doc["abstract"]
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        starts = {s for s, _ in enc["offset_mapping"]}
        ends = {e for _, e in enc["offset_mapping"]}
        for entity in doc["entities"]:
            total += 1
            aligned += entity["start"] in starts and entity["end"] in ends
    return {
        "entities": total,
        "on_token_boundaries": aligned,
        "fraction": round(aligned / total, 4),
    }


def bench_biogpt(data: Path, repeats: int = 3) -> dict:
    """Documents/s of HF's BioGptTokenizer and ours on the PubMed and HoC corpora."""
    import transformers

    from biomed_jax import BioGptTokenizer

    vocab, merges = data / "biogpt" / "vocab.json", data / "biogpt" / "merges.txt"
    hf = transformers.BioGptTokenizer(vocab, merges)
    ours = BioGptTokenizer(vocab, merges)
    runs = {"hf": lambda text: hf(text)["input_ids"], "ours": lambda text: ours(text)["input_ids"]}
    out: dict = {"benchmark": "biogpt_tokenizer", "repeats": repeats}
    for corpus, texts in _corpora(data).items():
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        ids = {}
        for _ in range(repeats + 1):
            for name, run in runs.items():
                start = time.process_time()
                ids[name] = [run(text) for text in texts]
                seconds[name].append(time.process_time() - start)
        row = {"documents": len(texts), "identical_ids": ids["hf"] == ids["ours"]}
        for name, times in seconds.items():
            row[f"{name}_first_docs_per_s"] = round(len(texts) / times[0], 1)
            row[f"{name}_warm_docs_per_s"] = round(len(texts) / statistics.median(times[1:]), 1)
        for phase in ("first", "warm"):
            ratio = row[f"ours_{phase}_docs_per_s"] / row[f"hf_{phase}_docs_per_s"]
            row[f"speedup_{phase}"] = round(ratio, 2)
        out[corpus] = row
    out["bc5cdr_entity_spans"] = entity_boundaries(ours, data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(bench_biogpt(args.data, args.repeats), indent=2))


if __name__ == "__main__":
    main()
