"""A `--model` check replayed from a golden, without torch or transformers: the recorded batches
through ours, judged at the recorded entries and row projections with the recorded bounds."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import biomed_jax
from biomed_jax.generation import decode
from conformance import bert
from conformance import golden as golden_file
from conformance.checkpoint import Checkpoint, load_ours, parameter_hashes, structure
from conformance.judging import (
    PROJECTED,
    Merged,
    ModelReport,
    all_finite,
    fallbacks,
    finite_rows,
    label,
    our_forward,
    projection_note,
    versions,
)
from conformance.report import Row, exact, measure


def replay(
    checkpoint: Checkpoint,
    recorded: golden_file.Golden,
    dtypes: Sequence[str] | None,
    ours: Any = None,
) -> ModelReport:
    """`checkpoint` against the golden `recorded` in `dtypes` (default: the recorded ones);
    `ours`: our model of it when already loaded (default: load it)."""
    if ours is None:
        ours = load_ours(checkpoint, recorded.field("settings").get("policy", "fast"))
    golden_file.check_structure(recorded, structure(ours.config))
    changed = golden_file.changed_parameters(recorded, parameter_hashes(ours.params))
    settings = recorded.field("settings")
    available = tuple(settings.get("dtypes", ("float32",)))
    dtypes = tuple(dtypes or available)
    missing = [d for d in dtypes if d not in available]
    if missing:
        raise golden_file.GoldenError(
            f"{recorded.path} has no {missing} reference (recorded: {list(available)})"
        )
    name = f"{label(checkpoint)}/{checkpoint.architecture}"
    rows: list[Row] = []
    if changed is not None:
        note = (
            f"changed since recording: {', '.join(changed[:8])}"
            + (" ..." if len(changed) > 8 else "")
            if changed
            else "sha256 of every parameter as recorded"
        )
        count = len(recorded.field("checkpoint", "parameters"))
        rows.append(
            Row(
                f"{name}/weights",
                "parameters as recorded",
                (count,),
                float(len(changed)),
                0,
                not changed,
                note,
            )
        )
    forwards = {dtype: our_forward(ours, dtype) for dtype in dtypes}
    entries = recorded.header.get("forward", [])
    for side in dict.fromkeys(e["side"] for e in entries):
        suite = f"{name}/{side}-pad"
        rows += _forward_replay(
            suite,
            recorded,
            side,
            [e for e in entries if e["side"] == side],
            forwards,
            ours.config.model_type,
        )
    for entry in recorded.header.get("generate", []):
        rows.append(
            _generate_replay(f"{name}/generate-{entry['name']}/float32", recorded, entry, ours)
        )
    info = {
        "path": recorded.path,
        "checkpoint": {k: v for k, v in recorded.field("checkpoint").items() if k != "parameters"},
        "versions": recorded.header.get("versions"),
        "reference": recorded.header.get("reference"),
    }
    used = {**settings, "dtypes": list(dtypes)}
    return ModelReport(rows, checkpoint.describe(), used, versions(False), info)


@dataclasses.dataclass(frozen=True)
class _Stored:
    """One output's recorded arrays (see `conformance.golden`)."""

    columns: np.ndarray  # [n, k]
    truth: np.ndarray  # [n, k]
    ref32: np.ndarray | None
    proj: np.ndarray | None  # [n, PROJECTIONS]
    proj32: np.ndarray | None
    positions: np.ndarray | None  # [n]: which valid positions (default: all, in order)

    @classmethod
    def read(cls, recorded: golden_file.Golden, side: str, name: str) -> _Stored:
        prefix = f"forward/{side}/{name}/"
        stored = cls(
            recorded.array(prefix + "columns").astype(np.int64),
            recorded.array(prefix + "truth").astype(np.float64),
            *(recorded.optional(prefix + f) for f in ("ref32", "proj", "proj32", "positions")),
        )
        truth, n = stored.truth, stored.truth.shape[0]
        fits = truth.ndim == 2 and stored.columns.shape == truth.shape
        fits &= stored.ref32 is None or stored.ref32.shape == truth.shape
        fits &= stored.positions is None or stored.positions.shape == (n,)
        fits &= all(
            a is None or a.shape == (n, golden_file.PROJECTIONS)
            for a in (stored.proj, stored.proj32)
        )
        if not fits:
            raise golden_file.GoldenError(
                f"{recorded.path}: the arrays under {prefix} do not fit together"
            )
        return stored

    def rows(self) -> int:
        """How many valid positions the recording covers (at least)."""
        return self.truth.shape[0] if self.positions is None else int(self.positions.max()) + 1

    def pick(self, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Of a batch whose rows are positions offset..offset+count-1: (its recorded rows,
        their index in the recorded arrays)."""
        if self.positions is None:
            picked = np.arange(offset, min(offset + count, self.truth.shape[0]))
            return picked - offset, picked
        picked = np.nonzero((self.positions >= offset) & (self.positions < offset + count))[0]
        return self.positions[picked].astype(np.int64) - offset, picked


def _forward_replay(
    suite: str,
    recorded: golden_file.Golden,
    side: str,
    entries: list[dict],
    forwards: dict[str, Callable],
    model_type: str,
) -> list[Row]:
    stored = {e["name"]: _Stored.read(recorded, side, e["name"]) for e in entries}
    merged, finite = Merged(), dict.fromkeys(forwards, True)
    offsets = dict.fromkeys(stored, 0)
    for batch in recorded.batches(side):
        counts: dict[str, int] = {}
        for dtype, forward in forwards.items():
            output = forward(batch)
            finite[dtype] &= all_finite(output)
            ours = bert.output_getters(output, batch)
            for e in entries:
                name, kind = e["name"], e["kind"]
                if name not in ours:
                    merged.fail(name, dtype, kind, "missing from ours")
                    continue
                rows = golden_file.rows_of(ours[name][0](), ours[name][1])
                counts[name] = rows.shape[0]
                if rows.shape[1] != e["width"]:
                    merged.fail(name, dtype, kind, f"width {rows.shape[1]}, golden {e['width']}")
                    continue
                here, picked = stored[name].pick(offsets[name], rows.shape[0])
                if not here.size:
                    continue
                rows, part = rows[here], stored[name]
                truth = part.truth[picked]
                ref32 = truth if part.ref32 is None else part.ref32[picked]
                values = golden_file.take(rows, part.columns[picked])
                ref_err = e.get("ref_err", {}).get(dtype)
                errors = measure(values, ref32, truth, ref_err=ref_err)
                merged.add(name, dtype, kind, errors, values, e["width"])
                if part.proj is not None:
                    proj32 = part.proj if part.proj32 is None else part.proj32
                    found = golden_file.project(rows)
                    ref_err = e.get("proj_ref_err", {}).get(dtype)
                    errors = measure(found, proj32[picked], part.proj[picked], ref_err=ref_err)
                    merged.add(name + PROJECTED, dtype, kind, errors, found, e["width"])
        for name, count in counts.items():
            offsets[name] += count
    for name, part in stored.items():
        if name in offsets and offsets[name] and offsets[name] < part.rows():
            raise golden_file.GoldenError(
                f"{recorded.path}: {side}/{name} records {part.rows()} rows; its batches give "
                f"{offsets[name]}"
            )
    by_name = {e["name"]: e for e in entries}

    def fallback(dtype: str, name: str) -> float:
        e = by_name[name]
        if e.get("atol") is not None:  # published values: their own absolute bound
            smallest = float(np.abs(stored[name].truth).min())
            return e["atol"] + e.get("rtol", 0.0) * smallest
        return fallbacks(model_type, dtype)[e["kind"]]

    def at(dtype: str) -> str:
        return f"{suite}/{dtype}"

    def note(name: str) -> str:
        return projection_note(name) or _entry_note(by_name[name], stored[name])

    rows = merged.rows(at, fallback, note)
    return rows + finite_rows(at, finite)


def _entry_note(entry: dict, stored: _Stored) -> str:
    if entry.get("atol") is not None:
        return (
            f"published values: |ours - expected| <= {entry['atol']:g} + "
            f"{entry.get('rtol', 0):g} x |expected| at the smallest |expected|"
        )
    k = stored.columns.shape[1]
    return f"replay: {k} of {entry['width']} columns at {stored.truth.shape[0]} positions"


# What a golden's generate entries may set: `generate`'s options (`decode`'s keywords), not its
# inputs.
_GENERATE_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(decode).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "rng"
)


def _generate_replay(suite: str, recorded: golden_file.Golden, entry: dict, ours: Any) -> Row:
    options = entry["settings"]
    unknown = set(options) - _GENERATE_OPTIONS
    if unknown:
        raise golden_file.GoldenError(
            f"{recorded.path}: generate entry {entry['name']!r} has unknown settings {sorted(unknown)}"
        )
    texts = entry.get("texts")
    mismatches, count, first = 0, 0, ""
    for i in range(entry["batches"]):
        prefix = f"generate/{entry['name']}/{i}/"
        ids = recorded.array(prefix + "input_ids").astype(np.int32)
        mask = recorded.array(prefix + "attention_mask").astype(np.int32)
        got = np.asarray(biomed_jax.generate(ours.module, ours.params, ids, mask, **options))
        if texts is None:
            want = recorded.array(prefix + "sequences")
            row = exact(suite, "sequences", got, want)
            mismatches += row.max_abs_diff
            count += want.shape[0]
            continue
        decoded = ours.tokenizer.batch_decode(
            got, skip_special_tokens=entry.get("skip_special_tokens", False)
        )
        for ours_text, want_text in zip(decoded, texts[i], strict=True):
            count += 1
            if ours_text != want_text:
                mismatches += 1
                first = first or f"ours {ours_text!r}, expected {want_text!r}"
    name = "sequences" if texts is None else "decoded text"
    note = first or entry.get("note", "")
    return Row(suite, name, (count,), float(mismatches), 0, mismatches == 0, note)
