"""The errors biomed_jax raises for bad files and settings (the bottom of the house: imports nothing).

`shown(value)` is how a value from a file or an argument appears in a message: its repr, capped,
so no file can make an error message itself huge (a 1 MB string listed 100,000 times); `cut`
caps a name the same way.
"""

from __future__ import annotations

import reprlib

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 100
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 6
_SHOWN.maxlevel = 3


def cut(text: str, limit: int = 200) -> str:
    """`text` for a message, its middle elided past `limit` characters."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def shown(value: object) -> str:
    """`value`'s repr for an error message: strings and other values cut to ~100 characters,
    containers to their first 6 items, 3 levels deep."""
    return _SHOWN.repr(value)


class ConfigError(ValueError):
    """A config.json (or a config argument) asks for something invalid or not implemented."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, ambiguous, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for something other than tensors and plain data (code, foreign objects)."""


class OutputError(OSError):
    """An output could not be written (disk full, read-only, no permission, not ours to
    overwrite); says what to do. `OutputError(errno, message, path)` prints just the message."""

    def __str__(self) -> str:
        return self.strerror if self.filename is not None and self.strerror else super().__str__()


class OutputBusyError(OutputError):
    """Another process (or thread) is writing the same output: its lock file names it."""
