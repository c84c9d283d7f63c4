"""The checkpoint a `--model` check runs on: where it is, what it holds, and its two models.

Formats: a hub id (fetched into, or found in, the Hugging Face cache), an HF directory, a fairseq
BioGPT directory or `.pt` (`biomed_jax.fairseq`), our converted layout (`loading.is_converted`).
Ours is loaded by `biomed_jax.from_pretrained`. transformers' reference reads the same weights:
- HF checkpoint: transformers' own loader, so our name table is checked too;
- fairseq: the mapping of transformers' conversion script (`decoder.` -> `biogpt.`, the output
  projection at the top level), independent of our fairseq name table;
- our layout: exported back to transformers' names by reading our name table backwards
  (`biomed_jax.convert(..., to="hf")`, into a temporary directory). A name-table error would be
  mirrored there; the HF-directory checks are what catch those.

Identity (for recorded references): sha256 of the weight files (reported), sha256 of every
parameter as loaded (what a golden is matched against: layout-independent), and the config's
structural fields. torch and transformers are imported only by `reference`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax import fairseq, hub
from biomed_jax.loading import (
    Pretrained,
    convert,
    from_pretrained,
    read_config_json,
    resolve_architecture,
)
from biomed_jax.trees import flatten
from biomed_jax.weights.formats import is_converted, weight_files

# The config fields that decide what a checkpoint computes (the rest: labels, dropout, ...).
STRUCTURE = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "scale_embedding",
    "num_labels",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A located checkpoint: `model` as given, the `path` read (directory or fairseq `.pt`), its
    `format` ("huggingface", "biomed_jax", "fairseq"), architecture, and weight file hashes."""

    model: str
    path: Path
    format: str
    architecture: str
    files: Mapping[str, str]  # weight file name -> sha256

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture,
            "files": dict(self.files),
        }


def locate(
    model: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Checkpoint:
    """Find `model` (hub id, HF or converted directory, fairseq directory or `.pt`) and hash its
    weight files; errors name what is missing."""
    fairseq_files = fairseq.find_files(model)
    if fairseq_files is not None:
        checkpoint = fairseq_files.checkpoint
        return Checkpoint(
            str(model),
            checkpoint,
            "fairseq",
            "BioGptForCausalLM",
            {checkpoint.name: file_sha256(checkpoint)},
        )
    directory = hub.resolve(model, revision=revision, cache_dir=cache_dir).path
    architecture = resolve_architecture(read_config_json(directory), None)
    return Checkpoint(
        str(model),
        directory,
        "biomed_jax" if is_converted(directory) else "huggingface",
        architecture,
        {f.name: file_sha256(f) for f in weight_files(directory)},
    )


def file_sha256(file: Path) -> str:
    """sha256 of a file's bytes; a hub cache blob is named by it already."""
    real = file.resolve()
    if real.parent.name == "blobs" and _SHA256.match(real.name):
        return real.name
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_ours(checkpoint: Checkpoint, policy: str = "fast") -> Pretrained:
    """Our model of the checkpoint (float32 parameters, placed on the default device once; the
    compute dtype is set per run)."""
    import jax

    pre = from_pretrained(checkpoint.path, architecture=checkpoint.architecture, policy=policy)
    return dataclasses.replace(pre, params=jax.device_put(pre.params))


def structure(config: Any) -> dict[str, Any]:
    """The config's STRUCTURE fields (those it has)."""
    values = config.to_dict()
    values["num_labels"] = config.num_labels
    return {k: values[k] for k in STRUCTURE if k in values}


def parameter_hashes(params: Mapping[str, Any]) -> dict[str, list]:
    """{parameter path: [shape, sha256 of dtype, shape and bytes]} of a loaded model."""
    out = {}
    for path, value in flatten(params).items():
        array = np.ascontiguousarray(np.asarray(value))
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
        out[path] = [list(array.shape), digest.hexdigest()]
    return out


def require_reference() -> None:
    """torch and transformers run the reference: ModuleNotFoundError naming the extra if not."""
    import importlib.util

    for name in ("torch", "transformers"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # blocked, or a broken install
            found = False
        if not found:
            raise ModuleNotFoundError(
                f"biomed-jax conformance needs {name} to run the reference (replaying a golden, "
                "--golden, does not): pip install torch transformers (in a checkout of biomed_jax: "
                "pip install '.[conformance]')",
                name=name,
            )


@contextlib.contextmanager
def reference(checkpoint: Checkpoint) -> Iterator[Any]:
    """transformers' model of the same weights: float32, eval mode, eager attention (the path
    that returns attention maps). Needs torch and transformers."""
    require_reference()
    import torch
    import transformers

    cls = getattr(transformers, checkpoint.architecture)
    options = {"attn_implementation": "eager", "dtype": torch.float32}
    if checkpoint.format == "fairseq":
        yield _fairseq_reference(checkpoint.path)
        return
    if checkpoint.format == "huggingface":
        yield cls.from_pretrained(checkpoint.path, **options).eval()
        return
    with tempfile.TemporaryDirectory(prefix="biomed-jax-reference-") as tmp:
        hf_dir = convert(
            checkpoint.path, Path(tmp) / "hf", architecture=checkpoint.architecture, to="hf"
        )
        yield cls.from_pretrained(hf_dir, **options).eval()


def _fairseq_reference(file: Path):
    """transformers' BioGptForCausalLM from a fairseq checkpoint, mapped as transformers'
    `convert_biogpt_original_pytorch_checkpoint_to_pytorch.py` maps it; read by our restricted
    reader (no unpickling of arbitrary objects)."""
    import torch
    import transformers

    model = fairseq.read_model(fairseq.find_files(file))
    config = transformers.BioGptConfig(**model.config.to_dict(), attn_implementation="eager")
    state = {}
    for key, value in model.state_dict.items():
        if key == "decoder.version":
            continue
        name = "output_projection.weight" if key.endswith("output_projection.weight") else key
        name = name.replace("decoder.", "biogpt.", 1)
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    reference = transformers.BioGptForCausalLM(config)
    reference.load_state_dict(state, strict=True)
    return reference.eval()
