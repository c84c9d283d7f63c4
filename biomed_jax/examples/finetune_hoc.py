"""Fine-tune a BERT checkpoint on Hallmarks of Cancer (10 labels, multi-label); micro-F1.

    python -m biomed_jax.examples.finetune_hoc --model PATH --data DIR [--epochs 3] [--dev-fraction 0.1] ...

Each sentence may carry 0..n hallmarks (70 % carry none, the commonest label is on 7 %): sigmoid
BCE on the [CLS] head. The last --dev-fraction of the training sentences is held out; the decision
threshold that maximises micro-F1 there is applied to the test split, which is also scored at the
fixed --threshold. Chance is predicting every label for every sentence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biomed_jax.examples import _common
from biomed_jax.train import metrics

THRESHOLDS = np.round(np.arange(0.02, 0.99, 0.02), 2)  # candidates for the dev-chosen threshold
HALLMARKS = (  # the labels, in the order of the classifier's outputs
    "activating invasion and metastasis",
    "avoiding immune destruction",
    "cellular energetics",
    "enabling replicative immortality",
    "evading growth suppressors",
    "genomic instability and mutation",
    "inducing angiogenesis",
    "resisting cell death",
    "sustaining proliferative signaling",
    "tumor promoting inflammation",
)


def _problem(record: dict) -> str | None:
    """What is wrong with a HoC record (docs/fine-tuning.md, "Data"), or None."""
    labels = record.get("labels")
    if not isinstance(record.get("text"), str) or not isinstance(labels, list):
        return 'needs "text", a string, and "labels", a list of hallmark names'
    unknown = [label for label in labels if label not in HALLMARKS]
    if unknown:
        return f"unknown labels {unknown}; the hallmarks: {', '.join(HALLMARKS)}"
    return None


def read_split(file: Path, limit: int | None) -> list[tuple[str, list[str]]]:
    """(text, labels) of the first `limit` records."""
    return [(r["text"], r["labels"]) for r in _common.read_jsonl(file, _problem, limit)]


def encode(tokenizer, rows, labels: tuple[str, ...], max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(
        [text for text, _ in rows],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    index = {name: i for i, name in enumerate(labels)}
    targets = np.zeros((len(rows), len(labels)), np.float32)  # [B, C]
    for r, (_, names) in enumerate(rows):
        targets[r, [index[n] for n in names]] = 1.0
    return {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int32),
        "token_type_ids": enc["token_type_ids"].astype(np.int32),
        "labels": targets,
    }


def hold_out(rows: list, fraction: float) -> tuple[list, list]:
    """(train, dev): dev is the last `fraction` of the rows, a contiguous block, so that few
    abstracts (whose sentences are consecutive in the file) straddle the two."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--dev-fraction must be in [0, 1), got {fraction}")
    n_dev = round(fraction * len(rows))
    return rows[: len(rows) - n_dev], rows[len(rows) - n_dev :]


def best_threshold(truth: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(threshold, micro-F1) maximising micro-F1 of `probs > threshold` over THRESHOLDS."""
    f1s = [metrics.multilabel_micro_f1(truth, probs > t)["f1"] for t in THRESHOLDS]
    best = int(np.argmax(f1s))
    return float(THRESHOLDS[best]), f1s[best]


def probabilities(state, data: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-_common.predict_all(state, data, batch_size)))


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "HoC directory with train.jsonl and test.jsonl")
    p.add_argument("--threshold", type=float, default=0.5, help="fixed threshold also reported")
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.1,
        help="hold out this last part of the training rows to choose the threshold (0: none)",
    )
    args = p.parse_args(argv)

    labels = HALLMARKS
    with _common.user_errors("finetune_hoc"):
        train_rows, dev_rows = hold_out(
            read_split(args.data / "train.jsonl", args.max_train), args.dev_fraction
        )
        eval_rows = read_split(args.data / "test.jsonl", args.max_eval)
        module, params, tokenizer = _common.load_model(
            args,
            "BertForSequenceClassification",
            labels,
            problem_type="multi_label_classification",
        )
    train_data = encode(tokenizer, train_rows, labels, args.max_length)
    dev_data = encode(tokenizer, dev_rows, labels, args.max_length) if dev_rows else None
    eval_data = encode(tokenizer, eval_rows, labels, args.max_length)
    truth = eval_data["labels"] > 0.5
    # Chance level: predicting every label for every sentence (recall 1, precision = prevalence).
    chance = metrics.multilabel_micro_f1(truth, np.ones_like(truth))["f1"]
    print(
        f"{len(train_rows)} training, {len(dev_rows)} dev, {len(eval_rows)} test sentences, "
        f"{len(labels)} labels; chance micro-F1 {chance:.4f}"
    )

    def evaluate(state):
        probs = probabilities(state, eval_data, args.batch_size)
        scores = {"chance_f1": chance, **metrics.multilabel_micro_f1(truth, probs > args.threshold)}
        if dev_data is not None:
            dev_probs = probabilities(state, dev_data, args.batch_size)
            threshold, dev_f1 = best_threshold(dev_data["labels"] > 0.5, dev_probs)
            tuned = metrics.multilabel_micro_f1(truth, probs > threshold)
            scores |= {"dev_threshold": threshold, "dev_f1": dev_f1}
            scores |= {f"tuned_{k}": v for k, v in tuned.items()}
        return scores

    return _common.fit(args, module, params, tokenizer, train_data, evaluate)


if __name__ == "__main__":
    main()
