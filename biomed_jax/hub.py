"""Model names to directories: local paths, Hugging Face hub ids, and our cache of conversions.

A hub id is resolved with `huggingface_hub.snapshot_download`, which honours HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE and the standard cache layout. The first load of an HF checkpoint
from the hub converts it once into `cache_root()/converted/<org>--<name>/<revision>/<key>`, where
the key hashes the architecture and the snapshot's file hashes (the blob names the hub cache
already stores), so later loads read our safetensors directly. This module only names places;
`loading` does the converting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "BIOMED_JAX_CACHE"
# Renamed on the hub: microsoft/BiomedNLP-PubMedBERT-* -> microsoft/BiomedNLP-BiomedBERT-*.
RENAMED_PREFIXES = (("microsoft/BiomedNLP-PubMedBERT-", "microsoft/BiomedNLP-BiomedBERT-"),)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# What a model needs; weights are fetched in a second step only if there are no safetensors.
_META_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
_SAFETENSORS = ("*.safetensors", "model.safetensors.index.json")
_TORCH = ("pytorch_model.bin",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local directory nor obtainable from the hub (or its cache)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model's files are: `path`; `repo_id` is set when they came from the hub cache."""

    path: Path
    repo_id: str | None = None


def cache_root() -> Path:
    """Our cache directory: $BIOMED_JAX_CACHE, else $XDG_CACHE_HOME/biomed_jax (~/.cache/biomed_jax)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "biomed_jax"


def canonical_repo_id(repo_id: str) -> str:
    """Map renamed hub ids to their current names, with a note in the log."""
    for old, new in RENAMED_PREFIXES:
        if repo_id.startswith(old):
            renamed = new + repo_id[len(old) :]
            logger.warning("%s was renamed on the hub; loading %s", repo_id, renamed)
            return renamed
    return repo_id


def _snapshot(
    repo_id: str, revision: str | None, cache_dir: str | Path | None, weights: bool = True
) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(patterns: tuple[str, ...]) -> Path:
        return Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(patterns)
            )
        )

    where = cache_dir or constants.HF_HUB_CACHE
    try:
        if not weights:
            return fetch(_META_FILES)
        path = fetch(_META_FILES + _SAFETENSORS)
        if not any(path.glob("*.safetensors")) and not (path / "pytorch_model.bin").exists():
            path = fetch(_META_FILES + _TORCH)
    except LocalEntryNotFoundError as e:
        offline = constants.HF_HUB_OFFLINE
        raise ModelNotFoundError(
            f"{repo_id} (revision {revision or 'main'}) is neither a local directory nor in the"
            f" Hugging Face cache at {where}"
            + (
                " and HF_HUB_OFFLINE=1 forbids downloading it."
                if offline
                else " and the hub could not be reached."
            )
            + f" Download it once with network access (`hf download {repo_id}`, or load it"
            " online), point HF_HOME / cache_dir at a cache that has it, or pass a local"
            " directory."
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelNotFoundError(
            f"{repo_id} (revision {revision or 'main'}) does not exist on the hub, or is private "
            f"or gated (log in with `hf auth login`): {e}"
        ) from e
    return path


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub id ("org/name" or "name")."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    weights: bool = True,
) -> Source:
    """A local directory as is; otherwise a hub id, fetched into (or found in) the hub cache
    (`weights=False`: its config and tokenizer files only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to hub ids, not to directory {path}")
        return Source(path)
    name = str(name_or_path)
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model directory or a hub id")
    if isinstance(name_or_path, Path) or not is_hub_id(name):
        raise ModelNotFoundError(f"{name} is not a directory (and not a valid hub id)")
    repo_id = canonical_repo_id(name)
    return Source(_snapshot(repo_id, revision, cache_dir, weights), repo_id)


def _file_hash(file: Path) -> str:
    """The hub cache names blobs by their hash; for plain files, hash the content."""
    real = file.resolve()
    if real.parent.name == "blobs":
        return real.name
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def conversion_dir(source: Source, architecture: str) -> Path:
    """Where our conversion of a hub snapshot for `architecture` lives (keyed by its file hashes)."""
    if source.repo_id is None:
        raise ValueError("only hub snapshots have a conversion cache")
    files = sorted(
        f for f in source.path.iterdir() if f.is_file() and f.name in (*_META_FILES, *_WEIGHT_FILES)
    )
    files += sorted(source.path.glob("model-*-of-*.safetensors"))
    key = json.dumps(
        {"architecture": architecture, "files": {f.name: _file_hash(f) for f in files}},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    revision = source.path.name
    return cache_root() / "converted" / source.repo_id.replace("/", "--") / revision / digest
