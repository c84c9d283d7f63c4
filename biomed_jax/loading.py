"""Checkpoints in, models out: `from_pretrained`, `load_params`, `convert`.

A directory is either an HF checkpoint (config.json + model.safetensors or pytorch_model.bin;
converted in memory through the model's name table) or one of ours (written by `convert`:
config.json + model.safetensors whose metadata says format=biomed_jax, keys are our '/'-paths).
A fairseq BioGPT checkpoint (`.pt` + dict.txt + bpecodes, `biomed_jax.fairseq`) goes through its
own name table the same way.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from biomed_jax import fairseq, hub
from biomed_jax.models import bert, biogpt
from biomed_jax.models.common import to_layout
from biomed_jax.models.config import BertConfig, BioGptConfig, HFConfig
from biomed_jax.weights.bert_names import bert_name_table
from biomed_jax.weights.biogpt_names import HF_EXPORT, biogpt_name_table, fairseq_biogpt_name_table
from biomed_jax.weights.convert import NameTable, convert_state_dict
from biomed_jax.weights.export import export_state_dict
from biomed_jax.weights.io import (
    CheckpointError,
    atomic_path,
    flatten,
    read_hf_state_dict,
    read_safetensors,
    safetensors_metadata,
    save_params,
    unflatten,
)

FORMAT = "biomed_jax"
TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A module class with its config class, name table and the default for its model type."""

    module: type[nn.Module]
    config: type[HFConfig]
    name_table: Callable[[str], NameTable]


ARCHITECTURES: dict[str, Architecture] = {
    name: Architecture(getattr(bert, name), BertConfig, bert_name_table)
    for name in (
        "BertModel",
        "BertForMaskedLM",
        "BertForSequenceClassification",
        "BertForTokenClassification",
    )
}
ARCHITECTURES.update(
    (name, Architecture(getattr(biogpt, name), BioGptConfig, biogpt_name_table))
    for name in (
        "BioGptModel",
        "BioGptForCausalLM",
        "BioGptForSequenceClassification",
        "BioGptForTokenClassification",
    )
)
DEFAULT_ARCHITECTURE = {"bert": "BertModel", "biogpt": "BioGptModel"}


def register_architecture(name: str, arch: Architecture, default_for: str | None = None) -> None:
    ARCHITECTURES[name] = arch
    if default_for is not None:
        DEFAULT_ARCHITECTURE[default_for] = name


@dataclasses.dataclass
class Pretrained:
    """What `from_pretrained` returns: config, params, module and tokenizer (when files exist)."""

    config: Any
    params: dict[str, Any]
    module: nn.Module
    tokenizer: Any = None
    path: Path | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.apply({"params": self.params}, *args, **kwargs)


def _read_config_json(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json: not a model checkpoint directory")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def resolve_architecture(hf_config: dict[str, Any], architecture: str | None) -> str:
    if architecture is None:
        listed = hf_config.get("architectures") or []
        known = [a for a in listed if a in ARCHITECTURES]
        model_type = hf_config.get("model_type", "bert")
        if known:
            architecture = known[0]
        elif model_type in DEFAULT_ARCHITECTURE:
            architecture = DEFAULT_ARCHITECTURE[model_type]
        else:
            raise ValueError(f"unsupported model_type {model_type!r}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return architecture


def param_template(module: nn.Module) -> dict[str, Any]:
    """Parameter shapes and dtypes, without allocating (jax.eval_shape of init)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))
    return nn.unbox(variables["params"])


def init_params(module: nn.Module, seed: int = 0) -> dict[str, Any]:
    ids = jnp.zeros((1, 1), jnp.int32)
    return nn.unbox(module.init(jax.random.key(seed), ids)["params"])


def is_converted(directory: Path) -> bool:
    file = directory / "model.safetensors"
    return file.is_file() and safetensors_metadata(file).get("format") == FORMAT


def load_params(path: str | Path, dtype: Any = None, scan_layers: bool = False) -> dict[str, Any]:
    """The nested param dict of a converted checkpoint (directory or its model.safetensors), in
    the layout of a module with `scan_layers` (files store the stack scanned: [L, ...] tensors)."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model.safetensors at {file}")
    if safetensors_metadata(file).get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a biomed_jax checkpoint; use from_pretrained() or convert() for HF files"
        )
    flat = read_safetensors(file)
    if dtype is not None:
        flat = {k: v.astype(dtype) for k, v in flat.items()}
    return to_layout(unflatten(flat), scan_layers)


def _build(
    directory: Path,
    architecture: str | None,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    config_overrides: dict[str, Any],
    scan_layers: bool,
) -> tuple[Any, nn.Module, str, dict[str, Any]]:
    hf_config = _read_config_json(directory)
    name = resolve_architecture(hf_config, architecture)
    arch = ARCHITECTURES[name]
    config = arch.config.from_dict(hf_config, **config_overrides)
    if getattr(config, "architectures", None) != (name,):
        config = config.replace(architectures=(name,))
    module = arch.module(
        config, dtype=dtype, param_dtype=param_dtype, precision=precision, scan_layers=scan_layers
    )
    return config, module, name, hf_config


def _convert_hf(
    directory: Path, module: nn.Module, name: str, param_dtype: Any, seed: int = 0
) -> dict[str, Any]:
    """The HF checkpoint's params in the scanned layout (stacked over layers)."""
    arch = ARCHITECTURES[name]
    module = module.clone(scan_layers=True)
    return convert_state_dict(
        read_hf_state_dict(directory),
        arch.name_table(name),
        param_template(module),
        module.config.num_hidden_layers,
        init_fresh=lambda: init_params(module, seed),
        dtype=param_dtype,
    )


def _check_against_template(params: dict[str, Any], module: nn.Module, source: Path) -> None:
    """Scanned-layout `params` against the scanned version of `module`."""
    template = param_template(module.clone(scan_layers=True))
    expected = {k: tuple(v.shape) for k, v in flatten(template).items()}
    got = {k: tuple(v.shape) for k, v in flatten(params).items()}
    problems = [f"missing parameter {k} {s}" for k, s in expected.items() if k not in got]
    problems += [f"unexpected parameter {k}" for k in got if k not in expected]
    problems += [
        f"shape mismatch for {k}: file {got[k]}, model {s}"
        for k, s in expected.items()
        if k in got and got[k] != s
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))


def load_tokenizer(directory: Path, config: Any) -> Any:
    """The tokenizer whose files are in `directory`, or None."""
    from biomed_jax import tokenizers

    if (directory / "vocab.txt").is_file() and hasattr(tokenizers, "BertTokenizer"):
        # model_max_length: tokenizer_config.json, else the model's position table, else 512
        max_positions = getattr(config, "max_position_embeddings", None) or 512
        return tokenizers.BertTokenizer.from_pretrained(
            directory, default_model_max_length=max_positions
        )
    if (directory / "merges.txt").is_file() and hasattr(tokenizers, "BioGptTokenizer"):
        return tokenizers.BioGptTokenizer.from_pretrained(directory)
    return None


def from_pretrained(
    path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    architecture: str | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    precision: Any = "highest",
    mesh: Any = None,
    rules: Any = None,
    scan_layers: bool = False,
    seed: int = 0,
    **config_overrides: Any,
) -> Pretrained:
    """Load an HF, converted or fairseq checkpoint into a `Pretrained` (config, params, module,
    tokenizer).

    `path`: a local directory, a fairseq BioGPT `.pt` file (with dict.txt and bpecodes beside it,
    see `biomed_jax.fairseq`), or a hub id (with `revision`, `cache_dir`: the HF hub cache) whose
    HF checkpoint is converted once into our cache (`biomed_jax.hub`) and read from there later.

    `architecture` picks the module class (default: the config's `architectures`, else the base
    model); task heads absent from the checkpoint are initialized anew with a warning, as HF does,
    from `jax.random.key(seed)`.
    `config_overrides` (e.g. num_labels=3) replace config fields.
    `scan_layers`: run the layer stack as one `nn.scan` (params stacked [L, ...]; compiles faster)
    instead of unrolled layers with their own weight buffers (default; faster at run time).
    `mesh` (a `biomed_jax.sharding.make_mesh`): each device reads only its own shards of the
    safetensors, placed by `rules` (`biomed_jax.sharding`, default FSDP_TP).
    """
    dtype = jnp.float32 if dtype is None else dtype
    fairseq_files = fairseq.find_files(path)
    if fairseq_files is not None:
        if mesh is not None:
            raise ValueError(
                "mesh= reads safetensors: `biomed-jax convert` the fairseq checkpoint first"
            )
        pretrained, _ = _from_fairseq(
            fairseq_files, architecture, dtype, param_dtype, precision, config_overrides
        )
        return dataclasses.replace(
            pretrained,
            params=to_layout(pretrained.params, scan_layers),
            module=pretrained.module.clone(scan_layers=scan_layers),
        )
    source = hub.resolve(path, revision=revision, cache_dir=cache_dir)
    directory = source.path
    config, module, name, hf_config = _build(
        directory, architecture, dtype, param_dtype, precision, config_overrides, scan_layers
    )
    # Cache only what needs no fresh head: the checkpoint's own architecture, no config overrides.
    if (
        source.repo_id is not None
        and not is_converted(directory)
        and not config_overrides
        and name in (hf_config.get("architectures") or ())
    ):
        directory = hub.cached_conversion(source, name, convert, is_converted)
    if mesh is not None:
        from biomed_jax.weights.lazy import load_on_mesh

        params = load_on_mesh(directory, module, name, mesh, rules, param_dtype, seed)
    elif is_converted(directory):
        params = load_params(directory, dtype=param_dtype, scan_layers=True)
        _check_against_template(params, module, directory)
        params = to_layout(params, scan_layers)
    else:
        params = to_layout(_convert_hf(directory, module, name, param_dtype, seed), scan_layers)
    return Pretrained(config, params, module, load_tokenizer(directory, config), directory)


def _from_fairseq(
    files: fairseq.FairseqFiles,
    architecture: str | None,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    config_overrides: dict[str, Any],
) -> tuple[Pretrained, fairseq.FairseqModel]:
    """A fairseq BioGPT checkpoint through its name table, in the scanned layout."""
    model = fairseq.read_model(files)
    name = architecture or "BioGptForCausalLM"
    if name not in ARCHITECTURES or ARCHITECTURES[name].config is not BioGptConfig:
        raise ValueError(f"a fairseq BioGPT checkpoint loads as a BioGPT class, not {name!r}")
    config = model.config.replace(architectures=(name,), **config_overrides)
    module = ARCHITECTURES[name].module(
        config, dtype=dtype, param_dtype=param_dtype, precision=precision, scan_layers=True
    )
    params = convert_state_dict(
        model.state_dict,
        fairseq_biogpt_name_table(name),
        param_template(module),
        config.num_hidden_layers,
        init_fresh=lambda: init_params(module),
        dtype=param_dtype,
    )
    return Pretrained(config, params, module, model.tokenizer, files.checkpoint), model


LAYOUTS = ("biomed_jax", "hf")


def convert(
    src_dir: str | Path,
    dst_dir: str | Path,
    *,
    architecture: str | None = None,
    to: str = "biomed_jax",
) -> Path:
    """Convert an HF checkpoint directory or a fairseq BioGPT checkpoint (`.pt` file or its
    directory) into ours (`to="biomed_jax"`) or into transformers' layout (`to="hf"`):
    model.safetensors, config.json, tokenizer files.

    Every file is written atomically; model.safetensors goes last, so a directory that has it is
    complete.
    """
    if to not in LAYOUTS:
        raise ValueError(f"convert: to={to!r}; expected one of {LAYOUTS}")
    src, dst = Path(src_dir), Path(dst_dir)
    if src.resolve() == dst.resolve():
        raise ValueError("convert: source and destination must differ")
    fairseq_files = fairseq.find_files(src)
    if fairseq_files is not None:
        pretrained, model = _from_fairseq(
            fairseq_files, architecture, jnp.float32, jnp.float32, "highest", {}
        )
        config, params, name = (
            pretrained.config,
            pretrained.params,
            pretrained.config.architectures[0],
        )
        dst.mkdir(parents=True, exist_ok=True)
        fairseq.write_tokenizer_files(model, dst)
    else:
        config, module, name, _ = _build(
            src, architecture, jnp.float32, jnp.float32, "highest", {}, scan_layers=True
        )
        params = _convert_hf(src, module, name, None)
        dst.mkdir(parents=True, exist_ok=True)
        for file in TOKENIZER_FILES:
            if (src / file).is_file():
                with atomic_path(dst / file) as tmp:
                    shutil.copyfile(src / file, tmp)
    config.save_pretrained(dst)
    if to == "hf":
        if name not in HF_EXPORT:
            raise ValueError(f"convert --to hf writes {sorted(HF_EXPORT)}, not {name}")
        tensors = export_state_dict(params, HF_EXPORT[name], config.num_hidden_layers)
        save_params(tensors, dst / "model.safetensors", {"format": "pt"})
    else:
        save_params(params, dst / "model.safetensors", {"format": FORMAT, "architecture": name})
    return dst
