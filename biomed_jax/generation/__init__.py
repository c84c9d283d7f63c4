"""Text generation for causal LMs: greedy, sampling and beam search, compiled whole (HF semantics)."""

from biomed_jax.generation.generate import generate

__all__ = ["generate"]
