"""Outputs are owned: concurrent writers never mix, and nothing that is not ours is touched.

`biomed_jax.files.owned` is the one mechanism: a flock'd lock file beside each output recording
its writer, temporaries named after the output, removed only by the next claim of that output.
Tested here through every writer: `convert`, `embed` (`embed_file`), training checkpoints
(`save_train_state`) and conformance reports (`write_report`), in processes racing each other
(two long-lived workers started on the same instant, 20 rounds), a process holding a claim, and
look-alike files planted beside every destination (docs/security.md, "Outputs").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_models import save_tiny_bert

from biomed_jax import convert, load_params
from biomed_jax.errors import OutputBusyError, OutputError
from biomed_jax.files import atomic_write_text, owned
from biomed_jax.pipelines import embed_file
from biomed_jax.pipelines.stream import read_shards
from biomed_jax.trees import flatten

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
ENV.pop("XLA_FLAGS", None)
HOST = socket.gethostname()
DOCS = "\n".join(f"aspirin fever tumor growth {i}" for i in range(8)) + "\n"
BUSY = "is being written by another biomed_jax process (pid "

# A worker runs CLI commands sent as JSON lines on stdin, each from a given wall-clock instant,
# and answers one JSON line: exit code and stderr. Writes are slowed (a slow disk), so two
# workers started together overlap for most of a run.
WORKER = """
import contextlib, io, json, sys, time
import biomed_jax.saving as saving
import biomed_jax.pipelines.stream as stream
from biomed_jax import cli

def slow(real):
    def call(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)
    return call

stream._write_shard = slow(stream._write_shard)
saving.save_params = slow(saving.save_params)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    while time.time() < job["at"]:
        time.sleep(0.001)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(job["argv"])
    print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
"""


class Worker:
    def __init__(self):
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (the worker's stderr, until close)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=ENV,
        )
        line = self.proc.stdout.readline()
        self.log.seek(0)
        assert line, f"the worker died at start:\n{self.log.read()}"
        assert json.loads(line) == {"ready": True}

    def send(self, argv: list[str], at: float) -> None:
        self.proc.stdin.write(json.dumps({"argv": argv, "at": at}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the worker died"
        return json.loads(line)

    def run(self, argv: list[str]) -> dict:
        self.send(argv, 0)
        return self.result()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def workers():
    pair = [Worker(), Worker()]
    yield pair
    for worker in pair:
        worker.close()


def _race(workers, argvs) -> list[dict]:
    at = time.time() + 0.3
    for worker, argv in zip(workers, argvs):
        worker.send(argv, at)
    return [worker.result() for worker in workers]


def _embed_argv(docs: Path, out: Path, model: Path, pooling: str) -> list[str]:
    return ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(model),
            "--pooling", pooling, "--shard-size", "2", "--batch-size", "2", "--max-length", "16",
            "--quiet"]  # fmt: skip


@pytest.mark.slow  # ~40 s on a loaded 2-core machine
def test_two_embeds_into_one_directory_never_mix(workers, hf_bert, tmp_path):
    """20 rounds of a cls run and a mean run started together into one new directory: one
    finishes, the other is refused in one line (busy, or other settings when it came second),
    and the directory holds exactly the winner's vectors, nothing else."""
    docs = tmp_path / "docs.txt"
    docs.write_text(DOCS)
    reference = {}
    for worker, pooling in zip(workers, ("cls", "mean")):
        out = tmp_path / f"ref-{pooling}"
        assert worker.run(_embed_argv(docs, out, hf_bert, pooling))["code"] == 0
        reference[pooling] = read_shards(out)
    assert not np.array_equal(reference["cls"], reference["mean"])
    busy = 0
    for round_ in range(20):
        out = tmp_path / f"out{round_}"
        results = _race(workers, [_embed_argv(docs, out, hf_bert, p) for p in ("cls", "mean")])
        codes = [r["code"] for r in results]
        assert sorted(codes) == [0, 2], results
        winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
        err = results[loser]["err"]
        assert err.count("\n") == 1 and err.startswith("biomed-jax embed: error: "), err
        assert BUSY in err or "holds a run with other settings (pooling)" in err, err
        busy += BUSY in err
        got = read_shards(out)
        np.testing.assert_array_equal(got, reference[("cls", "mean")[winner]])
        names = sorted(p.name for p in out.iterdir())
        assert names == ["manifest.json", *(f"shard-0000{k}.npy" for k in range(4))]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert busy > 0  # the runs did overlap


def _params(path: Path) -> dict:
    return {k: np.asarray(v) for k, v in flatten(load_params(path)).items()}


@pytest.mark.slow  # ~30 s on a loaded 2-core machine
def test_two_converts_into_one_destination_never_mix(workers, hf_bert, tmp_path):
    """20 rounds of two converts (two different models) started together into one destination:
    each finishes or is refused in one line naming the owner; the destination is always one
    model, whole; nothing else is left beside it."""
    other = save_tiny_bert(tmp_path / "other", seed=1)
    sources = [hf_bert, other]
    references = [_params(convert(src, tmp_path / f"ref{i}")) for i, src in enumerate(sources)]
    assert any(not np.array_equal(references[0][k], references[1][k]) for k in references[0])
    parent = tmp_path / "parent"
    parent.mkdir()
    dst = parent / "out"
    busy = 0
    for _ in range(20):
        argvs = [
            ["--no-compilation-cache", "convert", str(s), str(dst), "--quiet"] for s in sources
        ]
        results = _race(workers, argvs)
        assert 0 in [r["code"] for r in results], results
        for r in results:
            if r["code"] != 0:
                assert r["code"] == 2 and r["err"].count("\n") == 1, r
                assert r["err"].startswith("biomed-jax convert: error: ") and BUSY in r["err"], r
                assert f"on host {HOST}" in r["err"], r
                busy += 1
        got = _params(dst)
        assert any(
            all(np.array_equal(got[k], ref[k]) for k in ref) and got.keys() == ref.keys()
            for ref in references
        )
        assert sorted(p.name for p in dst.iterdir()) == sorted(
            p.name for p in (tmp_path / "ref0").iterdir()
        )
        assert [p.name for p in parent.iterdir()] == ["out"]
    assert busy > 0  # the converts did overlap


# ---------------------------------------------------------------------------------------------
# A held claim: refused at once, naming the owner; or waited on


HOLDER = """
import sys, time
from biomed_jax.files import owned
with owned(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """hold(target): another process holds the claim on `target` until the test ends."""
    procs = []

    def hold(target: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_held_output_is_refused_naming_its_owner(holder, hf_bert, tmp_path, capsys):
    from biomed_jax.cli import main

    dst = tmp_path / "out"
    proc = holder(dst)
    with pytest.raises(OutputBusyError, match=f"pid {proc.pid} on host {HOST}"):
        convert(hf_bert, dst)
    assert not dst.exists()
    assert main(["--no-compilation-cache", "convert", str(hf_bert), str(dst), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and BUSY in err and "Traceback" not in err

    out = tmp_path / "embedded"
    docs = tmp_path / "docs.txt"
    docs.write_text(DOCS)
    holder(out / "manifest.json")  # an embed run owns its manifest, and so its directory
    with pytest.raises(OutputBusyError, match=r"manifest\.json is being written by another"):
        embed_file(docs, out, model=str(hf_bert), progress=False, max_length=16)
    assert sorted(p.name for p in out.iterdir()) == [".manifest.json.biomed_jax-lock"]


def test_a_claim_is_waited_on_and_taken_once_free(tmp_path):
    target = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout.readline() == "held\n"
    threading.Timer(1.0, proc.stdin.close).start()
    start = time.monotonic()
    atomic_write_text(target, "mine")  # a single file waits (FILE_WAIT_S) for the other writer
    assert time.monotonic() - start >= 0.9 and target.read_text() == "mine"
    proc.wait(timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_another_thread_is_refused_and_the_owner_reenters(tmp_path):
    target = tmp_path / "out"
    errors = []
    with owned(target) as claim:
        with owned(target) as again:  # the same thread: re-entered
            assert again is claim
        thread = threading.Thread(target=lambda: _try_claim(target, errors))
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], OutputBusyError)
    assert f"pid {os.getpid()} on host {HOST}" in str(errors[0])
    assert list(tmp_path.iterdir()) == []


def _try_claim(target: Path, errors: list) -> None:
    try:
        with owned(target):
            pass
    except OutputBusyError as e:
        errors.append(e)


# ---------------------------------------------------------------------------------------------
# Look-alikes beside every destination survive every command


def _plant(directory: Path, name: str) -> dict[Path, str]:
    """Hidden files and directories named like temporaries of `name` (old and other schemes),
    with content, in `directory`: {file: content}."""
    dead = 4_000_000  # no such pid
    planted = {}
    files = [
        f".{name}.{HOST}-{dead}-abc.tmp",
        f".{name}.tmp",
        f".notes.{HOST}-{dead}-x.tmp",
        f".{name}.biomed_jax-backup",
        f".model.safetensors.{HOST}-{dead}-q.tmp",
    ]
    dirs = [
        f".photos.vm-{dead}-2019",
        f".{name}.new-{HOST}-{dead}-abc",
        f".{name}.old-{HOST}-{dead}-abc",
        f".{name}.biomed_jax-newer",
    ]
    for file in files:
        planted[directory / file] = f"user file {file}"
    for d in dirs:
        planted[directory / d / "photo.jpg"] = f"user photo in {d}"
    for path, content in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return planted


def _survived(planted: dict[Path, str]) -> None:
    for path, content in planted.items():
        assert path.read_text() == content, path


def test_look_alikes_beside_every_destination_survive(hf_bert, tmp_path, monkeypatch):
    from biomed_jax.cli import main
    from biomed_jax.train.checkpoint import save_train_state
    from conformance.suite import write_report

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    planted = _plant(home, "out")
    planted |= _plant(home / "runs", "ckpt.safetensors")
    planted |= _plant(home / "reports", "report.json")
    argv = ["--no-compilation-cache", "convert", str(hf_bert), str(home / "out"), "--quiet"]
    for _ in range(2):  # a new destination, then the replacement of our own
        assert main(argv) == 0
    docs = home / "docs.txt"
    docs.write_text(DOCS)
    out = home / "embedded"
    embed = ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(hf_bert),
             "--shard-size", "2", "--max-length", "16", "--quiet"]  # fmt: skip
    planted |= _plant(home, "embedded")
    assert main(embed) == 0
    planted |= _plant(out, "manifest.json") | _plant(out, "shard-00000.npy")  # inside, too
    (out / "shard-00001.npy").unlink()
    assert main(embed) == 0  # a resume writes into the directory beside them
    state = {"params": {"w": jnp.ones((2, 3))}, "step": jnp.asarray(3)}
    for _ in range(2):
        save_train_state(home / "runs" / "ckpt.safetensors", state)
        write_report(str(home / "reports" / "report.json"), {"status": "passed"})
    _survived(planted)
    shown = {p.name for p in home.iterdir() if not p.name.startswith(".")}
    assert shown == {"out", "docs.txt", "embedded", "runs", "reports"}
    assert not [p for p in home.rglob("*biomed_jax-lock")]  # every claim was released
    assert not [p for p in home.rglob("*.biomed_jax-tmp")]


def test_a_temporary_no_lock_file_vouches_for_is_refused_not_removed(hf_bert, tmp_path):
    """`.out.biomed_jax-new` without a lock file of ours is somebody else's: convert says so and
    removes nothing; a foreign file at the lock's name is refused the same way."""
    stray = tmp_path / ".out.biomed_jax-new"
    stray.mkdir()
    (stray / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"\.out\.biomed_jax-new exists, but no biomed_jax lock"):
        convert(hf_bert, tmp_path / "out")
    assert (stray / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [stray.name]
    stray.rename(tmp_path / "kept")
    lock = tmp_path / ".out.biomed_jax-lock"
    lock.write_text("my notes")
    with pytest.raises(OutputError, match="is not a biomed_jax lock file"):
        convert(hf_bert, tmp_path / "out")
    assert lock.read_text() == "my notes" and not (tmp_path / "out").exists()


def test_convert_into_a_symlink_replaces_where_it_points(hf_bert, tmp_path):
    real = tmp_path / "disk" / "bert"
    real.mkdir(parents=True)
    link = tmp_path / "models"
    link.symlink_to(real)
    for _ in range(2):  # into the empty directory, then over our own output
        assert convert(hf_bert, link) == link
        assert link.is_symlink() and link.resolve() == real.resolve()
        assert (real / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "models"]
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["bert"]  # no .old-* left
    dangling = tmp_path / "later"
    dangling.symlink_to(tmp_path / "disk" / "new")
    convert(hf_bert, dangling)
    assert (tmp_path / "disk" / "new" / "model.safetensors").is_file()
    to_file = tmp_path / "to-file"
    (tmp_path / "file.txt").write_text("x")
    to_file.symlink_to(tmp_path / "file.txt")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        convert(hf_bert, to_file)
    assert (tmp_path / "file.txt").read_text() == "x"


def test_a_writer_killed_between_the_two_renames_gets_its_old_output_back(tmp_path):
    """replace_dir renames the old output aside, then the new one in: a kill between the two
    leaves `-old` (complete) and `-new`; the next claim puts `-old` back and removes `-new`."""
    out = tmp_path / "out"
    (tmp_path / ".out.biomed_jax-old").mkdir()
    (tmp_path / ".out.biomed_jax-old" / "model.safetensors").write_text("the previous model")
    (tmp_path / ".out.biomed_jax-new").mkdir()
    (tmp_path / ".out.biomed_jax-new" / "model.safetensors").write_text("the new one, unsure")
    record = {"library": "biomed_jax", "host": HOST, "pid": 4_000_000, "target": "out"}
    (tmp_path / ".out.biomed_jax-lock").write_text(json.dumps(record))  # its flock died with it
    with owned(out):
        assert (out / "model.safetensors").read_text() == "the previous model"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.biomed_jax-lock", "out"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
