"""The task pipelines against microsoft/BioGPT's own scripts, without a model.

Expected values come from running the repo's scripts (commit 648f7d6) on the fixtures in
tests/data/biogpt_tasks (see its README): `rebuild_data.py` wrote reference/*.x, `postprocess.py`
turned the hand-written output lines reference/*.detok into reference/*.extracted*, and
`hard_match_evaluation.py` / BioCreative's `bc5cdr_eval.jar` printed the scores quoted below.
reference/fairseq_reference.json holds what Moses' tokenizer.perl -a, fastBPE and fairseq's
dictionary make of those sources, and what detokenizer.perl makes of fairseq output strings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomed_jax import BioGptTokenizer
from biomed_jax.errors import ConfigError
from biomed_jax.tasks import Example, TaskSettings, get_task
from biomed_jax.tasks import relation_extraction as rel
from biomed_jax.tasks.prompting import output_line, prompt_ids, strip_prefix

DATA = Path(__file__).parent / "data" / "biogpt_tasks"
REF = DATA / "reference"
PROMPT = " ".join(f"learned{i}" for i in range(1, 10))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.mark.parametrize(
    "task, input_file, reference",
    [
        ("pubmedqa", "pubmedqa_test.json", "pubmedqa.x"),
        ("re-bc5cdr", "bc5cdr_test.json", "bc5cdr.x"),
        ("re-ddi", "ddi_test.json", "ddi.x"),
        ("re-dti", "kd_dti_test.json", "kd_dti.x"),
        ("dc-hoc", "hoc_test.tsv", "hoc.x"),
    ],
)
def test_sources_are_rebuild_data_lines(task, input_file, reference):
    """Lower-casing, title/abstract joins, whitespace and periods exactly as rebuild_data.py."""
    data = get_task(task).load(DATA / input_file)
    assert [e.source for e in data.examples] == lines(REF / reference)


def test_pubmedqa_answers_and_accuracy():
    task = get_task("pubmedqa")
    parsed = [task.parse(line)[1] for line in lines(REF / "pubmedqa.detok")]
    # leaked learned3 learned4 is cut; "we can conclude that maybe", an empty answer and two
    # answer sentences are failures or misses as in postprocess.py
    assert ["failed" if p is None else p for p in parsed] == lines(REF / "pubmedqa.extracted.txt")
    gold = json.loads((REF / "pubmedqa_gold.json").read_text())
    examples = [Example(k, "", v) for k, v in gold.items()]
    assert task.score(examples, parsed) == {"accuracy": 0.5}  # hard_match_evaluation.py: 0.5


def test_pubmedqa_gold_file_and_missing_labels(tmp_path):
    task = get_task("pubmedqa")
    data = task.load(DATA / "pubmedqa_test.json", gold_file=DATA / "pubmedqa_ground_truth.json")
    assert [e.gold for e in data.examples] == ["yes", "no"]  # the file, not final_decision
    records = json.loads((DATA / "pubmedqa_test.json").read_text())
    del records["10000002"]["final_decision"]
    (tmp_path / "t.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="1 records have no final_decision"):
        task.load(tmp_path / "t.json")


def test_hoc_labels_and_micro_f1():
    task = get_task("dc-hoc")
    parsed = [task.parse(line)[1] for line in lines(REF / "hoc.detok")]
    expected = [
        None if x == "failed" else [w.strip() for w in x.split("|")]
        for x in lines(REF / "hoc.extracted.txt")
    ]
    assert parsed == expected
    examples = task.load(DATA / "hoc_test.tsv").examples
    scores = task.score(examples, parsed)
    assert scores["f1"] == pytest.approx(0.6666666666666666, abs=1e-15)  # sklearn micro-F1
    assert (scores["tp"], scores["fp"], scores["fn"]) == (3, 1, 2)  # "made up class" ignored


def test_hoc_rejects_bad_lines(tmp_path):
    (tmp_path / "t.tsv").write_text("a sentence\tempty\textra\n")
    with pytest.raises(ValueError, match=r"t\.tsv:1: expected 'text<TAB>labels', got 3"):
        get_task("dc-hoc").load(tmp_path / "t.tsv")


def test_bc5cdr_relations_and_jar_scores():
    task = get_task("re-bc5cdr")
    examples = task.load(DATA / "bc5cdr_test.json").examples
    parsed = [task.parse(line)[1] for line in lines(REF / "bc5cdr.detok")]
    maps = rel.entity_maps(examples)
    rows = [r for e, p in zip(examples, parsed) for r in rel.cid_relations(e.id, p, maps)]
    extracted = [tuple(x.split("\t")) for x in lines(REF / "bc5cdr.extracted.PubTator")]
    assert [(p, "CID", c, d, "1.0") for p, c, d in rows] == extracted
    # bc5cdr_eval.jar relation CID: TP 2, FP 2, FN 1, P 0.5, R 0.6666666666666666, F 0.5714285714285715
    assert task.score(examples, parsed) == {
        "tp": 2,
        "fp": 2,
        "fn": 1,
        "precision": 0.5,
        "recall": 0.6666666666666666,
        "f1": 0.5714285714285715,
    }


def test_bc5cdr_failures_predict_nothing():
    task = get_task("re-bc5cdr")
    examples = task.load(DATA / "bc5cdr_test.json").examples
    parsed = [task.parse(line)[1] for line in lines(REF / "bc5cdr_failed.detok")]
    assert parsed == [None, None]  # postprocess.py: failed = 2, total = 2
    # the jar: TP 0, FP 0, FN 3, Precision NaN, Recall 0.0, F-score NaN
    assert task.score(examples, parsed) == {
        "tp": 0, "fp": 0, "fn": 3, "precision": None, "recall": 0.0, "f1": None
    }  # fmt: skip


def test_bc5cdr_skips_documents_without_relations(tmp_path):
    records = json.loads((DATA / "bc5cdr_test.json").read_text())
    records["8511251"]["relations"] = []
    (tmp_path / "t.json").write_text(json.dumps(records))
    data = get_task("re-bc5cdr").load(tmp_path / "t.json")
    assert [e.id for e in data.examples] == ["6453500"] and data.skipped == ["8511251"]
    records["6453500"]["relations"] = [{"chemical": "D004221"}]
    (tmp_path / "t.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record '6453500' has a malformed 'relations'"):
        get_task("re-bc5cdr").load(tmp_path / "t.json")
    records["6453500"]["relations"] = [{"chemical": "D004221", "disease": "D056486"}]
    del records["6453500"]["abstract"]
    (tmp_path / "t.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record '6453500' has no field 'abstract'"):
        get_task("re-bc5cdr").load(tmp_path / "t.json")


@pytest.mark.parametrize("task", ["re-ddi", "re-dti"])
def test_interactions_triples_and_hard_match_scores(task):
    task = get_task(task)
    parsed = [task.parse(line)[1] for line in lines(REF / "interactions.detok")]
    extracted = [
        json.loads(x)["triple_list_pred"] for x in lines(REF / "interactions.extracted.json")
    ]
    as_rows = [
        [{"subject": d, "relation": r, "object": t} for d, r, t in p]
        if p is not None
        else [{"subject": "failed", "relation": "failed", "object": "failed"}]
        for p in parsed
    ]
    assert as_rows == extracted
    gold = json.loads((REF / "interactions_gold.json").read_text())
    examples = [
        Example(k, "", [(t["drug"], t["interaction"], t["target"]) for t in v["triples"]])
        for k, v in gold.items()
    ]
    scores = task.score(examples, parsed)
    # hard_match_evaluation.py printed these to 4 decimals
    printed = {
        "accuracy_drug": 0.5833,
        "accuracy_target": 0.3833,
        "accuracy_interaction": 0.6250,
        "precision": 0.5417,
        "recall": 0.3417,
        "f1": 0.3750,
        "macro_f1": 0.4190,
        "ontology_f1_drug": 0.6667,
        "ontology_f1_target": 0.6250,
        "ontology_f1_interaction": 0.8889,
        "ontology_precision": 0.6667,
        "ontology_recall": 0.3636,
        "ontology_f1": 0.4706,
    }
    assert {k: round(scores[k], 4) for k in printed} == printed


def test_normalize_name_rules():
    assert rel.normalize_name("5-ht2") == "5htII"  # final digit after a letter: Roman numeral
    assert rel.normalize_name("rad-140") == "rad140"  # after a digit: kept
    assert rel.normalize_name("alpha-type receptor") == "alphareceptor"
    assert rel._abbreviation("androgenreceptor(ar)") == "ar"
    assert rel._body("androgenreceptor(ar)") == "androgenreceptor"


def test_strip_prefix_cuts_after_the_last_learned_run():
    line = f"src text {PROMPT} learned2 learned7 the answer"
    assert strip_prefix(line) == "the answer"
    assert strip_prefix(f"src text {PROMPT}") == "learned9"  # nothing generated: no final space
    assert strip_prefix(f"src {PROMPT} a learned3 b") == "b"  # a leak mid-answer: after it
    assert strip_prefix("we have that x") == "x"  # no prompt at all: the phrase list


def test_settings_from_fairseq_args():
    args = {"learned_prompt": 1, "max_source_positions": 900, "prefix": False, "seed": 1}
    settings = TaskSettings().with_fairseq_args(args)
    assert (settings.learned_prompt, settings.max_source_positions) == (1, 900)
    assert settings.prompt_words == ["learned1"]
    with pytest.raises(ConfigError, match="--prefix"):
        TaskSettings().with_fairseq_args({"prefix": True})
    with pytest.raises(ConfigError, match="max_source_positions"):
        TaskSettings(max_source_positions=1)


def test_bc5cdr_entities_must_be_the_two_maps():
    task = get_task("re-bc5cdr")
    examples = task.load(DATA / "bc5cdr_test.json").examples
    with pytest.raises(ValueError, match="entities must be"):
        task.score(examples, [None, None], entities={"chemical2id": {}})


def test_cli_options_of_other_tasks_are_refused(capsys):
    from biomed_jax.cli import main

    args = ["task", "re-ddi", "--model", "unused", "--input", "unused", "--gold", "g.json"]
    assert main(args) == 2
    assert "--gold applies to pubmedqa only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tokenizer(shared_data, tmp_path_factory):
    """BioGPT's real tokenizer with the fine-tuned dictionaries' learned0..9 rows appended."""
    directory = tmp_path_factory.mktemp("vocab")
    vocab = json.loads((shared_data / "biogpt" / "vocab.json").read_text(encoding="utf-8"))
    vocab.update({f"learned{i}</w>": len(vocab) + i for i in range(10)})
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_bytes((shared_data / "biogpt" / "merges.txt").read_bytes())
    return BioGptTokenizer.from_pretrained(directory)


@pytest.mark.parametrize(
    "task, input_file",
    [
        ("pubmedqa", "pubmedqa_test.json"),
        ("re-bc5cdr", "bc5cdr_test.json"),
        ("re-ddi", "ddi_test.json"),
        ("re-dti", "kd_dti_test.json"),
        ("dc-hoc", "hoc_test.tsv"),
    ],
)
def test_source_ids_are_moses_fastbpe_fairseq_ids(task, input_file, tokenizer):
    """preprocess.sh: tokenizer.perl -l en -a, fastBPE applybpe, fairseq-preprocess ids."""
    reference = json.loads((REF / "fairseq_reference.json").read_text())["source_ids"][task]
    settings = TaskSettings(learned_prompt=0, max_source_positions=10_000)
    examples = get_task(task).load(DATA / input_file).examples
    assert [prompt_ids(tokenizer, e.source, settings)[1:] for e in examples] == reference


def test_output_line_is_what_infer_sh_writes(tokenizer):
    """fairseq Dictionary.string, sed 's/@@ //g', detokenizer.perl -l en -a."""
    vocab = tokenizer.get_vocab()
    cases = json.loads((REF / "fairseq_reference.json").read_text())["output_lines"]
    for case in cases:
        ids = [vocab[s[:-2]] if s.endswith("@@") else vocab[s + "</w>"] for s in case["symbols"]]
        assert output_line(tokenizer, [tokenizer.eos_token_id, *ids]) == case["line"]
