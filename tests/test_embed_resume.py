"""`embed_file` resumes never mix results: edited input, swapped weights, changed settings,
failed first attempts, full and read-only disks (docs/runtime-inputs.md, "Long jobs")."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import subprocess
import warnings

import jax
import numpy as np
import pytest

from biomed_jax.cli import main as cli_main
from biomed_jax.errors import OutputError
from biomed_jax.loading import from_pretrained
from biomed_jax.pipelines import embed_file
from biomed_jax.pipelines import stream as STREAM
from biomed_jax.pipelines.stream import read_shards

WORDS = ["aspirin", "fever", "tumor", "growth", "mice", "protein", "gene", "cells"]
DOCS = [f"{WORDS[i % 8]} {WORDS[(3 * i) % 8]} {WORDS[(5 * i + 1) % 8]}" for i in range(12)]
OPTS = {"shard_size": 4, "progress": False, "batch_size": 4, "max_length": 16}


@pytest.fixture(scope="module")
def ours(hf_bert):
    return from_pretrained(hf_bert)


@pytest.fixture
def written(monkeypatch):
    """Names of the shard files written, in order."""
    names: list[str] = []
    real = STREAM._write_shard
    monkeypatch.setattr(STREAM, "_write_shard", lambda p, *a: names.append(p.name) or real(p, *a))
    return names


def write_docs(path, docs):
    path.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    return path


def fresh(ours, docs, tmp_path, name):
    embed_file(write_docs(tmp_path / f"{name}.txt", docs), tmp_path / name, model=ours, **OPTS)
    return read_shards(tmp_path / name)


def test_edit_at_the_same_size_recomputes_only_its_shard(ours, tmp_path, written):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out = tmp_path / "out"
    embed_file(docs, out, model=ours, **OPTS)
    assert written == [f"shard-0000{k}.npy" for k in range(3)]
    edited = list(DOCS)
    edited[5] = edited[5].replace("e", "a")  # same byte size: the old check saw no change
    assert len(edited[5]) == len(DOCS[5]) and edited[5] != DOCS[5]
    size = docs.stat().st_size
    write_docs(docs, edited)
    assert docs.stat().st_size == size
    written.clear()
    with pytest.warns(UserWarning, match=r"input changed under 1 finished shard\(s\).*shard-00001"):
        embed_file(docs, out, model=ours, **OPTS)
    assert written == ["shard-00001.npy"]
    got = read_shards(out)
    np.testing.assert_array_equal(got, fresh(ours, edited, tmp_path, "edited"))
    assert not np.allclose(got[4:8], fresh(ours, DOCS, tmp_path, "original")[4:8])

    # a shorter input: its shards are redone, the shard past the end is removed
    write_docs(docs, edited[:6])
    with pytest.warns(UserWarning, match="shard-00001"):  # 4 documents before, 2 now
        embed_file(docs, out, model=ours, **OPTS)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.npy", "shard-00001.npy"]
    np.testing.assert_array_equal(read_shards(out), fresh(ours, edited[:6], tmp_path, "short"))


def _kill_after(monkeypatch, shards: int) -> None:
    """Make `embed_file` die (as a kill would) after writing `shards` shards."""
    real, count = STREAM._write_shard, [0]

    def write(path, *args):
        if count[0] == shards:
            raise KeyboardInterrupt
        count[0] += 1
        real(path, *args)

    monkeypatch.setattr(STREAM, "_write_shard", write)


def test_swapped_weights_or_settings_are_refused_after_a_kill(ours, tmp_path, monkeypatch):
    """Issue 18: a kill, new weights, a resume gave rows from two models. Now it is refused."""
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _kill_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            embed_file(docs, out, model=ours, **OPTS)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = dataclasses.replace(ours, params=jax.tree.map(lambda x: x * 1.01, ours.params))
    with pytest.raises(
        ValueError, match=r"other settings \(model_fingerprint: the model's weights"
    ):
        embed_file(docs, out, model=other, **OPTS)
    for changed in ({"pooling": "mean"}, {"max_length": 12}, {"layers": 0}, {"shard_size": 3}):
        with pytest.raises(ValueError, match=f"other settings \\({next(iter(changed))}"):
            embed_file(docs, out, model=ours, **{**OPTS, **changed})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    embed_file(docs, out, model=ours, **OPTS)  # the same model and settings resume
    np.testing.assert_array_equal(read_shards(out), fresh(ours, DOCS, tmp_path, "whole"))


def test_failed_first_attempts_do_not_block_the_corrected_rerun(ours, tmp_path, monkeypatch):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "aspirin"}\n{"text": "fever"\n{"text": "mice"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        embed_file(bad, out, field="text", model=ours, **OPTS)
    with pytest.raises(ValueError, match="max_length=99 exceeds the model's 40 positions"):
        embed_file(bad, out, field="text", model=ours, **{**OPTS, "max_length": 99})
    assert not out.exists()  # both refused before anything was written
    bad.write_text('{"text": "aspirin"}\n{"text": "fever"}\n{"text": "mice"}\n')
    # a run that dies before its first shard leaves a provisional manifest: other settings may
    # replace it, since no shard of it can mix with theirs
    with monkeypatch.context() as patch:
        _kill_after(patch, 0)
        with pytest.raises(KeyboardInterrupt):
            embed_file(bad, out, field="text", model=ours, **{**OPTS, "pooling": "mean"})
    assert json.loads((out / "manifest.json").read_text())["shards"] == []
    manifest = embed_file(bad, out, field="text", model=ours, **OPTS)
    assert manifest["num_documents"] == 3 and manifest["settings"]["pooling"] == "cls"


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A small tmpfs at `path` (skip when mounting is not allowed here)."""
    path.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_disk_full_keeps_finished_shards_and_resumes(ours, tmp_path, capsys):
    many = DOCS * 4  # 12 shards of 4 vectors [4, 32] float32: 640 bytes each as .npy
    docs = write_docs(tmp_path / "docs.txt", many)
    with tmpfs(tmp_path / "disk", "128k") as disk:  # a 4 KiB page per file, lock files included
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (128 * 1024 - 4 * 4096))  # leave room for about 2 shards
        out = disk / "out"
        with pytest.raises(OutputError) as info:
            embed_file(docs, out, model=ours, **OPTS)
        message = str(info.value)
        assert f"cannot write {out}" in message and "No space left on device (ENOSPC)" in message
        assert "free space" in message and "rerun the same command to resume" in message
        done = sorted(out.glob("shard-*.npy"))
        assert 1 <= len(done) < 12 and not list(out.glob(".*.tmp"))
        want = fresh(ours, many, tmp_path, "whole")
        for path in done:  # the finished shards are whole and right
            k = int(path.stem.split("-")[1])
            np.testing.assert_array_equal(np.load(path), want[4 * k : 4 * k + 4])

        # the CLI says the same in one line, no traceback
        args = ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(ours.path)]
        assert cli_main([*args, "--shard-size", "4", "--batch-size", "4", "--max-length", "16",
                         "--quiet"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ENOSPC" in err and "Traceback" not in err

        filler.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing stale: no recomputation warning
            embed_file(docs, out, model=ours, **OPTS)
        np.testing.assert_array_equal(read_shards(out), want)


def test_read_only_output_is_one_clear_error(ours, tmp_path):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    with tmpfs(tmp_path / "ro", "64k") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\); the file system"):
            embed_file(docs, disk / "out", model=ours, **OPTS)


def test_permission_error_is_one_clear_error(ours, tmp_path, monkeypatch):
    """Root ignores file modes, so the refusal is injected where the manifest is written."""
    docs = write_docs(tmp_path / "docs.txt", DOCS)

    def refuse(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(STREAM, "atomic_write_text", refuse)
    with pytest.raises(OutputError, match=r"manifest.json: Permission denied \(EACCES\); no perm"):
        embed_file(docs, tmp_path / "out", model=ours, **OPTS)


def test_another_compute_dtype_or_policy_is_refused(ours, hf_bert, tmp_path):
    """Issue 30: a bfloat16 run, an edited input, a float32 rerun: rows 0-7 bf16, 8-11 f32.
    The fingerprint covers the compute dtype and the numerics policy, so the rerun is refused
    and names them."""
    import jax.numpy as jnp

    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out = tmp_path / "out"
    half = from_pretrained(hf_bert, dtype=jnp.bfloat16)
    manifest = embed_file(docs, out, model=half, **OPTS)
    assert manifest["settings"]["numerics"]["dtype"] == "bfloat16"
    edited = list(DOCS)
    edited[9] = "protein"
    write_docs(docs, edited)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for other in (ours, from_pretrained(hf_bert, dtype=jnp.bfloat16, policy="exact")):
        with pytest.raises(ValueError, match=r"other settings \(model_fingerprint, numerics"):
            embed_file(docs, out, model=other, **OPTS)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.warns(UserWarning, match="shard-00002"):
        embed_file(docs, out, model=half, **OPTS)  # the same numerics resume
    np.testing.assert_array_equal(read_shards(out), fresh(half, edited, tmp_path, "half"))


def test_a_shard_file_swapped_under_its_manifest_is_recomputed(ours, tmp_path):
    """Each shard records its settings hash and its file's hash: a file replaced by another
    run's (same documents, other pooling) is never kept by a resume."""
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out, other = tmp_path / "out", tmp_path / "other"
    manifest = embed_file(docs, out, model=ours, **OPTS)
    record = manifest["shards"][1]
    assert record.keys() == {"documents", "sha256", "computed_with", "file_sha256"}
    embed_file(docs, other, model=ours, **{**OPTS, "pooling": "mean"})
    (out / "shard-00001.npy").write_bytes((other / "shard-00001.npy").read_bytes())
    with pytest.warns(UserWarning, match=r"the files changed of 1 finished shard\(s\).*00001"):
        embed_file(docs, out, model=ours, **OPTS)
    np.testing.assert_array_equal(read_shards(out), fresh(ours, DOCS, tmp_path, "cls"))


def test_user_files_without_a_manifest_are_never_overwritten(ours, tmp_path, capsys):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out = tmp_path / "mine"
    out.mkdir()
    np.save(out / "shard-00000.npy", np.arange(3))
    mine = (out / "shard-00000.npy").read_bytes()
    with pytest.raises(OutputError, match=r"holds no embed_file manifest.*'shard-00000\.npy'"):
        embed_file(docs, out, model=ours, **OPTS)
    assert (out / "shard-00000.npy").read_bytes() == mine
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.npy"]
    args = ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(ours.path)]
    assert cli_main([*args, "--quiet", "--max-length", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard-00000.npy" in err and "Traceback" not in err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"todo\.txt"):
        embed_file(docs, tmp_path / "notes", model=ours, **OPTS)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"settings": {}}', 'no "format"'),
        (b"[1, 2]", 'no "format"'),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b'{"format": "biomed_jax.embed_file", "settings": {"format": "npy"}}', "no list of shard"),
    ],
)
def test_a_foreign_manifest_is_a_clear_error(ours, tmp_path, capsys, content, problem):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(content)
    message = f"manifest.json is not an embed_file manifest of this biomed_jax \\({problem}"
    for call in (lambda: embed_file(docs, out, model=ours, **OPTS), lambda: read_shards(out)):
        with pytest.raises(ValueError, match=message):
            call()
    assert (out / "manifest.json").read_bytes() == content
    args = ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(ours.path)]
    assert cli_main([*args, "--quiet", "--max-length", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err and "Traceback" not in err


def test_one_line_rule_documents_are_lines_as_wc_counts_them(ours, tmp_path):
    r"""A bare \r is text; \r\n ends a line like \n: as many rows as `wc -l` counts, and the rule
    is recorded in the manifest."""
    from biomed_jax.pipelines import embed
    from biomed_jax.pipelines.stream import LINE_RULE

    docs = tmp_path / "docs.txt"
    docs.write_bytes(b"aspirin\rfever\ntumor growth\r\nmice\n")
    assert docs.read_bytes().count(b"\n") == 3  # wc -l
    manifest = embed_file(docs, tmp_path / "out", model=ours, **OPTS)
    assert manifest["num_documents"] == 3 and manifest["settings"]["line_rule"] == LINE_RULE
    want = embed(["aspirin\rfever", "tumor growth", "mice"], model=ours, max_length=16)
    np.testing.assert_array_equal(read_shards(tmp_path / "out"), want)


def test_non_utf8_input_names_the_file_and_line(ours, tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_bytes(b"aspirin\nfever\ntum\xffor\n")
    with pytest.raises(ValueError, match=r"docs\.txt:3: not UTF-8 text \(byte 4 of the line"):
        embed_file(docs, tmp_path / "out", model=ours, **OPTS)
    assert not (tmp_path / "out").exists()
    args = ["--no-compilation-cache", "embed", str(docs), str(tmp_path / "out")]
    assert cli_main([*args, "--model", str(ours.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "docs.txt:3: not UTF-8" in err
