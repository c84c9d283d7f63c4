"""`generate` and `decode`: Hugging Face `generate` for our causal LMs, the whole loop in one jit.

Axis legend: B batch, R rows (B x beams or B x return sequences), P prompt bucket, S cache slots.

Arguments are resolved on the host exactly as HF's `generate` resolves them (defaults from the
config, `max_new_tokens` over `max_length`, `min_new_tokens` over `min_length`, the attention mask
inferred from pad tokens); prompts are left-padded to a length bucket; then one jitted function
runs prefill and the `lax.while_loop`. It compiles once per (module, batch, bucket, room for new
tokens, strategy); lengths, penalties, temperature, top-k/top-p values and EOS/PAD ids are arrays.

`decode` is the same computation as a pure function of fixed output shape: the prompt and
parameters may be traced (a caller's `jax.jit`, `jax.vmap`), the options are Python values. Host
checks of array values run only where the values are concrete; shapes are always checked.
`generate` is `decode` with the columns after the longest row dropped, which needs concrete values;
traced, it returns `decode`'s fixed-width sequences.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import validation as v
from biomed_jax.generation.beam_search import beam_search
from biomed_jax.generation.buckets import bucket_length, left_pad, room_for
from biomed_jax.generation.layout import decoding_params
from biomed_jax.generation.processors import ProcessorSettings
from biomed_jax.generation.sampling import DecodeSettings, sample
from biomed_jax.nn.attention import KVCache

DEFAULT_NEW_TOKENS = 20  # HF GenerationConfig.max_length default, counted after the prompt
EARLY_STOPPING = (True, False, "never")


@flax.struct.dataclass
class DecodeOutput:
    """What `decode` returns: fixed shapes, whatever the tokens."""

    sequences: jax.Array  # [R, max_length] int32: prompt + new tokens, pad_token_id after each end
    length: jax.Array  # [] int32: the columns HF's `generate` returns (up to the longest row)


def generate(
    module: nn.Module,
    params: Any,
    input_ids: Any,
    attention_mask: Any = None,
    **options: Any,
) -> jax.Array:
    """Prompt + generated tokens [B * num_return_sequences, L], as `transformers` `generate`.

    The options are `decode`'s (HF's names and meanings). L is HF's length: up to the longest
    row. Inside a caller's `jax.jit` or `jax.vmap` (a traced prompt or params), the length cannot
    depend on the tokens: the result is then `decode`'s [R, max_length], HF's tokens followed by
    `pad_token_id` columns.
    """
    out = decode(module, params, input_ids, attention_mask, **options)
    if v.is_traced(out.length):
        return out.sequences
    return out.sequences[:, : int(out.length)]


def decode(
    module: nn.Module,
    params: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    max_new_tokens: int | Sequence[int] | None = None,
    max_length: int | None = None,
    min_new_tokens: int = 0,
    min_length: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_tokens: Sequence[int] = (),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    rng: jax.Array | None = None,
) -> DecodeOutput:
    """`generate` as a pure, fixed-shape function: jittable and vmappable.

    `module` is a causal LM (e.g. `BioGptForCausalLM`) whose call takes `(input_ids,
    attention_mask, cache=KVCache)` and returns `.logits` and `.cache`; `params` its parameters
    (without the {"params": ...} wrapper). `input_ids` / `attention_mask` [B, T] and `params` may
    be traced; every option is a Python value. Rows finished early are padded with
    `pad_token_id`. `top_k=0` disables top-k (HF's GenerationConfig defaults to 50). Sampling
    needs `rng`. `suppress_tokens`: ids never generated (HF's; fairseq never picks <pad>).
    Returns `DecodeOutput(sequences [R, max_length], length [])`: `sequences[:, :length]` is
    `generate`'s result.
    `max_new_tokens` may also be one count per prompt (beyond HF): each row stops after its own
    count, padded like a row that emitted EOS, and may reach the position table counting its
    real tokens only (as fairseq's per-sentence limit); the others' lengths change nothing.
    """
    config = module.config
    ids = _as_ids(input_ids, config.vocab_size)
    batch, prompt_length = ids.shape
    per_row = _per_row_counts(max_new_tokens, batch)
    if per_row is None:
        max_new_tokens = v.optional_integer("max_new_tokens", max_new_tokens, low=1)
    max_length = v.optional_integer("max_length", max_length, low=1)
    eos = _eos_ids(eos_token_id, config, config.vocab_size)
    pad = _pad_id(pad_token_id, config, config.vocab_size)
    if pad is None and eos.size:
        pad = int(eos[0])
    mask = _attention_mask(ids, attention_mask, pad, eos)
    _check_strategy(
        do_sample, num_beams, num_return_sequences, early_stopping, temperature, top_k, top_p,
        repetition_penalty, no_repeat_ngram_size, min_new_tokens, min_length, length_penalty,
    )  # fmt: skip
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs an explicit PRNG key: rng=jax.random.key(seed)")
    if rng is not None and not _is_key(rng):
        raise TypeError(f"rng must be a PRNG key (jax.random.key(seed)), got {rng!r}")

    if per_row is not None:
        _check_row_positions(mask, per_row, config.max_position_embeddings)
        total = prompt_length + int(per_row.max())
    elif max_new_tokens is not None:
        total = prompt_length + max_new_tokens
    elif max_length is not None:
        total = max_length
    else:
        total = min(prompt_length + DEFAULT_NEW_TOKENS, config.max_position_embeddings)
    if total <= prompt_length:
        raise ValueError(
            f"nothing to generate: max_length {total} <= prompt length {prompt_length} "
            "(use max_new_tokens >= 1)"
        )
    if per_row is None and total > config.max_position_embeddings:
        raise ValueError(
            f"max_length {total} exceeds max_position_embeddings {config.max_position_embeddings}"
        )
    least = prompt_length + min_new_tokens if min_new_tokens > 0 else min_length

    bucket = bucket_length(prompt_length)
    room = room_for(total - prompt_length)
    start = bucket - prompt_length
    fill = _fill_token(pad, eos, num_beams)
    prompt, prompt_mask = left_pad(ids, mask, bucket, fill if fill >= 0 else 0)
    xp = _array_module(prompt, prompt_mask)
    expand = num_beams if num_beams > 1 else num_return_sequences
    spare = _check_memory(config, module.dtype, ids.shape[0], expand, bucket + room)
    prompt, prompt_mask = xp.repeat(prompt, expand, 0), xp.repeat(prompt_mask, expand, 0)
    keep = (eos.size + 1 if eos.size else 2) if num_beams > 1 else 1
    totals = np.full(batch, total, np.int32) if per_row is None else prompt_length + per_row
    denominators = _length_denominators(
        room, totals - prompt_length, length_penalty, early_stopping, num_beams
    )
    settings = DecodeSettings(
        processors=ProcessorSettings(
            min_length=np.int32(least),
            eos_token_ids=eos,
            repetition_penalty=np.float32(repetition_penalty),
            temperature=np.float32(temperature),
            top_k=np.int32(max(top_k, keep)),
            top_p_cutoff=np.float32(1.0 - top_p),  # float64, then rounded: as torch compares
            suppress_tokens=_suppressed(suppress_tokens, config.vocab_size),
            no_repeat_ngram_size=no_repeat_ngram_size,
            use_repetition_penalty=repetition_penalty != 1.0,
            do_sample=do_sample,
            use_top_k=top_k != 0,
            use_top_p=top_p < 1.0,
            min_tokens_to_keep=keep,
        ),
        start=np.int32(start),
        # HF's repetition penalty skips left padding: argmax(mask != 0) per row.
        penalty_start=(start + xp.argmax(prompt_mask[:, start:] != 0, axis=1)).astype(np.int32),
        # per prompt row (beam search: per batch item; sampling: per returned sequence)
        max_length=np.repeat(totals, expand if num_beams == 1 else 1).astype(np.int32),
        pad_token_id=np.int32(fill),
        finish_denominator=denominators[0],
        bound_denominator=denominators[1],
        num_beams=num_beams,
        # Beam-search-only options stay out of the compilation key of greedy/sampling.
        early_stopping=early_stopping if num_beams > 1 else False,
        num_return_sequences=num_return_sequences if num_beams > 1 else 1,
    )
    key = jax.random.key(0) if rng is None else rng
    params = decoding_params(module, params, spare)
    tokens, used = _decode(module, params, prompt, prompt_mask, settings, key, bucket + room)
    return DecodeOutput(tokens[:, start : start + total], used - start)


@functools.partial(jax.jit, static_argnames=("module", "slots"))
def _decode(
    module: nn.Module,
    params: Any,
    prompt: jax.Array,  # [R, P] int32
    prompt_mask: jax.Array,  # [R, P] int32
    settings: DecodeSettings,
    rng: jax.Array,
    slots: int,
) -> tuple[jax.Array, jax.Array]:
    rows, bucket = prompt.shape
    # Every slot after the prompt will hold a real token; causality hides the unwritten ones.
    mask = jnp.concatenate([prompt_mask, jnp.ones((rows, slots - bucket), jnp.int32)], axis=1)
    cache = module.config.init_cache(rows, slots, module.dtype)

    def tokens_to_logits(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        out = module.apply({"params": params}, tokens, mask, cache=cache)
        return out.logits[:, -1], out.cache

    if settings.num_beams > 1:
        return beam_search(tokens_to_logits, KVCache.reorder, prompt, cache, slots, settings, rng)
    return sample(tokens_to_logits, prompt, cache, slots, settings, rng)


def decoding_bytes(config: Any, dtype: Any, rows: int, slots: int) -> int:
    """A lower bound of what decoding `rows` sequences over `slots` cache slots allocates: the KV
    cache (keys and values, L x [R, N, S, H] in the compute dtype) and a few float32 [R, V]
    score arrays per step."""
    cache = 2 * config.num_hidden_layers * rows * slots * config.hidden_size
    return cache * np.dtype(dtype).itemsize + 4 * rows * config.vocab_size * 4


def _check_memory(config: Any, dtype: Any, batch: int, expand: int, slots: int) -> int | None:
    """Refuse, before anything is allocated, a decoding that cannot fit the device's memory
    (num_beams=10**6 would otherwise end in RESOURCE_EXHAUSTED or an int32 overflow); returns
    the bytes left beside it (None: unknown)."""
    from biomed_jax.models.config import memory_bytes

    rows = batch * expand
    stats = jax.local_devices()[0].memory_stats() or {}
    available = stats.get("bytes_limit") or memory_bytes()
    need = decoding_bytes(config, dtype, rows, slots)
    if rows > v.INT32_MAX or (available is not None and need > available):
        have = "unknown" if available is None else f"{available / 2**30:.1f} GiB"
        raise ValueError(
            f"decoding {batch} prompt(s) x {expand} (num_beams or num_return_sequences) = {rows} "
            f"rows over {slots} cache slots needs at least {need / 2**30:.1f} GiB, more than "
            f"this device has ({have}): lower num_beams, the batch or max_new_tokens"
        )
    return None if available is None else available - need


def _array_module(*arrays: Any) -> Any:
    """jax.numpy for traced arrays, NumPy for concrete ones (host work stays off the device)."""
    return jnp if any(v.is_traced(a) for a in arrays) else np


def _as_ids(input_ids: Any, vocab_size: int) -> Any:
    """[B, T] int32 ids: a traced array's shape and dtype are checked, a concrete one's values too."""
    ids = input_ids if v.is_traced(input_ids) else np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, length] with both > 0, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must be integers, got {ids.dtype}")
    if not v.is_traced(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.int32)


def _per_row_counts(max_new_tokens: Any, batch: int) -> np.ndarray | None:
    """One new-token count per prompt row [B] int64, or None when `max_new_tokens` is a scalar."""
    if max_new_tokens is None or isinstance(max_new_tokens, (int, np.integer)):
        return None
    if not isinstance(max_new_tokens, (list, tuple, np.ndarray)):
        return None  # the scalar check names the wrong type
    counts = [v.integer(f"max_new_tokens[{i}]", n, low=1) for i, n in enumerate(max_new_tokens)]
    if len(counts) != batch:
        raise ValueError(
            f"max_new_tokens has {len(counts)} counts for {batch} prompts: give one per prompt"
        )
    return np.asarray(counts, np.int64)


def _check_row_positions(mask: np.ndarray, new_tokens: np.ndarray, positions: int) -> None:
    """Each row's real tokens plus its new ones fit the position table (a traced mask: unchecked,
    as every value check under a caller's `jit`)."""
    if v.is_traced(mask):
        return
    needed = mask.sum(axis=1) + new_tokens
    over = np.flatnonzero(needed > positions)
    if over.size:
        row = int(over[0])
        raise ValueError(
            f"row {row}: {int(mask[row].sum())} prompt tokens + max_new_tokens[{row}]="
            f"{int(new_tokens[row])} exceed max_position_embeddings {positions}"
        )


def _eos_ids(eos: Any, config: Any, vocab_size: int) -> np.ndarray:
    """The EOS ids [E] (the argument, else config.eos_token_id), each inside the vocabulary."""
    source = "argument" if eos is not None else "config.json"
    eos = config.eos_token_id if eos is None else eos
    if eos is None:
        return np.zeros((0,), np.int32)
    values = list(eos) if isinstance(eos, (list, tuple, np.ndarray)) else [eos]
    return np.asarray([v.token_id("eos_token_id", e, vocab_size, source) for e in values], np.int32)


def _pad_id(pad: Any, config: Any, vocab_size: int) -> int | None:
    """The pad id (the argument, else config.pad_token_id) inside the vocabulary, or None.

    Outside it, the prompt's bucket padding would embed as NaN and every new token come out 0.
    """
    if pad is not None:
        return v.token_id("pad_token_id", pad, vocab_size)
    if config.pad_token_id is None:
        return None
    return v.token_id("pad_token_id", config.pad_token_id, vocab_size, "config.json")


def _is_key(rng: Any) -> bool:
    """A typed key (jax.random.key) or a raw uint32[2] one (jax.random.PRNGKey)."""
    if not isinstance(rng, jax.Array):
        return False
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim == 0
    return rng.dtype == jnp.uint32 and rng.shape == (2,)


def _attention_mask(ids: Any, mask: Any, pad: int | None, eos: np.ndarray) -> Any:
    """The caller's mask, or HF's inference: ids != pad when pad occurs and is not an EOS id."""
    if mask is not None:
        mask = mask if v.is_traced(mask) else np.asarray(mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        if not v.is_traced(mask) and not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        return mask.astype(np.int32)
    xp = _array_module(ids)
    if pad is None or pad in eos:
        return xp.ones_like(ids)
    return xp.where((ids == pad).any(), (ids != pad).astype(np.int32), xp.ones_like(ids))


def _suppressed(token_ids: Sequence[int], vocab_size: int) -> np.ndarray | None:
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    if ids.size == 0:
        return None
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"suppress_tokens must lie in [0, {vocab_size}), got {sorted(ids)}")
    return ids.astype(np.int32)


def _fill_token(pad: int | None, eos: np.ndarray, num_beams: int) -> int:
    """What fills slots after EOS; beam search uses HF's `pad_token_id or eos_token_id[0]`, else -1."""
    if num_beams == 1:
        return 0 if pad is None else pad
    if not eos.size:
        return -1
    return pad if pad else int(eos[0])


def _length_denominators(
    room: int,
    new_tokens: np.ndarray,  # [B] each batch item's most new tokens
    length_penalty: float,
    early_stopping: bool | str,
    num_beams: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """float32(n ** length_penalty) per new-token count n [room + 1] (computed in float64, as
    Python does), and per batch item the early-stop bound's denominators [B, room + 1]."""
    if num_beams == 1:
        return None, None
    counts = np.arange(room + 1, dtype=np.float64)
    counts[0] = 1.0  # never used: a hypothesis has at least one new token
    finish = (counts**length_penalty).astype(np.float32)
    if early_stopping == "never" and length_penalty > 0.0:
        most = (new_tokens.astype(np.float64) ** length_penalty).astype(np.float32)
        bound = np.repeat(most[:, None], room + 1, axis=1)
    else:
        bound = np.repeat(finish[None], len(new_tokens), axis=0)
    return finish, bound


def _check_strategy(
    do_sample: bool,
    num_beams: int,
    num_return_sequences: int,
    early_stopping: bool | str,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    min_new_tokens: int,
    min_length: int,
    length_penalty: float,
) -> None:
    """Types and ranges of the decoding options, each error naming its argument."""
    do_sample = v.boolean("do_sample", do_sample)
    num_beams = v.integer("num_beams", num_beams, low=1)
    num_return_sequences = v.integer("num_return_sequences", num_return_sequences, low=1)
    v.integer("top_k", top_k, low=0)
    v.integer("no_repeat_ngram_size", no_repeat_ngram_size, low=0)
    v.integer("min_new_tokens", min_new_tokens, low=0)
    v.integer("min_length", min_length, low=0)
    v.number("temperature", temperature, low=0.0, low_open=do_sample)
    v.number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    v.number("repetition_penalty", repetition_penalty, low=0.0, low_open=True)
    v.number("length_penalty", length_penalty)
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})"
        )
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ValueError("greedy search returns one sequence per prompt: num_return_sequences=1")
    if early_stopping not in EARLY_STOPPING or not isinstance(early_stopping, (bool, str)):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
