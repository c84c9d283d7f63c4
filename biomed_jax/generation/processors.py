"""Logits processors as pure functions, applied in Hugging Face's order (`_get_logits_processor`).

Axis legend: R rows (batch, or batch x beams), S token slots, V vocab.

Every processor sees the tokens so far as HF's `input_ids` would hold them: slots
[`History.start`, `History.length`) of a fixed-size buffer. Slots before `start` are the extra
left padding of the length bucket and are invisible to every processor (HF never saw them).
Removed tokens get -inf, as HF's `filter_value`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@flax.struct.dataclass
class History:
    """The tokens a processor may look at."""

    tokens: jax.Array  # [R, S] int32
    length: jax.Array  # [] int32: slots written so far
    start: jax.Array  # [] int32: slot of the first token of the caller's input_ids
    penalty_start: (
        jax.Array
    )  # [R] int32: first slot the repetition penalty counts (first real token)

    @property
    def cur_len(self) -> jax.Array:
        """HF's `input_ids.shape[-1]`."""
        return self.length - self.start


@flax.struct.dataclass
class ProcessorSettings:
    """Per-call values are arrays (no recompilation); which processors run is static."""

    min_length: jax.Array  # [] int32, counts the prompt (min_new_tokens folded in, as HF does)
    eos_token_ids: jax.Array  # [E] int32
    repetition_penalty: jax.Array  # [] float32
    temperature: jax.Array  # [] float32
    top_k: jax.Array  # [] int32, already max(top_k, min_tokens_to_keep)
    top_p_cutoff: jax.Array  # [] float32: 1 - top_p, rounded from float64 as torch does
    suppress_tokens: jax.Array | None = None  # [X] int32: never chosen (None: none)
    no_repeat_ngram_size: int = flax.struct.field(pytree_node=False, default=0)
    use_repetition_penalty: bool = flax.struct.field(pytree_node=False, default=False)
    do_sample: bool = flax.struct.field(pytree_node=False, default=False)
    use_top_k: bool = flax.struct.field(pytree_node=False, default=False)
    use_top_p: bool = flax.struct.field(pytree_node=False, default=False)
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)


def _mark(ids: jax.Array, keep: jax.Array, vocab: int) -> jax.Array:
    """[R, V] bool: True at every id in `ids` [R, X] where `keep` [R, X] holds."""
    rows = jnp.arange(ids.shape[0])[:, None]
    spare = jnp.where(keep, ids, vocab)  # unwanted entries land in a spare column
    return jnp.zeros((ids.shape[0], vocab + 1), bool).at[rows, spare].set(True)[:, :vocab]


def repetition_penalty(scores: jax.Array, history: History, penalty: jax.Array) -> jax.Array:
    """HF `RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=padding lengths)`."""
    slots = jnp.arange(history.tokens.shape[1])
    counted = (slots[None] >= history.penalty_start[:, None]) & (slots[None] < history.length)
    seen = _mark(history.tokens, counted, scores.shape[-1])
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalized, scores)


def no_repeat_ngram(scores: jax.Array, history: History, n: int) -> jax.Array:
    """HF `NoRepeatNGramLogitsProcessor(n)`: ban the token that would repeat a seen n-gram.

    Window j covers slots j .. j+n-1; it bans its last token when its first n-1 tokens equal the
    last n-1 tokens written. Only windows inside [start, length) count.
    """
    tokens = history.tokens  # [R, S]
    rows, slots = tokens.shape
    windows = slots - n + 1
    if windows <= 0:
        return scores
    prefix = jax.lax.dynamic_slice_in_dim(tokens, history.length - (n - 1), n - 1, axis=1)
    match = jnp.ones((rows, windows), bool)  # [R, windows]
    for k in range(n - 1):
        match &= tokens[:, k : k + windows] == prefix[:, k : k + 1]
    first = jnp.arange(windows)
    inside = (first >= history.start) & (first + n <= history.length)
    banned = _mark(tokens[:, n - 1 :], match & inside[None], scores.shape[-1])
    return jnp.where(banned, NEG_INF, scores)


def min_length(scores: jax.Array, history: History, settings: ProcessorSettings) -> jax.Array:
    """HF `MinLengthLogitsProcessor` (+ `MinNewTokensLengthLogitsProcessor`): no EOS too early."""
    is_eos = jnp.isin(jnp.arange(scores.shape[-1]), settings.eos_token_ids)
    return jnp.where(is_eos & (history.cur_len < settings.min_length), NEG_INF, scores)


def suppress(scores: jax.Array, token_ids: jax.Array) -> jax.Array:
    """HF `SuppressTokensLogitsProcessor`: the listed ids [X] get -inf at every step."""
    return jnp.where(jnp.isin(jnp.arange(scores.shape[-1]), token_ids), NEG_INF, scores)


def top_k(scores: jax.Array, k: jax.Array) -> jax.Array:
    """HF `TopKLogitsWarper`: drop everything below the k-th largest score (k is an array)."""
    vocab = scores.shape[-1]
    k = jnp.clip(k, 1, vocab)
    kth = jnp.take(jnp.sort(scores, axis=-1), vocab - k, axis=-1)[:, None]  # [R, 1]
    return jnp.where(scores < kth, NEG_INF, scores)


def top_p(scores: jax.Array, cutoff: jax.Array, min_tokens_to_keep: int) -> jax.Array:
    """HF `TopPLogitsWarper`: drop the low tail whose cumulative probability is <= 1 - top_p."""
    vocab = scores.shape[-1]
    order = jnp.argsort(scores, axis=-1)  # ascending
    cumulative = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, -1), -1), -1)
    remove = (cumulative <= cutoff) & (jnp.arange(vocab) < vocab - min_tokens_to_keep)
    rows = jnp.arange(scores.shape[0])[:, None]
    remove = jnp.zeros_like(remove).at[rows, order].set(remove)
    return jnp.where(remove, NEG_INF, scores)


def process(scores: jax.Array, history: History, settings: ProcessorSettings) -> jax.Array:
    """All enabled processors on scores [R, V], in HF's order."""
    if settings.use_repetition_penalty:
        scores = repetition_penalty(scores, history, settings.repetition_penalty)
    if settings.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, history, settings.no_repeat_ngram_size)
    scores = min_length(scores, history, settings)  # a no-op for min_length 0
    if settings.suppress_tokens is not None:
        scores = suppress(scores, settings.suppress_tokens)
    if settings.do_sample:
        scores = scores / settings.temperature  # exact for 1.0
        if settings.use_top_k:
            scores = top_k(scores, settings.top_k)
        if settings.use_top_p:
            scores = top_p(scores, settings.top_p_cutoff, settings.min_tokens_to_keep)
    return scores
