"""`embed_file`: stream a large corpus into sharded embedding files, resumable after a kill.

Input: a text file (one document per line) or JSONL (`field` names the text). Output directory:
`manifest.json` (the settings; a rerun with other settings is refused) and shards
`shard-00000.npy` (or `.safetensors`, key "embeddings"), each holding the embeddings of
`shard_size` consecutive documents, written atomically (temp file + rename). A rerun skips the
shards that exist, so a killed run resumes at its first missing shard. Memory holds one shard.
Every batch is split over all local devices (`embed`'s `devices`).

Multi-host (`jax.process_count() > 1`, after `jax.distributed.initialize()`): every process runs
the same call, takes its own contiguous block of the documents (process p of P: documents
[p * N // P, (p + 1) * N // P)) and writes only its own files, `process-0000p-manifest.json` and
`process-0000p-shard-00000.npy`, ...; each resumes on its own. `read_shards` puts the processes'
blocks back together in document order. A process that is done waits for the others before it
returns (see `wait_for_all_processes`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import jax
import numpy as np

from biomed_jax import sharding as shd
from biomed_jax.pipelines._common import (
    DEFAULT_ENCODER,
    Devices,
    Model,
    data_mesh,
    place,
    resolve_model,
)
from biomed_jax.pipelines.embed import embed
from biomed_jax.progress import progress_bar
from biomed_jax.weights.io import atomic_path, atomic_write_text

FORMATS = ("npy", "safetensors")
# How long a process that has finished its block waits for the slowest one.
BARRIER_TIMEOUT_S = 7 * 24 * 3600
_BARRIERS = itertools.count()  # every process makes the same calls, so ids match across them


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Block until every process of a `jax.distributed` job reaches the barrier `name`.

    Without it a process done early would exit, and JAX's shutdown barrier (300 s by default)
    would time out and abort every process, the ones still embedding too (as on a resume where
    one host has all its shards). No-op without `jax.distributed`.
    """
    from jax._src import distributed  # the client JAX's own checkpointing waits on

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


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


def _prefix(process: int | None) -> str:
    """File name prefix of one process's outputs (None: a single-process run, no prefix)."""
    return "" if process is None else f"process-{process:05d}-"


def shard_path(directory: Path, index: int, fmt: str, process: int | None = None) -> Path:
    return directory / f"{_prefix(process)}shard-{index:05d}.{fmt}"


def manifest_path(directory: Path, process: int | None = None) -> Path:
    return directory / f"{_prefix(process)}manifest.json"


def process_block(total: int, process: int, count: int) -> tuple[int, int]:
    """[start, stop) of the documents process `process` of `count` embeds (contiguous blocks)."""
    return total * process // count, total * (process + 1) // count


def _write_shard(path: Path, array: np.ndarray, fmt: str) -> None:
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            from safetensors.numpy import save_file

            save_file({"embeddings": np.ascontiguousarray(array)}, str(tmp))


def _read_shard(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path)
    from safetensors.numpy import load_file

    return load_file(str(path))["embeddings"]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _manifests(directory: Path) -> dict[int | None, dict[str, Any]]:
    """Every manifest in `directory` by process index (None: the single-process one)."""
    found: dict[int | None, dict[str, Any]] = {}
    if manifest_path(directory).is_file():
        found[None] = _read_json(manifest_path(directory))
    for path in directory.glob("process-*-manifest.json"):
        match = re.fullmatch(r"process-(\d+)-manifest\.json", path.name)
        if match:
            found[int(match[1])] = _read_json(path)
    return found


def read_shards(directory: str | Path) -> np.ndarray:
    """All shards of a finished `embed_file` output (one process's or every process's of a
    multi-host run), concatenated in document order."""
    directory = Path(directory)
    manifests = _manifests(directory)
    if not manifests:
        raise FileNotFoundError(f"no manifest in {directory}: not an embed_file output")
    if None in manifests and len(manifests) > 1:
        raise ValueError(f"{directory} mixes a single-process run with a multi-process one")
    paths = ("input", "model")  # may differ between hosts that mount them elsewhere
    settings = [
        {k: v for k, v in m["settings"].items() if k not in paths} for m in manifests.values()
    ]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"{directory}: the processes' manifests hold other settings")
    count = settings[0].get("num_processes", 1)
    missing = sorted(set(range(count)) - set(manifests)) if None not in manifests else []
    if missing:
        raise ValueError(f"{directory}: no manifest of process(es) {missing} of {count}")
    arrays, position = [], 0
    for process in sorted(manifests, key=lambda p: -1 if p is None else p):
        manifest = manifests[process]
        who = "the run" if process is None else f"process {process}"
        if "num_shards" not in manifest:
            raise ValueError(f"{directory}: {who} has not finished (rerun it to resume)")
        if manifest.get("first_document", 0) != position:
            raise ValueError(f"{directory}: {who} does not start at document {position}")
        fmt = manifest["settings"]["format"]
        for index in range(manifest["num_shards"]):
            arrays.append(_read_shard(shard_path(directory, index, fmt, process), fmt))
        position += manifest["num_documents"]
    if not arrays:
        raise ValueError(f"{directory}: the run embedded no documents")
    return np.concatenate(arrays)


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
    devices: Devices = None,
    rules: shd.Rules | str | None = None,
) -> dict[str, Any]:
    """Embed every document of `input_path` into shards under `output_dir`; returns the manifest
    (on several processes, this process's, with its block's `first_document`).

    layers, pooling ("cls" or "mean"), batch_size, max_length, stride, devices and rules are
    `embed`'s: by default every batch is split over all of this process's devices. `progress`:
    a bar on stderr when it is a terminal.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if pooling == "none":
        raise ValueError("embed_file writes pooled vectors: pooling must be 'cls' or 'mean'")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    input_path, output_dir = Path(input_path), Path(output_dir)
    mesh = data_mesh(devices)
    pretrained = place(resolve_model(model, DEFAULT_ENCODER), mesh, rules)  # once, not per shard
    count = jax.process_count()
    process = jax.process_index() if count > 1 else None
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
    if count > 1:  # absent on one process, so single-process outputs keep their manifests
        settings["num_processes"] = count
    manifest_file = manifest_path(output_dir, process)
    for other in _manifests(output_dir).values():
        if (theirs := other["settings"].get("num_processes", 1)) != count:
            raise ValueError(
                f"{output_dir} holds a run over {theirs} process(es), this one has {count}; "
                "use a new output directory"
            )
    if manifest_file.is_file():
        previous = _read_json(manifest_file)["settings"]
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
    for stale in output_dir.glob(f".{_prefix(process)}shard-*.tmp"):  # left by a killed run
        stale.unlink()

    total = sum(1 for _ in read_documents(input_path, field))
    start, stop = process_block(total, process or 0, count)
    num_shards = -(-(stop - start) // shard_size)
    done_shards = 0
    while done_shards < num_shards and shard_path(output_dir, done_shards, fmt, process).is_file():
        done_shards += 1
    documents = read_documents(input_path, field)
    for _ in islice(documents, start + done_shards * shard_size):
        pass
    mine = stop - start
    bar = progress_bar(
        mine, enabled=progress, initial=min(done_shards * shard_size, mine), unit="doc"
    )
    for index in range(done_shards, num_shards):
        texts = list(islice(documents, min(shard_size, stop - start - index * shard_size)))
        vectors = embed(
            texts,
            model=pretrained,
            layers=layers,
            pooling=pooling,
            batch_size=batch_size,
            max_length=max_length,
            stride=stride,
            devices=mesh,
            rules=rules,
        )
        _write_shard(shard_path(output_dir, index, fmt, process), vectors, fmt)
        bar.update(len(texts))
    bar.close()
    manifest: dict[str, Any] = {
        "settings": settings,
        "num_documents": mine,
        "num_shards": num_shards,
    }
    if process is not None:
        manifest |= {"process_index": process, "first_document": start, "total_documents": total}
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2))
    if process is not None:
        wait_for_all_processes(f"biomed_jax.embed_file.{next(_BARRIERS)}")
    return manifest
