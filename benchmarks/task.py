"""`biomed-jax task` batching: batch 8 against batch 1 on the same examples, same outputs.

    python benchmarks/task.py [--batch-sizes 1,8] [--limit 16] [--repeats 2] [--data ../shared/data]
    python benchmarks/task.py --quick      # smoke test: 128 positions, 8 examples, 1 repeat

`run_task("dc-hoc", ...)` (what the CLI runs, results kept in memory) on the first `--limit`
sentences of the real HoC test split (../shared/data/hoc/test.jsonl), at the default settings:
no cap on new tokens, so every row decodes until EOS or the position table is full (as
fairseq's generator), each row to its own length inside its batch. Model: a seeded random
BioGptForCausalLM with the real BioGPT vocabulary plus the learned-prompt rows, 32 wide, 2
layers, 1024 positions (the size of the fine-tuned checkpoints' tables); its random weights
never emit EOS, so each row generates 1024 - its prompt length tokens: the worst case for
rows of one batch stopping at different lengths. A cold run per batch size comes first
(`cold_s`: compilations included), then the timed repeats, interleaved. Fails unless every
batch size gives exactly the results of the first. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEARNED = 10  # learned0 .. learned9 rows after the base vocabulary, as the fine-tuned dictionaries


def save_model(path: Path, data: Path, positions: int) -> Path:
    """A seeded random HF BioGptForCausalLM (32 wide, 2 layers) with the real vocab + prompt rows."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "biogpt" / "merges.txt", path / "merges.txt")
    vocab = json.loads((data / "biogpt" / "vocab.json").read_text(encoding="utf-8"))
    vocab.update({f"learned{i}</w>": len(vocab) + i for i in range(LEARNED)})
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(0)
    config = transformers.BioGptConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=positions,
    )
    transformers.BioGptForCausalLM(config).eval().save_pretrained(path)
    return path


def write_hoc_tsv(data: Path, path: Path, count: int) -> Path:
    """The first `count` HoC test sentences as the repo's test.tsv ("text<TAB>label|label")."""
    lines = []
    with open(data / "hoc" / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            lines.append(f"{record['text']}\t{'|'.join(record['labels']) or 'empty'}\n")
            if len(lines) == count:
                break
    path.write_text("".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--limit", type=int, default=16, help="examples (HoC sentences)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="128 positions, 8 examples, 1 repeat")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if args.quick:
        args.positions, args.limit, args.repeats = 128, 8, 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    from biomed_jax import from_pretrained
    from biomed_jax.tasks import run_task

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    model = from_pretrained(save_model(root / "model", args.data, args.positions))
    tsv = write_hoc_tsv(args.data, root / "test.tsv", args.limit)

    outputs: dict[int, list] = {}

    def timed(batch_size: int) -> float:
        start = time.perf_counter()
        results, _ = run_task("dc-hoc", model, tsv, batch_size=batch_size)
        seconds = time.perf_counter() - start
        outputs.setdefault(batch_size, results)
        if results != outputs[batch_size] or results != outputs[batch_sizes[0]]:
            raise SystemExit(f"batch {batch_size} gave other results than batch {batch_sizes[0]}")
        return seconds

    cold = {b: timed(b) for b in batch_sizes}
    times: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for _ in range(args.repeats):
        for b in batch_sizes:
            times[b].append(timed(b))
    median = {b: statistics.median(t) for b, t in times.items()}
    first = batch_sizes[0]
    print(
        json.dumps(
            {
                "examples": args.limit,
                "positions": args.positions,
                "model": "BioGPT 32 wide, 2 layers (random weights, real vocab)",
                "repeats": args.repeats,
                "identical_outputs": True,
                "cold_s": {f"batch_{b}": round(s, 3) for b, s in cold.items()},
                "median_s": {f"batch_{b}": round(s, 3) for b, s in median.items()},
                "examples_per_s": {
                    f"batch_{b}": round(args.limit / s, 2) for b, s in median.items()
                },
                "speedup_over_batch_" + str(first): {
                    f"batch_{b}": round(median[first] / s, 3) for b, s in median.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
