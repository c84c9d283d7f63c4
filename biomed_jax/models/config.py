"""Model configurations: frozen dataclasses that read and write Hugging Face `config.json`.

One mechanism serves every model (penzai's converter habit): each config lists the HF keys it
handles (its fields), the keys it knowingly ignores, and the keys it only supports at one value.
Any other key, or a supported key at an unsupported value, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jax.numpy as jnp

from biomed_jax.errors import ConfigError
from biomed_jax.text_files import read_json_object

_C = TypeVar("_C", bound="HFConfig")

# Keys of every HF config that do not change the computation we implement.
_GENERIC_IGNORED = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "model_type",
        "dtype",
        "torch_dtype",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "chunk_size_feed_forward",  # chunking changes memory, not results
        "gradient_checkpointing",
        "use_return_dict",
        "torchscript",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "finetuning_task",
        "output_past",
        "layerdrop",  # training-time layer dropping; inference is unaffected
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "problem_type",
    }
)

# Generic keys that we support only at their default value.
_GENERIC_REQUIRED: Mapping[str, Any] = {
    "is_encoder_decoder": False,
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "pruned_heads": {},
    "cross_attention_hidden_size": None,
}

# Size caps (docs/security.md). The unrolled layer stack is traced layer by layer (~0.1 s each on
# a loaded CPU), and no published BERT or BioGPT has more than 48 layers.
MAX_HIDDEN_LAYERS = 256
PARAM_BYTES = 4  # float32: the parameter count a config implies must fit in memory at 4 bytes

ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "silu",
    "swish",
    "tanh",
)


def _invalid(owner: str, problems: list[str]) -> ConfigError:
    """One ConfigError listing every problem (kept as `.problems` for `from_dict` to merge)."""
    error = ConfigError(f"{owner}:\n  - " + "\n  - ".join(problems))
    error.problems = problems  # type: ignore[attr-defined]
    return error


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """Base: HF interop (`from_dict`/`to_dict`/`from_pretrained`) and validation."""

    model_type: ClassVar[str] = ""
    ignored_keys: ClassVar[frozenset[str]] = frozenset()
    required_values: ClassVar[Mapping[str, Any]] = {}

    num_labels: int = 2
    id2label: tuple[str, ...] | None = None
    problem_type: str | None = None

    def __post_init__(self) -> None:
        problems = [*_type_problems(self).values(), *self.validate()]
        if problems:
            raise _invalid(f"invalid {type(self).__name__}", problems)

    def validate(self) -> list[str]:
        """Every problem with the well-typed field values, as messages naming the field."""
        problems: list[str] = []
        if set(_type_problems(self)) & {"num_labels", "id2label", "problem_type"}:
            return problems
        if self.num_labels < 1:
            problems.append(f"num_labels must be >= 1, got {self.num_labels}")
        if self.id2label is not None and len(self.id2label) != self.num_labels:
            problems.append(
                f"id2label has {len(self.id2label)} labels but num_labels={self.num_labels}"
            )
        if self.problem_type not in (
            None,
            "regression",
            "single_label_classification",
            "multi_label_classification",
        ):
            problems.append(f"unknown problem_type {self.problem_type!r}")
        return problems

    @classmethod
    def from_dict(
        cls: type[_C],
        hf_config: Mapping[str, Any],
        *,
        source: str | Path | None = None,
        **overrides: Any,
    ) -> _C:
        """Build from an HF `config.json` dict; refuses keys we neither handle nor ignore.

        Every problem (unknown keys, unsupported values, wrong types, bad sizes, labels) is
        reported in one ConfigError, prefixed with `source` (the file) when given.
        """
        hf_config = dict(hf_config)
        problems: list[str] = []
        model_type = hf_config.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            problems.append(
                f"{cls.__name__} expects model_type {cls.model_type!r}, got {model_type!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        labels = _labels_from_json(hf_config.pop("id2label", None), hf_config.pop("label2id", None))
        if isinstance(labels, list):
            problems += labels
        elif labels is not None:
            kwargs["id2label"] = labels
            kwargs["num_labels"] = len(labels)
        hf_config.pop("architectures", None)
        required = {**_GENERIC_REQUIRED, **cls.required_values}
        for key, value in hf_config.items():
            if key in names:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            elif key in required:
                if value != required[key]:
                    problems.append(
                        f"{key}={reprlib.repr(value)} (only {required[key]!r} is implemented)"
                    )
            elif key not in _GENERIC_IGNORED and key not in cls.ignored_keys:
                problems.append(f"unknown key {key!r}")
        problems += [f"unknown config override {key!r}" for key in overrides if key not in names]
        kwargs.update((k, v) for k, v in overrides.items() if k in names)
        labels = kwargs.get("id2label")
        if labels is not None and "num_labels" in overrides and len(labels) != kwargs["num_labels"]:
            kwargs["id2label"] = None
        try:
            config = cls(**kwargs)
        except ConfigError as e:
            problems += getattr(e, "problems", [str(e)])
        if problems:
            where = f"{source}: " if source is not None else ""
            raise _invalid(f"{where}unsupported or invalid {cls.__name__}", problems)
        return config

    def to_dict(self) -> dict[str, Any]:
        """The HF `config.json` dict for this config (readable by transformers)."""
        out: dict[str, Any] = {"model_type": self.model_type}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "id2label":
                labels = value or tuple(f"LABEL_{i}" for i in range(self.num_labels))
                out["id2label"] = {str(i): label for i, label in enumerate(labels)}
                out["label2id"] = {label: i for i, label in enumerate(labels)}
            elif field.name == "num_labels":
                continue
            elif field.name == "architectures":
                out["architectures"] = list(value) if value else None
            else:
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_pretrained(cls: type[_C], path: str | Path, **overrides: Any) -> _C:
        """Read `config.json` from a checkpoint directory or a path to the file itself."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}")
        return cls.from_dict(read_json_object(file), source=file, **overrides)

    def save_pretrained(self, directory: str | Path) -> None:
        from biomed_jax.weights.io import atomic_write_text

        atomic_write_text(Path(directory) / "config.json", json.dumps(self.to_dict(), indent=2))

    def replace(self: _C, **changes: Any) -> _C:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class BertConfig(HFConfig):
    """BERT encoder; defaults are BiomedBERT-base (uncased, vocab 30522)."""

    model_type: ClassVar[str] = "bert"
    ignored_keys: ClassVar[frozenset[str]] = frozenset()
    required_values: ClassVar[Mapping[str, Any]] = {"position_embedding_type": "absolute"}

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    architectures: tuple[str, ...] | None = None

    def validate(self) -> list[str]:
        return super().validate() + _check_common(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class BioGptConfig(HFConfig):
    """BioGPT decoder; defaults are microsoft/biogpt (347M)."""

    model_type: ClassVar[str] = "biogpt"
    ignored_keys: ClassVar[frozenset[str]] = frozenset()
    required_values: ClassVar[Mapping[str, Any]] = {}

    vocab_size: int = 42384
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    activation_dropout: float = 0.0
    # Not in HF's BioGptConfig, but BioGptForTokenClassification reads it when config.json has it.
    classifier_dropout: float | None = None
    max_position_embeddings: int = 1024
    initializer_range: float = 0.02
    # Read for interop only: HF's BioGPT builds every LayerNorm with torch's default eps 1e-5.
    layer_norm_eps: float = 1e-12
    scale_embedding: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    architectures: tuple[str, ...] | None = None

    # The epsilon HF's BioGPT really uses (nn.LayerNorm default), whatever layer_norm_eps says.
    REFERENCE_LAYER_NORM_EPS: ClassVar[float] = 1e-5
    POSITION_OFFSET: ClassVar[int] = 2

    def validate(self) -> list[str]:
        return super().validate() + _check_common(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size) if self.scale_embedding else 1.0

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = jnp.float32):
        """An empty fixed-size KV cache for `max_length` slots."""
        from biomed_jax.nn.attention import KVCache

        return KVCache.zeros(
            self.num_hidden_layers,
            batch_size,
            max_length,
            self.num_attention_heads,
            self.head_dim,
            dtype,
        )


def _check_common(config: BertConfig | BioGptConfig) -> list[str]:
    """Value checks; each runs only when the fields it reads are well-typed."""
    bad = set(_type_problems(config))

    def ok(*names: str) -> bool:
        return not bad.intersection(names)

    problems = []
    if ok("hidden_act") and config.hidden_act not in ACTIVATIONS:
        problems.append(
            f"hidden_act {config.hidden_act!r} is not implemented; use one of {ACTIVATIONS}"
        )
    sizes = [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ] + (["type_vocab_size"] if isinstance(config, BertConfig) else [])
    problems += [
        f"{n} must be positive, got {getattr(config, n)}"
        for n in sizes
        if ok(n) and getattr(config, n) <= 0
    ]
    heads, width = config.num_attention_heads, config.hidden_size
    if ok("num_attention_heads", "hidden_size") and heads > 0 and width % heads:
        problems.append(f"hidden_size {width} is not a multiple of num_attention_heads {heads}")
    eps = config.layer_norm_eps
    if ok("layer_norm_eps") and not (math.isfinite(eps) and eps > 0):
        problems.append(f"layer_norm_eps must be finite and > 0, got {eps}")
    std = config.initializer_range
    if ok("initializer_range") and not (math.isfinite(std) and std >= 0):
        problems.append(f"initializer_range must be finite and >= 0, got {std}")
    for name in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "activation_dropout",
        "classifier_dropout",
    ):
        p = getattr(config, name, None)
        if ok(name) and p is not None and not 0 <= p <= 1:
            problems.append(f"{name} must be in [0, 1], got {p}")
    pad, vocab = config.pad_token_id, config.vocab_size
    if ok("pad_token_id", "vocab_size") and pad is not None and not 0 <= pad < vocab:
        problems.append(f"pad_token_id {pad} is not an id of the vocabulary (vocab_size {vocab})")
    if ok("num_hidden_layers") and config.num_hidden_layers > MAX_HIDDEN_LAYERS:
        problems.append(
            f"num_hidden_layers {config.num_hidden_layers} is above the cap of {MAX_HIDDEN_LAYERS}"
        )
    if not problems and not bad:
        problems += _memory_problems(config)
    return problems


def num_parameters_bound(config: BertConfig | BioGptConfig) -> int:
    """An upper bound on the parameter count of every architecture built from `config`
    (the encoder/decoder stack plus all task heads at once)."""
    d, f, v, c = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_labels
    layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
    if isinstance(config, BertConfig):
        embed = (v + config.max_position_embeddings + config.type_vocab_size) * d + 2 * d
        heads = (d * d + d) + (d * d + 3 * d + v) + (d * c + c)  # pooler, MLM head, classifier
    else:
        embed = (v + config.max_position_embeddings + config.POSITION_OFFSET) * d
        heads = 2 * d + v * d + 2 * (d * c + c)  # final LayerNorm, LM head, classifiers
    return embed + config.num_hidden_layers * layer + heads


def memory_bytes() -> int | None:
    """This machine's physical memory, or the address-space limit when lower (None: unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            total = min(total, soft)
    except ImportError:
        pass
    return total


def _memory_problems(config: BertConfig | BioGptConfig) -> list[str]:
    """The size cap: `num_parameters_bound` float32 parameters must fit in `memory_bytes()`."""
    memory = memory_bytes()
    count = num_parameters_bound(config)
    if memory is None or count * PARAM_BYTES <= memory:
        return []
    return [
        f"the config implies up to {count:,} parameters ({count * PARAM_BYTES / 2**30:.1f} GiB in "
        f"float32), more than this machine's memory ({memory / 2**30:.1f} GiB): check vocab_size, "
        "hidden_size, intermediate_size, num_hidden_layers, max_position_embeddings, num_labels"
    ]


def _labels_from_json(id2label: Any, label2id: Any) -> tuple[str, ...] | list[str] | None:
    """HF's id2label ({"0": "A", ...}) and label2id as our label tuple, or the list of problems."""
    if id2label is None:
        return None if label2id is None else ["label2id is given without id2label"]
    if not isinstance(id2label, dict):
        return [f"id2label must be an object {{id: label}}, got {reprlib.repr(id2label)}"]
    problems, labels = [], {}
    for key, label in id2label.items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 1 << 31:
            key = str(key)  # an in-memory HF config (transformers' to_dict) has int ids
        if not (isinstance(key, str) and re.fullmatch(r"0|[1-9][0-9]{0,9}", key)):
            problems.append(f"id2label key {key!r} is not a label id (0, 1, ...)")
        elif not isinstance(label, str):
            problems.append(f"id2label[{key!r}] must be a string, got {reprlib.repr(label)}")
        else:
            labels[int(key)] = label
    gaps = sorted(set(range(len(id2label))) - labels.keys())
    if not problems and gaps:
        problems.append(
            f"id2label has no label for ids {gaps[:10]} (ids must be 0..{len(id2label) - 1})"
        )
    if problems:
        return problems
    ordered = tuple(labels[i] for i in range(len(labels)))
    if label2id is not None and label2id != {label: i for i, label in enumerate(ordered)}:
        return [
            f"label2id {reprlib.repr(label2id)} is not the inverse of id2label {reprlib.repr(id2label)}"
        ]
    return ordered


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_problems(config: HFConfig) -> dict[str, str]:
    """{field: message} for every field whose value does not have the annotated type."""
    hints = _type_hints(type(config))
    problems = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        hint = hints[field.name]
        if not _has_type(value, hint):
            problems[field.name] = (
                f"{field.name} must be {_type_name(hint)}, got {reprlib.repr(value)} "
                f"({type(value).__name__})"
            )
    return problems


def _has_type(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        (item, _) = typing.get_args(hint)
        return isinstance(value, tuple) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return "an int" if hint is int else f"a {hint.__name__}"
