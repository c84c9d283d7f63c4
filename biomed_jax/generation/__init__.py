"""Text generation for causal LMs: greedy, sampling and beam search, compiled whole (HF semantics)."""

from biomed_jax.generation.api import DecodeOutput, decode, generate

__all__ = ["DecodeOutput", "decode", "generate"]
