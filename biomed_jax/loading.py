"""Checkpoints in, models out: `from_pretrained`, `load_params`, `convert`.

A directory is either an HF checkpoint (config.json + model.safetensors, shards with their index,
or pytorch_model.bin; mapped through the model's name table) or one of ours (written by
`convert`: model.safetensors whose metadata says format=biomed_jax, keys are our '/'-paths).
A fairseq BioGPT checkpoint (`.pt` + dict.txt + bpecodes, `biomed_jax.fairseq`) goes through its
own name table. All are read by one pipeline (`weights`): files -> plan (keys x name table x
template) -> validated -> read whole or per device -> params.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from biomed_jax import fairseq, hub
from biomed_jax import sharding as shd
from biomed_jax.architectures import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    Architecture,
    ModelConfig,
    architecture_of,
    name_table,
    register_architecture,
)
from biomed_jax.errors import CheckpointError, ConfigError
from biomed_jax.files import owned, real_target, replace_dir
from biomed_jax.hub import TOKENIZER_FILES
from biomed_jax.models.common import (
    RematPolicy,
    check_remat,
    init_params,
    param_template,
    to_layout,
)
from biomed_jax.models.config import BioGptConfig
from biomed_jax.nn.layers import Dtype
from biomed_jax.numerics import PLAIN, Policy, PrecisionLike, resolve
from biomed_jax.saving import (
    GENERATES,
    LAYOUTS,
    is_saved_model,
    read_generation_config,
    save_pretrained,
    write_model,
)
from biomed_jax.text_files import read_json_object
from biomed_jax.tokenizers import BertTokenizer, BioGptTokenizer
from biomed_jax.trees import unflatten
from biomed_jax.weights.biogpt_names import fairseq_biogpt_name_table
from biomed_jax.weights.dtypes import FLOAT_DTYPES
from biomed_jax.weights.formats import (
    FORMAT,
    SINGLE,
    in_memory,
    is_converted,
    open_checkpoint,
)
from biomed_jax.weights.plan import make_plan
from biomed_jax.weights.reader import read_params

logger = logging.getLogger(__name__)
# How long `from_pretrained` waits for another process converting the same hub model.
HUB_CONVERSION_WAIT_S = 3600.0

__all__ = [
    "ARCHITECTURES",
    "FORMAT",
    "TOKENIZER_FILES",
    "Architecture",
    "MissingTokenizer",
    "Pretrained",
    "check_vocabulary",
    "convert",
    "from_pretrained",
    "init_params",
    "is_converted",
    "load_params",
    "load_tokenizer",
    "param_template",
    "read_checkpoint",
    "register_architecture",
    "resolve_architecture",
]

Tokenizer = BertTokenizer | BioGptTokenizer
Params = dict[str, "Params | jax.Array | np.ndarray"]  # nested by module path

# Per model type: the tokenizer class and the files it needs.
TOKENIZERS: dict[str, tuple[type[Tokenizer], tuple[str, ...]]] = {
    "bert": (BertTokenizer, ("vocab.txt",)),
    "biogpt": (BioGptTokenizer, ("vocab.json", "merges.txt")),
}


@dataclasses.dataclass(frozen=True)
class MissingTokenizer:
    """Stands in for the tokenizer of a model directory without tokenizer files: any use of it
    raises an error that names the missing files and says how to supply a tokenizer."""

    directory: Path | None
    missing: tuple[str, ...]

    def error(self) -> FileNotFoundError:
        where = (
            f"{self.directory} has no tokenizer ({', '.join(self.missing)} missing). Copy the "
            "files into that directory, or attach"
            if self.directory is not None
            else "this model was built without a tokenizer; attach"
        )
        return FileNotFoundError(
            f"{where} one loaded elsewhere: "
            "pre = dataclasses.replace(pre, tokenizer=BertTokenizer.from_pretrained(other_dir))"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise self.error()

    def __call__(self, *args: object, **kwargs: object) -> Any:
        raise self.error()


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What `from_pretrained` returns: config, params, module, tokenizer and where they came from.

    Call it like the module: `pre(input_ids, attention_mask, output_hidden_states=True)` runs
    `module.apply` compiled (`jit`), once per set of non-array keyword values (the arrays' shapes
    and dtypes recompile as `jit` does); the arguments are checked on the host first, as an
    uncompiled call checks them. `params` are jax arrays on the default device (or sharded, with
    `mesh=`); to place them on a mesh later use `pre.shard(mesh, rules)` (the module knows their
    logical axes). `save_pretrained` writes the model back (transformers' layout or ours).
    `fairseq_args`: a fairseq checkpoint's stored training arguments (None for other formats).
    """

    config: ModelConfig
    params: Params
    module: nn.Module
    tokenizer: Tokenizer | MissingTokenizer = MissingTokenizer(None, ())
    path: Path | None = None
    fairseq_args: fairseq.FairseqArgs | None = None  # a fairseq checkpoint's stored arguments

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.module.check_call(*args, **kwargs)
        static = {k: v for k, v in kwargs.items() if not _holds_arrays(v)}
        dynamic = {k: v for k, v in kwargs.items() if k not in static}
        try:
            apply = _compiled_apply(self.module, tuple(sorted(static.items())))
        except TypeError:  # an unhashable non-array argument (mutable=[...]): run uncompiled
            return self.module.apply({"params": self.params}, *args, **kwargs)
        return apply(self.params, args, dynamic)

    def shard(self, mesh: Mesh, rules: shd.Rules | str | None = None) -> Pretrained:
        """This model with its params placed on `mesh` by `rules` (default FSDP_TP)."""
        params = shd.shard_params(self.params, mesh, rules, module=self.module)
        return dataclasses.replace(self, params=params)

    def save_pretrained(
        self,
        directory: str | Path,
        layout: str = "hf",
        *,
        generation_config: Mapping[str, Any] | None = None,
        lora: Any = None,
    ) -> Path:
        """Write this model (its current params, config and tokenizer) as a checkpoint directory:
        `layout="hf"` for transformers' `from_pretrained` (and ours), `"biomed_jax"` for ours.
        generation_config.json (generating models) keeps the fields of the directory it was loaded
        from, updated by `generation_config`. See `biomed_jax.saving.save_pretrained`."""
        name = architecture_of(self.module)
        fields = None if generation_config is None else dict(generation_config)
        if name in GENERATES and self.path is not None and self.path.is_dir():
            loaded = read_generation_config(self.path)
            fields = {**loaded, **(fields or {})} if loaded else fields
        tokenizer = None if isinstance(self.tokenizer, MissingTokenizer) else self.tokenizer
        return save_pretrained(
            directory,
            self.params,
            self.config,
            architecture=name,
            tokenizer=tokenizer,
            layout=layout,
            generation_config=fields,
            lora=lora,
        )


def _holds_arrays(value: Any) -> bool:
    """Does a call argument hold arrays (traced under `jit`), or only Python values (static)?"""
    return any(isinstance(x, jax.Array | np.ndarray | np.generic) for x in jax.tree.leaves(value))


@functools.lru_cache(maxsize=64)
def _compiled_apply(module: nn.Module, static: tuple[tuple[str, Any], ...]) -> Callable:
    """`module.apply` jitted with the keyword arguments `static` fixed (one per module and set)."""

    def apply(params: Params, args: tuple, dynamic: dict[str, Any]) -> Any:
        return module.apply({"params": params}, *args, **dict(static), **dynamic)

    return jax.jit(apply)


def read_config_json(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict; errors name the file."""
    file = directory / "config.json"
    if not file.is_file() and not file.exists():
        raise FileNotFoundError(f"{directory} has no config.json: not a model checkpoint directory")
    return read_json_object(file)


def resolve_architecture(hf_config: dict[str, Any], architecture: str | None) -> str:
    """The architecture to build: `architecture`, else the config's `architectures` (a list of
    known names), else the base model of its `model_type`. It must fit the `model_type`."""
    model_type = hf_config.get("model_type", "bert")
    if model_type not in DEFAULT_ARCHITECTURE:
        raise ConfigError(
            f"unsupported model_type {model_type!r}; supported: {sorted(DEFAULT_ARCHITECTURE)}"
        )
    listed = hf_config.get("architectures")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
            raise ConfigError(f"architectures must be a list of names, got {listed!r}")
        unknown = [a for a in listed if a not in ARCHITECTURES]
        if unknown:
            raise ConfigError(
                f"unknown architectures {unknown}; known: {sorted(ARCHITECTURES)} (pass "
                "architecture= to load the checkpoint as one of them)"
            )
    if architecture is None:
        architecture = listed[0] if listed else DEFAULT_ARCHITECTURE[model_type]
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    family = ARCHITECTURES[architecture].config.model_type
    if family != model_type:
        raise ConfigError(
            f"architecture {architecture} is a {family} model; config.json says {model_type!r}"
        )
    return architecture


def build(
    directory: Path,
    architecture: str | None = None,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    policy: Policy = PLAIN,
    scan_layers: bool = False,
    **config_overrides: Any,
) -> tuple[ModelConfig, nn.Module]:
    """The config and module a checkpoint directory's config.json describes (no weights)."""
    hf_config = read_config_json(directory)
    name = resolve_architecture(hf_config, architecture)
    arch = ARCHITECTURES[name]
    config = arch.config.from_dict(hf_config, source=directory / "config.json", **config_overrides)
    config = config.replace(architectures=(name,))
    module = arch.module(
        config, dtype=dtype, param_dtype=param_dtype, policy=policy, scan_layers=scan_layers
    )
    return config, module


def read_checkpoint(
    directory: Path,
    module: nn.Module,
    shardings: Mapping[str, object] | None = None,
    seed: int = 0,
    *,
    on_device: bool = False,
) -> Params:
    """`module`'s params from the checkpoint in `directory`, in its layer layout: numpy arrays,
    jax arrays on the default device (`on_device`), or placed by `shardings` (a tree like the
    params; each device reads only its own blocks). Task heads the checkpoint lacks are
    initialized from `jax.random.key(seed)`."""

    def init_fresh(placement: Mapping[str, object] | None) -> Params:
        if placement is None:
            return init_params(module, seed)
        return jax.jit(lambda: init_params(module, seed), out_shardings=placement)()

    with open_checkpoint(directory) as checkpoint:
        table = None if checkpoint.converted else name_table(architecture_of(module))
        plan = make_plan(checkpoint, table, param_template(module))
        return read_params(checkpoint, plan, shardings, init_fresh, on_device=on_device)


def load_params(path: str | Path, dtype: Dtype = None, scan_layers: bool = False) -> Params:
    """The nested param dict of a converted checkpoint (directory or its model.safetensors), in
    the layout of a module with `scan_layers` (files store the stack scanned: [L, ...] tensors)."""
    path = Path(path)
    file = path / SINGLE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {SINGLE} at {file}")
    with open_checkpoint(file) as checkpoint:
        if not checkpoint.converted:
            raise CheckpointError(
                f"{file} is not a biomed_jax checkpoint; use from_pretrained() or convert() for HF "
                "files"
            )
        # the file's own shapes; its dtypes where they are floats (make_plan refuses the others)
        template = unflatten(
            {
                key: jax.ShapeDtypeStruct(file.shape(key), dtype or _float_or_f32(file.dtype(key)))
                for key, file in checkpoint.owner.items()
            }
        )
        params = read_params(checkpoint, make_plan(checkpoint, None, template))
    return to_layout(params, scan_layers)


def _float_or_f32(dtype: np.dtype | str) -> np.dtype:
    return dtype if dtype in FLOAT_DTYPES else np.dtype(np.float32)  # type: ignore[return-value]


def load_tokenizer(directory: Path, config: ModelConfig | None = None) -> Tokenizer | None:
    """The tokenizer of `directory` for `config`'s model type (None: whichever files are
    there), or None if its files are missing."""
    kinds = [TOKENIZERS[config.model_type]] if config is not None else list(TOKENIZERS.values())
    for cls, files in kinds:
        if all((directory / f).is_file() for f in files):
            if cls is BertTokenizer:
                # model_max_length: tokenizer_config.json, else the model's position table, else 512
                max_positions = getattr(config, "max_position_embeddings", None) or 512
                return cls.from_pretrained(directory, default_model_max_length=max_positions)
            return cls.from_pretrained(directory)
    return None


def _tokenizer(directory: Path, config: ModelConfig) -> Tokenizer | MissingTokenizer:
    tokenizer = load_tokenizer(directory, config)
    if tokenizer is not None:
        check_vocabulary(tokenizer, config, directory)
        return tokenizer
    _, files = TOKENIZERS[config.model_type]
    missing = tuple(f for f in files if not (directory / f).is_file())
    logger.warning(
        "%s has no tokenizer files (%s missing): the model loads, using its tokenizer raises",
        directory,
        ", ".join(missing),
    )
    return MissingTokenizer(directory, missing)


def check_vocabulary(tokenizer: Tokenizer, config: ModelConfig, directory: Path) -> None:
    """The tokenizer's ids must index the model's token embeddings (under jit, an id past them
    embeds to NaN): ConfigError if they run past `vocab_size`, a warning if they stop short."""
    ids = max(tokenizer.ids_to_tokens) + 1
    if ids > config.vocab_size:
        raise ConfigError(
            f"{directory}: the tokenizer has ids 0..{ids - 1}, the model {config.vocab_size} "
            "token embeddings (config.json vocab_size): this tokenizer does not belong to this "
            "model (use the tokenizer files it was trained with)"
        )
    if ids < config.vocab_size:
        logger.warning(
            "%s: the tokenizer has %d ids, the model %d token embeddings (config.json "
            "vocab_size): the last %d are never used",
            directory,
            ids,
            config.vocab_size,
            config.vocab_size - ids,
        )


def from_pretrained(
    path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    architecture: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    policy: Policy | str = "fast",
    precision: PrecisionLike = None,
    mesh: Mesh | None = None,
    rules: shd.Rules | str | None = None,
    scan_layers: bool = False,
    gradient_checkpointing: bool = False,
    remat_policy: RematPolicy = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Pretrained:
    """Load an HF or converted checkpoint into a `Pretrained` (config, params, module, tokenizer).

    `path`: a local directory, a fairseq BioGPT `.pt` file (with dict.txt and bpecodes beside it,
    see `biomed_jax.fairseq`), or a hub id (with `revision`, `cache_dir`: the HF hub cache) whose
    HF checkpoint is converted once into our cache (`biomed_jax.hub`) and read from there later.

    `architecture` picks the module class (default: the config's `architectures`, else the base
    model); task heads absent from the checkpoint are initialized anew with a warning, as HF does,
    from `jax.random.key(seed)`.
    `config_overrides` (e.g. num_labels=3) replace config fields.
    `dtype` / `param_dtype`: compute and parameter dtypes (HF-Flax's). `policy`: how to compute
    (`biomed_jax.numerics`: "fast", the default, "exact", or a `Policy`), resolved here for the
    current backend; `precision` (HF-Flax's), when given, replaces its matmul precision.
    `scan_layers`: run the layer stack as one `nn.scan` (params stacked [L, ...]; compiles faster)
    instead of unrolled layers with their own weight buffers (default; faster at run time).
    `gradient_checkpointing`: recompute each layer's activations in the backward pass (`nn.remat`)
    instead of keeping them; `remat_policy` says what each layer keeps all the same (the name of a
    `jax.checkpoint_policies` policy, e.g. "dots_with_no_batch_dims_saveable", or a policy).
    The params come back as jax arrays on the default device, each put there as it is read.
    `mesh` (a `biomed_jax.sharding.make_mesh`): each device reads only its own shards of the
    safetensors, placed by `rules` (`biomed_jax.sharding`, default FSDP_TP).
    """
    dtype = jnp.float32 if dtype is None else dtype
    remat = {"gradient_checkpointing": gradient_checkpointing, "remat_policy": remat_policy}
    check_remat(**remat)
    numerics = {"dtype": dtype, "param_dtype": param_dtype, "policy": resolve(policy, precision)}
    fairseq_files = fairseq.find_files(path)
    if fairseq_files is not None:
        if mesh is not None:
            raise ValueError(
                "mesh= reads safetensors: `biomed-jax convert` the fairseq checkpoint first"
            )
        pretrained, _ = _from_fairseq(
            fairseq_files,
            architecture,
            scan_layers=scan_layers,
            seed=seed,
            on_device=True,
            **numerics,
            **config_overrides,
        )
        return dataclasses.replace(pretrained, module=pretrained.module.clone(**remat))
    source = hub.resolve(path, revision=revision, cache_dir=cache_dir)
    directory = source.path
    config, module = build(
        directory,
        architecture,
        dtype=dtype,
        param_dtype=param_dtype,
        policy=numerics["policy"],
        scan_layers=scan_layers,
        **config_overrides,
    )
    name = config.architectures[0]
    # Cache only what needs no fresh head: the checkpoint's own architecture, no config overrides.
    if (
        source.repo_id is not None
        and not config_overrides
        and not is_converted(directory)
        and name in (read_config_json(directory).get("architectures") or ())
    ):
        target = hub.conversion_dir(source, name)
        if not is_converted(target):
            with owned(target, wait_s=HUB_CONVERSION_WAIT_S):  # another process may convert it
                if not is_converted(target):
                    logger.info("converting %s once into %s", source.repo_id, target)
                    convert(directory, target, architecture=name)
        directory = target
    shardings = None if mesh is None else shd.param_shardings(module, mesh, rules)
    params = read_checkpoint(directory, module, shardings, seed, on_device=True)
    module = module.clone(**remat)
    return Pretrained(config, params, module, _tokenizer(directory, config), directory)


def _from_fairseq(
    files: fairseq.FairseqFiles,
    architecture: str | None,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    policy: Policy = PLAIN,
    scan_layers: bool = False,
    seed: int = 0,
    on_device: bool = False,
    **config_overrides: Any,
) -> tuple[Pretrained, fairseq.FairseqModel]:
    """A fairseq BioGPT checkpoint through its name table, read by the same plan and reader."""
    model = fairseq.read_model(files)
    name = architecture or "BioGptForCausalLM"
    if name not in ARCHITECTURES or ARCHITECTURES[name].config is not BioGptConfig:
        raise ConfigError(f"a fairseq BioGPT checkpoint loads as a BioGPT class, not {name!r}")
    config = model.config.replace(architectures=(name,), **config_overrides)
    module = ARCHITECTURES[name].module(
        config, dtype=dtype, param_dtype=param_dtype, policy=policy, scan_layers=scan_layers
    )
    checkpoint = in_memory(str(files.checkpoint), model.state_dict)
    plan = make_plan(checkpoint, fairseq_biogpt_name_table(name), param_template(module))
    init_fresh = lambda _: init_params(module, seed)
    params = read_params(checkpoint, plan, init_fresh=init_fresh, on_device=on_device)
    pretrained = Pretrained(config, params, module, model.tokenizer, files.checkpoint, model.args)
    return pretrained, model


def convert(
    src_dir: str | Path,
    dst_dir: str | Path,
    *,
    architecture: str | None = None,
    to: str = "biomed_jax",
) -> Path:
    """Convert an HF checkpoint directory or a fairseq BioGPT checkpoint (`.pt` file or its
    directory) into ours (`to="biomed_jax"`) or into transformers' layout (`to="hf"`), any
    architecture: model.safetensors, config.json, tokenizer files, generation_config.json (kept
    from the source, or derived from the config, for the models that generate).

    `dst_dir` must be new, empty, or an earlier output of `convert` or `save_pretrained`; it is
    built beside itself and replaces the old one whole (see `biomed_jax.files.replace_dir`), so a
    directory that exists is complete, and no file of another model survives in it. A symlink at
    `dst_dir` is followed (the link keeps pointing at the new directory). Another `convert` into
    the same destination at the same time is refused (`OutputBusyError`); nothing beside `dst_dir`
    but its own lock file and temporaries (`.<name>.biomed_jax-*`) is ever created or removed.
    """
    if to not in LAYOUTS:
        raise ValueError(f"convert: to={to!r}; expected one of {LAYOUTS}")
    src, dst = Path(src_dir), real_target(dst_dir)
    if src.resolve() == dst.resolve():
        raise ValueError("convert: source and destination must differ")
    fairseq_files = fairseq.find_files(src)
    tokenizer, generation = None, None
    if fairseq_files is not None:
        pretrained, _ = _from_fairseq(fairseq_files, architecture, scan_layers=True)
        config, params, tokenizer = pretrained.config, pretrained.params, pretrained.tokenizer
    else:
        config, module = build(src, architecture, scan_layers=True)
        params = read_checkpoint(src, module)
        generation = read_generation_config(src) if config.architectures[0] in GENERATES else None
    with replace_dir(dst, is_saved_model) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        else:
            for file in TOKENIZER_FILES:
                if (src / file).is_file():
                    shutil.copyfile(src / file, tmp / file)
        write_model(tmp, params, config, to, generation)
    return Path(dst_dir)
