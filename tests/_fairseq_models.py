"""fairseq BioGPT checkpoints written the way fairseq writes them, from seeded transformers models.

`write_checkpoint` saves `torch.save({...})` with fairseq's top-level keys (args / cfg, model,
criterion, optimizer_history, task_state, extra_state, last_optimizer_state), fairseq parameter
names (`decoder.` prefix, `decoder.output_projection.weight` sharing the embedding's storage,
`decoder.version`), and the arguments of Microsoft's fine-tuning runs (examples/*/train.sh after
fairseq's `transformer_lm_gpt2_small` / `_big` defaults). `hf_reference` maps the same file the
way transformers' conversion script does, as the reference model.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any

import numpy as np
import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# dict.txt words in fairseq's form (`@@` = continues the word); "the", "th@@ ing" via bpecodes.
WORDS = [".", ",", "the", "th@@", "in@@", "ing", *LETTERS, *(c + "@@" for c in LETTERS)]
WORDS += [str(d) for d in range(10)]
MERGES = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>")]


def write_vocab_files(directory: Path, words: list[str] = WORDS) -> None:
    """dict.txt (`word count`, no specials) and bpecodes (`left right count`)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"{w} {1000 - i}\n" for i, w in enumerate(words)]
    (directory / "dict.txt").write_text("".join(lines), encoding="utf-8")
    codes = [f"{a} {b} {500 - i}\n" for i, (a, b) in enumerate(MERGES)]
    (directory / "bpecodes").write_text("".join(codes), encoding="utf-8")


def write_dict_from_vocab_json(path: Path, vocab: dict[str, int], extra_lines=()) -> Path:
    """vocab.json -> dict.txt in fairseq's format (rows 4.. in id order; `</w>` ends a word
    in vocab.json, fairseq marks the other pieces with `@@`)."""
    rows = sorted((i, t) for t, i in vocab.items() if i >= 4)
    lines = [f"{t[:-4] if t.endswith('</w>') else t + '@@'} {10**6 - i}\n" for i, t in rows]
    path.write_text("".join(lines) + "".join(extra_lines), encoding="utf-8")
    return path


def model_args(
    width: int, layers: int, heads: int, ffn: int, positions: int, **overrides: Any
) -> dict[str, Any]:
    """cfg.model of `--arch transformer_lm_prompt_biogpt` after fairseq's defaults."""
    args = {
        "_name": "transformer_lm_prompt_biogpt",
        "activation_fn": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "relu_dropout": 0.0,
        "decoder_embed_dim": width,
        "decoder_output_dim": width,
        "decoder_input_dim": width,
        "decoder_ffn_embed_dim": ffn,
        "decoder_layers": layers,
        "decoder_attention_heads": heads,
        "decoder_normalize_before": True,
        "no_decoder_final_norm": False,
        "adaptive_softmax_cutoff": None,
        "adaptive_softmax_dropout": 0.0,
        "adaptive_softmax_factor": 4.0,
        "no_token_positional_embeddings": False,
        "share_decoder_input_output_embed": True,
        "character_embeddings": False,
        "character_filters": "[(1, 64), (2, 128), (3, 192), (4, 256), (5, 256), (6, 256), (7, 256)]",
        "character_embedding_dim": 4,
        "char_embedder_highway_layers": 2,
        "adaptive_input": False,
        "adaptive_input_factor": 4.0,
        "adaptive_input_cutoff": None,
        "tie_adaptive_weights": False,
        "tie_adaptive_proj": False,
        "decoder_learned_pos": True,
        "layernorm_embedding": False,
        "no_scale_embedding": False,
        "checkpoint_activations": False,
        "offload_activations": False,
        "decoder_layerdrop": 0.0,
        "decoder_layers_to_keep": None,
        "quant_noise_pq": 0.0,
        "quant_noise_pq_block_size": 8,
        "quant_noise_scalar": 0.0,
        "min_params_to_wrap": 100000000,
        "base_layers": 0,
        "base_sublayers": 1,
        "base_shuffle": 1,
        "scale_fc": False,
        "scale_attn": False,
        "scale_heads": False,
        "scale_resids": False,
        "decoder_xformers_att_config": None,
        "add_bos_token": False,
        "tokens_per_sample": positions,
        "max_target_positions": positions,
        "tpu": False,
    }
    args.update(overrides)
    return args


def task_args(positions: int, learned_prompt: int | None = 9) -> dict[str, Any]:
    """cfg.task of `--task language_modeling_prompt --learned-prompt N`."""
    return {
        "_name": "language_modeling_prompt",
        "data": "../../data/BC5CDR/relis-bin",
        "sample_break_mode": "none",
        "tokens_per_sample": positions,
        "output_dictionary_size": -1,
        "self_target": False,
        "future_target": False,
        "past_target": False,
        "add_bos_token": False,
        "max_target_positions": positions,
        "shorten_method": "none",
        "shorten_data_split_list": "",
        "pad_to_fixed_length": False,
        "pad_to_fixed_bsz": False,
        "seed": 1,
        "batch_size": None,
        "batch_size_valid": None,
        "dataset_impl": None,
        "data_buffer_size": 10,
        "tpu": False,
        "use_plasma_view": False,
        "plasma_path": "/tmp/plasma",
        "source_lang": "x",
        "target_lang": "y",
        "max_source_positions": 640,
        "manual_prompt": None,
        "learned_prompt": learned_prompt,
        "learned_prompt_pattern": "learned",
        "prefix": False,
        "sep_token": "<seqsep>",
    }


def fairseq_state(hf_model: torch.nn.Module) -> collections.OrderedDict:
    """A transformers BioGptForCausalLM's weights under fairseq's names, as fairseq's
    `state_dict()` has them (the output projection is the embedding's parameter)."""
    state = collections.OrderedDict()
    for key, value in hf_model.state_dict().items():
        if key == "output_projection.weight":
            continue
        state["decoder." + key.removeprefix("biogpt.")] = value.clone()
    state["decoder.version"] = torch.tensor([3.0])
    state["decoder.output_projection.weight"] = state["decoder.embed_tokens.weight"]
    return state


def write_checkpoint(
    path: Path,
    state: collections.OrderedDict,
    margs: dict[str, Any],
    targs: dict[str, Any],
    style: str = "cfg",
) -> Path:
    """torch.save a fairseq checkpoint. style: "cfg" (fairseq >= 0.10: cfg as plain dicts),
    "dictconfig" (cfg as an omegaconf DictConfig, with an interpolation), "namespace" (cfg with
    the model section as an argparse Namespace) or "args" (legacy: one flat Namespace)."""
    params = [v for k, v in state.items() if k not in ("decoder.version",)]
    adam = {
        i: {"step": 10, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        for i, p in enumerate(params)
    }
    ckpt: dict[str, Any] = {
        "args": None,
        "cfg": None,
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "CrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": np.float64(2.3125)},
                "num_updates": 1000,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": collections.OrderedDict(
                default=[(0, "loss", "AverageMeter", {"val": 2.5, "sum": torch.tensor(25.0)})]
            ),
            "previous_training_time": 1234.5,
            "train_iterator": {"epoch": 5, "iterations_in_epoch": 0, "shuffle": True},
            "val_loss": np.float64(2.3125),
            "best": collections.defaultdict(float, loss=np.float32(2.5)),
        },
        "last_optimizer_state": {
            "state": adam,
            "param_groups": [{"lr": [1e-5], "betas": (0.9, 0.98), "params": list(adam)}],
            "loss_scale": 64.0,
        },
    }
    cfg = {
        "_name": None,
        "common": {"fp16": True, "seed": 1, "log_interval": 100},
        "checkpoint": {"save_dir": "../../checkpoints/RE-BC5CDR-BioGPT", "keep_last_epochs": 5},
        "optimization": {"lr": [1e-5], "update_freq": [32], "max_epoch": 100},
        "model": margs,
        "task": targs,
        "criterion": {"_name": "cross_entropy"},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)", "weight_decay": 0.01},
        "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 100},
        "bpe": None,
        "tokenizer": None,
    }
    if style == "cfg":
        ckpt["cfg"] = cfg
    elif style == "dictconfig":
        from omegaconf import OmegaConf

        model = dict(margs, max_target_positions="${task.max_target_positions}")
        ckpt["cfg"] = OmegaConf.create(dict(cfg, model=model))
    elif style == "namespace":
        ckpt["cfg"] = dict(cfg, model=argparse.Namespace(**margs))
    elif style == "args":
        flat = {**targs, **margs, "arch": margs["_name"], "task": targs["_name"]}
        flat.pop("_name")
        ckpt["args"] = argparse.Namespace(**flat, optimizer="adam", lr=[1e-5], fp16=True)
        del ckpt["cfg"]
    else:
        raise ValueError(style)
    torch.save(ckpt, path)
    return path


def hf_reference(fairseq_file: Path, vocab_size: int):
    """transformers' BioGptForCausalLM from a fairseq file, mapped the way transformers'
    `convert_biogpt_original_pytorch_checkpoint_to_pytorch.py` maps it (config from
    cfg["model"], `decoder.` -> `biogpt.`, output projection to the top level)."""
    from transformers import BioGptConfig, BioGptForCausalLM

    ckpt = torch.load(fairseq_file, map_location="cpu", weights_only=False)
    args = ckpt["cfg"]["model"]
    config = BioGptConfig(
        activation_dropout=args["activation_dropout"],
        attention_probs_dropout_prob=args["attention_dropout"],
        bos_token_id=0,
        eos_token_id=2,
        hidden_act=args["activation_fn"],
        hidden_dropout_prob=args["dropout"],
        hidden_size=args["decoder_embed_dim"],
        initializer_range=0.02,
        intermediate_size=args["decoder_ffn_embed_dim"],
        layer_norm_eps=1e-12,
        layerdrop=args["decoder_layerdrop"],
        max_position_embeddings=args["max_target_positions"],
        num_attention_heads=args["decoder_attention_heads"],
        num_hidden_layers=args["decoder_layers"],
        pad_token_id=1,
        scale_embedding=not args["no_scale_embedding"],
        tie_word_embeddings=args["share_decoder_input_output_embed"],
        vocab_size=vocab_size,
    )
    state = dict(ckpt["model"])
    state.pop("decoder.version")
    mapped = {}
    for key, value in state.items():
        if key.endswith("output_projection.weight"):
            mapped[key.replace("decoder.", "")] = value
        else:
            mapped[key.replace("decoder", "biogpt")] = value
    model = BioGptForCausalLM(config)
    model.load_state_dict(mapped)
    return model.eval()


def seeded_hf_model(width, layers, heads, ffn, positions, vocab_size, seed=0):
    """A transformers BioGptForCausalLM with seeded random weights (LayerNorms too)."""
    from transformers import BioGptConfig, BioGptForCausalLM

    torch.manual_seed(seed)
    config = BioGptConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
    )
    model = BioGptForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def write_model_dir(
    directory: Path,
    shape: tuple[int, int, int, int, int] = (32, 2, 4, 64, 64),
    *,
    words: list[str] = WORDS,
    learned: int = 9,
    seed: int = 0,
    model: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    style: str = "cfg",
) -> Path:
    """A prompt-tuned tiny fairseq BioGPT directory: dict.txt and bpecodes of `words`, and
    checkpoint.pt of a seeded model of `shape` (width, layers, heads, ffn, positions) with
    `learned` prompt rows; `model`, `task` and `state` replace arguments or tensors."""
    write_vocab_files(directory, words)
    weights = fairseq_state(seeded_hf_model(*shape, 4 + len(words) + learned, seed=seed))
    weights.update(state or {})
    margs = model_args(*shape, **(model or {}))
    targs = {**task_args(shape[4], learned), **(task or {})}
    return write_checkpoint(directory / "checkpoint.pt", weights, margs, targs, style)
