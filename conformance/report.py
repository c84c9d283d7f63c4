"""Conformance rows: one compared output each, judged against the float64 reference.

The pass rule (docs/numerics.md): run transformers in float64 (`model.double()`, same inputs) as
the truth; our error against it (`ours_err`) may be at most FACTOR times transformers' own error in
the same dtype (`ref_err`), or FLOOR[dtype] where both are tiny. `max_abs_diff` stays the direct
difference from transformers' float32 output (shown, not judged). Rows without a float64 reference
(internal consistency checks, integer outputs) are judged by their absolute `tolerance`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FACTOR = 3.0  # ours may be at most 3x as far from float64 as transformers in the same dtype
FLOOR = {"float32": 1e-6, "bfloat16": 1e-3}  # below this, both count as exact


@dataclasses.dataclass(frozen=True)
class Row:
    suite: str  # which configuration / check group, e.g. "bert-base/BertForMaskedLM/fp32"
    name: str  # the output, e.g. "hidden_states[3]"
    shape: tuple[int, ...]
    max_abs_diff: float  # ours vs transformers float32
    tolerance: float  # the bound that decided `passed`: on ours_err when that is set
    passed: bool
    note: str = ""
    ours_err: float | None = None  # max |ours - transformers float64|
    ref_err: float | None = None  # max |transformers in this dtype - transformers float64|
    ratio: float | None = None  # ours_err / ref_err (goal <= 1, bar FACTOR)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _max_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None) -> float:
    diff = np.abs(a - b)
    if valid is not None:
        diff = diff[valid]
    return float(diff.max()) if diff.size else 0.0


def _mismatch(suite: str, name: str, a: np.ndarray, b: np.ndarray, tolerance: float) -> Row:
    note = f"shape mismatch: ours {a.shape}, reference {b.shape}"
    return Row(suite, name, tuple(a.shape), float("inf"), tolerance, False, note)


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
        return _mismatch(suite, name, a, b, tolerance)
    worst = _max_diff(a, b, valid)
    ok = bool(np.isfinite(a).all()) and worst <= tolerance
    return Row(suite, name, tuple(a.shape), worst, tolerance, ok, note)


@dataclasses.dataclass(frozen=True)
class Errors:
    """What the pass rule reads of one output: ours against float64 (`ours_err`), against
    transformers float32 (`direct`), transformers' own error in the compute dtype (`ref_err`,
    None where it did not run), and whether ours was finite. Outputs judged in parts (batches)
    merge their parts' maxima: the same verdict as judging them whole."""

    ours_err: float
    direct: float
    ref_err: float | None
    finite: bool

    def merge(self, other: Errors) -> Errors:
        ref = (
            None
            if self.ref_err is None or other.ref_err is None
            else max(self.ref_err, other.ref_err)
        )
        return Errors(
            max(self.ours_err, other.ours_err),
            max(self.direct, other.direct),
            ref,
            self.finite and other.finite,
        )


def bound(dtype: str, ref_err: float | None, fallback: float, floor_scale: float = 1.0) -> float:
    """What `ours_err` may reach: FACTOR x transformers' own error, at least FLOOR[dtype] (x
    `floor_scale`: sqrt(F) for a norm over F entries); the absolute `fallback` where
    transformers did not run in the dtype (ref_err None)."""
    return fallback if ref_err is None else max(FACTOR * ref_err, FLOOR[dtype] * floor_scale)


def measure(
    ours: Any,
    ref32: Any,
    ref64: Any,
    ref_same: Any | None = None,
    valid: np.ndarray | None = None,
    ref_err: float | None = None,
) -> Errors:
    """The errors of one output (same shapes; `valid` selects positions over leading axes).
    `ref_err`: transformers' own error measured elsewhere (a recorded golden keeps only part of
    the output, with the whole output's ref_err); else measured from `ref_same`."""
    a, b, truth = (np.asarray(x, dtype=np.float64) for x in (ours, ref32, ref64))
    if ref_same is not None:
        ref_err = _max_diff(np.asarray(ref_same, dtype=np.float64), truth, valid)
    return Errors(
        _max_diff(a, truth, valid), _max_diff(a, b, valid), ref_err, bool(np.isfinite(a).all())
    )


def verdict(
    suite: str,
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    errors: Errors,
    fallback: float,
    note: str = "",
    floor_scale: float = 1.0,
) -> Row:
    """The pass rule on measured errors: finite, and ours_err <= `bound`."""
    ref_err, tolerance = errors.ref_err, bound(dtype, errors.ref_err, fallback, floor_scale)
    ratio = None
    if ref_err is not None:
        ratio = (
            errors.ours_err / ref_err
            if ref_err > 0
            else (0.0 if errors.ours_err == 0 else float("inf"))
        )
    ok = errors.finite and errors.ours_err <= tolerance
    return Row(
        suite,
        name,
        tuple(shape),
        errors.direct,
        tolerance,
        ok,
        note,
        errors.ours_err,
        ref_err,
        ratio,
    )


def judge(
    suite: str,
    name: str,
    dtype: str,
    ours: Any,
    ref32: Any,
    ref64: Any,
    ref_same: Any | None,
    fallback: float,
    valid: np.ndarray | None = None,
    note: str = "",
) -> Row:
    """One output against transformers' float64 run (`ref64`) by the pass rule.

    ref32: transformers float32 (the direct diff); ref_same: transformers in our compute `dtype`
    (float32: ref32), None where it does not run: then ours_err must be <= `fallback`.
    """
    a, truth = np.asarray(ours), np.asarray(ref64)
    if a.shape != np.shape(ref32) or a.shape != truth.shape:
        return _mismatch(suite, name, a, truth, fallback)
    errors = measure(ours, ref32, ref64, ref_same, valid)
    return verdict(suite, name, dtype, a.shape, errors, fallback, note)


def skipped(suite: str, reason: str) -> Row:
    """A check that could not run here (missing checkpoint or package): passes, says why."""
    return Row(suite, f"skipped: {reason}", (), 0.0, 0.0, True)


def is_skipped(row: Row | dict[str, Any]) -> bool:
    name = row["name"] if isinstance(row, dict) else row.name
    return name.startswith("skipped: ")


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
    """ours err / ref err: max error against transformers float64 of ours and of transformers in
    the same dtype; bound: what ours err (else vs fp32) may reach; vs fp32: ours - transformers."""
    header = (
        "suite",
        "output",
        "shape",
        "vs fp32",
        "ours err",
        "ref err",
        "ratio",
        "bound",
        "result",
    )

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    body = [
        (
            r.suite,
            r.name,
            "x".join(map(str, r.shape)),
            num(r.max_abs_diff),
            num(r.ours_err),
            num(r.ref_err),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            f"{r.tolerance:.1e}" if r.tolerance else "exact",
            "PASS" if r.passed else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(not r.passed for r in rows)
    lines += [f"FAIL {r.suite} {r.name}: {r.note}" for r in rows if not r.passed and r.note]
    lines.append(f"\n{len(rows) - failed} passed, {failed} failed")
    ratios = worst_ratios(rows)
    if ratios:
        lines.append("worst ratio (ours err / transformers err vs float64), goal <= 1, bar 3:")
        lines += [f"  {key}: {value:.2f}" for key, value in sorted(ratios.items())]
    return "\n".join(lines)


def worst_ratios(rows: Iterable[Row]) -> dict[str, float]:
    """The largest `ratio` per model and dtype (the suite's first and last path components);
    rows whose bound is the floor (both errors tiny) are left out."""
    out: dict[str, float] = {}
    for r in rows:
        if r.ratio is None or r.tolerance > (r.ref_err or 0) * FACTOR:
            continue
        parts = r.suite.split("/")
        key = f"{parts[0]} {parts[-1]}"
        out[key] = max(out.get(key, 0.0), r.ratio)
    return out


def to_json(rows: Iterable[Row]) -> str:
    return json.dumps([r.to_dict() for r in rows], indent=2)
