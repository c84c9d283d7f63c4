"""Conformance of one checkpoint (`biomed-jax conformance --model`): live, or from a golden.

Live (needs torch and transformers): the texts (by default the 48 shipped PubMed titles and first
abstract sentences, `corpus.pubmed_texts`) are tokenized by the checkpoint's own tokenizer, cut
to `max_length` tokens, and batched right- and left-padded, every batch to one width (one
compilation per dtype). transformers runs each batch in float32, float64 (the truth) and
bfloat16 (`checkpoint.reference`); every output `bert.output_getters` finds (hidden states of
every layer, attention maps, pooler, logits of any head) is judged by the float64-referenced rule
of docs/numerics.md (`report.measure` per batch, merged, `report.verdict`: all batches of a side
judged as one output), and so are each output's row projections (PROJECTED: every position's
row of F entries projected onto 2 fixed random directions, `golden.project`). Causal LMs also generate from the texts' first `prompt_length`
tokens, left-padded, greedy and beam-5, token for token against transformers' `generate`
(float32). `record=` writes what the rule needs into a golden file (`conformance.golden`).

Replay (`golden=`): no torch, no transformers. The golden's batches through our model; each
output judged at its recorded entries against the recorded truth with transformers' recorded
error (the bound the live rule used: live passing implies these pass), its row projections all
recorded and judged as live; generation token for token. A golden recorded from other weights
is refused (`golden.GoldenError`); one with a few changed parameters runs, with a failing row
naming them.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import biomed_jax
from conformance import bert, biogpt, corpus
from conformance import golden as golden_file
from conformance.checkpoint import (
    Checkpoint,
    load_ours,
    locate,
    parameter_hashes,
    reference,
    require_reference,
    structure,
)
from conformance.report import Errors, Row, exact, format_table, measure, verdict

DTYPES = ("float32", "bfloat16")
SIDES = ("right", "left")
# Causal LMs: generate settings (with max_new_tokens) passed to both transformers and ours.
STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {},
    "beam5": {"num_beams": 5, "early_stopping": True},
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a live check runs (a replay reads them from its golden)."""

    dtypes: tuple[str, ...] = DTYPES
    sides: tuple[str, ...] = SIDES
    batch_size: int = 8
    max_length: int = 128  # tokens per text (at most the model's positions)
    generation: bool = True  # causal LMs: greedy and beam-5 against transformers' generate
    prompt_length: int = 16  # generation prompts: each text's first tokens
    max_new_tokens: int = 20
    columns: int = 4  # recorded entries per row of each output (golden)
    policy: str = "fast"  # our numerics policy (biomed_jax.numerics)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(dict.fromkeys(self.dtypes)))
        object.__setattr__(self, "sides", tuple(dict.fromkeys(self.sides)))
        for name, allowed in (("dtypes", DTYPES), ("sides", SIDES)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        for name in ("batch_size", "max_length", "prompt_length", "max_new_tokens", "columns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """The rows of one checkpoint, and what they were computed from."""

    rows: list[Row]
    checkpoint: dict[str, Any]
    settings: dict[str, Any]
    versions: dict[str, str]
    golden: dict[str, Any] | None = None  # replay: the golden's path, checkpoint and versions

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["rows"]
        return out


def check(
    model: str | Path,
    texts: Sequence[str] | None = None,
    *,
    golden: str | Path | None = None,
    record: str | Path | None = None,
    **options: Any,
) -> list[Row]:
    """Every output of checkpoint `model` against transformers: the rows (see `run`)."""
    return run(model, texts, golden=golden, record=record, **options).rows


def assert_conforms(
    model: str | Path, texts: Sequence[str] | None = None, **options: Any
) -> list[Row]:
    """`check` for a test suite: the rows, or AssertionError listing the failed ones."""
    rows = check(model, texts, **options)
    failed = [r for r in rows if not r.passed]
    if failed:
        raise AssertionError(
            f"{model}: {len(failed)} of {len(rows)} conformance rows failed\n{format_table(failed)}"
        )
    return rows


def run(
    model: str | Path | Checkpoint,
    texts: Sequence[str] | None = None,
    *,
    golden: str | Path | golden_file.Golden | None = None,
    record: str | Path | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> ModelReport:
    """Check checkpoint `model` (hub id, HF or converted directory, fairseq directory or `.pt`).

    Live (default; needs torch and transformers): on `texts` (default: the shipped PubMed
    texts), with `options` from `Settings` (dtypes, sides, batch_size, max_length, generation,
    prompt_length, max_new_tokens, columns, policy); `record=FILE` also writes a golden.
    `golden=FILE` replays one instead (no torch; `dtypes` may pick some of the recorded ones).
    """
    if golden is not None:  # settings first: errors before any file is read or hashed
        if record is not None or texts is not None:
            raise ValueError("a replay runs the golden's own texts: no texts or record with golden")
        if set(options) - {"dtypes"}:
            raise ValueError(
                "a replay takes the golden's settings; only dtypes may be given, not "
                f"{sorted(set(options) - {'dtypes'})}"
            )
    else:
        settings = Settings(**options)
        texts = corpus.pubmed_texts() if texts is None else _checked_texts(texts)
    if not isinstance(model, Checkpoint):
        model = locate(model, revision=revision, cache_dir=cache_dir)
    if golden is None:
        return _live(model, list(texts), settings, record)
    recorded = golden if isinstance(golden, golden_file.Golden) else golden_file.read(golden)
    return _replay(model, recorded, options.get("dtypes"))


def read_texts(file: str | Path) -> list[str]:
    """`--texts FILE`: one text per line (blank lines skipped)."""
    from biomed_jax.text_files import read_lines

    texts = [line.strip() for line in read_lines(file) if line.strip()]
    if not texts:
        raise ValueError(f"{file} holds no text (one text per line)")
    return texts


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts {bad[:5]} are empty or not strings")
    return list(texts)


def versions(with_reference: bool) -> dict[str, str]:
    """Python, platform, JAX backend and the versions of every package the check used."""
    import importlib.metadata
    import platform

    import jax

    names = ["biomed-jax", "jax", "jaxlib", "flax", "numpy", "safetensors"]
    names += ["torch", "transformers"] if with_reference else []
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
    }
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def label(checkpoint: Checkpoint) -> str:
    """The checkpoint's short name in row suites (its last path or hub id component)."""
    return Path(checkpoint.model.rstrip("/")).name or checkpoint.model


# ---------------------------------------------------------------------------------------------
# Shared by both paths


def _fallbacks(model_type: str, dtype: str) -> dict[str, float]:
    """Absolute bounds per output kind where transformers did not run in `dtype`."""
    if model_type == "bert":
        if dtype == "float32":
            return dict.fromkeys(("hidden", "attention", "logits", "pooler"), bert.FP32_TOL)
        return bert.BF16_TOL
    return biogpt.FP32_TOL if dtype == "float32" else biogpt.BF16_TOL


def _forward(ours: Any, dtype: str) -> Callable[[dict[str, np.ndarray]], Any]:
    """Our model in compute `dtype` on a batch: every hidden state and attention map."""
    import jax
    import jax.numpy as jnp

    module = ours.module.clone(dtype=jnp.dtype(dtype))
    params = ours.params
    apply = jax.jit(
        lambda p, batch: module.apply(
            {"params": p}, **batch, output_hidden_states=True, output_attentions=True
        )
    )
    return lambda batch: apply(params, {k: jnp.asarray(v) for k, v in batch.items()})


def _finite(output: Any) -> bool:
    import jax

    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(output))


PROJECTED = " (row projections)"  # the derived output: `golden.project` of each row


class _Merged:
    """Errors per (output, dtype) merged over batches, then one row each, in first-seen order.
    A PROJECTED output's fallback is x sqrt(F): what the entries' fallback implies for it."""

    def __init__(self) -> None:
        self.errors: dict[tuple[str, str], Errors] = {}
        self.shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        self.kinds: dict[str, str] = {}
        self.widths: dict[str, int] = {}
        self.notes: dict[tuple[str, str], str] = {}

    def add(
        self, name: str, dtype: str, kind: str, errors: Errors, rows: np.ndarray, width: int
    ) -> None:
        """`rows`: what was compared ([n, ...]: its shape is the row's, counts summed)."""
        key = (name, dtype)
        self.kinds[name], self.widths[name] = kind, width
        if key in self.errors:
            errors = self.errors[key].merge(errors)
            count = self.shapes[key][0] + rows.shape[0]
        else:
            count = rows.shape[0]
        self.errors[key] = errors
        self.shapes[key] = (count, *rows.shape[1:])

    def fail(self, name: str, dtype: str, kind: str, note: str) -> None:
        self.kinds[name] = kind
        self.errors[(name, dtype)] = Errors(math.inf, math.inf, None, False)
        self.shapes.setdefault((name, dtype), ())
        self.notes[(name, dtype)] = note

    def rows(
        self,
        suite: Callable[[str], str],
        fallback: Callable[[str, str], float],
        note: Callable[[str], str] = lambda name: "",
    ) -> list[Row]:
        """One row per (output, dtype); `fallback(dtype, output)`: the absolute bound where
        transformers did not run in the dtype; `note(output)`: the row's note."""
        out = []
        for (name, dtype), errors in self.errors.items():
            base = name.removesuffix(PROJECTED)
            scale = math.sqrt(self.widths.get(name, 1)) if name.endswith(PROJECTED) else 1.0
            out.append(
                verdict(
                    suite(dtype),
                    name,
                    dtype,
                    self.shapes[name, dtype],
                    errors,
                    fallback(dtype, base) * scale,
                    self.notes.get((name, dtype)) or note(name),
                )
            )
        return out


def _finite_rows(suite: Callable[[str], str], finite: dict[str, bool]) -> list[Row]:
    return [
        Row(suite(dtype), "all outputs finite", (), 0.0 if ok else 1.0, 0.0, ok)
        for dtype, ok in finite.items()
    ]


# ---------------------------------------------------------------------------------------------
# Live


def _live(
    checkpoint: Checkpoint,
    texts: list[str],
    settings: Settings,
    record: str | Path | None,
    ours: Any = None,
) -> ModelReport:
    """`ours`: our model of the checkpoint when already loaded (default: load it)."""
    require_reference()
    ours = load_ours(checkpoint, settings.policy) if ours is None else ours
    config = ours.config
    name = f"{label(checkpoint)}/{checkpoint.architecture}"
    encoded = _encode(
        ours.tokenizer, texts, min(settings.max_length, config.max_position_embeddings)
    )
    pad = ours.tokenizer.pad_token_id
    recorder = _Recorder(settings.columns) if record is not None else None
    rows: list[Row] = []
    forwards = {dtype: _forward(ours, dtype) for dtype in settings.dtypes}
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
    recorder: _Recorder | None,
) -> list[Row]:
    """One padding side: every output, and its row projections where a golden keeps fewer
    than all of a row's entries (width > `columns`)."""
    getters = bert.output_getters
    merged, finite = _Merged(), dict.fromkeys(forwards, True)
    for i, batch in enumerate(batches):
        refs = _reference_outputs(hf, batch, tuple(forwards), run_reference)
        truth, ref32 = getters(refs["float64"], batch), getters(refs["float32"], batch)
        same = {d: getters(refs[d], batch) for d in forwards if d != "float32"}
        outputs = {dtype: forward(batch) for dtype, forward in forwards.items()}
        for dtype, output in outputs.items():
            finite[dtype] &= _finite(output)
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
        return _fallbacks(model_type, dtype)[merged.kinds[name]]

    rows = merged.rows(lambda dtype: f"{suite}/{dtype}", fallback, _projection_note)
    return rows + _finite_rows(lambda dtype: f"{suite}/{dtype}", finite)


def _projection_note(name: str) -> str:
    if not name.endswith(PROJECTED):
        return ""
    return f"each row of F entries projected onto {golden_file.PROJECTIONS} fixed random directions"


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
    recorder: _Recorder | None,
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


class _Recorder:
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

    def ref_errors(self, side: str, merged: _Merged) -> None:
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


# ---------------------------------------------------------------------------------------------
# Replay


def _replay(
    checkpoint: Checkpoint,
    recorded: golden_file.Golden,
    dtypes: Sequence[str] | None,
    ours: Any = None,
) -> ModelReport:
    """`ours`: our model of the checkpoint when already loaded (default: load it)."""
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
    forwards = {dtype: _forward(ours, dtype) for dtype in dtypes}
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
    merged, finite = _Merged(), dict.fromkeys(forwards, True)
    offsets = dict.fromkeys(stored, 0)
    for batch in recorded.batches(side):
        counts: dict[str, int] = {}
        for dtype, forward in forwards.items():
            output = forward(batch)
            finite[dtype] &= _finite(output)
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
        return _fallbacks(model_type, dtype)[e["kind"]]

    def at(dtype: str) -> str:
        return f"{suite}/{dtype}"

    def note(name: str) -> str:
        return _projection_note(name) or _entry_note(by_name[name], stored[name])

    rows = merged.rows(at, fallback, note)
    return rows + _finite_rows(at, finite)


def _entry_note(entry: dict, stored: _Stored) -> str:
    if entry.get("atol") is not None:
        return (
            f"published values: |ours - expected| <= {entry['atol']:g} + "
            f"{entry.get('rtol', 0):g} x |expected| at the smallest |expected|"
        )
    k = stored.columns.shape[1]
    return f"replay: {k} of {entry['width']} columns at {stored.truth.shape[0]} positions"


# What a golden's generate entries may set: `biomed_jax.generate`'s options, not its inputs.
_GENERATE_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(biomed_jax.generate).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "rng"
)


def _generate_replay(suite: str, recorded: golden_file.Golden, entry: dict, ours: Any) -> Row:
    from biomed_jax import generate

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
        got = np.asarray(generate(ours.module, ours.params, ids, mask, **options))
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
