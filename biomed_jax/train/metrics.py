"""Evaluation: entity-level precision/recall/F1 (exact span match) and multi-label micro-F1."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(
    gold: Iterable[Iterable[tuple[Any, ...]]], predicted: Iterable[Iterable[tuple[Any, ...]]]
) -> dict[str, Any]:
    """Micro P/R/F1 over all documents; an entity counts only if (start, end, type) all match.

    gold, predicted: one collection of (start, end, type) per document. Also per type.
    """
    counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    documents = 0
    for g, p in zip(gold, predicted, strict=True):
        g, p = set(g), set(p)
        documents += 1
        for span in g | p:
            c = counts.setdefault(span[-1], [0, 0, 0])
            c[0] += span in g and span in p
            c[1] += span in p
            c[2] += span in g
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {
        **_prf(*totals),
        "support": totals[2],
        "documents": documents,
        "per_type": {t: {**_prf(*c), "support": c[2]} for t, c in sorted(counts.items())},
    }


def multilabel_micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Micro P/R/F1 over every (example, label) decision; y_true, y_pred [B, C] booleans."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ")
    tp = int((y_true & y_pred).sum())
    return _prf(tp, int(y_pred.sum()), int(y_true.sum()))
