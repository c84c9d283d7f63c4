"""`biomed-jax conformance`: every output of our models against the PyTorch `transformers` reference.

Runs the groups (bert, biogpt, generation; one module each, `cases()` lists its checks) case by
case with a progress bar on stderr (terminals only; `--quiet` turns it off), prints each group's
table when the group finishes, rewrites the JSON report atomically after every group (a crash or
Ctrl-C keeps the finished groups), and ends with a one-screen summary: the worst row per model and
dtype against its bound. Exit status: 0 all passed, 1 a failure or an error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from conformance.report import FACTOR

GROUPS = ("bert", "biogpt", "generation")
DEFAULT_JSON = "conformance-report.json"
Case = tuple[str, Callable[[], list]]  # (name, the check: () -> rows)


def plan(groups: Sequence[str], full_size: bool, dtypes: tuple[str, ...]) -> list[tuple[str, Case]]:
    """(group, case) pairs in run order; building them imports the group modules, runs nothing."""
    return [
        (group, case)
        for group in groups
        for case in importlib.import_module(f"conformance.{group}").cases(full_size, dtypes)
    ]


def judged(row: dict[str, Any]) -> float:
    """The figure a row's bound applies to: the error against transformers float64 (`ours_err`)
    where the row has one, else the direct difference (`max_abs_diff`)."""
    value = row.get("ours_err")
    return float(row["max_abs_diff"] if value is None else value)


def bound_used(row: dict[str, Any]) -> float:
    """How much of its bound a row uses (<= 1 passes); an exact row (tolerance 0) uses 0 or
    infinity."""
    diff, tol = judged(row), float(row["tolerance"])
    if tol > 0:
        return diff / tol
    return 0.0 if diff == 0 else math.inf


def ratio_judged(row: dict[str, Any]) -> float | None:
    """ours_err / transformers' own error, for rows decided by that ratio (not by the floor)."""
    ratio, ref_err = row.get("ratio"), row.get("ref_err")
    if ratio is None or ref_err is None or float(row["tolerance"]) > FACTOR * float(ref_err):
        return None
    return float(ratio)


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """The worst row per (model, dtype): model = the suite's first part, dtype = its last."""
    worst: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], list[int]] = {}
    ratios: dict[tuple[str, str], float] = {}
    for row in rows:
        parts = row["suite"].split("/")
        key = (parts[0], parts[-1])
        total = counts.setdefault(key, [0, 0])
        total[0] += 1
        total[1] += not row["passed"]
        if key not in worst or _badness(row) > _badness(worst[key]):
            worst[key] = row
        ratio = ratio_judged(row)
        if ratio is not None:
            ratios[key] = max(ratios.get(key, 0.0), ratio)
    header = (
        "model", "dtype", "rows", "failed", "worst output", "figure", "bound", "used",
        f"worst ratio (bar {FACTOR:g})",
    )  # fmt: skip
    body = [
        (
            model,
            dtype,
            str(counts[model, dtype][0]),
            str(counts[model, dtype][1]),
            row["name"],
            f"{judged(row):.3g}",
            f"{row['tolerance']:.2g}" if row["tolerance"] else "exact",
            f"{bound_used(row):.0%}" if math.isfinite(bound_used(row)) else "over",
            f"{ratios[model, dtype]:.2f}" if (model, dtype) in ratios else "-",
        )
        for (model, dtype), row in worst.items()
    ]
    return _table(header, body)


def _badness(row: dict[str, Any]) -> tuple[bool, bool, float]:
    """Failures first, then numeric comparisons (0 < tolerance < 1; counts and exact matches have
    integer bounds), each by the share of its bound it uses."""
    return (not row["passed"], 0 < float(row["tolerance"]) < 1, bound_used(row))


def _table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(path: str | None, report: dict[str, Any]) -> None:
    if path:
        from biomed_jax.files import atomic_write_text

        atomic_write_text(path, json.dumps(report, indent=1, default=str))


def run(
    cases: list[tuple[str, Case]],
    report: dict[str, Any],
    json_path: str | None,
    progress: bool,
    failures_only: bool = False,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run `cases` in order, filling `report` ("groups", "rows", "status") and writing it to
    `json_path` after each group. Ctrl-C stops the run: the report keeps the finished groups."""
    from biomed_jax.progress import progress_bar
    from conformance.report import format_table

    out = out or sys.stdout
    _quiet_transformers()
    bar = progress_bar(
        len(cases),
        enabled=progress,
        bar_format="{desc} {n_fmt}/{total_fmt} cases [{elapsed}<{remaining}]",
    )
    report.update(status="running", groups={}, rows=[])
    write_report(json_path, report)
    pending: dict[str, list[Case]] = {}
    for group, case in cases:
        pending.setdefault(group, []).append(case)
    # The suite's checkpoints carry no tokenizer files on purpose: no warning per load.
    loader_log = logging.getLogger("biomed_jax.loading")
    loader_level = loader_log.level
    loader_log.setLevel(logging.ERROR)
    try:
        for group, group_cases in pending.items():
            start, rows, errors = time.perf_counter(), [], []
            for name, check in group_cases:
                bar.set_description_str(f"{group}: {name}")
                try:
                    rows += check()
                except Exception as e:  # a crashed case is reported; the others still run
                    errors.append(f"{name}: {type(e).__name__}: {e}")
                    bar.write(traceback.format_exc(), file=sys.stderr)
                bar.update()
            seconds = time.perf_counter() - start
            failed = sum(not r.passed for r in rows)
            report["groups"][group] = {
                "cases": len(group_cases),
                "rows": len(rows),
                "failed": failed,
                "errors": errors,
                "seconds": round(seconds, 1),
            }
            report["rows"] += [{"group": group, **r.to_dict()} for r in rows]
            write_report(json_path, report)
            shown = [r for r in rows if not r.passed] if failures_only else rows
            table = format_table(shown) if shown else "(no rows shown)"
            errs = "".join(f"\nERROR {e}" for e in errors)
            bar.write(
                f"\n== {group}: {len(group_cases)} cases, {seconds:.1f} s ==\n{table}{errs}",
                file=out,
            )
        report["status"] = "complete"
    except KeyboardInterrupt:
        report["status"] = "interrupted"
    finally:
        bar.close()
        write_report(json_path, report)
        loader_log.setLevel(loader_level)
    return report


def _quiet_transformers() -> None:
    """No "Writing model shards" bars from every save_pretrained of the reference models."""
    try:
        from transformers.utils import logging
    except ModuleNotFoundError:
        return
    logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biomed-jax conformance", description=__doc__)
    parser.add_argument(
        "--only",
        choices=GROUPS,
        action="append",
        help="run only these groups (repeatable); default: all",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="small configurations only (skip full-size BiomedBERT/BioGPT)",
    )
    parser.add_argument(
        "--dtype",
        action="append",
        choices=("float32", "bfloat16"),
        help="compute dtypes to check (default: both)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=DEFAULT_JSON,
        help=f"JSON report, rewritten after each group (default: {DEFAULT_JSON}; '' for none)",
    )
    parser.add_argument("--failures-only", action="store_true", help="print only failing rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    groups = tuple(dict.fromkeys(args.only or GROUPS))
    dtypes = tuple(args.dtype or ("float32", "bfloat16"))
    full_size = not args.fast
    _require_reference()
    report: dict[str, Any] = {
        "command": shlex.join(["biomed-jax", "conformance", *argv]),
        "settings": {"groups": list(groups), "full_size": full_size, "dtypes": list(dtypes)},
    }
    cases = plan(groups, full_size, dtypes)
    where = f", report: {args.json}" if args.json else ""
    print(
        f"conformance: {len(cases)} cases in {', '.join(groups)} "
        f"({'full size' if full_size else 'small sizes, --fast'}; {', '.join(dtypes)}){where}",
        flush=True,
    )
    start = time.perf_counter()
    report = run(cases, report, args.json or None, not args.quiet, args.failures_only)
    rows = report["rows"]
    failed = sum(not r["passed"] for r in rows)
    errors = [f"{g}/{e}" for g, info in report["groups"].items() for e in info["errors"]]
    print(f"\n== summary: worst row per model and dtype ==\n{summary(rows)}" if rows else "")
    status = report["status"]
    print(
        f"\n{status}: {len(report['groups'])}/{len(groups)} groups, {len(rows)} rows, "
        f"{failed} failed, {len(errors)} errors ({time.perf_counter() - start:.0f} s)"
    )
    if status == "interrupted":
        return 130
    return 0 if not failed and not errors else 1


def _require_reference() -> None:
    """torch and transformers are the reference: say which extra brings them when missing."""
    for name in ("torch", "transformers"):
        if importlib.util.find_spec(name) is None:
            raise SystemExit(
                f"biomed-jax conformance needs {name} (the reference): "
                "pip install 'biomed-jax[conformance]'"
            )


if __name__ == "__main__":
    sys.exit(main())
