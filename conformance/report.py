"""Conformance rows: one compared output each (name, shape, max abs diff, tolerance, pass/fail)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
    suite: str  # which configuration / check group, e.g. "bert-base/BertForMaskedLM/fp32"
    name: str  # the output, e.g. "hidden_states[3]"
    shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(
    suite: str,
    name: str,
    ours: Any,
    ref: Any,
    tolerance: float,
    valid: np.ndarray | None = None,
    note: str = "",
) -> Row:
    """Max |ours - ref| over `valid` positions (a boolean mask over leading axes), against tolerance."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return Row(
            suite,
            name,
            tuple(a.shape),
            float("inf"),
            tolerance,
            False,
            f"shape mismatch: ours {a.shape}, reference {b.shape}",
        )
    diff = np.abs(a - b)
    if valid is not None:
        diff = diff[valid]
    worst = float(diff.max()) if diff.size else 0.0
    ok = bool(np.isfinite(a).all()) and worst <= tolerance
    return Row(suite, name, tuple(a.shape), worst, tolerance, ok, note)


def exact(suite: str, name: str, ours: Any, ref: Any, note: str = "") -> Row:
    """Integer outputs (token ids) must be identical; max_abs_diff counts mismatching entries."""
    a, b = np.asarray(ours), np.asarray(ref)
    if a.shape != b.shape:
        return Row(
            suite,
            name,
            tuple(a.shape),
            float("inf"),
            0,
            False,
            f"shape mismatch: ours {a.shape}, reference {b.shape}",
        )
    mismatches = int((a != b).sum())
    return Row(suite, name, tuple(a.shape), float(mismatches), 0, mismatches == 0, note)


def format_table(rows: Sequence[Row]) -> str:
    header = ("suite", "output", "shape", "max abs diff", "tolerance", "result")
    body = [
        (
            r.suite,
            r.name,
            "x".join(map(str, r.shape)),
            f"{r.max_abs_diff:.3g}",
            f"{r.tolerance:.0e}" if r.tolerance else "exact",
            "PASS" if r.passed else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(not r.passed for r in rows)
    lines.append(f"\n{len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines)


def to_json(rows: Iterable[Row]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
