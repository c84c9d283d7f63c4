"""`biomed-jax conformance`: every output of our models against the PyTorch `transformers` reference.

Prints a table (suite, output, shape, max abs diff, tolerance, pass/fail), optionally writes JSON,
and exits non-zero on any failure. Groups: bert, biogpt, generation (each in its own module).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from conformance.report import Row, format_table, to_json

GROUPS = ("bert", "biogpt", "generation")


def run_groups(groups: tuple[str, ...], full_size: bool, dtypes: tuple[str, ...]) -> list[Row]:
    rows: list[Row] = []
    for group in groups:
        module = importlib.import_module(f"conformance.{group}")
        rows += module.run(full_size=full_size, dtypes=dtypes)
    return rows


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--failures-only", action="store_true", help="print only failing rows")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rows = run_groups(
        tuple(args.only or GROUPS), not args.fast, tuple(args.dtype or ("float32", "bfloat16"))
    )
    shown = [r for r in rows if not r.passed] if args.failures_only else rows
    print(format_table(shown))
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        from biomed_jax.files import atomic_write_text

        atomic_write_text(args.json, to_json(rows))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
