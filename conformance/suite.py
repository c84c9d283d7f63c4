"""`biomed-jax conformance`: every output of our models against the PyTorch `transformers` reference.

Without --model it runs the suite's groups (bert, biogpt, generation, published; one module
each, `cases()` lists its checks) on seeded random models and the real checkpoints found
locally. With --model it checks those checkpoints instead (`conformance.model`): live against
transformers, or replaying a recorded golden (--golden, no torch needed); --record writes one.
Case by case with a progress bar on stderr (terminals only; --quiet turns it off), each group's
table printed when the group finishes, the JSON report (--json) rewritten atomically after every
group (a crash or Ctrl-C keeps the finished groups), JUnit XML (--junit) at the end, and a
one-screen summary: the worst row per model and dtype against its bound.

Exit status: 0 all passed, 1 a failed row or a crashed case, 2 a usage error or a missing
dependency (torch / transformers without --golden; the message says what to install), 130
interrupted.
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

from conformance import published
from conformance.checkpoint import require_reference
from conformance.report import FACTOR

GROUPS = ("bert", "biogpt", "generation", "published")
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
    fatal: tuple[type[Exception], ...] = (),
) -> dict[str, Any]:
    """Run `cases` in order, filling `report` ("groups", "rows", "status") and writing it to
    `json_path` after each group. Ctrl-C stops the run: the report keeps the finished groups.
    A case raising one of `fatal` stops the run (re-raised); other errors are reported."""
    from biomed_jax import interrupts
    from biomed_jax.progress import progress_bar
    from conformance.report import format_table

    out = out or sys.stdout
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
                except fatal:
                    raise
                except Exception as e:  # a crashed case is reported; the others still run
                    errors.append(f"{name}: {type(e).__name__}: {e}")
                    bar.write(traceback.format_exc(), file=sys.stderr)
                interrupts.check()
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
        "--model",
        action="append",
        metavar="MODEL",
        help="check this checkpoint instead of the suite (repeatable): hub id, HF or converted "
        "directory, fairseq BioGPT directory or .pt",
    )
    parser.add_argument(
        "--texts", metavar="FILE", help="--model: texts to run, one a line (default: 48 PubMed)"
    )
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="--model: also write the reference outputs into this golden file (safetensors)",
    )
    parser.add_argument(
        "--golden",
        metavar="FILE",
        help="replay a golden instead of running transformers (no torch needed); "
        f"shipped: {', '.join(published.GOLDENS)}. --model defaults to the golden's model",
    )
    parser.add_argument(
        "--policy", choices=("fast", "exact"), default="fast", help="--model: our numerics policy"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="JSON report, rewritten after each group (default: none)"
    )
    parser.add_argument("--junit", metavar="PATH", help="JUnit XML report (one test case per row)")
    parser.add_argument("--failures-only", action="store_true", help="print only failing rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    model_mode = bool(args.model or args.golden)
    _check_usage(parser, args, model_mode)
    dtypes = tuple(args.dtype or ())
    report: dict[str, Any] = {"command": shlex.join(["biomed-jax", "conformance", *argv])}
    try:
        if not args.golden:
            require_reference()
            _quiet_transformers()
        if model_mode:
            cases, fatal, what = _model_cases(args, dtypes, report)
            groups = tuple(group for group, _ in cases)
        else:
            groups = tuple(dict.fromkeys(args.only or GROUPS))
            dtypes = dtypes or ("float32", "bfloat16")
            full_size = not args.fast
            report["settings"] = {"groups": list(groups), "full_size": full_size,
                                  "dtypes": list(dtypes)}  # fmt: skip
            cases, fatal = plan(groups, full_size, dtypes), ()
            what = (
                f"{len(cases)} cases in {', '.join(groups)} "
                f"({'full size' if full_size else 'small sizes, --fast'}; {', '.join(dtypes)})"
            )
        outputs = (("report", args.json), ("JUnit", args.junit))
        where = "".join(f", {kind}: {path}" for kind, path in outputs if path)
        print(f"conformance: {what}{where}", flush=True)
        start = time.perf_counter()
        report = run(cases, report, args.json, not args.quiet, args.failures_only, fatal=fatal)
    except (OSError, ValueError, ModuleNotFoundError) as e:  # usage: files, goldens, extras
        print(f"biomed-jax conformance: error: {e}", file=sys.stderr)
        return 2
    if args.junit:
        from conformance import junit

        junit.write(args.junit, report)
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


def _check_usage(
    parser: argparse.ArgumentParser, args: argparse.Namespace, model_mode: bool
) -> None:
    """Options that do not go together: argparse's usage error (exit status 2)."""
    if model_mode and (args.only or args.fast):
        parser.error("--only and --fast pick the suite's groups; --model checks a checkpoint")
    if not model_mode and (args.texts or args.record):
        parser.error("--texts and --record need --model")
    if args.record and args.golden:
        parser.error("--record writes a golden, --golden replays one: not both")
    if (args.record or args.golden) and len(args.model or ()) > 1:
        parser.error("--record and --golden take one --model")
    if args.golden and args.texts:
        parser.error("a golden replays its own texts: no --texts with --golden")


def _model_cases(
    args: argparse.Namespace, dtypes: tuple[str, ...], report: dict[str, Any]
) -> tuple[list[tuple[str, Case]], tuple[type[Exception], ...], str]:
    """One group per checkpoint, located and hashed here: usage errors come before any run."""
    import functools

    from conformance import golden, model
    from conformance.checkpoint import locate

    recorded = None
    if args.golden:
        recorded = golden.read(published.GOLDENS.get(args.golden, args.golden))
    models = args.model or [recorded.field("checkpoint", "model")]
    texts = model.read_texts(args.texts) if args.texts else None
    checkpoints = [locate(m) for m in models]
    report["models"] = []

    def check(checkpoint) -> list:
        options: dict[str, Any] = {"dtypes": dtypes} if dtypes else {}
        if recorded is None:
            options["policy"] = args.policy
        result = model.run(checkpoint, texts, golden=recorded, record=args.record, **options)
        report["models"].append(result.to_dict())
        files = ", ".join(f"{name} sha256 {digest}" for name, digest in checkpoint.files.items())
        used = ", ".join(f"{k} {v}" for k, v in result.versions.items() if k != "platform")
        print(
            f"\n{checkpoint.model}: {checkpoint.format} {checkpoint.architecture} at "
            f"{checkpoint.path}; {files}\nversions: {used}",
            flush=True,
        )
        return result.rows

    cases = [
        (f"model {model.label(c)}", (c.model, functools.partial(check, c))) for c in checkpoints
    ]
    mode = f"replaying {args.golden}" if args.golden else "live against transformers"
    mode += f", recording {args.record}" if args.record else ""
    return cases, (golden.GoldenError,), f"{len(cases)} checkpoint(s), {mode}"


if __name__ == "__main__":
    sys.exit(main())
