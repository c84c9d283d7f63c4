"""A `--model` check live: the checkpoint through ours and through transformers on the same
batches, every output judged (`judging`), and what a golden keeps recorded (`Recorder`)."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conformance import bert, biogpt
from conformance import golden as golden_file
from conformance.checkpoint import (
    Checkpoint,
    load_ours,
    parameter_hashes,
    reference,
    require_reference,
    structure,
)
from conformance.judging import (
    PROJECTED,
    Merged,
    ModelReport,
    Settings,
    all_finite,
    fallbacks,
    finite_rows,
    label,
    our_forward,
    projection_note,
    versions,
)
from conformance.report import Row, exact, measure

# Causal LMs: generate settings (with max_new_tokens) passed to both transformers and ours.
STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "beam5": {"num_beams": 5, "early_stopping": True},
}


def live(
    checkpoint: Checkpoint,
    texts: list[str],
    settings: Settings,
    record: str | Path | None,
    ours: Any = None,
) -> ModelReport:
    """The live check of `checkpoint` on `texts` (writing a golden to `record` when given);
    `ours`: our model of it when already loaded (default: load it)."""
    require_reference()
    ours = load_ours(checkpoint, settings.policy) if ours is None else ours
    config = ours.config
    name = f"{label(checkpoint)}/{checkpoint.architecture}"
    encoded = _encode(
        ours.tokenizer, texts, min(settings.max_length, config.max_position_embeddings)
    )
    pad = ours.tokenizer.pad_token_id
    recorder = Recorder(settings.columns) if record is not None else None
    rows: list[Row] = []
    forwards = {dtype: our_forward(ours, dtype) for dtype in settings.dtypes}
    with reference(checkpoint) as hf:
        run_reference = (
            biogpt._run_reference if config.model_type == "biogpt" else bert._run_reference
        )
        for side in settings.sides:
            batches = _batches(encoded, side, settings.batch_size, pad)
            rows += _forward_live(
                f"{name}/{side}-pad",
                hf,
                run_reference,
                forwards,
                batches,
                config.model_type,
                side,
                settings.columns,
                recorder,
            )
        if settings.generation and checkpoint.architecture == "BioGptForCausalLM":
            rows += _generate_live(f"{name}/generate", hf, ours, encoded, settings, pad, recorder)
        del hf
    gc.collect()  # transformers' model holds reference cycles: free its GBs now
    report = ModelReport(rows, checkpoint.describe(), dataclasses.asdict(settings), versions(True))
    if recorder is not None:
        header = {
            "checkpoint": {
                **checkpoint.describe(),
                "structure": structure(config),
                "parameters": parameter_hashes(ours.params),
            },
            "reference": "transformers (eager attention), float64 truth",
            "texts": texts,
            "settings": report.settings,
            "versions": report.versions,
        }
        recorder.write(record, header)
    return report


def _encode(tokenizer: Any, texts: list[str], limit: int) -> list[dict[str, list[int]]]:
    """Each text's ids (and token types, for BERT) by the checkpoint's tokenizer, at most
    `limit` tokens."""
    from biomed_jax.loading import MissingTokenizer

    if isinstance(tokenizer, MissingTokenizer):
        raise tokenizer.error()
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=limit)
        out.append({k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc})
    return out


def _pad(rows: list[list[int]], width: int, value: int, side: str) -> np.ndarray:
    out = np.full((len(rows), width), value, np.int32)
    for i, row in enumerate(rows):
        if side == "left":
            out[i, width - len(row) :] = row
        else:
            out[i, : len(row)] = row
    return out


def _batches(
    encoded: list[dict[str, list[int]]], side: str, size: int, pad: int
) -> list[dict[str, np.ndarray]]:
    """Batches of `size` texts, all padded on `side` to the longest text's width."""
    width = max(len(e["input_ids"]) for e in encoded)
    out = []
    for start in range(0, len(encoded), size):
        part = encoded[start : start + size]
        batch = {
            "input_ids": _pad([e["input_ids"] for e in part], width, pad, side),
            "attention_mask": _pad([[1] * len(e["input_ids"]) for e in part], width, 0, side),
        }
        if "token_type_ids" in part[0]:
            batch["token_type_ids"] = _pad([e["token_type_ids"] for e in part], width, 0, side)
        out.append(batch)
    return out


def _reference_outputs(hf: Any, batch: dict, dtypes: tuple[str, ...], run: Callable) -> dict:
    """transformers on one batch in float32, float64 and (when asked) bfloat16. float32 <->
    float64 converts the model in place without loss; bfloat16 runs on a copy."""
    import copy

    import torch

    out = {"float32": run(hf, batch)}
    hf.double()
    try:
        out["float64"] = run(hf, batch)
    finally:
        hf.float()
    if "bfloat16" in dtypes:
        low = copy.deepcopy(hf).to(torch.bfloat16)
        out["bfloat16"] = run(low, batch)
        del low
    return out


def _forward_live(
    suite: str,
    hf: Any,
    run_reference: Callable,
    forwards: dict[str, Callable],
    batches: list[dict[str, np.ndarray]],
    model_type: str,
    side: str,
    columns: int,
    recorder: Recorder | None,
) -> list[Row]:
    """One padding side: every output, and its row projections where a golden keeps fewer
    than all of a row's entries (width > `columns`)."""
    getters = bert.output_getters
    merged, finite = Merged(), dict.fromkeys(forwards, True)
    for i, batch in enumerate(batches):
        refs = _reference_outputs(hf, batch, tuple(forwards), run_reference)
        truth, ref32 = getters(refs["float64"], batch), getters(refs["float32"], batch)
        same = {d: getters(refs[d], batch) for d in forwards if d != "float32"}
        outputs = {dtype: forward(batch) for dtype, forward in forwards.items()}
        for dtype, output in outputs.items():
            finite[dtype] &= all_finite(output)
        ours = {dtype: getters(output, batch) for dtype, output in outputs.items()}
        # One output at a time in float64 (all of a full-size model's at once are GBs).
        for name, (get_truth, valid, kind) in truth.items():
            t, r32 = get_truth(), ref32[name][0]()
            t_rows, r_rows = golden_file.rows_of(t, valid), golden_file.rows_of(r32, valid)
            t_proj, r_proj = golden_file.project(t_rows), golden_file.project(r_rows)
            width = t_rows.shape[1]
            for dtype in forwards:
                if name not in ours[dtype]:
                    merged.fail(name, dtype, kind, "missing from ours")
                    continue
                a = ours[dtype][name][0]()
                if a.shape != t.shape:
                    note = f"shape mismatch: ours {a.shape}, reference {t.shape}"
                    merged.fail(name, dtype, kind, note)
                    continue
                ref_same = r32 if dtype == "float32" else same[dtype][name][0]()
                errors = measure(a, r32, t, ref_same, valid)
                merged.add(name, dtype, kind, errors, t_rows, width)
                if width > columns:  # else a golden records every entry: nothing to add
                    s_rows = r_rows if dtype == "float32" else golden_file.rows_of(ref_same, valid)
                    a_proj = golden_file.project(golden_file.rows_of(a, valid))
                    errors = measure(a_proj, r_proj, t_proj, golden_file.project(s_rows))
                    merged.add(name + PROJECTED, dtype, kind, errors, t_proj, width)
            if recorder is not None:
                recorder.output(side, name, kind, t_rows, r_rows)
        if recorder is not None:
            recorder.inputs(side, i, batch)
    if recorder is not None:
        recorder.ref_errors(side, merged)

    def fallback(dtype: str, name: str) -> float:
        return fallbacks(model_type, dtype)[merged.kinds[name]]

    rows = merged.rows(lambda dtype: f"{suite}/{dtype}", fallback, projection_note)
    return rows + finite_rows(lambda dtype: f"{suite}/{dtype}", finite)


def _prompts(
    encoded: list[dict[str, list[int]]], settings: Settings, pad: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Left-padded prompt batches: each text's first `prompt_length` tokens."""
    rows = [e["input_ids"][: settings.prompt_length] for e in encoded]
    width = max(map(len, rows))
    out = []
    for start in range(0, len(rows), settings.batch_size):
        part = rows[start : start + settings.batch_size]
        out.append(
            (_pad(part, width, pad, "left"), _pad([[1] * len(r) for r in part], width, 0, "left"))
        )
    return out


def _generate_live(
    suite: str,
    hf: Any,
    ours: Any,
    encoded: list,
    settings: Settings,
    pad: int,
    recorder: Recorder | None,
) -> list[Row]:
    import transformers

    from biomed_jax import generate
    from conformance.generation import hf_generate

    config = hf.config
    base = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    prompts = _prompts(encoded, settings, pad)
    room = ours.config.max_position_embeddings - prompts[0][0].shape[1]
    rows = []
    for strategy, options in STRATEGIES.items():
        options = dict(options, max_new_tokens=min(settings.max_new_tokens, room))
        mismatches, count, gaps, references = 0, 0, [], []
        for ids, mask in prompts:
            want, gap = hf_generate(
                hf, ids.astype(np.int64), mask.astype(np.int64), base, **options
            )
            got = np.asarray(generate(ours.module, ours.params, ids, mask, **options))
            mismatches += exact(suite, "sequences", got, want).max_abs_diff
            count += want.shape[0]
            gaps.append(gap)
            references.append(want)
        note = f"{count} prompts of up to {settings.prompt_length} tokens, {options}"
        if not np.isnan(gaps).all():
            note += f", min top-2 gap {np.nanmin(gaps):.2g}"
        rows.append(
            Row(
                f"{suite}-{strategy}/float32",
                "sequences",
                (count,),
                mismatches,
                0,
                mismatches == 0,
                note,
            )
        )
        if recorder is not None:
            recorder.generation(strategy, options, prompts, references)
    return rows


class Recorder:
    """What a live check writes into a golden: batches, reduced outputs, generated tokens."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.arrays: dict[str, np.ndarray] = {}
        self.parts: dict[tuple[str, str], list[tuple[np.ndarray, ...]]] = {}
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.batches: dict[str, int] = {}
        self.generate: list[dict[str, Any]] = []

    def inputs(self, side: str, index: int, batch: dict[str, np.ndarray]) -> None:
        for key, value in batch.items():
            self.arrays[f"inputs/{side}/{index}/{key}"] = np.asarray(value, np.int32)
        self.batches[side] = index + 1

    def output(self, side: str, name: str, kind: str, rows: np.ndarray, rows32: np.ndarray) -> None:
        """One output of one batch (its rows [n, F], float64 truth and transformers float32):
        the rows' top columns, their values, the rows' projections."""
        columns = golden_file.top_columns(rows, kind, self.columns)
        every = rows.shape[1] <= self.columns  # every entry recorded: no projections
        self.parts.setdefault((side, name), []).append(
            (
                columns,
                golden_file.take(rows, columns),
                golden_file.take(rows32, columns).astype(np.float32),
                None if every else golden_file.project(rows),
                None if every else golden_file.project(rows32).astype(np.float32),
            )
        )
        self.entries[side, name] = {
            "name": name,
            "side": side,
            "kind": kind,
            "width": rows.shape[1],
        }

    def ref_errors(self, side: str, merged: Merged) -> None:
        """transformers' own errors per dtype, of each output and of its row projections."""
        for (name, dtype), errors in merged.errors.items():
            field = "proj_ref_err" if name.endswith(PROJECTED) else "ref_err"
            entry = self.entries[side, name.removesuffix(PROJECTED)]
            entry.setdefault(field, {})[dtype] = errors.ref_err

    def generation(self, strategy: str, options: dict, prompts: list, sequences: list) -> None:
        for i, ((ids, mask), seq) in enumerate(zip(prompts, sequences, strict=True)):
            prefix = f"generate/{strategy}/{i}/"
            self.arrays[prefix + "input_ids"] = ids
            self.arrays[prefix + "attention_mask"] = mask
            self.arrays[prefix + "sequences"] = np.asarray(seq, np.int32)
        self.generate.append({"name": strategy, "settings": options, "batches": len(prompts)})

    def write(self, path: str | Path, header: dict[str, Any]) -> None:
        arrays = dict(self.arrays)
        for (side, name), parts in self.parts.items():
            for field, values in zip(
                ("columns", "truth", "ref32", "proj", "proj32"),
                zip(*parts, strict=True),
                strict=True,
            ):
                if values[0] is not None:
                    arrays[f"forward/{side}/{name}/{field}"] = np.concatenate(values)
            if self.entries[side, name]["width"] <= np.iinfo(np.uint16).max:
                columns = arrays[f"forward/{side}/{name}/columns"]
                arrays[f"forward/{side}/{name}/columns"] = columns.astype(np.uint16)
        header = {
            **header,
            "batches": self.batches,
            "forward": list(self.entries.values()),
            "generate": self.generate,
        }
        golden_file.write(path, header, arrays)
