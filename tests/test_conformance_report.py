"""The conformance pass rule (`conformance.report.judge`): ours against float64, scaled by
transformers' own error in the same dtype, with a floor and an absolute fallback."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.report import FACTOR, FLOOR, Row, format_table, judge, worst_ratios

TRUTH = np.array([[1.0, -2.0, 3.0], [0.5, 0.25, 8.0]])


def _judge(ours_off, ref_off, dtype="float32", same=True, valid=None, fallback=1e-5):
    ref = TRUTH + ref_off
    return judge(
        "m/arch/" + dtype,
        "hidden_states[1]",
        dtype,
        TRUTH + ours_off,
        ref,
        TRUTH,
        ref if same else None,
        fallback,
        valid,
    )


def test_ours_may_be_up_to_factor_times_the_reference_error():
    row = _judge(ours_off=2.9e-5, ref_off=1e-5)
    assert row.passed and row.ours_err == pytest.approx(2.9e-5)
    assert row.ref_err == pytest.approx(1e-5) and row.ratio == pytest.approx(2.9)
    assert row.tolerance == pytest.approx(FACTOR * 1e-5)
    assert row.max_abs_diff == pytest.approx(1.9e-5)  # the direct diff, shown, not judged
    assert not _judge(ours_off=3.1e-5, ref_off=1e-5).passed


def test_floor_where_both_are_tiny():
    assert _judge(ours_off=9e-7, ref_off=1e-9).passed  # 900x, but under the float32 floor
    assert not _judge(ours_off=1.1e-6, ref_off=1e-9).passed
    assert _judge(ours_off=9e-4, ref_off=1e-6, dtype="bfloat16").passed
    assert FLOOR["float32"] < FLOOR["bfloat16"]


def test_fallback_bound_where_the_reference_does_not_run_in_the_dtype():
    row = _judge(ours_off=0.05, ref_off=0.0, dtype="bfloat16", same=False, fallback=0.1)
    assert row.passed and row.ref_err is None and row.ratio is None and row.tolerance == 0.1
    assert not _judge(ours_off=0.2, ref_off=0.0, dtype="bfloat16", same=False, fallback=0.1).passed


def test_valid_mask_nonfinite_and_shape_errors():
    ours_off = np.zeros_like(TRUTH)
    ours_off[1] = 1.0  # row 1 is padding: not compared
    valid = np.array([True, False])
    assert _judge(ours_off=ours_off, ref_off=1e-6, valid=valid).ours_err == 0.0
    nan = np.zeros_like(TRUTH)
    nan[0, 0] = np.nan
    assert not _judge(ours_off=nan, ref_off=1e-6).passed
    row = judge("s", "logits", "float32", np.zeros(3), np.zeros(4), np.zeros(4), None, 1e-5)
    assert not row.passed and "shape mismatch" in row.note


def test_rows_are_flat_dicts_and_the_summary_reports_worst_ratios():
    rows = [
        _judge(ours_off=2e-5, ref_off=1e-5),  # ratio 2
        _judge(ours_off=0.5e-5, ref_off=1e-5),  # ratio 0.5
        _judge(ours_off=5e-7, ref_off=1e-10),  # floor decides: left out of the summary
        Row("m/arch/float32", "jit compilations", (), 2.0, 2.0, True),
    ]
    assert worst_ratios(rows) == {"m float32": pytest.approx(2.0)}
    flat = rows[0].to_dict()
    assert {"ours_err", "ref_err", "ratio", "max_abs_diff", "tolerance", "passed"} <= set(flat)
    assert all(not isinstance(v, dict) for v in flat.values())
    table = format_table(rows)
    assert "m float32: 2.00" in table and "4 passed, 0 failed" in table
