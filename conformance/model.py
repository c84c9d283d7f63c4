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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance import corpus
from conformance import golden as golden_file
from conformance.checkpoint import Checkpoint, locate
from conformance.judging import ModelReport, Settings, label
from conformance.live import live
from conformance.replay import replay
from conformance.report import Row, format_table

__all__ = ["ModelReport", "Settings", "assert_conforms", "check", "label", "read_texts", "run"]


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
        return live(model, list(texts), settings, record)
    recorded = golden if isinstance(golden, golden_file.Golden) else golden_file.read(golden)
    return replay(model, recorded, options.get("dtypes"))


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
