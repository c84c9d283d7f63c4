"""Hub ids through a fake Hugging Face cache (the layout huggingface_hub writes), offline."""

from __future__ import annotations

import json
import logging
import shutil

import huggingface_hub
import numpy as np
import pytest
from _tiny_models import add_snapshot, run_cli, save_tiny_bert
from huggingface_hub import constants

from biomed_jax import CheckpointError, cli, from_pretrained, hub, loading
from biomed_jax.trees import flatten

REPO = "microsoft/BiomedNLP-BiomedBERT-tiny-uncased"
REV_A = "a" * 40
REV_B = "b" * 40


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return save_tiny_bert(root / "a", seed=0), save_tiny_bert(root / "b", seed=1)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, checkpoints):
    """An offline hub cache holding REPO at main (= REV_A) and REV_B; our cache in tmp_path."""
    cache = tmp_path / "hf" / "hub"
    add_snapshot(cache, REPO, REV_A, checkpoints[0], ref="main")
    add_snapshot(cache, REPO, REV_B, checkpoints[1])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("BIOMED_JAX_CACHE", str(tmp_path / "ours"))
    return cache


def assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)


def test_hub_id_converts_once_then_reads_our_cache(fake_hub, checkpoints, tmp_path, monkeypatch):
    reference = from_pretrained(checkpoints[0]).params
    first = from_pretrained(REPO)
    assert_same_params(first.params, reference)
    converted = list((tmp_path / "ours" / "converted").rglob("model.safetensors"))
    assert len(converted) == 1 and first.path == converted[0].parent
    assert REV_A in str(first.path) and (first.path / "vocab.txt").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "convert", no_conversion)
    again = from_pretrained(REPO, dtype=None)
    assert again.path == first.path
    assert_same_params(again.params, reference)


def test_revision_and_file_hashes_key_the_cache(fake_hub, checkpoints):
    a = from_pretrained(REPO)
    b = from_pretrained(REPO, revision=REV_B)
    assert a.path != b.path and REV_B in str(b.path)
    assert_same_params(b.params, from_pretrained(checkpoints[1]).params)
    assert hub.conversion_dir(hub.resolve(REPO), "BertForMaskedLM") == a.path
    assert hub.conversion_dir(hub.resolve(REPO), "BertModel") != a.path


def test_old_pubmedbert_ids_are_mapped(fake_hub, caplog):
    old = REPO.replace("BiomedBERT", "PubMedBERT")
    with caplog.at_level(logging.WARNING, logger="biomed_jax.hub"):
        source = hub.resolve(old)
    assert source.repo_id == REPO
    assert f"{old} was renamed on the hub; loading {REPO}" in caplog.text


def test_offline_without_cached_copy_is_one_clear_error(fake_hub):
    with pytest.raises(hub.ModelNotFoundError) as error:
        from_pretrained("microsoft/not-downloaded")
    message = str(error.value)
    assert "microsoft/not-downloaded" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download microsoft/not-downloaded" in message and str(fake_hub) in message
    with pytest.raises(
        hub.ModelNotFoundError, match="neither a local directory nor in the Hugging Face cache"
    ):
        from_pretrained(REPO, revision="c" * 40)


def test_snapshot_download_falls_back_to_pytorch_bin(monkeypatch, tmp_path, checkpoints):
    """A repo without safetensors: a second call fetches pytorch_model.bin only."""
    calls = []
    snapshot = tmp_path / "snap" / REV_A
    snapshot.mkdir(parents=True)
    shutil.copyfile(checkpoints[0] / "config.json", snapshot / "config.json")

    def fake_download(repo_id, *, revision, cache_dir, allow_patterns):
        calls.append((repo_id, revision, cache_dir, tuple(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    source = hub.resolve("org/name", revision="v1", cache_dir=tmp_path / "c")
    assert source == hub.Source(snapshot, "org/name")
    assert len(calls) == 2 and calls[0][:3] == ("org/name", "v1", tmp_path / "c")
    assert "*.safetensors" in calls[0][3] and "pytorch_model.bin" not in calls[0][3]
    assert "pytorch_model.bin" in calls[1][3] and "*.safetensors" not in calls[1][3]
    assert "config.json" in calls[0][3] and "vocab.txt" in calls[0][3]


def test_bad_names(tmp_path, checkpoints):
    with pytest.raises(ValueError, match="revision='x' applies to hub ids"):
        from_pretrained(checkpoints[0], revision="x")
    with pytest.raises(ValueError, match="is a file"):
        from_pretrained(checkpoints[0] / "config.json")
    with pytest.raises(hub.ModelNotFoundError, match="not a directory"):
        from_pretrained(tmp_path / "no" / "such" / "dir")


def test_corrupt_or_truncated_safetensors(tmp_path, checkpoints, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints[0], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated safetensors"):
        from_pretrained(broken)
    assert cli.main(["--no-compilation-cache", "info", str(broken)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err

    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"corrupt or truncated safetensors"):
        from_pretrained(broken)

    converted = loading.convert(checkpoints[0], tmp_path / "converted")
    data = (converted / "model.safetensors").read_bytes()
    (converted / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated safetensors"):
        from_pretrained(converted)


def test_cli_reads_hf_home_offline(tmp_path, checkpoints):
    """Subprocess: HF_HOME and HF_HUB_OFFLINE from the environment, hub id on the command line."""
    add_snapshot(tmp_path / "hf" / "hub", REPO, REV_A, checkpoints[0], ref="main")
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "BIOMED_JAX_CACHE": str(tmp_path / "ours"),
        "BIOMED_JAX_COMPILATION_CACHE": "off",
        "XLA_FLAGS": "",
    }
    done = run_cli("info", REPO, "--json", env=env)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["architecture"] == "BertForMaskedLM" and REV_A in info["path"]

    done = run_cli("info", "microsoft/absent-model", env=env)
    assert done.returncode == 2
    assert "HF_HUB_OFFLINE=1" in done.stderr and "Traceback" not in done.stderr
