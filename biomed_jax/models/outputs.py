"""Model outputs: pytrees with Hugging Face's field names."""

from __future__ import annotations

import flax.struct
import jax

from biomed_jax.nn.attention import KVCache

HiddenStates = tuple[jax.Array, ...] | None  # num_layers + 1 arrays [B, T, D]
Attentions = tuple[jax.Array, ...] | None  # num_layers arrays [B, N, T, S]


@flax.struct.dataclass
class BaseModelOutput:
    last_hidden_state: jax.Array  # [B, T, D]
    pooler_output: jax.Array | None = None  # [B, D]
    hidden_states: HiddenStates = None
    attentions: Attentions = None
    cache: KVCache | None = None


@flax.struct.dataclass
class MaskedLMOutput:
    logits: jax.Array  # [B, T, V]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class SequenceClassifierOutput:
    logits: jax.Array  # [B, num_labels]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class TokenClassifierOutput:
    logits: jax.Array  # [B, T, num_labels]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class CausalLMOutput:
    logits: jax.Array  # [B, T, V]
    hidden_states: HiddenStates = None
    attentions: Attentions = None
    cache: KVCache | None = None
