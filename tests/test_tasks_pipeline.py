"""The task pipelines end to end on a tiny random BioGPT whose vocabulary carries the fine-tuned
dictionaries' extra rows (learned0 ... learned9): prompts, decoding, CLI output, determinism."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import biomed_jax
from biomed_jax.cli import main
from biomed_jax.errors import ConfigError
from biomed_jax.tasks import TaskSettings, generate_answers, get_task, output_line, prompt_ids

DATA = Path(__file__).parent / "data" / "biogpt_tasks"
POSITIONS = 96
LEARNED = 10  # learned0 .. learned9 appended after the base vocabulary


def save_tiny_task_biogpt(path: Path, data: Path, seed: int = 0) -> Path:
    """A random HF BioGptForCausalLM (2 layers, D=32) with the real vocab plus learned rows."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "biogpt" / "merges.txt", path / "merges.txt")
    vocab = json.loads((data / "biogpt" / "vocab.json").read_text(encoding="utf-8"))
    for i in range(LEARNED):
        vocab[f"learned{i}</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    torch.manual_seed(seed)
    config = transformers.BioGptConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=POSITIONS,
        initializer_range=0.2,
    )
    transformers.BioGptForCausalLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_data) -> Path:
    return save_tiny_task_biogpt(tmp_path_factory.mktemp("task_biogpt"), shared_data)


@pytest.fixture(scope="module")
def model(model_dir):
    return biomed_jax.from_pretrained(model_dir)


def test_prompt_is_bos_source_learned_tokens(model):
    tok = model.tokenizer
    vocab = tok.get_vocab()
    source = "toxic hepatitis induced by disulfiram."
    ids = prompt_ids(tok, source, TaskSettings(learned_prompt=9))
    learned = [vocab[f"learned{i}</w>"] for i in range(1, 10)]  # learned1..9, not learned0
    assert ids == [tok.eos_token_id, *tok(source)["input_ids"][1:], *learned]
    assert output_line(tok, ids) == f"{source} " + " ".join(f"learned{i}" for i in range(1, 10))


def test_long_source_is_cut_with_an_ellipsis(model):
    tok = model.tokenizer
    source = "the patient was treated with aspirin for fever " * 10
    full = tok(source)["input_ids"][1:]
    ids = prompt_ids(tok, source, TaskSettings(learned_prompt=1, max_source_positions=12))
    # LanguageModelPromptDataset: the first n - 1 source tokens, then "...", then the prompt
    assert ids[1:12] == full[:11] and ids[12] == tok.get_vocab()["...</w>"]
    assert len(ids) == 1 + 12 + 1


def test_missing_prompt_tokens_are_an_error(model):
    with pytest.raises(ConfigError, match="no 'learned10', 'learned11' "):
        prompt_ids(model.tokenizer, "text", TaskSettings(learned_prompt=11))


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: four compilations of the decoding loop
def test_default_length_is_per_row_as_fairseq(model):
    """max_new_tokens=None: every row may grow to the position table, whatever its batch."""
    task = get_task("dc-hoc")
    examples = task.load(DATA / "hoc_test.tsv").examples[1:3]
    settings = task.settings.replace(max_source_positions=40)
    prompts = [prompt_ids(model.tokenizer, e.source, settings) for e in examples]
    assert len({len(p) for p in prompts}) == 2  # rows of different lengths share a batch
    batched = generate_answers(model, examples, settings, batch_size=2)
    alone = generate_answers(model, examples, settings, batch_size=1)
    assert batched == alone
    eos = model.tokenizer.eos_token_id
    for prompt, seq in zip(prompts, batched):
        assert seq[: len(prompt)] == prompt
        # this random model never emits EOS: each row runs to its own limit
        assert eos not in seq[len(prompt) :] and len(seq) == POSITIONS


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
def test_cli_task_end_to_end(task, input_file, model_dir, tmp_path, capsys):
    args = ["--no-compilation-cache", "task", task, "--model", str(model_dir)]
    args += ["--input", str(DATA / input_file), "--max-source-positions", "40"]
    args += ["--max-new-tokens", "6", "--batch-size", "2"]
    outputs = []
    for run in range(2 if task == "re-ddi" else 1):
        out = tmp_path / f"run{run}.jsonl"
        assert main([*args, "--output", str(out)]) == 0
        outputs.append(out.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[-1]  # deterministic (re-ddi runs twice)
    results = [json.loads(x) for x in outputs[0].splitlines()]
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    examples = get_task(task).load(DATA / input_file).examples
    assert [r["id"] for r in results] == [e.id for e in examples]
    assert summary["task"] == task and summary["examples"] == len(examples)
    assert summary["failed"] == sum(r["prediction"] is None for r in results)
    assert summary["settings"]["max_new_tokens"] == 6
    prompt = " ".join(f"learned{i}" for i in range(1, summary["settings"]["learned_prompt"] + 1))
    for r in results:
        assert set(r) == {"id", "source", "output", "generated", "answer", "prediction", "gold"}
        assert prompt in r["output"] and r["output"].endswith(r["answer"])
        assert not re.search(r"\blearned[1-9]\b", r["generated"])
    assert summary["scores"]  # a random model scores ~0, but every metric is there


def test_cli_task_errors(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("no label column\n")
    code = main(["task", "dc-hoc", "--model", str(model_dir), "--input", str(bad)])
    assert code == 2
    assert "bad.tsv:1: expected 'text<TAB>labels'" in capsys.readouterr().err
    long = tmp_path / "long.tsv"
    long.write_text("the patient was treated with aspirin for fever " * 20 + "\tempty\n")
    args = ["task", "dc-hoc", "--model", str(model_dir), "--input", str(long)]
    assert main(args) == 2  # 900 source tokens allowed, no room left in 96 positions
    assert "lower max_source_positions" in capsys.readouterr().err


def test_cli_task_refuses_bad_entities_before_loading_the_model(tmp_path, capsys):
    """`--entities` holding a list: exit 2 naming the expected maps, before any model is read
    (the model path does not exist) or any example generated."""
    entities = tmp_path / "entities.json"
    entities.write_text('["aspirin", "fever"]')
    args = ["task", "re-bc5cdr", "--model", str(tmp_path / "no-model"), "--input", "x.json"]
    assert main([*args, "--entities", str(entities)]) == 2
    err = capsys.readouterr().err
    assert "entities must be {'chemical2id'" in err and "got a list" in err


def test_pad_is_never_generated(model):
    """fairseq's generator never picks <pad>: neither do we, even where it is the argmax."""
    from biomed_jax.generation import generate

    tok = model.tokenizer
    ids = np.asarray([prompt_ids(tok, "aspirin for fever.", TaskSettings(learned_prompt=9))])
    first = int(np.asarray(generate(model.module, model.params, ids, max_new_tokens=1))[0, -1])
    # tied output embedding: <pad>'s row 1.5 x the chosen token's row makes <pad> the argmax
    table = np.array(model.params["biogpt"]["embed_tokens"]["embedding"])
    table[1] = table[first] * 1.5
    biogpt = {**model.params["biogpt"], "embed_tokens": {"embedding": table}}
    params = {**model.params, "biogpt": biogpt}
    plain = np.asarray(generate(model.module, params, ids, max_new_tokens=1))
    kept = np.asarray(generate(model.module, params, ids, max_new_tokens=1, suppress_tokens=[1]))
    assert plain[0, -1] == tok.pad_token_id == 1
    assert kept[0, -1] == first
    with pytest.raises(ValueError, match="suppress_tokens must lie in"):
        generate(model.module, params, ids, max_new_tokens=1, suppress_tokens=[len(tok)])
