"""Model configurations: frozen dataclasses that read and write Hugging Face `config.json`.

One mechanism serves every model (penzai's converter habit): each config lists the HF keys it
handles (its fields), the keys it knowingly ignores, and the keys it only supports at one value.
Any other key, or a supported key at an unsupported value, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jax.numpy as jnp

from biomed_jax.errors import ConfigError
from biomed_jax.files import atomic_write_text

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
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and isinstance(value, bool | float):
                raise ConfigError(f"{field.name} must be an int, got {value!r}")
        if self.id2label is not None and len(self.id2label) != self.num_labels:
            raise ConfigError(
                f"id2label has {len(self.id2label)} labels but num_labels={self.num_labels}"
            )
        if self.problem_type not in (
            None,
            "regression",
            "single_label_classification",
            "multi_label_classification",
        ):
            raise ConfigError(f"unknown problem_type {self.problem_type!r}")
        self.validate()

    def validate(self) -> None:
        """Model-specific checks; raise ConfigError."""

    @classmethod
    def from_dict(cls: type[_C], hf_config: Mapping[str, Any], **overrides: Any) -> _C:
        """Build from an HF `config.json` dict; refuses keys we neither handle nor ignore."""
        hf_config = dict(hf_config)
        model_type = hf_config.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ConfigError(
                f"{cls.__name__} expects model_type {cls.model_type!r}, got {model_type!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown, unsupported = [], []
        id2label = hf_config.pop("id2label", None)
        hf_config.pop("label2id", None)
        hf_config.pop("architectures", None)
        if id2label is not None:
            labels = {int(k): v for k, v in id2label.items()}
            kwargs["id2label"] = tuple(labels[i] for i in range(len(labels)))
            kwargs["num_labels"] = len(labels)
        required = {**_GENERIC_REQUIRED, **cls.required_values}
        for key, value in hf_config.items():
            if key in names:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            elif key in required:
                if value != required[key]:
                    unsupported.append(f"{key}={value!r} (only {required[key]!r} is implemented)")
            elif key not in _GENERIC_IGNORED and key not in cls.ignored_keys:
                unknown.append(key)
        if unknown or unsupported:
            raise ConfigError(
                f"{cls.__name__}: unsupported config: "
                + "; ".join(unsupported + [f"unknown key {k!r}" for k in unknown])
            )
        kwargs.update(overrides)
        labels = kwargs.get("id2label")
        if labels is not None and "num_labels" in overrides and len(labels) != kwargs["num_labels"]:
            kwargs["id2label"] = None
        return cls(**kwargs)

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
        with open(file, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **overrides)

    def save_pretrained(self, directory: str | Path) -> None:
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

    def validate(self) -> None:
        _check_common(self)

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

    def validate(self) -> None:
        _check_common(self)

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


def _check_common(config: BertConfig | BioGptConfig) -> None:
    if config.hidden_act not in ACTIVATIONS:
        raise ConfigError(
            f"hidden_act {config.hidden_act!r} is not implemented; use one of {ACTIVATIONS}"
        )
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_attention_heads}"
        )
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
