"""Ctrl-C that is never lost: remembered, and raised again at the next safe point.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. Inside a
garbage-collection callback (JAX registers one) or a `__del__`, Python prints that exception and
drops it, and the run goes on as if Ctrl-C had never been pressed. Within `remembered()` the
handler raises KeyboardInterrupt as Python's does and also records that it was heard; long loops
call `check()` between their steps (a case, a batch), which raises it again if it was dropped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_heard = False


def _on_sigint(signum: int, frame: object) -> None:
    global _heard
    _heard = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """Remember every Ctrl-C within the block (for `check`). Nothing changes where SIGINT is not
    Python's default handler (ignored in a background job, or the caller's own) or off the main
    thread."""
    global _heard
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _heard = False  # the next block starts unheard


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was heard within `remembered()`: between the steps of a
    long loop, so an interrupt Python dropped still stops it."""
    if _heard:
        raise KeyboardInterrupt
