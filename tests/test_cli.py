"""`biomed-jax` end to end: subprocesses on a tiny saved random HF BERT, plus in-process checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_models import run_cli, save_tiny_bert

from biomed_jax import cli, from_pretrained, load_params
from biomed_jax.weights.io import flatten


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("hf_bert"))


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
