"""fairseq BioGPT checkpoints (Microsoft's released BioGPT, BioGPT-Large and fine-tuned models).

A fairseq model directory holds `checkpoint.pt` (or `checkpoint_avg.pt`, ...), `dict.txt` and
`bpecodes`. This module turns it into what the loader needs: a `BioGptConfig` from the stored
arguments, the state dict checked against them, the fairseq name table, and the tokenizer with
the task's prompt tokens. The checkpoint is read by the restricted reader (`weights.fairseq`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomed_jax.errors import CheckpointError, ConfigError
from biomed_jax.models.config import BioGptConfig
from biomed_jax.tokenizers.biogpt import BioGptTokenizer
from biomed_jax.tokenizers.fairseq_dict import read_dict_txt
from biomed_jax.weights.fairseq import read_fairseq_checkpoint

DICT_FILE = "dict.txt"
BPE_CODES = "bpecodes"
_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "relu": "relu", "tanh": "tanh"}

# fairseq model arguments read into the config: config field <- argument.
_FIELDS = {
    "hidden_size": "decoder_embed_dim",
    "num_hidden_layers": "decoder_layers",
    "num_attention_heads": "decoder_attention_heads",
    "intermediate_size": "decoder_ffn_embed_dim",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}
# Arguments that change the architecture: the value we implement, and fairseq's default (what an
# absent argument means). Any other value is refused.
_REQUIRED: Mapping[str, tuple[Any, Any]] = {
    "decoder_learned_pos": (True, False),
    "share_decoder_input_output_embed": (True, False),
    "decoder_normalize_before": (True, True),
    "no_decoder_final_norm": (False, False),
    "no_token_positional_embeddings": (False, False),
    "layernorm_embedding": (False, False),
    "adaptive_softmax_cutoff": (None, None),
    "adaptive_input": (False, False),
    "character_embeddings": (False, False),
    "tie_adaptive_weights": (False, False),
    "cross_self_attention": (False, False),
    "decoder_layers_to_keep": (None, None),
    "base_layers": (0, 0),
    "quant_noise_pq": (0, 0),
    "scale_fc": (False, False),
    "scale_attn": (False, False),
    "scale_heads": (False, False),
    "scale_resids": (False, False),
    "decoder_xformers_att_config": (None, None),
    "add_bos_token": (False, False),
}
# BioGPT's prompt task (language_modeling_prompt): what we implement of its arguments.
_TASK_REQUIRED: Mapping[str, tuple[Any, Any]] = {
    "prefix": (False, False),
    "manual_prompt": (None, None),
}


@dataclasses.dataclass(frozen=True)
class FairseqFiles:
    checkpoint: Path
    dict_file: Path
    bpecodes: Path


def find_files(path: str | Path) -> FairseqFiles | None:
    """The fairseq files at `path` (a `.pt` file, or a directory with exactly one `.pt` file, no
    config.json), or None when `path` is not a fairseq checkpoint."""
    path = Path(path).expanduser()
    if path.suffix == ".pt" and not path.is_file():
        raise FileNotFoundError(f"no fairseq checkpoint at {path}")
    if path.suffix == ".pt":
        checkpoint, directory = path, path.parent
    elif path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.pt"))
        if not found:
            return None
        if len(found) > 1:
            raise CheckpointError(
                f"{path} holds several fairseq checkpoints {[f.name for f in found]}; "
                "pass the one to load (e.g. DIR/checkpoint_avg.pt)"
            )
        checkpoint, directory = found[0], path
    else:
        return None
    files = FairseqFiles(checkpoint, directory / DICT_FILE, directory / BPE_CODES)
    for name, file in ((DICT_FILE, files.dict_file), (BPE_CODES, files.bpecodes)):
        if not file.is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}: a fairseq BioGPT checkpoint needs the {name} it was "
                f"trained with beside {checkpoint.name} (fairseq data dirs name it dict.x.txt)"
            )
    return files


def _check_required(args: Mapping[str, Any], required: Mapping[str, tuple[Any, Any]], what: str):
    wrong = []
    for key, (implemented, default) in required.items():
        value = args.get(key, default)
        value = None if value == "" else value
        if value != implemented:
            wrong.append(f"{key}={value!r} (only {implemented!r} is implemented)")
    if wrong:
        raise ConfigError(f"unsupported fairseq {what} arguments: " + "; ".join(wrong))


def prompt_words(task_args: Mapping[str, Any]) -> tuple[str, ...]:
    """The words BioGPT's prompt task adds to the dictionary and appends after each source:
    `learned1`..`learnedN` for `--learned-prompt N` (none for other tasks)."""
    _check_required(task_args, _TASK_REQUIRED, "task")
    n = task_args.get("learned_prompt") or 0
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"learned_prompt must be a non-negative int, got {n!r}")
    pattern = task_args.get("learned_prompt_pattern") or "learned"
    return tuple(f"{pattern}{i + 1}" for i in range(n))


def biogpt_config(model_args: Mapping[str, Any], vocab_size: int) -> BioGptConfig:
    """The BioGptConfig of fairseq transformer_lm arguments (cfg["model"] or args)."""
    missing = [a for a in _FIELDS.values() if a not in model_args]
    if missing:
        raise ConfigError(f"fairseq model arguments lack {missing}")
    _check_required(model_args, _REQUIRED, "model")
    width = model_args["decoder_embed_dim"]
    for name in ("decoder_input_dim", "decoder_output_dim"):
        if model_args.get(name, width) != width:
            raise ConfigError(
                f"{name}={model_args[name]} differs from decoder_embed_dim={width} "
                "(projections in and out of the decoder are not implemented)"
            )
    activation = model_args.get("activation_fn", "relu")
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"activation_fn={activation!r} is not implemented: {sorted(_ACTIVATIONS)}"
        )
    positions = model_args.get("max_target_positions") or model_args.get("tokens_per_sample")
    if not positions:
        raise ConfigError(
            "fairseq model arguments give neither max_target_positions nor "
            "tokens_per_sample: the position table size is unknown"
        )
    return BioGptConfig(
        **{field: model_args[arg] for field, arg in _FIELDS.items()},
        hidden_act=_ACTIVATIONS[activation],
        activation_dropout=model_args.get("activation_dropout") or 0.0,
        max_position_embeddings=positions,
        scale_embedding=not model_args.get("no_scale_embedding", False),
        vocab_size=vocab_size,
        architectures=("BioGptForCausalLM",),
    )


@dataclasses.dataclass(frozen=True)
class FairseqArgs:
    """The arguments a fairseq checkpoint was trained with, read-only: `model` = cfg["model"],
    `task` = cfg["task"] (a legacy flat `args` Namespace serves as both)."""

    model: Mapping[str, Any]
    task: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", types.MappingProxyType(dict(self.model)))
        object.__setattr__(self, "task", types.MappingProxyType(dict(self.task)))

    @property
    def prompt_words(self) -> tuple[str, ...]:
        """The learned prompt the task appends after each source (`prompt_words`)."""
        return prompt_words(self.task)


@dataclasses.dataclass(frozen=True)
class FairseqModel:
    """A fairseq BioGPT checkpoint, read and checked: config, fairseq-named tensors, tokenizer,
    the stored arguments."""

    config: BioGptConfig
    state_dict: dict[str, np.ndarray]
    tokenizer: BioGptTokenizer
    files: FairseqFiles
    args: FairseqArgs


def read_model(files: FairseqFiles) -> FairseqModel:
    """Read the checkpoint, dictionary and BPE codes; check the vocabulary, the position table and
    the tied output projection against the tensors."""
    checkpoint = read_fairseq_checkpoint(files.checkpoint)
    words = prompt_words(checkpoint.task_args)
    dictionary = read_dict_txt(files.dict_file).add_symbols(words)
    config = biogpt_config(checkpoint.model_args, len(dictionary))
    state = dict(checkpoint.model)
    source = files.checkpoint
    embed = state.get("decoder.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{source} has no decoder.embed_tokens.weight")
    if embed.shape[0] != len(dictionary):
        raise CheckpointError(
            f"{source} has {embed.shape[0]} embedding rows, but {files.dict_file.name} "
            f"({len(dictionary) - 4 - len(words)} words + 4 specials) and the task's "
            f"{len(words)} prompt tokens make {len(dictionary)}: use the dict.txt the model "
            "was trained with"
        )
    positions = state.get("decoder.embed_positions.weight")
    expected = config.max_position_embeddings + BioGptConfig.POSITION_OFFSET
    if positions is not None and positions.shape[0] != expected:
        raise CheckpointError(
            f"{source}: decoder.embed_positions.weight has {positions.shape[0]} rows; the "
            f"arguments' max_target_positions={config.max_position_embeddings} needs {expected}"
        )
    head = state.get("decoder.output_projection.weight")
    if head is not None and not np.array_equal(head, embed):
        raise CheckpointError(
            f"{source}: decoder.output_projection.weight differs from decoder.embed_tokens.weight "
            "although share_decoder_input_output_embed is set"
        )
    tokenizer = BioGptTokenizer.from_fairseq(
        files.dict_file,
        files.bpecodes,
        prompt_words=words,
        model_max_length=config.max_position_embeddings,
    )
    args = FairseqArgs(checkpoint.model_args, checkpoint.task_args)
    return FairseqModel(config, state, tokenizer, files, args)
