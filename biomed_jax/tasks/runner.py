"""Run a fine-tuned BioGPT on a task's input file: prompts, decoding, answers, scores.

The model is any loaded `Pretrained` causal LM with its tokenizer (an HF checkpoint, ours, or a
converted fairseq one): nothing here depends on the on-disk format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.loading import Pretrained
from biomed_jax.pipelines._common import length_sorted_batches
from biomed_jax.tasks import hoc, pubmedqa
from biomed_jax.tasks import relation_extraction as re_tasks
from biomed_jax.tasks.data import Dataset, Example
from biomed_jax.tasks.prompting import TaskSettings, output_line, prompt_ids


@dataclasses.dataclass(frozen=True)
class Task:
    """One of the paper's downstream tasks: its defaults, reader, answer parser and scorer."""

    name: str
    settings: TaskSettings
    load: Callable[..., Dataset]
    parse: Callable[[str], tuple[str, Any]]
    score: Callable[..., dict[str, Any]]
    published: str  # what the paper reports with Microsoft's fine-tuned checkpoint


TASKS = {
    task.name: task
    for task in (
        Task("pubmedqa", pubmedqa.SETTINGS, pubmedqa.load, pubmedqa.parse, pubmedqa.score,
             "accuracy 78.2 % (BioGPT), 81.0 % (BioGPT-Large)"),
        Task("re-bc5cdr", re_tasks.SETTINGS, re_tasks.load_bc5cdr, re_tasks.parse_bc5cdr,
             re_tasks.score_bc5cdr, "F1 44.98"),
        Task("re-ddi", re_tasks.SETTINGS, re_tasks.load_ddi, re_tasks.parse_interactions,
             re_tasks.score_interactions, "F1 40.76"),
        Task("re-dti", re_tasks.SETTINGS, re_tasks.load_dti, re_tasks.parse_interactions,
             re_tasks.score_interactions, "F1 38.42"),
        Task("dc-hoc", hoc.SETTINGS, hoc.load, hoc.parse, hoc.score, "micro-F1 85.12"),
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def _generate(
    pretrained: Pretrained, rows: list[list[int]], settings: TaskSettings
) -> list[tuple[list[int], bool]]:
    """(new tokens without EOS, whether EOS ended them) per prompt: greedy or beam search with
    <pad> never chosen, as fairseq's generator; at most up to the position table."""
    from biomed_jax.generation import generate

    tok = pretrained.tokenizer
    positions = pretrained.config.max_position_embeddings
    width = max(len(r) for r in rows)
    if width >= positions:
        raise ValueError(
            f"a prompt of {width} tokens leaves no room in the model's {positions} positions; "
            "lower max_source_positions"
        )
    room = positions - width
    new = room if settings.max_new_tokens is None else min(settings.max_new_tokens, room)
    ids = np.full((len(rows), width), tok.pad_token_id, np.int32)  # [B, T], left-padded
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :], mask[r, width - len(row) :] = row, 1
    out = generate(
        pretrained.module,
        pretrained.params,
        ids,
        mask,
        max_new_tokens=new,
        num_beams=settings.num_beams,
        suppress_tokens=[tok.pad_token_id],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    results = []
    for row in np.asarray(out)[:, width:].tolist():
        ended = tok.eos_token_id in row
        results.append((row[: row.index(tok.eos_token_id)] if ended else row, ended))
    return results


def generate_answers(
    pretrained: Pretrained, examples: list[Example], settings: TaskSettings, batch_size: int = 8
) -> list[list[int]]:
    """Prompt ids + generated ids (no EOS) per example, in input order.

    With `max_new_tokens=None` each prompt may grow to the position table (fairseq's limit is
    per row): a batch stops at its longest prompt's limit, so a shorter row that got there
    without EOS is decoded again on its own.
    """
    prompts = [prompt_ids(pretrained.tokenizer, e.source, settings) for e in examples]
    positions = pretrained.config.max_position_embeddings
    out: list[tuple[list[int], bool]] = [([], True)] * len(examples)
    for index in length_sorted_batches([len(p) for p in prompts], batch_size):
        for i, result in zip(index, _generate(pretrained, [prompts[i] for i in index], settings)):
            out[i] = result
    if settings.max_new_tokens is None:
        for i, (new, ended) in enumerate(out):
            if not ended and len(prompts[i]) + len(new) < positions:
                out[i] = _generate(pretrained, [prompts[i]], settings)[0]
    return [p + new for p, (new, _) in zip(prompts, out)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_task(
    task: str | Task,
    pretrained: Pretrained,
    input_path: str | Path,
    *,
    settings: TaskSettings | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    load_options: dict[str, Any] | None = None,
    score_options: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one result per example, summary with scores) for `task` on `input_path` (the repo's format).

    Each result: id, source, output (the whole decoded line, as infer.sh writes it), answer (the
    text after the prompt), prediction (parsed; None: failed, as postprocess.py counts it), gold.
    `limit`: only the first n examples (quick checks). `settings`: default the task's own.
    """
    task = get_task(task) if isinstance(task, str) else task
    if pretrained.tokenizer is None:
        raise ValueError(f"{pretrained.path} has no tokenizer files (vocab.json + merges.txt)")
    settings = task.settings if settings is None else settings
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    data = task.load(Path(input_path), **(load_options or {}))
    examples = data.examples if limit is None else data.examples[:limit]
    if not examples:
        raise ValueError(f"{input_path}: no examples to run ({len(data.skipped)} without gold)")
    sequences = generate_answers(pretrained, examples, settings, batch_size)
    results, parsed = [], []
    for example, ids in zip(examples, sequences):
        line = output_line(pretrained.tokenizer, ids)
        answer, prediction = task.parse(line)
        parsed.append(prediction)
        results.append(
            {
                "id": example.id,
                "source": example.source,
                "output": line,
                "answer": answer,
                "prediction": _jsonable(prediction),
                "gold": _jsonable(example.gold),
            }
        )
    summary = {
        "task": task.name,
        "examples": len(examples),
        "skipped_without_gold_relations": len(data.skipped),
        "failed": sum(p is None for p in parsed),
        "scores": task.score(examples, parsed, **(score_options or {})),
        "published": task.published,
        "settings": dataclasses.asdict(settings),
    }
    return results, summary
