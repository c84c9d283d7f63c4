"""`biomed-jax` end to end: subprocesses on a tiny saved random HF BERT, plus in-process checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_models import SENTENCES, run_cli, save_tiny_biogpt

from biomed_jax import cli, from_pretrained, load_params
from biomed_jax.pipelines import attention, fill_mask, generate_text
from biomed_jax.trees import flatten


@pytest.fixture
def cli_env(tmp_path):
    """Hermetic caches for a CLI subprocess; a single CPU device."""
    return {
        "BIOMED_JAX_COMPILATION_CACHE": str(tmp_path / "xla"),
        "BIOMED_JAX_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "XLA_FLAGS": "",
    }


def test_convert_and_info_subprocess(hf_bert, tmp_path, cli_env):
    import torch
    import transformers

    dst = tmp_path / "converted"
    done = run_cli("convert", str(hf_bert), str(dst), env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (dst / "model.safetensors").is_file() and (dst / "vocab.txt").is_file()
    ours = flatten(load_params(dst))
    in_memory = flatten(from_pretrained(hf_bert).params)
    assert ours.keys() == in_memory.keys()
    for key, value in ours.items():
        np.testing.assert_array_equal(value, in_memory[key], err_msg=key)

    done = run_cli("info", str(dst), "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    reference = transformers.BertForMaskedLM.from_pretrained(hf_bert)
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert info["architecture"] == "BertForMaskedLM"
    assert info["format"] == "biomed_jax"
    assert info["dtype"] == [str(torch.float32).removeprefix("torch.")]
    assert info["files"]["model.safetensors"] == (dst / "model.safetensors").stat().st_size


def test_info_text_and_errors(hf_bert, tmp_path, capsys):
    assert cli.main(["--no-compilation-cache", "info", str(hf_bert)]) == 0
    out = capsys.readouterr().out
    assert "BertForMaskedLM" in out and "huggingface" in out and "model.safetensors" in out

    assert cli.main(["--no-compilation-cache", "info", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err

    same = cli.main(["--no-compilation-cache", "convert", str(hf_bert), str(hf_bert)])
    assert same == 2
    assert "must differ" in capsys.readouterr().err


def test_conformance_forwards_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--no-compilation-cache", "conformance", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "biomed-jax conformance" in out and "--only" in out and "--fast" in out


def test_compilation_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOMED_JAX_COMPILATION_CACHE", "off")
    assert cli.compilation_cache_dir() is None
    monkeypatch.setenv("BIOMED_JAX_COMPILATION_CACHE", str(tmp_path / "x"))
    assert cli.compilation_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("BIOMED_JAX_COMPILATION_CACHE")
    monkeypatch.setenv("BIOMED_JAX_CACHE", str(tmp_path / "ours"))
    assert cli.compilation_cache_dir() == tmp_path / "ours" / "xla"


@pytest.mark.slow
def test_fill_mask_subprocess_reuses_compilation_cache(hf_bert, tmp_path, cli_env):
    """The second run finds every compiled program in the persistent cache and writes none."""
    args = ("fill-mask", "The patient was [MASK] with aspirin.", "--model", str(hf_bert), "--json")
    first = run_cli(*args, env=cli_env)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in (tmp_path / "xla").iterdir())
    assert entries, "nothing was written to the compilation cache"
    second = run_cli(*args, env=cli_env)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == entries
    got, want = json.loads(second.stdout), fill_mask(args[1], model=str(hf_bert))
    assert json.loads(first.stdout) == got
    assert [c["token"] for c in got] == [c["token"] for c in want]
    np.testing.assert_allclose([c["score"] for c in got], [c["score"] for c in want], atol=1e-5)


def test_attention_and_generate_commands(hf_bert, tmp_path, capsys):
    png = tmp_path / "maps.png"
    args = ["--no-compilation-cache", "attention", SENTENCES[0], "--model", str(hf_bert)]
    assert cli.main([*args, "--layers", "1", "--heads", "0,3", "--png", str(png), "--json"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    want = attention(SENTENCES[0], model=str(hf_bert), layers=1, heads=[0, 3])
    assert printed["tokens"] == want["tokens"] and printed["heads"] == [0, 3]
    np.testing.assert_allclose(printed["attentions"], want["attentions"], atol=1e-5)
    assert cli.main(args) == 0
    assert "layer 0 head 0: [CLS]->" in capsys.readouterr().out

    biogpt = str(save_tiny_biogpt(tmp_path / "biogpt"))
    prompt = "Aspirin inhibits"
    argv = [
        "--no-compilation-cache",
        "generate",
        prompt,
        "--model",
        biogpt,
        "--max-new-tokens",
        "5",
    ]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == generate_text(prompt, max_new_tokens=5, model=biogpt) + "\n"


def test_embed_distributed_and_device_flags_reach_jax(monkeypatch, tmp_path, capsys):
    """--coordinator/--num-processes/--process-id go to jax.distributed.initialize (before the
    pipeline runs), --devices N picks the first N local devices; bad values exit with code 2."""
    import jax

    import biomed_jax.pipelines

    events = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: events.append(("initialize", kwargs))
    )

    def fake_embed_file(input_path, output_dir, **kwargs):
        events.append(("embed_file", kwargs["devices"]))
        return {"num_documents": 3, "num_shards": 1, "process_index": 2, "first_document": 6}

    monkeypatch.setattr(biomed_jax.pipelines, "embed_file", fake_embed_file)
    base = ["--no-compilation-cache", "embed", str(tmp_path / "in.txt"), str(tmp_path / "out")]
    flags = ["--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "2"]
    assert cli.main([*base, *flags, "--devices", "3"]) == 0
    assert events == [
        (
            "initialize",
            {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2},
        ),
        ("embed_file", jax.local_devices()[:3]),
    ]
    assert "3 documents in 1 shards (process 2, from document 6)" in capsys.readouterr().out

    events.clear()
    assert cli.main([*base, "--distributed"]) == 0  # TPU pods, SLURM: everything auto-detected
    assert events == [("initialize", {}), ("embed_file", None)]
    events.clear()
    assert cli.main(base) == 0  # one host: no initialize, all local devices
    assert events == [("embed_file", None)]

    events.clear()
    assert cli.main([*base, "--num-processes", "4", "--process-id", "4"]) == 2
    assert "--process-id must be in 0..4-1, got 4" in capsys.readouterr().err
    assert cli.main([*base, "--num-processes", "0"]) == 2
    assert "--num-processes must be positive" in capsys.readouterr().err
    assert cli.main([*base, "--devices", "9"]) == 2
    assert "--devices must be in 1..8 (local devices), got 9" in capsys.readouterr().err
    assert events == []
