"""Recorded references ("goldens"): what transformers computed on a checkpoint, replayed without
torch or transformers.

One safetensors file: arrays by name, and a JSON header in the metadata key "golden" (format,
version, checkpoint identity, texts, settings, versions, and the list of entries). Arrays:

  inputs/{side}/{i}/{input_ids,attention_mask[,token_type_ids]}  each batch, as fed to both models
  forward/{side}/{output}/columns    [n, k] int: the recorded columns of each valid position's row
  forward/{side}/{output}/truth      [n, k] float64: transformers float64 at those columns
  forward/{side}/{output}/ref32      [n, k] float32: transformers float32 there (the direct diff)
  forward/{side}/{output}/proj       [n, 2] float64, proj32 [n, 2]: each row projected onto 2
        fixed random directions (`project`; where F > k)
  forward/{side}/{output}/positions  [n] int (optional): which valid positions, default all
  generate/{name}/{i}/{input_ids,attention_mask,sequences}  prompts and transformers' tokens

An output's rows are its valid positions (non-padding tokens, or texts for per-text outputs)
over all batches of the side in order, each flattened over its other axes (width F: hidden size,
heads x keys, vocabulary). The k recorded columns of a row are its largest entries by magnitude
(for logits: the top-k by value, the predicted ids), all of them where F <= k.

Forward entries carry transformers' own error against float64 per dtype, measured at record time
on the whole output (`ref_err`) and on its row projections (`proj_ref_err`): replay judges our
error at the recorded entries and on every row projection by the same rule (`report.verdict`),
so a checkpoint whose live check passes also passes its replay. Entries with `atol` (published references
without a float64 run) are judged by that absolute bound.
Generation entries hold either transformers' token ids (`sequences`) or, published, the decoded
`texts`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "biomed_jax.conformance.golden"
VERSION = 1
HEADER_KEY = "golden"


class GoldenError(ValueError):
    """A golden file that cannot be used: unreadable, malformed, or not for this checkpoint."""


@dataclasses.dataclass(frozen=True)
class Golden:
    header: dict[str, Any]
    arrays: Mapping[str, np.ndarray]
    path: str = "<memory>"

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise GoldenError(f"{self.path}: golden lacks array {name!r}")
        return self.arrays[name]

    def optional(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)

    def field(self, *keys: str) -> Any:
        value: Any = self.header
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                raise GoldenError(f"{self.path}: golden header lacks {'.'.join(keys)}")
            value = value[key]
        return value

    def batches(self, side: str) -> list[dict[str, np.ndarray]]:
        """The recorded input batches of one padding side."""
        count = self.field("batches", side)
        out = []
        for i in range(count):
            prefix = f"inputs/{side}/{i}/"
            batch = {
                key: self.array(prefix + key).astype(np.int32)
                for key in ("input_ids", "attention_mask", "token_type_ids")
                if key != "token_type_ids" or prefix + key in self.arrays
            }
            if batch["input_ids"].shape != batch["attention_mask"].shape:
                raise GoldenError(f"{self.path}: {prefix} input_ids and attention_mask differ")
            out.append(batch)
        return out


def rows_of(array: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[n, F]: an output's valid positions (mask over its leading axes), flattened."""
    selected = np.asarray(array)[valid]
    return selected.reshape(selected.shape[0], -1)


def top_columns(truth: np.ndarray, kind: str, k: int) -> np.ndarray:
    """[n, k] column ids per row of `truth` [n, F]: the top-k by value for logits, by magnitude
    otherwise; every column where F <= k."""
    n, width = truth.shape
    if width <= k:
        return np.broadcast_to(np.arange(width, dtype=np.int32), (n, width)).copy()
    score = truth if kind == "logits" else np.abs(truth)
    return np.argpartition(-score, k - 1, axis=1)[:, :k].astype(np.int32)


def take(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.take_along_axis(rows, columns.astype(np.int64), axis=1)


PROJECTIONS = 2  # fixed random directions each row is projected onto: a sketch of the whole row


@functools.lru_cache(maxsize=16)
def directions(width: int) -> np.ndarray:
    """[F, PROJECTIONS] fixed random directions, entries +-1/sqrt(F): numpy's RandomState
    (whose stream numpy keeps frozen) seeded by F. A row's projection has an entry's scale, and
    an error anywhere in the row moves it (a norm misses errors orthogonal to the row)."""
    signs = np.random.RandomState(width).randint(0, 2, size=(width, PROJECTIONS)) * 2 - 1
    return signs / np.sqrt(width)


def project(rows: np.ndarray) -> np.ndarray:
    """[n, PROJECTIONS]: rows [n, F] projected onto `directions(F)`, in float64."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows @ directions(rows.shape[1])


def write(path: str | Path, header: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """The golden file, written atomically."""
    from safetensors.numpy import save_file

    from biomed_jax.files import atomic_path

    meta = {"format": FORMAT, "version": VERSION, **header}
    flat = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={HEADER_KEY: json.dumps(meta, separators=(",", ":"))})
    return Path(path)


def read(path: str | Path) -> Golden:
    """A golden file; GoldenError names the file and what is wrong with it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise GoldenError(f"no golden file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise GoldenError(f"cannot read {path}: not a safetensors file ({e})") from e
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (KeyError, ValueError) as e:
        raise GoldenError(
            f"{path} is a safetensors file without a golden header (metadata key "
            f"{HEADER_KEY!r}): record one with `biomed-jax conformance --model M --record FILE`"
        ) from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GoldenError(f"{path}: header format is not {FORMAT!r}")
    if header.get("version") != VERSION:
        raise GoldenError(
            f"{path}: golden version {header.get('version')!r}; this biomed_jax reads {VERSION}"
        )
    _check_header(header, path)
    return Golden(header, arrays, str(path))


# Header fields replay reads, and their types (entries of the lists: dicts with these keys).
_FIELDS = {"checkpoint": dict, "settings": dict, "batches": dict, "forward": list, "generate": list}
_ENTRY = {
    "forward": {"name": str, "side": str, "kind": str, "width": int},
    "generate": {"name": str, "settings": dict, "batches": int},
}


def _check_header(header: dict[str, Any], path: Path) -> None:
    """The header's shape: what replay reads is there with its type (GoldenError otherwise)."""
    problems = [
        f"{key} must be a {kind.__name__}"
        for key, kind in _FIELDS.items()
        if not isinstance(header.get(key), kind)
    ]
    if not problems:
        problems += [
            f"batches[{side!r}] must be a non-negative int"
            for side, count in header["batches"].items()
            if not isinstance(count, int) or count < 0
        ]
        for group, fields in _ENTRY.items():
            for i, entry in enumerate(header[group]):
                if not isinstance(entry, dict):
                    problems.append(f"{group}[{i}] must be an object")
                    continue
                wrong = [k for k, kind in fields.items() if not isinstance(entry.get(k), kind)]
                if wrong:
                    problems.append(f"{group}[{i}] lacks or mistypes {wrong}")
    if problems:
        raise GoldenError(f"{path}: malformed golden header: " + "; ".join(problems))


def check_structure(golden: Golden, found: Mapping[str, Any]) -> None:
    """Refuse a golden recorded from a model of another structure (config fields differ)."""
    recorded = golden.field("checkpoint", "structure")
    wrong = {k: (v, found.get(k)) for k, v in recorded.items() if found.get(k) != v}
    if wrong:
        listing = ", ".join(f"{k}: golden {a!r}, model {b!r}" for k, (a, b) in wrong.items())
        raise GoldenError(
            f"{golden.path} was recorded from another model ({listing}); record a golden for "
            "this checkpoint"
        )


def changed_parameters(golden: Golden, found: Mapping[str, list]) -> list[str] | None:
    """Parameters whose hash differs from the recorded one (None: the golden pins no weights).

    A golden of other weights is refused: another parameter set, or none of the recorded
    weight matrices unchanged (another checkpoint of the same structure). A few changed tensors
    are the same checkpoint changed: returned, for a failing row naming them.
    """
    recorded = golden.header.get("checkpoint", {}).get("parameters")
    if recorded is None:
        return None
    if set(recorded) != set(found) or any(recorded[k][0] != found[k][0] for k in recorded):
        missing = sorted(set(recorded) - set(found))[:5]
        extra = sorted(set(found) - set(recorded))[:5]
        raise GoldenError(
            f"{golden.path} was recorded from a model with other parameters (recorded only: "
            f"{missing or 'none'}; this model only: {extra or 'none'}; or shapes differ)"
        )
    changed = sorted(k for k in recorded if recorded[k][1] != found[k][1])
    matrices = [k for k in recorded if len(recorded[k][0]) >= 2]
    if matrices and all(k in changed for k in matrices):
        raise GoldenError(
            f"{golden.path} was recorded from other weights: none of its {len(matrices)} weight "
            f"matrices matches this checkpoint ({len(changed)} of {len(recorded)} parameters "
            "differ); record a golden for this checkpoint"
        )
    return changed
