"""The task pipelines on fairseq checkpoints: settings from the stored arguments, the prompt from
the checkpoint's tokenizer, the CLI end to end on `.pt` files and directories, `info` on them.

The checkpoints are written as fairseq writes them (tests/_fairseq_models.py) with the real
BioGPT vocabulary as dict.txt + bpecodes, the learned prompt rows after it, and each task's
train.sh arguments (microsoft/BioGPT examples/*/train.sh), on a tiny random model (D=32, 2 layers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _fairseq_models import (
    WORDS,
    fairseq_state,
    model_args,
    seeded_hf_model,
    task_args,
    write_checkpoint,
    write_dict_from_vocab_json,
    write_model_dir,
)

from biomed_jax import from_pretrained
from biomed_jax.cli import main
from biomed_jax.errors import ConfigError
from biomed_jax.tasks import TaskSettings, get_task, prompt_ids, task_settings

DATA = Path(__file__).parent / "data" / "biogpt_tasks"
BASE_VOCAB = 42384  # the real BioGPT dictionary: 4 specials + dict.txt rows
POSITIONS = 1024  # --tokens-per-sample / --max-target-positions 1024 in every train.sh
# task -> (input fixture, --learned-prompt, --max-source-positions) of its train.sh
TASKS = {
    "re-bc5cdr": ("bc5cdr_test.json", 9, 640),
    "pubmedqa": ("pubmedqa_test.json", 9, 900),
    "dc-hoc": ("hoc_test.tsv", 1, 900),
}


def write_task_checkpoint(
    directory: Path, shared_data: Path, learned: int, max_source: int, seed: int = 0
) -> Path:
    """checkpoint.pt + dict.txt + bpecodes of a prompt-tuned BioGPT (`--task
    language_modeling_prompt --learned-prompt N --max-source-positions M`)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((shared_data / "biogpt" / "vocab.json").read_text(encoding="utf-8"))
    write_dict_from_vocab_json(directory / "dict.txt", vocab)
    shutil.copyfile(shared_data / "biogpt" / "merges.txt", directory / "bpecodes")
    hf = seeded_hf_model(32, 2, 4, 64, POSITIONS, BASE_VOCAB + learned, seed=seed)
    targs = dict(task_args(POSITIONS, learned), max_source_positions=max_source)
    margs = model_args(32, 2, 4, 64, POSITIONS)
    return write_checkpoint(directory / "checkpoint.pt", fairseq_state(hf), margs, targs)


@pytest.fixture(scope="module")
def checkpoints(shared_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fairseq_tasks")
    return {
        name: write_task_checkpoint(root / name, shared_data, learned, max_source, seed=i)
        for i, (name, (_, learned, max_source)) in enumerate(TASKS.items())
    }


def _learned_ids(n: int) -> list[int]:
    """fairseq's `add_symbol` puts learned1..N after the dictionary's rows."""
    return list(range(BASE_VOCAB, BASE_VOCAB + n))


@pytest.mark.parametrize("name", list(TASKS))
def test_settings_and_prompt_come_from_the_checkpoint(name, checkpoints):
    _, learned, max_source = TASKS[name]
    model = from_pretrained(checkpoints[name])
    assert model.fairseq_args.task["learned_prompt"] == learned
    assert model.fairseq_args.model["decoder_layers"] == 2
    settings = task_settings(name, model)
    assert (settings.learned_prompt, settings.max_source_positions) == (learned, max_source)
    tok = model.tokenizer
    assert list(tok.prompt_ids) == _learned_ids(learned)
    source = get_task(name).load(DATA / TASKS[name][0]).examples[0].source
    ids = prompt_ids(tok, source, settings)
    assert ids == [tok.eos_token_id, *tok(source)["input_ids"][1:], *_learned_ids(learned)]


def test_stored_arguments_beat_the_task_defaults_and_flags_beat_both(shared_data, tmp_path):
    """A checkpoint trained with 4 prompt tokens and 30 source tokens is run that way, not with
    re-bc5cdr's 9 and 640; an explicit override wins over the checkpoint."""
    ckpt = write_task_checkpoint(tmp_path / "odd", shared_data, learned=4, max_source=30)
    model = from_pretrained(ckpt)
    tok = model.tokenizer
    settings = task_settings("re-bc5cdr", model)
    assert (settings.learned_prompt, settings.max_source_positions) == (4, 30)
    source = get_task("re-bc5cdr").load(DATA / "bc5cdr_test.json").examples[0].source
    assert len(tok(source)["input_ids"]) > 31  # long enough to be cut
    ids = prompt_ids(tok, source, settings)
    ellipsis = tok.get_vocab()["...</w>"]
    assert ids[-5:] == [ellipsis, *_learned_ids(4)] and len(ids) == 1 + 30 + 4
    assert task_settings("re-bc5cdr", model, max_source_positions=20).max_source_positions == 20


@pytest.mark.parametrize("style", ["args", "dictconfig"])
def test_settings_from_every_stored_argument_style(style, tmp_path):
    """Legacy flat `args` and omegaconf cfg give the same task settings (small vocabulary)."""
    task = dict(max_source_positions=20, learned_prompt_pattern="learned")
    write_model_dir(tmp_path, learned=3, task=task, style=style)
    model = from_pretrained(tmp_path)
    settings = task_settings("re-ddi", model)
    assert (settings.learned_prompt, settings.max_source_positions) == (3, 20)
    assert list(model.tokenizer.prompt_ids) == [4 + len(WORDS) + i for i in range(3)]


def test_a_checkpoint_without_a_learned_prompt_gets_none():
    """fairseq's defaults (--learned-prompt None, pattern 'learned'): no prompt tokens, as the
    checkpoint's dictionary has none."""
    settings = TaskSettings(learned_prompt=9, learned_prompt_pattern="p", max_source_positions=640)
    base = settings.with_fairseq_args({"_name": "language_modeling", "tokens_per_sample": 1024})
    assert (base.learned_prompt, base.max_source_positions) == (0, 640)
    assert base.prompt_words == [] and base.learned_prompt_pattern == "learned"


def test_a_prompt_disagreeing_with_the_checkpoint_is_refused(checkpoints, capsys):
    model = from_pretrained(checkpoints["dc-hoc"])  # trained with learned1 only
    with pytest.raises(ConfigError, match=r"learned1..learned9 \(9 tokens\), but the checkpoint"):
        prompt_ids(model.tokenizer, "text.", TaskSettings(learned_prompt=9))
    pattern = TaskSettings(learned_prompt=1, learned_prompt_pattern="prompt")
    with pytest.raises(ConfigError, match=r"prompt1 \(1 token\), but .* with learned1 \(1 token"):
        prompt_ids(model.tokenizer, "text.", pattern)
    args = ["task", "dc-hoc", "--model", str(checkpoints["dc-hoc"])]
    args += ["--input", str(DATA / "hoc_test.tsv"), "--learned-prompt", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "learned1..learned3 (3 tokens), but the checkpoint was trained with learned1 (1 token)"
        in err
    )


@pytest.mark.parametrize("name", list(TASKS))
def test_cli_task_on_a_fairseq_checkpoint(name, checkpoints, tmp_path, capsys):
    input_file, learned, max_source = TASKS[name]
    # the .pt file for one task, the directory for the others
    model = checkpoints[name] if name == "re-bc5cdr" else checkpoints[name].parent
    args = ["--no-compilation-cache", "task", name, "--model", str(model)]
    args += ["--input", str(DATA / input_file), "--max-new-tokens", "8", "--batch-size", "2"]
    outputs = []
    for run in range(2 if name == "dc-hoc" else 1):
        out = tmp_path / f"run{run}.jsonl"
        assert main([*args, "--output", str(out)]) == 0
        outputs.append(out.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[-1]  # deterministic (dc-hoc runs twice)
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    settings = summary["settings"]
    assert (settings["learned_prompt"], settings["max_source_positions"]) == (learned, max_source)
    assert settings["max_new_tokens"] == 8
    results = [json.loads(line) for line in outputs[0].splitlines()]
    examples = get_task(name).load(DATA / input_file).examples
    assert [r["id"] for r in results] == [e.id for e in examples]
    assert summary["examples"] == len(examples) and summary["scores"]
    prompt = " ".join(f"learned{i}" for i in range(1, learned + 1))
    for r in results:
        assert prompt in r["output"] and r["output"].endswith(r["answer"])
        assert "learned" not in r["generated"]  # the continuation, prompt tokens dropped
    if name == "re-bc5cdr":  # this random model repeats learned9: the leak users report
        assert all(f"{prompt} learned9 learned9" in r["output"] for r in results)


def test_info_on_a_fairseq_checkpoint(checkpoints, capsys):
    ckpt = checkpoints["re-bc5cdr"]
    hf = seeded_hf_model(32, 2, 4, 64, POSITIONS, BASE_VOCAB + 9)
    for path in (ckpt, ckpt.parent):
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["format"] == "fairseq" and info["path"] == str(ckpt)
        assert info["architecture"] == "BioGptForCausalLM" and info["model_type"] == "biogpt"
        assert info["parameters"] == sum(p.numel() for p in hf.parameters())  # tied: once
        assert info["dtype"] == ["float32"]
        assert set(info["files"]) == {"checkpoint.pt", "dict.txt", "bpecodes"}
        assert info["fairseq_task"] == {
            "name": "language_modeling_prompt",
            "prompt_tokens": [f"learned{i}" for i in range(1, 10)],
            "max_source_positions": 640,
        }
    assert main(["info", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "format:       fairseq" in text
    assert "prompt: learned1 learned2" in text and "max_source_positions 640" in text


def test_info_errors_name_the_problem(checkpoints, tmp_path, capsys):
    two = tmp_path / "two"
    shutil.copytree(checkpoints["dc-hoc"].parent, two)
    shutil.copyfile(two / "checkpoint.pt", two / "checkpoint_avg.pt")
    assert main(["info", str(two)]) == 2
    assert "holds several fairseq checkpoints" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "no fairseq checkpoint at" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(two / "checkpoint.pt", lone / "checkpoint.pt")
    assert main(["info", str(lone)]) == 2
    assert "has no dict.txt" in capsys.readouterr().err
