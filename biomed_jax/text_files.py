"""Reading a checkpoint's small text files (config.json, tokenizer files) with errors naming them.

Every failure is a ConfigError that names the file and, where there is one, the line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from biomed_jax.errors import ConfigError

MAX_TEXT_BYTES = 64 << 20  # far above any real config or vocabulary (BioGPT's vocab.json: ~1 MB)


def read_text(file: str | Path) -> str:
    """The UTF-8 text of `file`, at most MAX_TEXT_BYTES."""
    file = Path(file)
    if file.exists() and not file.is_file():  # a FIFO or device would block or never end
        raise ConfigError(f"{file}: not a regular file")
    if file.stat().st_size > MAX_TEXT_BYTES:
        raise ConfigError(
            f"{file}: larger than {MAX_TEXT_BYTES} bytes; not a tokenizer or config file"
        )
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{file}: line {line}: not UTF-8 text (byte {e.start})") from e


def read_lines(file: str | Path) -> list[str]:
    """The lines of `file` with their newlines, as `open(file).readlines()` splits them."""
    return io.StringIO(read_text(file), newline=None).readlines()


def read_json(file: str | Path) -> Any:
    """The JSON value in `file`."""
    text = read_text(file)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    except (ValueError, RecursionError) as e:  # e.g. an integer of too many digits, deep nesting
        raise ConfigError(f"{file}: unreadable JSON ({type(e).__name__}: {e})") from e


def read_json_object(file: str | Path) -> dict[str, Any]:
    """The JSON object (dict) in `file`."""
    data = read_json(file)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object, got a {type(data).__name__}")
    return data
