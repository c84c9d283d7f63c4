"""JUnit XML of a conformance report (`--junit PATH`), the format CI services display.

One <testsuite> per group (a suite group, or one `--model` checkpoint), one <testcase> per row:
classname = the row's suite with dots for slashes, name = the output. A failed row carries
<failure> with its figures, a skipped one <skipped> with the reason; a case that crashed is a
<testcase> with <error>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from conformance.report import is_skipped


def _figures(row: dict[str, Any]) -> str:
    parts = [
        f"{k} {row[k]:.3g}" for k in ("ours_err", "ref_err", "ratio") if row.get(k) is not None
    ]
    parts.append(f"vs fp32 {row['max_abs_diff']:.3g}")
    parts.append(f"bound {row['tolerance']:.3g}" if row["tolerance"] else "bound exact")
    return ", ".join(parts) + (f"; {row['note']}" if row.get("note") else "")


def to_xml(report: dict[str, Any]) -> ET.Element:
    """The <testsuites> element of a report (`suite.run`'s dict: groups, rows)."""
    root = ET.Element("testsuites", name="biomed-jax conformance")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for group, info in report.get("groups", {}).items():
        rows = [r for r in report["rows"] if r.get("group") == group]
        suite = ET.SubElement(root, "testsuite", name=group, time=str(info.get("seconds", 0)))
        counts = dict.fromkeys(totals, 0)
        for row in rows:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=row["suite"].replace("/", "."),
                name=row["name"],
                time="0",
            )
            counts["tests"] += 1
            if is_skipped(row):
                ET.SubElement(case, "skipped", message=row["name"].removeprefix("skipped: "))
                counts["skipped"] += 1
            elif not row["passed"]:
                failure = ET.SubElement(case, "failure", message=_figures(row), type="conformance")
                failure.text = _figures(row)
                counts["failures"] += 1
        for error in info.get("errors", []):
            name, _, message = error.partition(": ")
            case = ET.SubElement(suite, "testcase", classname=group, name=name, time="0")
            ET.SubElement(case, "error", message=message, type="error").text = message
            counts["tests"] += 1
            counts["errors"] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    return root


def write(path: str | Path, report: dict[str, Any]) -> None:
    """The report as a JUnit XML file, written atomically."""
    from biomed_jax.files import atomic_write_bytes

    tree = to_xml(report)
    ET.indent(tree)
    atomic_write_bytes(path, ET.tostring(tree, encoding="utf-8", xml_declaration=True))
