"""Fine-tune a BERT checkpoint on Hallmarks of Cancer (10 labels, multi-label); micro-F1.

    python -m biomed_jax.examples.finetune_hoc --model PATH [--epochs 3] [--threshold 0.5] ...

Each sentence may carry 0..n hallmarks: sigmoid BCE on the [CLS] head, a label is predicted when
its probability exceeds --threshold; micro-F1 over every (sentence, label) decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from biomed_jax.examples import _common
from biomed_jax.train import metrics


def read_split(file: Path, limit: int | None) -> list[tuple[str, list[str]]]:
    rows = []
    with open(file, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            rows.append((doc["text"], doc["labels"]))
            if limit is not None and len(rows) >= limit:
                break
    return rows


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


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], _common.DATA / "hoc")
    p.add_argument("--threshold", type=float, default=0.5)
    args = p.parse_args(argv)

    all_train = read_split(args.data / "train.jsonl", None)
    labels = tuple(sorted({n for _, names in all_train for n in names}))  # the 10 hallmarks
    train_rows = all_train[: args.max_train]
    eval_rows = read_split(args.data / "test.jsonl", args.max_eval)
    module, params, tokenizer = _common.load_model(
        args,
        "BertForSequenceClassification",
        labels,
        problem_type="multi_label_classification",
    )
    train_data = encode(tokenizer, train_rows, labels, args.max_length)
    eval_data = encode(tokenizer, eval_rows, labels, args.max_length)
    truth = eval_data["labels"] > 0.5
    # Chance level: predicting every label for every sentence (recall 1, precision = prevalence).
    chance = metrics.multilabel_micro_f1(truth, np.ones_like(truth))["f1"]
    print(
        f"{len(train_rows)} training sentences, {len(labels)} labels; chance micro-F1 {chance:.4f}"
    )

    def evaluate(state):
        logits = _common.predict_all(state, eval_data, args.batch_size)
        predicted = 1.0 / (1.0 + np.exp(-logits)) > args.threshold
        return {"chance_f1": chance, **metrics.multilabel_micro_f1(truth, predicted)}

    return _common.fit(args, module, params, train_data, evaluate)


if __name__ == "__main__":
    main()
