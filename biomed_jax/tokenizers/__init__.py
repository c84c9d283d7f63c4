"""Tokenizers identical to Hugging Face's, in pure Python: BERT WordPiece (and BioGPT, when present)."""

from biomed_jax.tokenizers._encoding import EncodingBase
from biomed_jax.tokenizers.biogpt import BioGptTokenizer
from biomed_jax.tokenizers.wordpiece import BertTokenizer, load_vocab

__all__ = ["BertTokenizer", "BioGptTokenizer", "EncodingBase", "load_vocab"]
