"""Greedy search and multinomial sampling: one `lax.while_loop`, HF `_sample` semantics.

Axis legend: B rows, P prompt slots (bucketed), S token slots (P + room for new tokens), V vocab.

The loop does not know the model: it calls `tokens_to_logits(tokens [B, T], cache) ->
(logits [B, V] at the last of the T tokens, cache)`, once with the prompt (prefill), then once per
new token. Rows that have emitted EOS, or reached their own `max_length` (counting the caller's
prompt, not the bucket padding), get `pad_token_id` from then on; the loop stops when every row
is finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from biomed_jax.generation.processors import History, ProcessorSettings, process

TokensToLogits = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


@flax.struct.dataclass
class DecodeSettings:
    """What one call decodes with; arrays are per-call values, the rest is static."""

    processors: ProcessorSettings
    start: jax.Array  # [] int32: slot of the caller's first input token (bucket padding before)
    penalty_start: jax.Array  # [B] int32: first real prompt token of each row
    # [R] int32: HF max_length (prompt + new tokens) of each row (beam search: [B], per item)
    max_length: jax.Array
    pad_token_id: jax.Array  # [] int32: fills slots after EOS (beam search: HF's pad or eos[0])
    # Beam search only: float32(n ** length_penalty) for the finished hypotheses' length n, and
    # per item the denominator of the early-stop bound after n new tokens (HF
    # `_check_early_stop_heuristic`).
    finish_denominator: jax.Array | None = None  # [new + 1] float32
    bound_denominator: jax.Array | None = None  # [B, new + 1] float32
    num_beams: int = flax.struct.field(pytree_node=False, default=1)
    early_stopping: bool | str = flax.struct.field(pytree_node=False, default=False)
    num_return_sequences: int = flax.struct.field(pytree_node=False, default=1)

    def history(self, tokens: jax.Array, length: jax.Array) -> History:
        return History(tokens, length, self.start, self.penalty_start)


@flax.struct.dataclass
class SampleState:
    tokens: jax.Array  # [B, S] int32: prompt, then generated tokens
    length: jax.Array  # [] int32: slots written
    unfinished: jax.Array  # [B] bool
    cache: Any  # the model's decoding state
    rng: jax.Array  # PRNG key


def _select(state: SampleState, logits: jax.Array, settings: DecodeSettings) -> SampleState:
    """Process logits [B, V], pick the next token of every row, write it, update `unfinished`."""
    scores = process(logits, settings.history(state.tokens, state.length), settings.processors)
    rng = state.rng
    if settings.processors.do_sample:
        rng, key = jax.random.split(rng)
        chosen = jax.random.categorical(key, scores, axis=-1)
    else:
        chosen = jnp.argmax(scores, axis=-1)
    chosen = jnp.where(state.unfinished, chosen, settings.pad_token_id).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, chosen[:, None], state.length, 1)
    length = state.length + 1
    unfinished = state.unfinished & ~jnp.isin(chosen, settings.processors.eos_token_ids)
    unfinished = unfinished & (length < settings.start + settings.max_length)
    return SampleState(tokens, length, unfinished, state.cache, rng)


def sample(
    tokens_to_logits: TokensToLogits,
    prompt: jax.Array,  # [B, P] int32, left-padded
    cache: Any,
    slots: int,
    settings: DecodeSettings,
    rng: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Greedy (or sampled) continuation; returns (tokens [B, S], slots written [])."""
    batch, prompt_slots = prompt.shape
    tokens = jnp.full((batch, slots), settings.pad_token_id, jnp.int32)
    tokens = tokens.at[:, :prompt_slots].set(prompt)
    logits, cache = tokens_to_logits(prompt, cache)
    state = SampleState(tokens, jnp.int32(prompt_slots), jnp.ones(batch, bool), cache, rng)
    state = _select(state, logits, settings)

    def running(state: SampleState) -> jax.Array:
        return state.unfinished.any()

    def step(state: SampleState) -> SampleState:
        last = jax.lax.dynamic_slice_in_dim(state.tokens, state.length - 1, 1, axis=1)  # [B, 1]
        logits, cache = tokens_to_logits(last, state.cache)
        return _select(state.replace(cache=cache), logits, settings)

    state = jax.lax.while_loop(running, step, state)
    return state.tokens, state.length
