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

from biomed_jax.errors import CheckpointError, ConfigError, shown
from biomed_jax.models.config import BioGptConfig
from biomed_jax.tokenizers.biogpt import BioGptTokenizer
from biomed_jax.tokenizers.fairseq_dict import read_dict_txt
from biomed_jax.validation import INT32_MAX
from biomed_jax.weights.fairseq import read_fairseq_checkpoint

DICT_FILE = "dict.txt"
BPE_CODES = "bpecodes"
# `--learned-prompt N` adds N tokens to every prompt, so N is below any position table (BioGPT:
# 9 of 1024); the cap keeps a hostile N from building a billion words.
MAX_LEARNED_PROMPT = 1 << 16
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
        what = "is not a regular file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"no fairseq checkpoint at {path}: it {what}")
    if path.suffix == ".pt":
        checkpoint, directory = path, path.parent
    elif path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.glob("*.pt") if p.is_file())  # no FIFO: it would block
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
        if file.exists() and not file.is_file():
            raise FileNotFoundError(f"{file} is not a regular file (a FIFO or device?)")
        if not file.is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}: a fairseq BioGPT checkpoint needs the {name} it was "
                f"trained with beside {checkpoint.name} (fairseq data dirs name it dict.x.txt)"
            )
    return files


_SCALARS = (type(None), bool, int, float, str)


def _required_problems(args: Mapping[str, Any], required: Mapping[str, tuple[Any, Any]]):
    """Each argument that changes the architecture at a value other than the one implemented
    (a boolean one must be a real bool: the string "False" is not False)."""
    wrong = []
    for key, (implemented, default) in required.items():
        value = args.get(key, default)
        value = None if isinstance(value, str) and value == "" else value
        if isinstance(implemented, bool) and not isinstance(value, bool):
            wrong.append(
                f"{key}={shown(value)} (must be True or False; {implemented} is implemented)"
            )
        elif type(value) not in _SCALARS or value != implemented:
            wrong.append(f"{key}={shown(value)} (only {implemented!r} is implemented)")
    return wrong


def _check_required(args: Mapping[str, Any], required: Mapping[str, tuple[Any, Any]], what: str):
    wrong = _required_problems(args, required)
    if wrong:
        raise ConfigError(f"unsupported fairseq {what} arguments: " + "; ".join(wrong))


def prompt_words(task_args: Mapping[str, Any]) -> tuple[str, ...]:
    """The words BioGPT's prompt task adds to the dictionary and appends after each source:
    `learned1`..`learnedN` for `--learned-prompt N` (none for other tasks); N is checked before
    any word is built."""
    _check_required(task_args, _TASK_REQUIRED, "task")
    n = task_args.get("learned_prompt") or 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_LEARNED_PROMPT:
        raise ConfigError(
            f"fairseq task argument learned_prompt={shown(n)} must be an int in "
            f"[0, {MAX_LEARNED_PROMPT}]"
        )
    pattern = task_args.get("learned_prompt_pattern") or "learned"
    if not isinstance(pattern, str) or len(pattern) > 100 or pattern.split() != [pattern]:
        raise ConfigError(
            f"fairseq task argument learned_prompt_pattern={shown(pattern)} must be a word"
        )
    return tuple(f"{pattern}{i + 1}" for i in range(n))


def _int(args: Mapping[str, Any], name: str, problems: list[str], low: int = 1) -> int | None:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT32_MAX:
        problems.append(f"{name}={shown(value)} (must be an int >= {low})")
        return None
    return value


def _probability(args: Mapping[str, Any], name: str, problems: list[str]) -> float:
    value = args.get(name) or 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        problems.append(f"{name}={shown(value)} (must be a number in [0, 1])")
        return 0.0
    return float(value)


def biogpt_config(model_args: Mapping[str, Any], vocab_size: int) -> BioGptConfig:
    """The BioGptConfig of fairseq transformer_lm arguments (cfg["model"] or args). Every problem
    is listed in one ConfigError by the fairseq argument's name."""
    missing = [a for a in _FIELDS.values() if a not in model_args]
    if missing:
        raise ConfigError(f"fairseq model arguments lack {missing}")
    problems = _required_problems(model_args, _REQUIRED)
    sizes = {
        field: _int(model_args, arg, problems)
        for field, arg in _FIELDS.items()
        if not arg.endswith("dropout")
    }
    dropouts = {
        field: _probability(model_args, arg, problems)
        for field, arg in (*_FIELDS.items(), ("activation_dropout", "activation_dropout"))
        if arg.endswith("dropout")
    }
    width = sizes["hidden_size"]
    for name in ("decoder_input_dim", "decoder_output_dim"):
        value = model_args.get(name, width)
        if width is not None and (type(value) is not int or value != width):
            problems.append(
                f"{name}={shown(value)} differs from decoder_embed_dim={width} (projections in "
                "and out of the decoder are not implemented)"
            )
    activation = model_args.get("activation_fn", "relu")
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        problems.append(
            f"activation_fn={shown(activation)} (implemented: {', '.join(sorted(_ACTIVATIONS))})"
        )
    source = "max_target_positions" if model_args.get("max_target_positions") else None
    source = source or ("tokens_per_sample" if model_args.get("tokens_per_sample") else None)
    if source is None:
        problems.append(
            "neither max_target_positions nor tokens_per_sample is given: the position table "
            "size is unknown"
        )
    positions = _int(model_args, source, problems) if source else None
    no_scale = model_args.get("no_scale_embedding", False)
    if not isinstance(no_scale, bool):
        problems.append(f"no_scale_embedding={shown(no_scale)} (must be True or False)")
    if problems:
        raise ConfigError("unsupported fairseq model arguments: " + "; ".join(problems))
    try:
        return BioGptConfig(
            **sizes,
            **dropouts,
            hidden_act=_ACTIVATIONS[activation],
            max_position_embeddings=positions,
            scale_embedding=not no_scale,
            vocab_size=vocab_size,
            architectures=("BioGptForCausalLM",),
        )
    except ConfigError as e:  # e.g. heads not dividing the width: say it in fairseq's names
        named = [f"{field} = {arg}" for field, arg in _FIELDS.items() if field in str(e)]
        if source is not None and "max_position_embeddings" in str(e):
            named.append(f"max_position_embeddings = {source}")
        raise ConfigError(
            f"{e} (the config's fields from fairseq arguments: {', '.join(named)})"
        ) from None


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
    source = files.checkpoint
    try:
        words = prompt_words(checkpoint.task_args)
        dictionary = read_dict_txt(files.dict_file).add_symbols(words)
        config = biogpt_config(checkpoint.model_args, len(dictionary))
    except ConfigError as e:
        if str(e).startswith(str(files.dict_file)):
            raise
        raise ConfigError(f"{source}: {e}") from None
    state = dict(checkpoint.model)
    for name in ("decoder.embed_tokens.weight", "decoder.embed_positions.weight"):
        if name in state and state[name].ndim != 2:
            raise CheckpointError(
                f"{source}: {name} has shape {state[name].shape}, not [rows, width]"
            )
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
