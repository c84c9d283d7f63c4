"""Ctrl-C stops a test run within seconds, even while the main thread is inside native code.

Why a plain Ctrl-C could leave `pytest` running: Python raises KeyboardInterrupt only when the main
thread returns to the interpreter. Inside a long XLA compile or execution, or a torch kernel (full-size
models: minutes on a loaded CPU), that does not happen; and after it, pytest's teardown and summary
(garbage collection of large JAX heaps) can take tens of seconds more. Here a watchdog thread hears
SIGINT through `signal.set_wakeup_fd` (those native calls release the GIL, so it runs): it gives the
normal KeyboardInterrupt GRACE_S seconds, then ends the process (exit status 130) after killing its
child processes (CLI subprocesses, the distributed embed test's workers); a second Ctrl-C ends it
at once. Installed by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

GRACE_S = 10.0


def install(config, grace_s: float = GRACE_S) -> bool:
    """Start the watchdog for pytest's `config`; False (and nothing changed) where SIGINT is not
    Python's default."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False  # ignored (a background job) or someone else's handler
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    if signal.set_wakeup_fd(write_fd) != -1:  # another wakeup fd was set: leave it
        signal.set_wakeup_fd(-1)
        return False
    threading.Thread(
        target=_watch, args=(read_fd, grace_s, config), name="sigint-watchdog", daemon=True
    ).start()
    return True


def _watch(read_fd: int, grace_s: float, config) -> None:
    heard = False
    while True:
        if signal.SIGINT not in os.read(read_fd, 64):
            continue
        if heard:
            _stop("second interrupt", config)
        heard = True
        timer = threading.Timer(
            grace_s, _stop, args=(f"still running {grace_s:.0f} s after the interrupt", config)
        )
        timer.daemon = True
        timer.start()


def _stop(why: str, config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # pytest holds fd 2 while a test runs: say it on the real one
        capture.suspend_global_capture()
    os.write(2, f"\ninterrupted ({why}): stopping the test run now\n".encode())
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sys.stderr.flush()
    os._exit(130)


def _descendants(root: int) -> list[int]:
    """Child processes of `root`, recursively (Linux /proc; none found elsewhere)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
