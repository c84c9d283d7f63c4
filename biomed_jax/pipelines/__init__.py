"""Pipelines: text in, plain data out (fill-mask, embeddings, attention maps, generation).

Each takes `model=`: a hub id, a local directory, or a `Pretrained` from `from_pretrained`.
Defaults: BiomedBERT (abstract + full text) for the encoder pipelines, BioGPT for generation.
"""

from biomed_jax.pipelines._common import DEFAULT_DECODER, DEFAULT_ENCODER
from biomed_jax.pipelines.attention import attention, plot_attention
from biomed_jax.pipelines.embed import EmbedStats, embed
from biomed_jax.pipelines.fill_mask import fill_mask
from biomed_jax.pipelines.stream import embed_file
from biomed_jax.pipelines.text_generation import generate_text

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_ENCODER",
    "EmbedStats",
    "attention",
    "embed",
    "embed_file",
    "fill_mask",
    "generate_text",
    "plot_attention",
]
