"""The registry of model classes: architecture name -> module class, config class, name table.

What loading (checkpoint keys -> params) and saving (params -> checkpoint keys) both look up: one
name table per architecture, consumed both ways.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from biomed_jax.errors import ConfigError
from biomed_jax.models import bert, biogpt
from biomed_jax.models.config import BertConfig, BioGptConfig
from biomed_jax.weights.bert_names import bert_name_table
from biomed_jax.weights.biogpt_names import biogpt_name_table
from biomed_jax.weights.names import NameTable

ModelConfig = BertConfig | BioGptConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A module class with its config class and name table."""

    module: type[nn.Module]
    config: type[ModelConfig]
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


def architecture_of(module: nn.Module) -> str:
    """The registered name of `module`'s class (a class wrapped by qwix counts as its base)."""
    cls = getattr(type(module), "_unquantized_type", type(module))
    for name, arch in ARCHITECTURES.items():
        if cls is arch.module:
            return name
    raise ConfigError(f"{cls.__name__} is not a registered architecture")


def name_table(architecture: str) -> NameTable:
    """The name table of a registered architecture."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].name_table(architecture)
