"""Hallmarks of Cancer document classification as generation, scored by micro-F1.

As examples/DC-HoC of microsoft/BioGPT: `rebuild_data.py` (the sentence as written, a period
added when it lacks one; no lower-casing), `postprocess.py` (labels after "the type of this
document is", else "failed") and `hard_match_evaluation.py` (labels split at "|", binarized over
the 11 classes, unknown ones such as "failed" ignored, micro-F1 as scikit-learn's `f1_score`).
Input: the repo's `data/HoC/raw/test.tsv`: "text<TAB>label|label" per line, blank lines between.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from biomed_jax.tasks.data import Dataset, Example
from biomed_jax.tasks.prompting import TaskSettings, answer_text

# train.sh: --learned-prompt 1 --max-source-positions 900
SETTINGS = TaskSettings(learned_prompt=1, max_source_positions=900)
ANSWER = re.compile(r"the type of this document is(.*)")
CLASSES = (
    "tumor promoting inflammation",
    "inducing angiogenesis",
    "evading growth suppressors",
    "resisting cell death",
    "cellular energetics",
    "empty",
    "genomic instability and mutation",
    "sustaining proliferative signaling",
    "avoiding immune destruction",
    "activating invasion and metastasis",
    "enabling replicative immortality",
)


def labels(text: str) -> frozenset[str]:
    """The known classes in "a|b" (hard_match_evaluation.py's MultiLabelBinarizer)."""
    return frozenset(w.strip() for w in text.strip().split("|")) & frozenset(CLASSES)


def load(path: Path) -> Dataset:
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            columns = line.rstrip("\n").split("\t")
            if len(columns) != 2:
                raise ValueError(
                    f"{path}:{number}: expected 'text<TAB>labels', got {len(columns)} columns"
                )
            source, label = columns[0].strip(), columns[1].strip()
            if not source:
                raise ValueError(f"{path}:{number}: empty text")
            source = source if source.endswith(".") else source + "."
            examples.append(Example(str(number), source, label))
    return Dataset(examples)


def parse(line: str) -> tuple[str, list[str] | None]:
    """(answer text, the labels as generated, or None when the answer sentence is missing)."""
    text = answer_text(line)
    found = ANSWER.search(text)
    if found is None:
        return text, None
    return text, [w.strip() for w in found.group(1).strip().split("|")]


def score(examples: list[Example], parsed: list[Any], **_: Any) -> dict[str, Any]:
    """Micro-F1 over (document, class) pairs; 0.0 when there is nothing to count, as sklearn."""
    tp = fp = fn = 0
    for example, predicted in zip(examples, parsed):
        gold = labels(example.gold)
        pred = labels("|".join(predicted)) if predicted is not None else frozenset()
        tp, fp, fn = tp + len(pred & gold), fp + len(pred - gold), fn + len(gold - pred)
    return {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0, "tp": tp, "fp": fp, "fn": fn}
