"""biomed_jax: BiomedBERT and BioGPT in JAX/Flax, conformant to Hugging Face transformers."""

from biomed_jax.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from biomed_jax.generation import generate
from biomed_jax.hub import ModelNotFoundError
from biomed_jax.loading import (
    ARCHITECTURES,
    Pretrained,
    convert,
    from_pretrained,
    load_params,
)
from biomed_jax.models.bert import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from biomed_jax.models.biogpt import (
    BioGptForCausalLM,
    BioGptForSequenceClassification,
    BioGptForTokenClassification,
    BioGptModel,
)
from biomed_jax.models.config import BertConfig, BioGptConfig
from biomed_jax.pipelines import attention, embed, fill_mask, generate_text
from biomed_jax.saving import save_pretrained
from biomed_jax.sharding import make_mesh, shard_batch, shard_params
from biomed_jax.tokenizers import BertTokenizer, BioGptTokenizer

__all__ = [
    "ARCHITECTURES",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertTokenizer",
    "BioGptConfig",
    "BioGptForCausalLM",
    "BioGptForSequenceClassification",
    "BioGptForTokenClassification",
    "BioGptModel",
    "BioGptTokenizer",
    "CheckpointError",
    "ConfigError",
    "ModelNotFoundError",
    "Pretrained",
    "UnsafeCheckpointError",
    "attention",
    "convert",
    "embed",
    "fill_mask",
    "from_pretrained",
    "generate",
    "generate_text",
    "load_params",
    "make_mesh",
    "save_pretrained",
    "shard_batch",
    "shard_params",
]
