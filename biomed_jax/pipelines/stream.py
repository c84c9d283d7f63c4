"""`embed_file`: stream a large corpus into sharded embedding files, resumable after a kill.

Input: a UTF-8 text file (one document per line: `LINE_RULE`) or JSONL (`field` names the text).
Output directory: `manifest.json` and shards `shard-00000.npy` (or `.safetensors`, key
"embeddings"), each holding the embeddings of `shard_size` consecutive documents, written
atomically (temp file + rename). The run owns its manifest (`biomed_jax.files.owned`: a second
run into the same directory is refused) and writes only into a new or empty directory or one
holding an embed_file manifest. The manifest records what the shards depend on: the settings
with a fingerprint of the model (weights, config, tokenizer, compute dtype and numerics policy),
and per shard the hash of its documents, of those settings and of its file. A rerun keeps the
shards whose three hashes still hold and recomputes the others; other settings or another model
are refused (unless no shard was finished). Memory holds one shard. Every batch is split over
all local devices (`embed`'s `devices`). docs/runtime-inputs.md has the rules.

Multi-host (`jax.process_count() > 1`, after `jax.distributed.initialize()`): every process runs
the same call, takes its own contiguous block of the documents (process p of P: documents
[p * N // P, (p + 1) * N // P)) and writes only its own files, `process-0000p-manifest.json` and
`process-0000p-shard-00000.npy`, ...; each resumes on its own. `read_shards` puts the processes'
blocks back together in document order. A process that is done waits for the others before it
returns (see `wait_for_all_processes`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import jax
import numpy as np

from biomed_jax import interrupts
from biomed_jax import sharding as shd
from biomed_jax import validation as v
from biomed_jax.errors import OutputError, shown
from biomed_jax.files import MARK, atomic_write_bytes, atomic_write_text, owned
from biomed_jax.loading import TOKENIZER_FILES, Pretrained
from biomed_jax.pipelines._common import (
    DEFAULT_ENCODER,
    ENCODERS,
    Devices,
    Model,
    data_mesh,
    place,
    resolve_model,
)
from biomed_jax.pipelines.embed import embed, embed_options
from biomed_jax.progress import progress_bar
from biomed_jax.trees import flatten

FORMATS = ("npy", "safetensors")
MANIFEST_FORMAT = "biomed_jax.embed_file"  # the "format" of every manifest this module writes
MAX_MANIFEST_BYTES = 256 << 20  # ~1 million shards' records
# How input lines become documents (recorded in every manifest's settings).
LINE_RULE = "a document ends at each \\n; a \\r right before it is dropped; any other \\r is text"
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
    """Documents one by one: lines of a UTF-8 text file (split by `LINE_RULE`, as `wc -l` counts
    them), or `field` of each JSONL line. Errors name the file and the line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte {e.start + 1} of the line is "
                    f"0x{raw[e.start]:02x})"
                ) from None
            if field is None:
                yield text
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{number}: no string field {shown(field)}")
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


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError raised while writing `path` names it, not the temporary file beside it."""
    try:
        yield
    except OSError as e:
        if e.errno is not None:
            e.filename = str(path)
        raise


def _write_shard(path: Path, array: np.ndarray, fmt: str) -> None:
    """Serialized in memory, then written by Python: a full disk is an OSError with its errno
    (np.save's `tofile` and safetensors' Rust writer report it without one)."""
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
    else:
        from safetensors.numpy import save

        data = save({"embeddings": np.ascontiguousarray(array)})
    with _naming(path):
        atomic_write_bytes(path, data)


def _check_finite(vectors: np.ndarray, input_path: Path, first: int, path: Path) -> None:
    """No NaN or infinite vector is ever written: an error naming the first such document
    (`first`: the shard's first document, 0-based; one document a line)."""
    finite = np.isfinite(vectors).reshape(len(vectors), -1).all(axis=1)
    if not finite.all():
        line = first + int(np.argmin(finite)) + 1
        raise ValueError(
            f"{input_path}:{line}: the document embeds to NaN or infinite values; "
            f"{path.name} is not written"
        )


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    with _naming(path):
        atomic_write_text(path, json.dumps(manifest, indent=2))


def _read_shard(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path)
    from safetensors.numpy import load_file

    return load_file(str(path))["embeddings"]


def _read_manifest(path: Path) -> dict[str, Any]:
    """An embed_file manifest; anything else (another program's manifest.json, an older
    biomed_jax's) is a ValueError naming the file."""
    problem = None
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        problem = f"larger than {MAX_MANIFEST_BYTES} bytes"
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            problem = f"not UTF-8 JSON ({shown(str(e))})"
        else:
            if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
                problem = f'no "format": "{MANIFEST_FORMAT}"'
            elif not isinstance(manifest.get("settings"), dict):
                problem = "no settings object"
            elif manifest["settings"].get("format") not in FORMATS:
                problem = f"settings.format is not one of {FORMATS}"
            elif not all(
                type(manifest.get(k, 0)) is int and manifest.get(k, 0) >= 0
                for k in ("num_shards", "num_documents", "first_document")
            ):
                problem = "num_shards, num_documents or first_document is not a count"
            elif not isinstance(manifest.get("shards"), list) or not all(
                isinstance(r, dict) for r in manifest["shards"]
            ):
                problem = "no list of shard records"
    if problem is not None:
        raise ValueError(
            f"{path} is not an embed_file manifest of this biomed_jax ({problem}): refusing to "
            "read or write its directory; choose a new output directory"
        )
    return manifest


_OUR_FILES = re.compile(r"(process-\d+-)?(manifest\.json|shard-\d+\.(npy|safetensors))")
_OUR_TEMPORARIES = re.compile(rf"\..+\.{MARK}-(lock|tmp|new|old)")  # biomed_jax.files'


def _manifests(directory: Path) -> dict[int | None, dict[str, Any]]:
    """Every manifest in `directory` by process index (None: the single-process one)."""
    found: dict[int | None, dict[str, Any]] = {}
    if manifest_path(directory).is_file():
        found[None] = _read_manifest(manifest_path(directory))
    for path in directory.glob("process-*-manifest.json"):
        match = re.fullmatch(r"process-(\d+)-manifest\.json", path.name)
        if match and path.is_file():
            found[int(match[1])] = _read_manifest(path)
    return found


def _check_ownership(output_dir: Path, manifests: dict[int | None, Any], process: int | None):
    """Refuse a directory this run may not write into: one holding files but no manifest of this
    process (user files, e.g. a shard-00000.npy of their own), or files that are not an
    embed_file output's beside the manifests of other processes of a multi-process run."""
    if process in manifests:
        return
    entries = sorted(p.name for p in output_dir.iterdir())
    mine = _prefix(process) or None  # this process's files never predate its manifest

    def others(name: str) -> bool:  # another process's file of this multi-process run
        return (
            bool(manifests)
            and bool(_OUR_FILES.fullmatch(name))
            and not (mine and name.startswith(mine))
        )

    foreign = [n for n in entries if not (_OUR_TEMPORARIES.fullmatch(n) or others(n))]
    if foreign:
        listed = ", ".join(shown(n) for n in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise OutputError(
            errno.EEXIST,
            f"{output_dir} is not empty and holds no embed_file manifest of this run ({listed}): "
            "refusing to write into it, so no file of yours is overwritten; choose a new or "
            "empty output directory",
            str(output_dir),
        )


def read_shards(directory: str | Path) -> np.ndarray:
    """All shards of a finished `embed_file` output (one process's or every process's of a
    multi-host run), concatenated in document order."""
    directory = Path(directory)
    manifests = _manifests(directory)
    if not manifests:
        raise FileNotFoundError(f"no manifest in {directory}: not an embed_file output")
    if None in manifests and len(manifests) > 1:
        raise ValueError(f"{directory} mixes a single-process run with a multi-process one")
    settings = [m["settings"] for m in manifests.values()]
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
    `embed`'s: by default every batch is split over all of this process's devices.
    A rerun resumes: it keeps each shard whose documents, settings and file still hash to what
    the manifest recorded and recomputes the others (with a warning naming them); other settings
    or another model (weights, config, tokenizer, compute dtype or numerics policy) are refused.
    The run owns `output_dir` for its duration: a second run into it is refused
    (`OutputBusyError`), and so is a directory holding files but no embed_file manifest.
    Arguments and the whole input are checked before anything is written. A write that fails
    (disk full, read-only, no permission) raises `OutputError` naming the path; the finished
    shards stay. `progress`: a bar on stderr when it is a terminal.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {shown(fmt)}")
    if pooling == "none":
        raise ValueError("embed_file writes pooled vectors: pooling must be 'cls' or 'mean'")
    shard_size = v.integer("shard_size", shard_size, low=1)
    input_path, output_dir = Path(input_path), Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} exists and is not a directory")
    mesh = data_mesh(devices)
    model = resolve_model(model, DEFAULT_ENCODER, takes=ENCODERS, pipeline="embed_file")
    options = embed_options(model, layers, pooling, batch_size, max_length, stride)
    total = sum(1 for _ in read_documents(input_path, field))  # every line parses, or nothing
    count = jax.process_count()
    process = jax.process_index() if count > 1 else None
    settings = {
        "field": field,
        "line_rule": LINE_RULE,
        "shard_size": shard_size,
        "format": fmt,
        "layers": list(options.layers) if not options.single_layer else options.layers[0],
        "pooling": pooling,
        "max_length": options.max_length,
        "stride": options.stride,
        "numerics": numerics(model.module),
        "model_fingerprint": model_fingerprint(model),
    }
    if count > 1:  # absent on one process, so single-process outputs keep their manifests
        settings["num_processes"] = count
    computed_with = _settings_hash(settings)
    sources = {"input": str(input_path.resolve()), "model": str(model.path)}
    manifest_file = manifest_path(output_dir, process)
    start, stop = process_block(total, process or 0, count)
    mine = stop - start
    num_shards = -(-mine // shard_size)
    shards: list[dict[str, Any]] = []
    stale: list[str] = []
    altered: list[str] = []
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "sources": sources,
        "shards": shards,
    }
    with _writing(output_dir, shards), owned(manifest_file):  # a second run is refused here
        recorded = _previous_records(output_dir, process, count, settings)
        pretrained = place(model, mesh, rules)  # once, not per shard
        _write_manifest(manifest_file, {**manifest, "shards": recorded})
        documents = islice(read_documents(input_path, field), start, stop)
        bar = None
        for index in range(num_shards):
            texts = list(islice(documents, shard_size))
            record = {"documents": len(texts), "sha256": _texts_hash(texts)}
            record["computed_with"] = computed_with
            path = shard_path(output_dir, index, fmt, process)
            old = recorded[index] if index < len(recorded) else None
            if old is not None and path.is_file():
                if {k: old.get(k) for k in record} != record:
                    stale.append(path.name)
                elif old.get("file_sha256") == _file_hash(path):
                    record["file_sha256"] = old["file_sha256"]  # kept
                else:
                    altered.append(path.name)
            if "file_sha256" not in record:
                if bar is None:  # from the first shard computed
                    bar = progress_bar(
                        mine, enabled=progress, initial=index * shard_size, unit="doc"
                    )
                vectors = embed(
                    texts,
                    model=pretrained,
                    layers=options.layers[0] if options.single_layer else list(options.layers),
                    pooling=pooling,
                    batch_size=options.batch_size,
                    max_length=options.max_length,
                    stride=options.stride,
                    devices=mesh,
                    rules=rules,
                )
                _check_finite(vectors, input_path, start + index * shard_size, path)
                _write_shard(path, vectors, fmt)
                record["file_sha256"] = _file_hash(path)  # what is on disk
            shards.append(record)
            # recorded: the shards done in this run, then the old records not revisited yet
            _write_manifest(manifest_file, {**manifest, "shards": shards + recorded[index + 1 :]})
            if bar is not None:
                bar.update(len(texts))
            interrupts.check()
        if bar is not None:
            bar.close()
        for extra in range(num_shards, len(recorded)):  # the input got shorter
            shard_path(output_dir, extra, fmt, process).unlink(missing_ok=True)
        manifest |= {"num_documents": mine, "num_shards": num_shards}
        if process is not None:
            manifest |= {
                "process_index": process,
                "first_document": start,
                "total_documents": total,
            }
        _write_manifest(manifest_file, manifest)
    for names, why in ((stale, "the input changed under"), (altered, "the files changed of")):
        if names:
            warnings.warn(
                f"{output_dir}: {why} {len(names)} finished shard(s), recomputed: "
                f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}",
                stacklevel=2,
            )
    if process is not None:
        wait_for_all_processes(f"biomed_jax.embed_file.{next(_BARRIERS)}")
    return manifest


def _previous_records(
    output_dir: Path, process: int | None, count: int, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """The shard records of the run this one resumes ([] for a new run), once `output_dir` is
    known to be ours to write and its runs to fit this one's settings and process count."""
    manifests = _manifests(output_dir)
    _check_ownership(output_dir, manifests, process)
    for other in manifests.values():
        if (theirs := other["settings"].get("num_processes", 1)) != count:
            raise ValueError(
                f"{output_dir} holds a run over {theirs} process(es), this one has {count}; "
                "use a new output directory"
            )
    previous = manifests.get(process)
    if previous is None:
        return []
    recorded = previous["shards"]
    _check_same_settings(output_dir, previous["settings"], settings, provisional=not recorded)
    return recorded


def _check_same_settings(
    output_dir: Path, previous: dict[str, Any], settings: dict[str, Any], provisional: bool
) -> None:
    """Refuse a rerun whose settings or model differ from the run in `output_dir`, unless that
    run finished no shard (then nothing can mix and its manifest is replaced)."""
    if previous == settings or provisional:
        return
    changed = sorted(
        k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k)
    )
    what = ", ".join(changed)
    if "model_fingerprint" in changed:
        what += (
            ": the model's weights, config, tokenizer, compute dtype or numerics policy are not "
            "those of the finished shards"
        )
    raise ValueError(
        f"{output_dir} holds a run with other settings ({what}); use a new output directory"
    )


def _texts_hash(texts: Sequence[str]) -> str:
    """sha256 of a shard's documents (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _settings_hash(settings: dict[str, Any]) -> str:
    """sha256 of a run's settings (model fingerprint included): what each shard records it was
    computed with."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def numerics(module: Any) -> dict[str, Any]:
    """How a module computes, beyond its weights: compute and parameter dtypes, the matmul
    precision and whether float32 matmuls sum in float64 (`biomed_jax.numerics.Policy`)."""
    found = module.numerics
    policy = found["policy"]
    return {
        "dtype": np.dtype(found["dtype"]).name,
        "param_dtype": np.dtype(found["param_dtype"]).name,
        "precision": policy.precision.name.lower(),
        "float64_sums": policy.float64_sums,
    }


def model_fingerprint(pretrained: Pretrained) -> str:
    """sha256 of what an embedding depends on besides the text: the module class, how it
    computes (`numerics`), its config, every parameter (path, dtype, shape, bytes) and the
    tokenizer's files (else its vocab)."""
    digest = hashlib.sha256()
    digest.update(type(pretrained.module).__name__.encode())
    digest.update(json.dumps(numerics(pretrained.module), sort_keys=True).encode())
    digest.update(json.dumps(pretrained.config.to_dict(), sort_keys=True, default=str).encode())
    for name, value in sorted(flatten(pretrained.params).items()):
        array = np.asarray(value)
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    files = [pretrained.path / f for f in TOKENIZER_FILES] if pretrained.path else []
    files = [f for f in files if f.is_file()]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    if not files:
        vocab = getattr(pretrained.tokenizer, "vocab", {})
        digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()


_ADVICE = {
    errno.ENOSPC: "free space on that device or choose another output directory",
    errno.EDQUOT: "free space within your quota or choose another output directory",
    errno.EROFS: "the file system is read-only: choose a writable output directory",
    errno.EACCES: "no permission to write there: fix its permissions or choose another directory",
    errno.EPERM: "no permission to write there: fix its permissions or choose another directory",
}


@contextlib.contextmanager
def _writing(output_dir: Path, done: list[Any]) -> Iterator[None]:
    """Turn a failed write into one `OutputError` naming the path and what to do."""
    try:
        yield
    except OSError as e:
        if isinstance(e, OutputError) or e.errno not in _ADVICE:
            raise
        path = e.filename or output_dir
        raise OutputError(
            f"cannot write {path}: {e.strerror} ({errno.errorcode[e.errno]}); "
            f"{_ADVICE[e.errno]}. The {len(done)} finished shard(s) in {output_dir} are kept: "
            "rerun the same command to resume"
        ) from e
