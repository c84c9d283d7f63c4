"""Beam search with Hugging Face's semantics (transformers v5 `_beam_search`), as fixed-shape helpers.

Axis legend: B batch, K beams, C candidates per step (max(2, 1 + number of EOS ids) x K, as HF),
S token slots, V vocab.

Per step, as HF: log-softmax, processors, add running beam scores, keep the top C continuations
over K x V (or sample C without replacement: Gumbel top-k). Candidates that hit EOS or max_length
leave the running set (score -1e9); those among the top K enter the finished set with score
`sum logprobs / new_tokens ** length_penalty` unless the batch item is already full
(`early_stopping=True`) or cannot improve (the early-stop heuristic). The finished set keeps the
best K. The loop stops when no batch item can improve, when all are full (`early_stopping=True`),
or when every item is at its max_length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from biomed_jax.generation.processors import process
from biomed_jax.generation.sampling import DecodeSettings, TokensToLogits

LARGE_NEGATIVE = -1.0e9  # HF's score for beams that must not be picked
ReorderCache = Callable[[Any, jax.Array], Any]  # (cache, rows [B * K]) -> cache of those rows


@flax.struct.dataclass
class BeamState:
    running_tokens: jax.Array  # [B, K, S] int32
    running_scores: jax.Array  # [B, K] float32: summed log-probs
    tokens: jax.Array  # [B, K, S] int32: finished hypotheses, best first
    scores: jax.Array  # [B, K] float32: their length-penalized scores
    new_tokens: jax.Array  # [B, K] int32: generated length of each finished hypothesis
    finished: jax.Array  # [B, K] bool: slot holds a real finished hypothesis
    improvable: jax.Array  # [B] bool: HF is_early_stop_heuristic_unsatisfied
    done: jax.Array  # [] bool
    length: jax.Array  # [] int32: slots written
    cache: Any  # the model's decoding state, rows b * K + k
    rng: jax.Array


def gather_beams(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, K, ...] at beams index [B, K'] -> [B, K', ...]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _penalty(hit: jax.Array) -> jax.Array:
    """HF's `hit.to(float32) * -1e9`."""
    return hit.astype(jnp.float32) * LARGE_NEGATIVE


def _select(
    state: BeamState,
    logits: jax.Array,  # [B * K, V]
    settings: DecodeSettings,
    reorder_cache: ReorderCache,
    prompt_slots: int,
) -> BeamState:
    batch, beams, slots = state.running_tokens.shape
    vocab = logits.shape[-1]
    eos_count = settings.processors.eos_token_ids.shape[0]
    candidates = max(2, 1 + eos_count) * beams  # HF beams_to_keep: K non-EOS ones always remain
    flat_tokens = state.running_tokens.reshape(batch * beams, slots)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = process(log_probs, settings.history(flat_tokens, state.length), settings.processors)
    log_probs = log_probs.reshape(batch, beams, vocab) + state.running_scores[:, :, None]
    log_probs = log_probs.reshape(batch, beams * vocab)

    rng = state.rng
    if settings.processors.do_sample:
        rng, key = jax.random.split(rng)
        gumbel = jax.random.gumbel(key, log_probs.shape)
        _, top = jax.lax.top_k(log_probs + gumbel, candidates)
        top_scores = jnp.take_along_axis(log_probs, top, axis=1)
    else:
        top_scores, top = jax.lax.top_k(log_probs, candidates)  # [B, C]
    source = top // vocab  # [B, C] beam each candidate extends
    chosen = (top % vocab).astype(jnp.int32)
    cand_tokens = gather_beams(state.running_tokens, source)
    cand_tokens = jax.lax.dynamic_update_slice_in_dim(
        cand_tokens, chosen[:, :, None], state.length, axis=2
    )
    generated = state.length + 1 - prompt_slots  # new tokens, this one included
    at_limit = state.length + 1 - settings.start >= settings.max_length  # [B]
    hits = jnp.isin(chosen, settings.processors.eos_token_ids) | at_limit[:, None]

    # Running beams for the next step: the best K candidates that did not stop.
    running_pick = top_scores + _penalty(hits)
    _, keep = jax.lax.top_k(running_pick, beams)  # [B, K]
    running_tokens = gather_beams(cand_tokens, keep)
    running_scores = gather_beams(running_pick, keep)
    parent = gather_beams(source, keep)  # [B, K]

    # Finished hypotheses: merge the candidates among the top K that stopped.
    just_finished = hits & (jnp.arange(candidates) < beams)[None]
    finish_scores = top_scores / settings.finish_denominator[generated]
    full = state.finished.all(axis=-1, keepdims=True) & (settings.early_stopping is True)
    finish_scores = finish_scores + _penalty(full)
    finish_scores = finish_scores + _penalty(~state.improvable)[:, None]
    finish_scores = finish_scores + _penalty(~just_finished)
    merged_scores = jnp.concatenate([state.scores, finish_scores], axis=1)  # [B, K + C]
    scores, best = jax.lax.top_k(merged_scores, beams)
    tokens = gather_beams(jnp.concatenate([state.tokens, cand_tokens], axis=1), best)
    new_tokens = jnp.concatenate(
        [state.new_tokens, jnp.broadcast_to(generated, (batch, candidates))], axis=1
    )
    new_tokens = gather_beams(new_tokens, best)
    finished = gather_beams(jnp.concatenate([state.finished, just_finished], axis=1), best)

    rows = (parent + jnp.arange(batch)[:, None] * beams).reshape(-1)  # [B * K]
    cache = reorder_cache(state.cache, rows)

    # HF `_check_early_stop_heuristic` and `_beam_search_has_unfinished_sequences`.
    best_running = running_scores[:, 0] / settings.bound_denominator[:, generated]  # [B]
    worst_finished = jnp.where(finished, scores.min(axis=-1, keepdims=True), LARGE_NEGATIVE)
    improvable = state.improvable & (best_running[:, None] > worst_finished).any(axis=-1)
    # An item at its own max_length is done (HF stops there); the others may run on.
    improvable = improvable & ~at_limit
    all_full = finished.all() & (settings.early_stopping is True)
    done = ~(improvable.any() & ~all_full & ~hits.all())
    return BeamState(
        running_tokens,
        running_scores,
        tokens,
        scores,
        new_tokens,
        finished,
        improvable,
        done,
        state.length + 1,
        cache,
        rng,
    )


def beam_search(
    tokens_to_logits: TokensToLogits,
    reorder_cache: ReorderCache,
    prompt: jax.Array,  # [B * K, P] int32, left-padded, each prompt repeated K times
    cache: Any,
    slots: int,
    settings: DecodeSettings,
    rng: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Returns the best `num_return_sequences` hypotheses [B * R, S] and the slots they use []."""
    beams = settings.num_beams
    rows, prompt_slots = prompt.shape
    batch = rows // beams
    running = jnp.full((batch, beams, slots), settings.pad_token_id, jnp.int32)
    running = running.at[:, :, :prompt_slots].set(prompt.reshape(batch, beams, prompt_slots))
    # Only beam 0 is live at first, so the K beams do not all pick the same tokens.
    running_scores = jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(LARGE_NEGATIVE)
    logits, cache = tokens_to_logits(prompt, cache)
    state = BeamState(
        running_tokens=running,
        running_scores=running_scores,
        tokens=running,
        scores=jnp.full((batch, beams), LARGE_NEGATIVE, jnp.float32),
        new_tokens=jnp.zeros((batch, beams), jnp.int32),
        finished=jnp.zeros((batch, beams), bool),
        improvable=jnp.ones(batch, bool),
        done=jnp.zeros((), bool),
        length=jnp.int32(prompt_slots),
        cache=cache,
        rng=rng,
    )
    state = _select(state, logits, settings, reorder_cache, prompt_slots)

    def step(state: BeamState) -> BeamState:
        last = state.running_tokens[:, :, state.length - 1].reshape(rows, 1)  # [B * K, 1]
        logits, cache = tokens_to_logits(last, state.cache)
        return _select(state.replace(cache=cache), logits, settings, reorder_cache, prompt_slots)

    state = jax.lax.while_loop(lambda s: ~s.done, step, state)
    returned = settings.num_return_sequences
    tokens = state.tokens[:, :returned].reshape(batch * returned, slots)
    return tokens, prompt_slots + state.new_tokens[:, :returned].max()
