"""The models (BERT, BioGPT), their configs and their output types (HF's names and fields)."""

from biomed_jax.models.outputs import (
    BaseModelOutput,
    CausalLMOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

__all__ = [
    "BaseModelOutput",
    "CausalLMOutput",
    "MaskedLMOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
]
