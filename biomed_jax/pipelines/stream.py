"""`embed_file`: stream a large corpus into sharded embedding files, resumable after a kill.

Input: a text file (one document per line) or JSONL (`field` names the text). Output directory:
`manifest.json` (the settings; a rerun with other settings is refused) and shards
`shard-00000.npy` (or `.safetensors`, key "embeddings"), each holding the embeddings of
`shard_size` consecutive documents, written atomically (temp file + rename). A rerun skips the
shards that exist, so a killed run resumes at its first missing shard. Memory holds one shard.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.pipelines._common import DEFAULT_ENCODER, Model, resolve_model
from biomed_jax.pipelines.embed import embed
from biomed_jax.weights.io import atomic_path, atomic_write_text

FORMATS = ("npy", "safetensors")


def read_documents(path: Path, field: str | None) -> Iterator[str]:
    """Documents one by one: lines of a text file, or `field` of each JSONL line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.rstrip("\n")
            if field is None:
                yield text
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{number}: no string field {field!r}")
            yield record[field]


def shard_path(directory: Path, index: int, fmt: str) -> Path:
    return directory / f"shard-{index:05d}.{fmt}"


def _write_shard(path: Path, array: np.ndarray, fmt: str) -> None:
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            from safetensors.numpy import save_file

            save_file({"embeddings": np.ascontiguousarray(array)}, str(tmp))


def read_shards(directory: str | Path) -> np.ndarray:
    """All shards of a finished `embed_file` output, concatenated in document order."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    fmt = manifest["settings"]["format"]
    arrays = []
    for index in range(manifest["num_shards"]):
        path = shard_path(directory, index, fmt)
        if fmt == "npy":
            arrays.append(np.load(path))
        else:
            from safetensors.numpy import load_file

            arrays.append(load_file(str(path))["embeddings"])
    return np.concatenate(arrays)


class Progress:
    """Documents done, documents/s and ETA on one status line (stderr)."""

    def __init__(
        self, total: int, done: int, stream=None, clock: Callable[[], float] = time.monotonic
    ):
        self.total, self.start_done, self.stream, self.clock = (
            total,
            done,
            stream or sys.stderr,
            clock,
        )
        self.start = clock()

    def update(self, done: int) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (done - self.start_done) / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{done}/{self.total} docs  {rate:.1f} docs/s  ETA {_duration(eta)}"
        end = (
            "\r" if getattr(self.stream, "isatty", lambda: False)() and done < self.total else "\n"
        )
        print(line, end=end, file=self.stream, flush=True)
        return line


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}"


def embed_file(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    field: str | None = None,
    model: Model = None,
    shard_size: int = 1024,
    fmt: str = "npy",
    progress: bool = True,
    layers: int | Sequence[int] = -1,
    pooling: str = "cls",
    batch_size: int = 32,
    max_length: int | None = None,
    stride: int | None = None,
) -> dict[str, Any]:
    """Embed every document of `input_path` into shards under `output_dir`; returns the manifest.

    layers, pooling ("cls" or "mean"), batch_size, max_length and stride are `embed`'s.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if pooling == "none":
        raise ValueError("embed_file writes pooled vectors: pooling must be 'cls' or 'mean'")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    input_path, output_dir = Path(input_path), Path(output_dir)
    pretrained = resolve_model(model, DEFAULT_ENCODER)
    settings = {
        "input": str(input_path.resolve()),
        "input_bytes": input_path.stat().st_size,
        "field": field,
        "model": str(pretrained.path),
        "shard_size": shard_size,
        "format": fmt,
        "layers": layers if isinstance(layers, int) else [int(k) for k in layers],
        "pooling": pooling,
        "max_length": max_length,
        "stride": stride,
    }
    manifest_file = output_dir / "manifest.json"
    if manifest_file.is_file():
        previous = json.loads(manifest_file.read_text(encoding="utf-8"))["settings"]
        if previous != settings:
            changed = sorted(
                k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k)
            )
            raise ValueError(
                f"{output_dir} holds a run with other settings ({', '.join(changed)}); "
                "use a new output directory"
            )
    else:
        atomic_write_text(manifest_file, json.dumps({"settings": settings}, indent=2))
    for stale in output_dir.glob(".shard-*.tmp"):  # left by a killed run
        stale.unlink()

    total = sum(1 for _ in read_documents(input_path, field))
    num_shards = -(-total // shard_size)
    done_shards = 0
    while done_shards < num_shards and shard_path(output_dir, done_shards, fmt).is_file():
        done_shards += 1
    documents = read_documents(input_path, field)
    for _ in islice(documents, done_shards * shard_size):
        pass
    meter = Progress(total, min(done_shards * shard_size, total)) if progress else None
    for index in range(done_shards, num_shards):
        texts = list(islice(documents, shard_size))
        vectors = embed(
            texts,
            model=pretrained,
            layers=layers,
            pooling=pooling,
            batch_size=batch_size,
            max_length=max_length,
            stride=stride,
        )
        _write_shard(shard_path(output_dir, index, fmt), vectors, fmt)
        if meter is not None:
            meter.update(index * shard_size + len(texts))
    manifest = {"settings": settings, "num_documents": total, "num_shards": num_shards}
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2))
    return manifest
