"""PubMedQA (reasoning required): yes / no / maybe from question + context, hard-match accuracy.

As examples/QA-PubMedQA: `rebuild_data.py` (source "question: Q context: C " with the contexts
joined and whitespace collapsed; the long answer is not shown; no lower-casing),
`postprocess.py` (answer after "the answer to the question given the context is", else
"failed") and `hard_match_evaluation.py` (accuracy; "failed" counts as wrong).
Input: PubMedQA's `test_set.json` ({pmid: {QUESTION, CONTEXTS, LONG_ANSWER, final_decision}}),
gold from `final_decision` or from `test_ground_truth.json` ({pmid: label}).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from biomed_jax.tasks.data import Dataset, Example, field, read_json_object
from biomed_jax.tasks.prompting import TaskSettings, answer_text

# No train.sh for PubMedQA in the repo: 9 learned tokens as every released model shows them
# (microsoft/BioGPT issue #46); the source limit is fairseq's default.
SETTINGS = TaskSettings(learned_prompt=9, max_source_positions=384)
ANSWER = re.compile(r"the answer to the question given the context is(.*)")


def source_text(question: str, contexts: list[str]) -> str:
    """rebuild_data.py `build_source_seq` without the long answer."""
    context = " ".join(sentence.strip() for sentence in contexts)
    context = re.sub(r"\s+", " ", context.replace("\n", " "))
    return f"question: {question.strip()} context: {context.strip()} "


def load(path: Path, gold_file: Path | None = None) -> Dataset:
    data = read_json_object(path)
    truth = read_json_object(gold_file) if gold_file is not None else None
    examples = []
    for pmid, record in data.items():
        question = field(record, "QUESTION", str, path, pmid)
        contexts = field(record, "CONTEXTS", list, path, pmid)
        if truth is not None:
            if pmid not in truth:
                raise ValueError(f"{gold_file}: no label for {pmid!r}")
            gold = truth[pmid]
        else:
            gold = record.get("final_decision")
        examples.append(Example(pmid, source_text(question, contexts), gold))
    labelled = sum(e.gold is not None for e in examples)
    if 0 < labelled < len(examples):
        raise ValueError(f"{path}: {len(examples) - labelled} records have no final_decision")
    return Dataset(examples)


def parse(line: str) -> tuple[str, str | None]:
    """(answer text, the decision or None when the answer sentence is missing)."""
    text = answer_text(line)
    found = ANSWER.search(text)
    return text, found.group(1).strip() if found else None


def score(examples: list[Example], parsed: list[Any], **_: Any) -> dict[str, Any]:
    """Hard-match accuracy: the parsed decision (or "failed") equals the gold label."""
    if not examples or examples[0].gold is None:
        return {}
    hits = [("failed" if p is None else p) == e.gold for e, p in zip(examples, parsed)]
    return {"accuracy": sum(hits) / len(hits)}
