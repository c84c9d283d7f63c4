"""Models out: `save_pretrained` for params trained in memory, in transformers' layout or ours.

A saved directory holds config.json (HF's, with `architectures`, `id2label` and `label2id`),
model.safetensors, the tokenizer files when a tokenizer is given, and generation_config.json for
the models that generate (`BioGptForCausalLM`). `layout="hf"` writes transformers' keys through
the architecture's name table read backwards (`weights.export`): `transformers`'
`AutoModel*.from_pretrained(directory)` loads it, and so does ours. `layout="biomed_jax"` writes
our own '/'-path keys, layers stacked. Params may come in either layer layout (`scan_layers` or
not) and with LoRA adapters (merged here by `lora.merge_lora` when their rules are given).

The directory is built beside itself and replaces the old one whole (`files.replace_dir`); it
must be new, empty, or an earlier output of `save_pretrained` or `convert`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax

from biomed_jax.architectures import ARCHITECTURES, ModelConfig, name_table
from biomed_jax.errors import CheckpointError, ConfigError
from biomed_jax.files import atomic_write_text, replace_dir
from biomed_jax.hub import TOKENIZER_FILES
from biomed_jax.lora import LoraRuleLike, has_lora, merge_lora
from biomed_jax.models.common import stack_layers
from biomed_jax.text_files import read_json_object
from biomed_jax.weights.export import export_state_dict
from biomed_jax.weights.formats import FORMAT, SINGLE, safetensors_metadata, save_params

logger = logging.getLogger(__name__)

LAYOUTS = ("hf", "biomed_jax")
GENERATION_CONFIG = "generation_config.json"
# The architectures whose transformers class generates (HF writes their generation_config.json).
GENERATES = ("BioGptForCausalLM",)
TRAIN_STATE = "train_state.safetensors"  # the fine-tuning examples save it beside the model
SAVED_FILES = frozenset({"config.json", SINGLE, GENERATION_CONFIG, TRAIN_STATE, *TOKENIZER_FILES})


class SavesFiles(Protocol):
    """A tokenizer: writes its own files into a directory (`BertTokenizer`, `BioGptTokenizer`)."""

    def save_pretrained(self, directory: str | Path) -> None: ...


def save_pretrained(
    directory: str | Path,
    params: Mapping[str, Any],
    config: ModelConfig,
    *,
    architecture: str | None = None,
    tokenizer: SavesFiles | None = None,
    layout: str = "hf",
    generation_config: Mapping[str, Any] | None = None,
    lora: LoraRuleLike | Sequence[LoraRuleLike] | None = None,
) -> Path:
    """Write `params` of `config`'s model as a checkpoint directory; returns `directory`.

    architecture: the module class (default: `config.architectures[0]`, which `from_pretrained`
    sets). params: the module's params, unrolled or scanned layers, jax or NumPy arrays (gathered
    to the host one tensor at a time). tokenizer: written beside the weights. layout: "hf"
    (transformers' keys) or "biomed_jax" (ours). generation_config: generation_config.json's
    fields, on top of the config's special token ids (architectures that generate only). lora:
    the LoRA rules (`qwix.LoraRule`) the params were trained with: their adapters are merged into
    the base weights first (params holding adapters without their rules are refused).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"save_pretrained: layout={layout!r}; expected one of {LAYOUTS}")
    name = _architecture(config, architecture)
    if generation_config is not None and name not in GENERATES:
        raise ValueError(f"generation_config: {name} does not generate (only {list(GENERATES)})")
    if lora is not None:
        params = merge_lora(params, lora)
    elif has_lora(params):
        raise ValueError(
            "params hold LoRA adapters (*_lora_a, *_lora_b): pass their rules as lora=, or merge "
            "them first with biomed_jax.lora.merge_lora"
        )
    params = stack_layers(jax.device_get(params))  # on the host; files hold the stack scanned
    config = config.replace(architectures=(name,))
    with replace_dir(directory, is_saved_model) as tmp:
        write_model(tmp, params, config, layout, generation_config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory)


def write_model(
    directory: Path,
    params: Mapping[str, Any],
    config: ModelConfig,
    layout: str,
    generation_config: Mapping[str, Any] | None = None,
) -> None:
    """config.json, model.safetensors (scanned `params`, in `layout`) and, for the models that
    generate, generation_config.json, into an existing `directory`."""
    name = _architecture(config, None)
    config.save_pretrained(directory)
    if layout == "hf":
        tensors = export_state_dict(params, name_table(name), config.num_hidden_layers)
        save_params(tensors, directory / SINGLE, {"format": "pt", "written_by": FORMAT})
    else:
        save_params(params, directory / SINGLE, {"architecture": name})
    if name in GENERATES:
        fields = {**default_generation_config(config), **(generation_config or {})}
        atomic_write_text(directory / GENERATION_CONFIG, json.dumps(fields, indent=2) + "\n")


def default_generation_config(config: ModelConfig) -> dict[str, Any]:
    """What transformers derives from the model config (`GenerationConfig.from_model_config`):
    its special token ids."""
    fields = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {f: getattr(config, f) for f in fields if getattr(config, f, None) is not None}


def read_generation_config(directory: Path) -> dict[str, Any] | None:
    """generation_config.json of a checkpoint directory, or None where there is none."""
    file = directory / GENERATION_CONFIG
    return read_json_object(file) if file.is_file() else None


def is_saved_model(directory: Path) -> bool:
    """An earlier output of `save_pretrained` or `convert` (either layout, holding only the files
    they write, and the fine-tuning examples' training state)?"""
    file = directory / SINGLE
    try:
        metadata = safetensors_metadata(file) if file.is_file() else {}
    except CheckpointError:
        return False
    written = FORMAT in (metadata.get("format"), metadata.get("written_by"))
    return written and all(p.name in SAVED_FILES for p in directory.iterdir())


def _architecture(config: ModelConfig, architecture: str | None) -> str:
    name = architecture or (config.architectures[0] if config.architectures else None)
    if name is None:
        raise ConfigError(
            "save_pretrained: which architecture? config.architectures is empty: pass "
            f"architecture= (one of {sorted(ARCHITECTURES)})"
        )
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    family = ARCHITECTURES[name].config
    if not isinstance(config, family):
        raise ConfigError(f"architecture {name} takes a {family.__name__}, not {type(config)}")
    return name
