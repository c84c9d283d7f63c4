"""What a new user meets first: the base install without extras, the shipped conformance data,
the conformance summary, JSONL input without --field, task-head seeds, task outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _tiny_models import SENTENCES

from biomed_jax import cli, from_pretrained
from biomed_jax.trees import flatten
from conformance import corpus, suite

REPO = Path(__file__).resolve().parents[1]


def test_shipped_vocab_subset_tokenizes_like_the_full_vocabulary(shared_data):
    import transformers

    full = transformers.BioGptTokenizer(
        str(shared_data / "biogpt" / "vocab.json"), str(shared_data / "biogpt" / "merges.txt")
    )
    sub = corpus.biogpt_tokenizer()
    texts = [t for a in corpus.pubmed_articles() for t in (a["title"], a["sentence"])]
    assert len(texts) == 2 * corpus.COUNT
    for text in texts + list(corpus.DOC_TEXTS):
        assert sub(text)["input_ids"] == full(text)["input_ids"], text
    assert len(sub) < len(full) // 20  # a subset, not the whole vocabulary


def test_conformance_reads_nothing_beside_the_package():
    """No path to ../shared (it used to read ../shared/data/biogpt/vocab.json)."""
    for file in (REPO / "conformance").glob("*.py"):
        source = file.read_text()
        assert '"shared"' not in source and "parents[1].parent" not in source, file.name


def _row(suite_, name, diff, tol, passed=True, **extra):
    return {"suite": suite_, "name": name, "shape": [2], "max_abs_diff": diff,
            "tolerance": tol, "passed": passed, "note": "", **extra}  # fmt: skip


def test_summary_picks_the_worst_row_per_model_and_dtype():
    rows = [
        _row("base/BertModel/float32", "hidden_states[1]", 2e-6, 1e-5),
        _row("base/BertForMaskedLM/float32", "logits", 6e-6, 1e-5),
        _row("base/BertModel/float32", "jit compilations", 2, 2),  # a count at its bound
        _row("base/BertModel/bfloat16", "pooler", 0.01, 0.05),
        _row("base/BertModel/bfloat16", "hidden_states[2]", 0.2, 0.15, passed=False),
        _row("gen/greedy/fp32", "sequences", 0, 0),
        _row("gen/beam/fp32", "sequences", 3, 0, passed=False),
        # judged against float64: the figure is ours_err, the bound 3x the reference's own error
        _row("new/x/float32", "logits", 9e-6, 3e-6, ours_err=9e-7, ref_err=1e-6, ratio=0.9),
        _row("new/x/float32", "hidden", 1e-6, 3e-6, ours_err=2.7e-6, ref_err=1e-6, ratio=2.7),
        # decided by the floor (both errors tiny): no ratio in the summary
        _row("new/x/float32", "pooler", 1e-7, 1e-6, ours_err=5e-7, ref_err=1e-8, ratio=50.0),
    ]
    lines = suite.summary(rows).splitlines()
    table = {tuple(line.split()[:2]): line.split() for line in lines[2:]}
    assert set(table) == {("base", "float32"), ("base", "bfloat16"), ("gen", "fp32"),
                          ("new", "float32")}  # fmt: skip
    used, ratio = 7, 8  # columns
    assert table["base", "float32"][2:6] == ["3", "0", "logits", "6e-06"]
    assert table["base", "float32"][used] == "60%" and table["base", "float32"][ratio] == "-"
    assert table["base", "bfloat16"][3:5] == ["1", "hidden_states[2]"]
    assert table["base", "bfloat16"][used] == "133%"
    assert table["gen", "fp32"][used] == "over" and table["gen", "fp32"][3] == "1"
    assert table["new", "float32"][4:6] == ["hidden", "2.7e-06"]
    assert table["new", "float32"][used] == "90%" and table["new", "float32"][ratio] == "2.70"


def test_suite_writes_each_group_and_keeps_crashed_cases(tmp_path, capsys):
    from conformance.report import Row

    def ok():
        return [Row("small/x/float32", "logits", (2,), 1e-6, 1e-5, True)]

    def crash():
        raise RuntimeError("boom")

    seen = []

    def after_first_group():
        seen.append(json.loads((tmp_path / "r.json").read_text()))
        return ok()

    cases = [("g1", ("a", ok)), ("g1", ("b", crash)), ("g2", ("c", after_first_group))]
    report = suite.run(cases, {}, str(tmp_path / "r.json"), progress=False)
    assert seen[0]["status"] == "running" and list(seen[0]["groups"]) == ["g1"]
    assert report["groups"]["g1"]["errors"] == ["b: RuntimeError: boom"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["status"] == "complete" and [r["group"] for r in saved["rows"]] == ["g1", "g2"]
    out = capsys.readouterr().out
    assert "== g1: 2 cases" in out and "ERROR b: RuntimeError: boom" in out


def test_suite_loads_its_checkpoints_without_tokenizer_warnings(hf_bert, tmp_path, caplog):
    path = tmp_path / "no_tokenizer"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(hf_bert / name, path / name)

    def load():
        from_pretrained(path)
        return []

    loader_log = logging.getLogger("biomed_jax.loading")
    with caplog.at_level(logging.WARNING, logger="biomed_jax.loading"):
        suite.run([("g", ("load", load))], {}, None, progress=False)
        assert "no tokenizer files" not in caplog.text
        assert loader_log.level == logging.WARNING  # restored after the run
        from_pretrained(path)  # outside the suite the warning is back
    assert "no tokenizer files (vocab.txt missing)" in caplog.text


def test_embed_jsonl_without_field_is_an_error_naming_the_fields(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"pmid": "1", "title": "Aspirin.", "abstract": "Fever."}\n')
    out = tmp_path / "out"
    assert cli.main(["--no-compilation-cache", "embed", str(docs), str(out)]) == 2
    err = capsys.readouterr().err
    assert "pass --field NAME" in err and "fields in its first line: pmid, title, abstract" in err
    assert not out.exists()
    lines = tmp_path / "docs.txt"  # JSON lines under another name: the same error
    lines.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match=r"docs.txt is JSONL.*fields in its first line: text"):
        cli.check_embed_input(lines, None)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    with pytest.raises(ValueError, match="its first line is not a JSON object"):
        cli.check_embed_input(broken, None)
    plain = tmp_path / "plain.txt"
    plain.write_text("Aspirin {is} used.\n")
    cli.check_embed_input(plain, None)  # text: no error
    cli.check_embed_input(docs, "title")


def test_fresh_task_heads_follow_the_seed(hf_bert):
    def load(seed):
        model = from_pretrained(
            hf_bert, architecture="BertForSequenceClassification", num_labels=3, seed=seed
        )
        return flatten(model.params)

    a, b, again = load(0), load(1), load(1)
    head = [k for k in a if k.startswith(("classifier", "bert/pooler"))]  # not in the MLM file
    assert head
    for key in a:
        if key in head:
            assert not np.array_equal(a[key], b[key]) or not a[key].any(), key
            np.testing.assert_array_equal(b[key], again[key])
        else:  # from the checkpoint
            np.testing.assert_array_equal(a[key], b[key])


def test_task_outputs_say_where_the_hidden_states_are(hf_bert):
    mlm = from_pretrained(hf_bert)  # config.json lists BertForMaskedLM
    batch = mlm.tokenizer(SENTENCES[:2], padding=True, return_tensors="np")
    out = mlm(**batch, output_hidden_states=True)
    with pytest.raises(AttributeError, match=r"output_hidden_states=True and read hidden_states"):
        out.last_hidden_state  # noqa: B018
    encoder = from_pretrained(hf_bert, architecture="BertModel")
    np.testing.assert_allclose(
        encoder(**batch).last_hidden_state, out.hidden_states[-1], rtol=0, atol=1e-6
    )


BASE_SCRIPT = """
import json, subprocess, sys
from pathlib import Path
import numpy as np
model_dir, bin_dir, golden = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
import biomed_jax
model = biomed_jax.from_pretrained(model_dir, architecture="BertModel")
batch = model.tokenizer(["Aspirin for fever.", "Tumor growth in mice."], padding=True,
                        return_tensors="np")
hidden = np.asarray(model(**batch).last_hidden_state)
print(json.dumps({"hidden": hidden.tolist(), "ids": batch["input_ids"].tolist()}))
from conformance import corpus
assert corpus.BIOGPT_VOCAB.is_file() and len(corpus.pubmed_articles()) == corpus.COUNT
from biomed_jax.examples import SAMPLE_DATA
assert len(list(SAMPLE_DATA.glob("*/*.jsonl"))) == 5  # the fine-tuning samples are installed
errors = {}
try:
    biomed_jax.BioGptTokenizer(corpus.BIOGPT_VOCAB, corpus.BIOGPT_MERGES)("Aspirin.")
except ModuleNotFoundError as e:
    errors["biogpt"] = str(e)
import biomed_jax.train  # fine-tuning needs nothing beyond the base install
for name, args in {
    "plot": ["attention", "Aspirin.", "--png", "maps.png", "--model", "/no/such/model"],
    "generate": ["generate", "Aspirin", "--model", "/no/such/model"],
    "conformance": ["conformance", "--fast"],
    "replay": ["conformance", "--model", model_dir, "--golden", golden, "--quiet"],
}.items():
    done = subprocess.run([str(bin_dir / "biomed-jax"), *args], capture_output=True, text=True)
    errors[name] = f"{done.returncode}: {done.stderr.strip()}"
errors["torch imported"] = "torch" in sys.modules or "transformers" in sys.modules
print(json.dumps(errors))
"""


@contextlib.contextmanager
def fresh_venv(path: Path, with_pip: bool = True):
    """A new virtual environment at `path`, removed when the block ends: the base install weighs
    about 850 MB, and pytest keeps the temporary directories of the last three runs."""
    flags = [] if with_pip else ["--without-pip"]
    subprocess.run([sys.executable, "-m", "venv", *flags, str(path)], check=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_fresh_venv_is_removed_after_use(tmp_path):
    with fresh_venv(tmp_path / "venv", with_pip=False) as venv:
        assert (venv / "bin" / "python").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def venv(tmp_path):
    with fresh_venv(tmp_path / "venv") as path:
        yield path


@pytest.mark.slow  # builds a venv from the local package index: about a minute, more under load
def test_base_install_without_extras(hf_bert, tmp_path, venv):
    golden = tmp_path / "golden.safetensors"  # recorded here, with torch; replayed without
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n")
    record = ["--model", str(hf_bert), "--texts", str(texts), "--record", str(golden), "--quiet"]
    assert cli.main(["--no-compilation-cache", "conformance", *record]) == 0
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(REPO)], check=True, timeout=1200)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"jax", "flax", "optax", "safetensors", "huggingface-hub"} <= installed
    assert not installed & {"sacremoses", "matplotlib", "torch", "transformers"}

    script = tmp_path / "base.py"
    script.write_text(textwrap.dedent(BASE_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env |= {"BIOMED_JAX_COMPILATION_CACHE": "off", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), str(script), str(hf_bert), str(bin_dir), str(golden)],
        cwd=tmp_path,  # not the checkout: the installed package is imported
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    first, errors = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])

    import transformers

    ref = transformers.BertModel.from_pretrained(hf_bert).eval()
    import torch

    with torch.no_grad():
        ids = torch.tensor(first["ids"])
        want = ref(ids, attention_mask=(ids != 0).long()).last_hidden_state.numpy()
    mask = np.array(first["ids"]) != 0  # [PAD] is id 0
    np.testing.assert_allclose(np.array(first["hidden"])[mask], want[mask], rtol=0, atol=1e-5)
    assert (
        "pip install sacremoses (in a checkout of biomed_jax: pip install '.[biogpt]')"
        in (errors["biogpt"])
    )
    # before loading the (non-existent) model: the extra is named, not the missing directory
    assert errors["plot"].startswith("2:") and "pip install matplotlib" in errors["plot"]
    assert "pip install sacremoses" in errors["generate"]
    assert errors["conformance"].startswith("2:")  # a missing extra: usage status, not failure
    assert "pip install '.[conformance]'" in errors["conformance"]
    assert errors["replay"].startswith("0:"), errors["replay"]  # the golden needs no torch
    assert errors["torch imported"] is False
