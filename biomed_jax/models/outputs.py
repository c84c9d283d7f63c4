"""Model outputs: pytrees with Hugging Face's field names."""

from __future__ import annotations

import flax.struct
import jax

from biomed_jax.nn.attention import KVCache

HiddenStates = tuple[jax.Array, ...] | None  # num_layers + 1 arrays [B, T, D]
Attentions = tuple[jax.Array, ...] | None  # num_layers arrays [B, N, T, S]


class _TaskOutput:
    """A task model's output: logits; the encoder's last state is `hidden_states[-1]`."""

    def __getattr__(self, name: str):
        if name == "last_hidden_state":
            raise AttributeError(
                f"{type(self).__name__} (a task model's output) has no last_hidden_state: call "
                "with output_hidden_states=True and read hidden_states[-1], or load the bare "
                "model with from_pretrained(..., architecture='BertModel' or 'BioGptModel')"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@flax.struct.dataclass
class BaseModelOutput:
    last_hidden_state: jax.Array  # [B, T, D]
    pooler_output: jax.Array | None = None  # [B, D]
    hidden_states: HiddenStates = None
    attentions: Attentions = None
    cache: KVCache | None = None


@flax.struct.dataclass
class MaskedLMOutput(_TaskOutput):
    logits: jax.Array  # [B, T, V]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class SequenceClassifierOutput(_TaskOutput):
    logits: jax.Array  # [B, num_labels]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class TokenClassifierOutput(_TaskOutput):
    logits: jax.Array  # [B, T, num_labels]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


@flax.struct.dataclass
class CausalLMOutput(_TaskOutput):
    logits: jax.Array  # [B, T, V]
    hidden_states: HiddenStates = None
    attentions: Attentions = None
    cache: KVCache | None = None
