"""The records a task runs on, read from the repo's data files, with clear errors for bad ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Example:
    """One input: its id (PMID or line number), the source text the model reads, the gold answer
    in the task's structured form, and what scoring needs besides (e.g. BC5CDR's name -> id maps)."""

    id: str
    source: str
    gold: Any
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The examples, and the ids the repo's rebuild_data.py leaves out (no gold relations)."""

    examples: list[Example]
    skipped: list[str] = dataclasses.field(default_factory=list)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (the repo's {pmid: record} files)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object {{id: record}}, got {type(data).__name__}"
        )
    return data


def field(record: Any, name: str, kind: type | tuple[type, ...], path: Path, key: str) -> Any:
    """record[name], checked to be of `kind`; a ValueError names the file, record and field."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: record {key!r} is a {type(record).__name__}, not an object")
    if name not in record:
        raise ValueError(f"{path}: record {key!r} has no field {name!r}")
    value = record[name]
    if not isinstance(value, kind):
        raise ValueError(f"{path}: record {key!r} field {name!r} has type {type(value).__name__}")
    return value
