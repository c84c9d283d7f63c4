"""Ctrl-C stops runs promptly: the test suite (tests/_interrupt.py) and `biomed-jax conformance`
(the JSON report keeps the groups that finished)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# A test stuck where KeyboardInterrupt cannot reach it: SIGINT is blocked in the main thread
# (as if it sat in a long native call), so only the watchdog thread hears it.
STUCK = """
import signal, time
def test_stuck():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    open("started", "w").close()
    time.sleep(120)
"""


# Python keeps SIGINT ignored when started with it ignored (a background CI job): the child puts
# the default handler back itself (no preexec_fn: forking a multithreaded JAX process is unsafe).
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "


def _start(code: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python -c DEFAULT_SIGINT + code ARGS`: `code` reads its arguments from sys.argv[1:]."""
    return subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT + code, *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before {what}:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.1)


def test_ctrl_c_stops_a_test_stuck_in_native_code(tmp_path):
    (tmp_path / "test_stuck.py").write_text(STUCK)
    env = {"PYTHONPATH": str(TESTS)}
    args = ["-q", "-p", "no:cacheprovider", "-p", "_plugin", "test_stuck.py"]
    (tmp_path / "_plugin.py").write_text(
        "import _interrupt\ndef pytest_configure(config):\n    _interrupt.install(config, 2)\n"
    )
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    process = _start("import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", args, tmp_path, env)
    _wait_for((tmp_path / "started").exists, process, 120, "test start")
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted (still running 2 s after the interrupt)" in err
    assert time.monotonic() - sent < 30


@pytest.mark.slow  # ~100 s on a loaded 2-core CPU: the bert group must finish first
def test_sigint_stops_conformance_and_keeps_finished_groups(tmp_path):
    report = tmp_path / "report.json"
    args = ["conformance", "--fast", "--only", "bert", "--only", "biogpt", "--dtype", "float32",
            "--json", str(report)]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "BIOMED_JAX_COMPILATION_CACHE": "off"}
    cli = "import sys; from biomed_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    process = _start(cli, args, tmp_path, env)

    def bert_done() -> bool:
        try:
            return "bert" in json.loads(report.read_text())["groups"]
        except (OSError, ValueError):  # not written yet
            return False

    _wait_for(bert_done, process, 400, "finished bert group")
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert time.monotonic() - sent < 60  # at the latest when the running XLA/torch call returns
    saved = json.loads(report.read_text())
    assert saved["status"] == "interrupted"
    assert list(saved["groups"]) == ["bert"]  # biogpt had started, not finished
    rows = saved["rows"]
    assert rows and all(r["group"] == "bert" and r["passed"] for r in rows)
    assert "== bert:" in out and "interrupted: 1/2 groups" in out


# Python drops a KeyboardInterrupt raised inside a garbage-collection callback (it only prints
# it); JAX registers one, so a Ctrl-C can land there. Run apart: this process's SIGINT is the
# watchdog's (tests/_interrupt.py) or ignored (a background CI job).
DROPPED = """
import gc, signal, sys
from biomed_jax import interrupts

def ctrl_c_in_gc(phase, info):
    if phase == "start":
        gc.callbacks.remove(ctrl_c_in_gc)
        signal.raise_signal(signal.SIGINT)

with interrupts.remembered():
    gc.callbacks.append(ctrl_c_in_gc)
    gc.collect()
    print("ran on", flush=True)  # Python dropped the KeyboardInterrupt
    try:
        interrupts.check()
    except KeyboardInterrupt:
        sys.exit(130)
interrupts.check()  # outside the block: nothing remembered
"""


def test_a_ctrl_c_python_drops_is_raised_at_the_next_check(tmp_path):
    process = _start(DROPPED, [], tmp_path, {"PYTHONPATH": str(REPO)})
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert out == "ran on\n"
    assert "KeyboardInterrupt" in err  # what Python printed as it dropped it
