"""A tokenizer's files, read and checked before a tokenizer is built.

tokenizer_config.json and special_tokens_map.json are read as HF reads them (the second updates
the first); the fields we use are type-checked up front and every bad one is listed in one
ConfigError naming its file. Unknown fields are left alone, as HF does.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from biomed_jax.errors import ConfigError
from biomed_jax.text_files import read_json_object

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _is_token(v: Any) -> bool:
    """A special token: a non-empty string or a serialized AddedToken {"content": ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return isinstance(v, str) and v != ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_length(v: Any) -> bool:
    """model_max_length: a positive int; HF writes 'no limit' as ~1e30 (an int or a float)."""
    return (_is_int(v) and v > 0) or (isinstance(v, float) and v > 1e20)


def _is_added_tokens(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and re.fullmatch(r"[0-9]{1,10}", k) and _is_token(t)
        for k, t in v.items()
    )


_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        name: (lambda v: isinstance(v, bool), "true or false")
        for name in ("do_lower_case", "tokenize_chinese_chars", "clean_up_tokenization_spaces")
    },
    "strip_accents": (lambda v: isinstance(v, bool), "true, false or null"),
    "never_split": (
        lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
        "a list of strings or null",
    ),
    **{
        name: (lambda v: _is_token(v), "a non-empty string or an AddedToken object")
        for name in (
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
            "bos_token",
            "eos_token",
        )
    },
    "model_max_length": (_is_length, "a positive integer"),
    **{
        name: (lambda v: v in ("right", "left"), "'right' or 'left'")
        for name in ("padding_side", "truncation_side")
    },
    "added_tokens_decoder": (
        _is_added_tokens,
        'an object {"id": {"content": token, ...}}',
    ),
    "additional_special_tokens": (
        lambda v: isinstance(v, list) and all(_is_token(t) for t in v),
        "a list of tokens",
    ),
}


def read_tokenizer_config(directory: Path) -> dict[str, Any]:
    """tokenizer_config.json updated by special_tokens_map.json, each when present, checked."""
    config: dict[str, Any] = {}
    for name in TOKENIZER_FILES:
        file = directory / name
        if file.is_file():
            data = read_json_object(file)
            problems = [
                f"{key} must be {expected}, got {reprlib.repr(data[key])}"
                for key, (ok, expected) in _FIELDS.items()
                if data.get(key) is not None and not ok(data[key])
            ]
            if problems:
                raise ConfigError(f"{file}:\n  - " + "\n  - ".join(problems))
            config.update(data)
    return config


def token_content(value: Any) -> Any:
    """A special token's string (a serialized AddedToken's "content"), else `value` itself."""
    return value["content"] if isinstance(value, dict) and "content" in value else value
