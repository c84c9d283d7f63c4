"""`biomed-jax conformance --model` and `conformance.check`: any checkpoint against transformers,
live or replayed from a recorded golden without torch (conformance/model.py, golden.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import conformance
from biomed_jax import cli, convert
from biomed_jax.trees import flatten, unflatten
from conformance import corpus, golden, published, suite, tiny
from conformance.checkpoint import load_ours, locate
from conformance.live import live
from conformance.replay import replay

REPO = Path(__file__).resolve().parents[1]
TEXTS = corpus.pubmed_texts()[:8]
# Runs the CLI with torch and transformers unimportable; reports every attempt to import them.
BLOCKED_CLI = """
import sys
attempted = []
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            attempted.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, _Block())
from biomed_jax.cli import main
status = main(sys.argv[1:])
print("attempted imports:", attempted, file=sys.stderr)
sys.exit(status)
"""


def blocked_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`biomed-jax conformance ARGS` in a process where torch and transformers cannot import."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "BIOMED_JAX_COMPILATION_CACHE": "off"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, "conformance", "--quiet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny.save_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="module")
def tiny_biogpt(tmp_path_factory) -> Path:
    return tiny.save_biogpt(tmp_path_factory.mktemp("models") / "tiny-biogpt")


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory) -> Path:
    """A BertForSequenceClassification (3 labels, its own seeded head) with the tiny vocab."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("models") / "bert-classifier"
    path.mkdir()
    vocab = tiny.bert_vocab()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=len(vocab), num_labels=3, **tiny.SHAPE)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def fairseq_dir(tmp_path_factory) -> Path:
    from _fairseq_models import write_model_dir

    directory = tmp_path_factory.mktemp("models") / "fairseq"
    write_model_dir(directory, (32, 2, 4, 128, 64))
    return directory


@pytest.fixture(scope="module")
def bert_golden(tiny_bert, tmp_path_factory) -> Path:
    """A golden of tiny_bert on the default texts, float32 and bfloat16, through the CLI."""
    path = tmp_path_factory.mktemp("golden") / "tiny-bert.safetensors"
    args = ["--no-compilation-cache", "conformance", "--model", str(tiny_bert), "--quiet"]
    assert cli.main([*args, "--record", str(path)]) == 0
    return path


def test_row_projections_see_an_error_a_norm_misses():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 300))
    error = rng.standard_normal((5, 300))
    error -= (error * rows).sum(1, keepdims=True) / (rows * rows).sum(1, keepdims=True) * rows
    error *= 1e-3  # orthogonal to each row: its norm moves only at second order
    norm_change = np.abs(np.linalg.norm(rows + error, axis=1) - np.linalg.norm(rows, axis=1))
    sketch_change = np.abs(golden.project(rows + error) - golden.project(rows))
    assert norm_change.max() < 1e-5 < sketch_change.max()
    directions = golden.directions(300)
    assert directions.shape == (300, golden.PROJECTIONS)
    np.testing.assert_array_equal(np.abs(directions), 1 / np.sqrt(300))
    assert 0 < np.abs(directions[:, 0] @ directions[:, 1]) < 0.3  # two directions, not one
    np.testing.assert_array_equal(golden.directions.__wrapped__(300), directions)  # seeded by F


def _failed(rows) -> set[tuple[str, str]]:
    return {(r.suite, r.name) for r in rows if not r.passed}


def test_every_output_of_a_bert_on_both_paddings_and_dtypes(tiny_bert, bert_golden):
    recorded = golden.read(bert_golden)  # recorded by the fixture's live run (which passed)
    report = conformance.run(tiny_bert, dtypes=("float32",), sides=("left",), generation=False)
    assert report.rows and not _failed(report.rows)
    outputs = {"hidden_states[0]", "hidden_states[1]", "hidden_states[2]", "attentions[0]",
               "attentions[1]", "logits"}  # fmt: skip
    sketches = {f"{name} (row projections)" for name in outputs}  # every row, judged too
    assert {r.name for r in report.rows} == outputs | sketches | {"all outputs finite"}
    positions = int(sum(b["attention_mask"].sum() for b in recorded.batches("left")))
    logits = next(r for r in report.rows if r.name == "logits")
    assert logits.shape == (positions, len(tiny.bert_vocab()))  # every token of the 48 texts
    assert logits.ours_err is not None and logits.ref_err > 0 and logits.ratio < 3
    # the report names the checkpoint and what ran
    digest = hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()
    assert report.checkpoint["files"] == {"model.safetensors": digest}
    assert report.checkpoint["format"] == "huggingface"
    assert {"torch", "transformers", "jax", "flax", "biomed-jax"} <= set(report.versions)
    # the recording covered both sides and both dtypes, with the texts and hashes
    header = recorded.header
    assert header["texts"] == corpus.pubmed_texts() and set(header["batches"]) == {"right", "left"}
    assert header["checkpoint"]["files"] == {"model.safetensors": digest}
    entry = next(e for e in header["forward"] if e["name"] == "logits" and e["side"] == "left")
    assert set(entry["ref_err"]) == {"float32", "bfloat16"}
    assert entry["ref_err"]["float32"] == pytest.approx(logits.ref_err)


@pytest.mark.parametrize("layout", ["huggingface", "biomed_jax"])
def test_a_bert_classifier_in_either_layout(bert_classifier, tmp_path, layout):
    path = bert_classifier if layout == "huggingface" else convert(bert_classifier, tmp_path / "c")
    report = conformance.run(path, TEXTS, dtypes=("float32",))
    assert report.checkpoint["format"] == layout
    assert report.checkpoint["architecture"] == "BertForSequenceClassification"
    assert report.rows and not _failed(report.rows)
    logits = [r for r in report.rows if r.name == "logits"]
    assert [r.shape for r in logits] == [(len(TEXTS), 3)] * 2  # per text, both paddings


def test_a_biogpt_generates_token_for_token(tiny_biogpt):
    rows = conformance.check(tiny_biogpt, TEXTS, dtypes=("float32",))
    assert rows and not _failed(rows)
    generated = {r.suite.split("/")[2]: r for r in rows if r.name == "sequences"}
    assert set(generated) == {"generate-greedy", "generate-beam5"}
    assert all(r.shape == (len(TEXTS),) and r.max_abs_diff == 0 for r in generated.values())
    sides = {r.suite.split("/")[2] for r in rows if r.name == "hidden_states[2]"}
    assert sides == {"right-pad", "left-pad"}


@pytest.mark.parametrize("pick", ["directory", "file"])
def test_a_fairseq_checkpoint(fairseq_dir, pick):
    path = fairseq_dir if pick == "directory" else fairseq_dir / "checkpoint.pt"
    report = conformance.run(path, TEXTS[:4], dtypes=("float32",))
    assert report.checkpoint["format"] == "fairseq"
    assert list(report.checkpoint["files"]) == ["checkpoint.pt"]
    assert report.rows and not _failed(report.rows)
    assert any(r.name == "sequences" for r in report.rows)


def _with_changed_matrix(src: Path, dst: Path, key: str, scale: float = 1e-3) -> Path:
    """A copy of an HF checkpoint with seeded noise added to one weight matrix."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    rng = np.random.default_rng(0)
    w = tensors[key]
    tensors[key] = (w + scale * w.std() * rng.standard_normal(w.shape)).astype(w.dtype)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_record_then_replay_without_torch(tiny_bert, bert_golden, tmp_path):
    done = blocked_cli("--model", str(tiny_bert), "--golden", str(bert_golden), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attempted imports: []" in done.stderr
    assert "0 failed" in done.stdout and "parameters as recorded" in done.stdout
    assert not list(tmp_path.iterdir())  # no report file unless asked

    # one weight matrix changed: the replay runs, fails (1) and names the parameter and outputs
    key = "bert.encoder.layer.1.intermediate.dense.weight"
    changed = _with_changed_matrix(tiny_bert, tmp_path / "changed", key)
    junit = tmp_path / "report.xml"
    done = blocked_cli(
        "--model", str(changed), "--golden", str(bert_golden), "--junit", str(junit),
        "--failures-only", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "attempted imports: []" in done.stderr
    lines = done.stdout.splitlines()
    failing = [line.split() for line in lines if line.rstrip().endswith("FAIL")]
    names = {f[1] for f in failing}
    assert {"parameters", "hidden_states[2]", "logits"} <= names, done.stdout
    assert "bert/encoder/layer_1/mlp/fc_in/kernel" in done.stdout
    assert "hidden_states[1]" not in names  # before the changed layer: unchanged

    # the JUnit report: one test case per row, failures where the rows failed
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(root.get("tests")) == len(cases) > 50
    assert int(root.get("failures")) == len(failures) == len(failing)
    assert {c.get("name") for c in failures} >= {"hidden_states[2]", "logits"}
    assert all(c.get("classname").startswith("changed.BertForMaskedLM.") for c in cases)

    # a golden of other weights (same structure, another seed) is refused: status 2
    other = tiny.save_bert(tmp_path / "other", seed=1)
    done = blocked_cli("--model", str(other), "--golden", str(bert_golden), cwd=tmp_path)
    assert done.returncode == 2
    assert "recorded from other weights" in done.stderr and "record a golden" in done.stderr


def test_replay_fails_where_the_live_check_fails(tiny_bert, tmp_path):
    """A seeded perturbation of one weight matrix of ours (not of the reference's)."""
    checkpoint = locate(tiny_bert)
    settings = conformance.Settings(dtypes=("float32",), generation=False)
    base = load_ours(checkpoint)
    path = tmp_path / "g.safetensors"
    live(checkpoint, TEXTS, settings, path, base)
    recorded = golden.read(path)
    flat = flatten(base.params)
    key = "bert/encoder/layer_1/attention/value/kernel"
    w = np.asarray(flat[key])
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)

    def failed(rows) -> set[tuple[str, str]]:
        skip = {"parameters as recorded"}
        return {
            (r.suite.split("/")[2], r.name.removesuffix(" (row projections)"))
            for r in rows
            if not r.passed and r.name not in skip
        }

    for scale in (1e-8, 1e-4, 1e-2):
        params = dict(flat, **{key: w + np.float32(scale * w.std()) * noise})
        ours = dataclasses.replace(base, params=unflatten(params))
        live_rows = live(checkpoint, TEXTS, settings, None, ours).rows
        replay_rows = replay(checkpoint, recorded, None, ours).rows
        assert failed(replay_rows) == failed(live_rows), scale
        if scale > 1e-6:
            names = {name for _, name in failed(live_rows)}
            assert names == {"hidden_states[2]", "logits"}, (scale, names)
        else:
            assert not failed(live_rows)


def test_golden_errors_name_the_file_and_the_problem(tiny_bert, bert_golden, tmp_path):
    not_golden = tmp_path / "weights.safetensors"
    shutil.copyfile(tiny_bert / "model.safetensors", not_golden)
    with pytest.raises(golden.GoldenError, match="without a golden header"):
        golden.read(not_golden)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(golden.GoldenError, match="not a safetensors file"):
        golden.read(junk)
    with pytest.raises(golden.GoldenError, match="no golden file"):
        golden.read(tmp_path / "missing.safetensors")
    recorded = golden.read(bert_golden)
    bad = {**recorded.header, "batches": {"right": "6"}, "forward": [{"name": "logits"}]}
    golden.write(tmp_path / "bad.safetensors", bad, {"x": np.zeros(1)})
    with pytest.raises(golden.GoldenError, match=r"malformed golden header: batches\['right'\]"):
        golden.read(tmp_path / "bad.safetensors")
    with pytest.raises(golden.GoldenError, match=r"forward\[0\] lacks or mistypes \['side'"):
        golden.read(tmp_path / "bad.safetensors")
    with pytest.raises(golden.GoldenError, match=r"recorded from another model \(model_type"):
        golden.check_structure(recorded, {"model_type": "biogpt"})
    only32 = golden.Golden(
        {**recorded.header, "settings": {**recorded.header["settings"], "dtypes": ["float32"]}},
        recorded.arrays,
        "only32",
    )
    with pytest.raises(golden.GoldenError, match=r"has no \['bfloat16'\] reference"):
        conformance.run(tiny_bert, golden=only32, dtypes=("bfloat16",))
    with pytest.raises(ValueError, match="only dtypes may be given"):
        conformance.run(tiny_bert, golden=recorded, batch_size=4)


def test_assert_conforms_for_a_users_test_suite(tiny_bert, bert_golden, tmp_path):
    rows = conformance.assert_conforms(tiny_bert, golden=bert_golden, dtypes=("float32",))
    assert rows and all(r.passed for r in rows)
    key = "bert.encoder.layer.1.output.dense.weight"
    changed = _with_changed_matrix(tiny_bert, tmp_path / "changed", key)
    with pytest.raises(AssertionError, match=r"conformance rows failed(.|\n)*hidden_states\[2\]"):
        conformance.assert_conforms(changed, golden=bert_golden, dtypes=("float32",))


def test_without_torch_conformance_exits_2_naming_the_extra(tiny_bert, tmp_path):
    for args in (["--fast"], ["--model", str(tiny_bert)]):
        done = blocked_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "pip install '.[conformance]'" in done.stderr
        assert "--golden" in done.stderr  # what runs without torch


def test_usage_errors_exit_2(tiny_bert, bert_golden, capsys):
    base = ["--no-compilation-cache", "conformance"]
    for args in (
        ["--model", str(tiny_bert), "--fast"],
        ["--record", "g.safetensors"],
        ["--model", str(tiny_bert), "--record", "a", "--golden", str(bert_golden)],
        ["--model", "a", "--model", "b", "--record", "g"],
        ["--golden", str(bert_golden), "--texts", "t.txt"],
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(base + args)
        assert e.value.code == 2, args
    assert cli.main([*base, "--model", "/no/such/model"]) == 2
    assert "/no/such/model is not a directory" in capsys.readouterr().err
    assert cli.main([*base, "--golden", "/no/such/golden.safetensors"]) == 2
    assert "no golden file at /no/such/golden.safetensors" in capsys.readouterr().err


def test_the_suite_writes_reports_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert suite.main(["--only", "published", "--fast", "--quiet"]) == 0
    assert not list(tmp_path.iterdir())
    assert "skipped: --fast" in capsys.readouterr().out
    args = ["--json", "r.json", "--junit", "j.xml"]
    assert suite.main(["--only", "published", "--fast", "--quiet", *args]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "complete"
    case = ET.parse(tmp_path / "j.xml").getroot().find("./testsuite/testcase")
    assert case.find("skipped").get("message").startswith("--fast")


def _expectations(model_dir: Path) -> published.Expectations:
    """transformers' outputs on a tiny BioGPT, as transformers' tests publish them for the real
    one: a logits slice, beam search, batched left-padded greedy (pad = eos) and each alone."""
    import torch
    import transformers

    hf = transformers.BioGptForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.BioGptTokenizer(
        str(model_dir / "vocab.json"), str(model_dir / "merges.txt")
    )
    ids = tokenizer(TEXTS[0])["input_ids"][:6]
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, :3, :3].numpy()
    first, second = (tokenizer(t)["input_ids"][:n] for t, n in ((TEXTS[2], 9), (TEXTS[4], 4)))
    padding = len(first) - len(second)
    batch_ids = [first, [2] * padding + second]
    batch_mask = [[1] * len(first), [0] * padding + [1] * len(second)]

    def texts(prompt_ids, mask, skip, **settings):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor(prompt_ids), attention_mask=torch.tensor(mask), do_sample=False,
                **settings,
            )  # fmt: skip
        return tokenizer.batch_decode(out, skip_special_tokens=skip)

    beam = {"min_length": 30, "max_length": 40, "num_beams": 5, "early_stopping": True}
    greedy = {"max_length": 20, "pad_token_id": 2}
    generations = (
        published.Generation("beam", [ids], [[1] * 6], beam, texts([ids], [[1] * 6], False, **beam), False, "beam"),
        published.Generation("batch", batch_ids, batch_mask, greedy, texts(batch_ids, batch_mask, True, **greedy), True, "batch"),
        published.Generation("alone", [second], [[1] * 4], {"max_length": 20 - padding}, texts([second], [[1] * 4], True, max_length=20 - padding), True, "alone"),
    )  # fmt: skip
    from conformance.checkpoint import structure

    return published.Expectations(
        str(model_dir),
        structure(load_ours(locate(model_dir)).config),
        [ids],
        logits.tolist(),
        rtol=1e-4,
        atol=1e-4,
        generations=generations,
        source="transformers on a tiny seeded BioGPT",
    )


def test_published_values_run_as_a_golden(tiny_biogpt, tmp_path):
    """The machinery of the shipped microsoft/biogpt golden, on a checkpoint built here."""
    expect = _expectations(tiny_biogpt)
    path = published.build(expect, tmp_path / "published.safetensors")
    rows = conformance.check(tiny_biogpt, golden=path)
    assert rows and not _failed(rows)
    assert [r.name for r in rows if "generate" in r.suite] == ["decoded text"] * 3
    logits = next(r for r in rows if r.name == "logits")
    assert logits.shape == (3, 3) and logits.ours_err < 1e-4 and "published" in logits.note

    off = [row[:] for row in expect.logits_slice]
    off[2][1] += 3e-3  # beyond 1e-4 + 1e-4 x |value|
    wrong = dataclasses.replace(expect, logits_slice=off)
    gens = list(expect.generations)
    gens[1] = dataclasses.replace(gens[1], texts=[gens[1].texts[0], gens[1].texts[1] + " x"])
    wrong = dataclasses.replace(wrong, generations=tuple(gens))
    rows = conformance.check(tiny_biogpt, golden=published.build(wrong, tmp_path / "w"))
    assert {(r.suite.split("/")[2], r.name) for r in rows if not r.passed} == {
        ("right-pad", "logits"),
        ("generate-batch", "decoded text"),
    }


def test_the_shipped_biogpt_golden(tmp_path):
    """conformance/data's golden is `published.BIOGPT` written by `published.build`."""
    built = golden.read(published.build(published.BIOGPT, tmp_path / "g.safetensors"))
    shipped = golden.read(published.GOLDEN)
    assert shipped.header == built.header
    assert set(shipped.arrays) == set(built.arrays)
    for key, value in built.arrays.items():
        np.testing.assert_array_equal(shipped.arrays[key], value)
    assert shipped.header["reference"].endswith("tests/models/biogpt/test_modeling_biogpt.py")
    np.testing.assert_array_equal(
        shipped.arrays["forward/right/logits/truth"][0], [-9.5236, -9.8918, 10.4557]
    )


def test_the_shipped_biogpt_prompts_are_transformers_tokens(shared_data):
    import transformers

    tok = transformers.BioGptTokenizer(
        str(shared_data / "biogpt" / "vocab.json"), str(shared_data / "biogpt" / "merges.txt")
    )
    beam, batch, *_ = published.BIOGPT.generations
    assert beam.input_ids == [tok("COVID-19 is")["input_ids"]] == published.BIOGPT.logits_ids
    tok.padding_side, tok.pad_token = "left", tok.eos_token
    enc = tok(["Hello, my dog is a little", "Today, I"], padding=True)
    assert batch.input_ids == enc["input_ids"] and batch.attention_mask == enc["attention_mask"]


def test_published_check_skips_with_the_reason_or_refuses_a_stand_in(tmp_path):
    rows = published.check_local(cache_dir=tmp_path / "empty-cache")
    assert [r.passed for r in rows] == [True]
    assert rows[0].name.startswith("skipped: microsoft/biogpt is not in")
    from _tiny_models import add_snapshot

    cache = tmp_path / "hub"
    add_snapshot(cache, "microsoft/biogpt", "2" * 40, tiny.save_biogpt(tmp_path / "b"), "main")
    rows = published.check_local(cache_dir=cache)  # a tiny stand-in, not the published model
    assert len(rows) == 1 and not rows[0].passed
    assert "recorded from another model" in rows[0].note and "vocab_size" in rows[0].note


@pytest.mark.slow  # full size: BERT-base about a minute and 2.5 GB; BioGPT-347M minutes and 4.5 GB
@pytest.mark.parametrize("name", ["biomedbert-base", "biogpt-347m"])
def test_full_size_checkpoints_record_and_replay(name, tmp_path):
    from conformance import bert, biogpt

    if name == "biomedbert-base":
        path = tiny.save_bert(tmp_path / name, **bert.BASE, initializer_range=0.02)
    else:
        path = tiny.save_biogpt(tmp_path / name, **biogpt.FULL, initializer_range=0.02)
    recorded = tmp_path / "golden.safetensors"
    live = conformance.run(path, TEXTS, record=recorded, dtypes=("float32",))
    assert live.rows and not _failed(live.rows)
    rows = conformance.check(path, golden=recorded)
    assert rows and not _failed(rows)
    assert (name == "biogpt-347m") == any(r.name == "sequences" for r in rows)
