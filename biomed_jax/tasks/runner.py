"""Run a fine-tuned BioGPT on a task's input file: prompts, decoding, answers, scores.

The model is any loaded `Pretrained` causal LM with its tokenizer (an HF checkpoint, ours, or a
converted fairseq one): nothing here depends on the on-disk format.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from biomed_jax import interrupts
from biomed_jax.loading import MissingTokenizer, Pretrained
from biomed_jax.pipelines._common import length_sorted_batches
from biomed_jax.pipelines.stream import model_fingerprint
from biomed_jax.progress import progress_bar
from biomed_jax.tasks import hoc, pubmedqa
from biomed_jax.tasks import relation_extraction as re_tasks
from biomed_jax.tasks.data import Dataset, Example
from biomed_jax.tasks.prompting import TaskSettings, learned_prompt_ids, output_line, prompt_ids
from biomed_jax.tasks.results import Interrupted, ResultsFile, check_output


@dataclasses.dataclass(frozen=True)
class Task:
    """One of the paper's downstream tasks: its defaults, reader, answer parser and scorer."""

    name: str
    settings: TaskSettings
    load: Callable[..., Dataset]
    parse: Callable[[str], tuple[str, Any]]
    score: Callable[..., dict[str, Any]]
    published: str  # what the paper reports with Microsoft's fine-tuned checkpoint
    drops_unlabelled: bool = False  # its reader leaves out documents without gold relations


TASKS = {
    task.name: task
    for task in (
        Task("pubmedqa", pubmedqa.SETTINGS, pubmedqa.load, pubmedqa.parse, pubmedqa.score,
             "accuracy 78.2 % (BioGPT), 81.0 % (BioGPT-Large)"),
        Task("re-bc5cdr", re_tasks.SETTINGS, re_tasks.load_bc5cdr, re_tasks.parse_bc5cdr,
             re_tasks.score_bc5cdr, "F1 44.98", drops_unlabelled=True),
        Task("re-ddi", re_tasks.SETTINGS, re_tasks.load_ddi, re_tasks.parse_interactions,
             re_tasks.score_interactions, "F1 40.76", drops_unlabelled=True),
        Task("re-dti", re_tasks.SETTINGS, re_tasks.load_dti, re_tasks.parse_interactions,
             re_tasks.score_interactions, "F1 38.42", drops_unlabelled=True),
        Task("dc-hoc", hoc.SETTINGS, hoc.load, hoc.parse, hoc.score, "micro-F1 85.12"),
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def task_settings(task: str | Task, pretrained: Pretrained, **overrides: Any) -> TaskSettings:
    """The settings to run `task` with: the task's defaults (its train.sh), replaced by what a
    fairseq checkpoint stored (`with_fairseq_args`), replaced by the non-None `overrides`."""
    task = get_task(task) if isinstance(task, str) else task
    settings = task.settings
    if pretrained.fairseq_args is not None:
        settings = settings.with_fairseq_args(pretrained.fairseq_args.task)
    return settings.replace(**overrides)


def _generate(
    pretrained: Pretrained, rows: list[list[int]], settings: TaskSettings
) -> list[list[int]]:
    """The new tokens (no EOS) after each prompt: greedy or beam search with <pad> never chosen,
    as fairseq's generator. Each row stops at EOS, at `max_new_tokens` or when it fills the
    position table, whatever the other rows of its batch do (fairseq's limit is per row)."""
    from biomed_jax.generation import generate

    tok = pretrained.tokenizer
    positions = pretrained.config.max_position_embeddings
    width = max(len(r) for r in rows)
    if width >= positions:
        raise ValueError(
            f"a prompt of {width} tokens leaves no room in the model's {positions} positions; "
            "lower max_source_positions"
        )
    cap = positions if settings.max_new_tokens is None else settings.max_new_tokens
    budgets = [min(cap, positions - len(row)) for row in rows]  # per row
    ids = np.full((len(rows), width), tok.pad_token_id, np.int32)  # [B, T], left-padded
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :], mask[r, width - len(row) :] = row, 1
    out = generate(
        pretrained.module,
        pretrained.params,
        ids,
        mask,
        max_new_tokens=budgets,
        num_beams=settings.num_beams,
        suppress_tokens=[tok.pad_token_id],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    results = []
    for row, budget in zip(np.asarray(out)[:, width:].tolist(), budgets):
        row = row[:budget]  # after its budget a row holds padding
        results.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return results


def decode_batches(
    pretrained: Pretrained, prompts: list[list[int]], settings: TaskSettings, batch_size: int
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Batch by batch (prompts sorted by length): the prompts' indices and, for each, the
    generated ids without EOS."""
    for index in length_sorted_batches([len(p) for p in prompts], batch_size):
        index = index.tolist()
        yield index, _generate(pretrained, [prompts[i] for i in index], settings)


def generate_answers(
    pretrained: Pretrained, examples: list[Example], settings: TaskSettings, batch_size: int = 8
) -> list[list[int]]:
    """Prompt ids + generated ids (no EOS) per example, in input order."""
    prompts = [prompt_ids(pretrained.tokenizer, e.source, settings) for e in examples]
    out: list[list[int]] = [[] for _ in prompts]
    for index, new in decode_batches(pretrained, prompts, settings, batch_size):
        for i, ids in zip(index, new):
            out[i] = prompts[i] + ids
    return out


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
    output: str | Path | TextIO | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one result per example, summary with scores) for `task` on `input_path` (the repo's format).

    Each result: id, source, output (the whole decoded line, as infer.sh writes it), generated
    (the model's continuation without prompt tokens, leaked ones removed too), answer (the text
    postprocess.py keeps: after the last run of prompt tokens), prediction (parsed from the answer;
    None: failed, as postprocess.py counts it), gold.
    `limit`: only the first n examples (quick checks). `settings`: default `task_settings` (the
    task's own, or what a fairseq checkpoint stored).
    `output`: a path: results are appended there batch by batch and a rerun resumes (see
    `biomed_jax.tasks.results`); at the end the file holds them in input order. A text stream
    (sys.stdout): each batch's lines are written and flushed as it finishes (in batch order).
    Ctrl-C raises `Interrupted` (a KeyboardInterrupt) saying what was kept. `progress`: a bar on
    stderr when it is a terminal.
    """
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(pretrained.tokenizer, MissingTokenizer):
        raise pretrained.tokenizer.error()
    settings = task_settings(task, pretrained) if settings is None else settings
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    load_options = load_options or {}
    if isinstance(output, (str, Path)):
        model = pretrained.path
        beside = model.parent if model is not None and model.is_file() else None  # fairseq .pt
        check_output(output, [input_path, *load_options.values(), model, beside])
    data = task.load(Path(input_path), **load_options)
    examples = data.examples if limit is None else data.examples[:limit]
    if not examples:
        raise ValueError(f"{input_path}: no examples to run ({len(data.skipped)} without gold)")
    if isinstance(output, (str, Path)):
        record = {
            "task": task.name,
            "settings": dataclasses.asdict(settings),
            "model_fingerprint": model_fingerprint(pretrained),
        }
        with ResultsFile(Path(output), record) as store:
            done = _check_done(store.path, store.done, examples)
            if done and progress:
                print(
                    f"resuming: {len(done)} of {len(examples)} results already in {output}",
                    file=sys.stderr,
                )
            run = _Run(task, pretrained, settings, batch_size, progress, str(output), True)
            results = run(examples, done, store.append)
            store.finish(results)
    else:
        stream = output

        def write(batch: list[dict[str, Any]]) -> None:
            if stream is not None:
                stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch))
                stream.flush()

        where = "the output stream" if stream is not None else "memory"
        run = _Run(task, pretrained, settings, batch_size, progress, where, False)
        results = run(examples, {}, write)
    parsed = [task.parse(r["output"])[1] for r in results]
    summary = {
        "task": task.name,
        "examples": len(examples),
        **({"skipped_without_gold_relations": len(data.skipped)} if task.drops_unlabelled else {}),
        "failed": sum(p is None for p in parsed),
        "scores": task.score(examples, parsed, **(score_options or {})),
        "published": task.published,
        "settings": dataclasses.asdict(settings),
    }
    return results, summary


def _check_done(
    path: Path, done: dict[str, dict[str, Any]], examples: list[Example]
) -> dict[str, dict[str, Any]]:
    """The results already in `path`, checked against this run's examples (same ids, same
    source texts); the gold answers are the input's (a changed gold file changes no output)."""
    by_id = {e.id: e for e in examples}
    for result in done.values():
        example = by_id.get(result["id"])
        if example is None:
            raise ValueError(
                f"{path} holds a result for id {result['id']!r}, which is not among this run's "
                f"{len(examples)} examples (another input or --limit?): choose another output file"
            )
        if result.get("source") != example.source:
            raise ValueError(
                f"{path}: the result for id {result['id']!r} was computed from another source "
                "text than the input's: the input changed; choose another output file"
            )
        result["gold"] = _jsonable(example.gold)
    return done


@dataclasses.dataclass(frozen=True)
class _Run:
    """How one run decodes, and where its results go (for `Interrupted`'s message)."""

    task: Task
    pretrained: Pretrained
    settings: TaskSettings
    batch_size: int
    progress: bool
    where: str
    resumable: bool

    def __call__(
        self,
        examples: list[Example],
        done: dict[str, dict[str, Any]],
        write: Callable[[list[dict[str, Any]]], None],
    ) -> list[dict[str, Any]]:
        """Decode the examples not in `done`, `write` each batch's results as it finishes; all
        the results in input order."""
        tok = self.pretrained.tokenizer
        todo = [e for e in examples if e.id not in done]
        prompts = [prompt_ids(tok, e.source, self.settings) for e in todo]
        learned = set(learned_prompt_ids(tok, self.settings))
        finished = dict(done)
        bar = progress_bar(
            len(examples),
            enabled=self.progress,
            initial=len(done),
            unit="example",
            desc=self.task.name,
        )
        try:
            batches = decode_batches(self.pretrained, prompts, self.settings, self.batch_size)
            for index, new in batches:
                batch = [
                    _result(self.task, tok, todo[i], prompts[i], ids, learned)
                    for i, ids in zip(index, new)
                ]
                write(batch)
                finished.update((r["id"], r) for r in batch)
                bar.update(len(batch))
                interrupts.check()
        except KeyboardInterrupt:
            raise Interrupted(len(finished), len(examples), self.where, self.resumable) from None
        finally:
            bar.close()
        return [finished[e.id] for e in examples]


def _result(
    task: Task, tok: Any, example: Example, prompt: list[int], new: list[int], learned: set[int]
) -> dict[str, Any]:
    line = output_line(tok, prompt + new)
    answer, prediction = task.parse(line)
    return {
        "id": example.id,
        "source": example.source,
        "output": line,
        "generated": tok.decode(
            [i for i in new if i not in learned], skip_special_tokens=True
        ).strip(),
        "answer": answer,
        "prediction": _jsonable(prediction),
        "gold": _jsonable(example.gold),
    }
