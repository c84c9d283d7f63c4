"""BioGPT decoder and its heads, as in Hugging Face `modeling_biogpt.py` (transformers v5).

Axis legend: B batch, T new tokens, S key slots (T without a cache, max_length with one),
D hidden, N heads, H head dim, F intermediate, V vocab, L layers.

Pre-LayerNorm blocks: x = x + Attn(LN(x)); x = x + MLP(LN(x)); a final LayerNorm after the stack.
Every LayerNorm uses epsilon 1e-5 (torch's default, which HF uses whatever `layer_norm_eps` says).
Word embeddings are scaled by sqrt(D) when `scale_embedding`; learned positions are offset by 2 and
derived from a [B, T] attention mask (`cumsum(mask) * mask - 1`), so left padding gets positions
0, 1, ... from its first real token and padding reads table row 1; with a [B, T, S] or [B, N, T, S]
mask (used as given, as transformers) they are the tokens' slots unless `position_ids` are passed.

Decoding state is explicit: pass `cache=config.init_cache(B, S)` (a `KVCache`), get `out.cache`
back with `index` advanced by T. The cache never changes shape, so a jitted step never recompiles.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import validation as v
from biomed_jax.models.common import ModelBase, check_inputs, layer_stack
from biomed_jax.models.outputs import (
    BaseModelOutput,
    CausalLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from biomed_jax.nn.attention import KVCache, SelfAttention, make_attention_mask
from biomed_jax.nn.kernels import segment_mask
from biomed_jax.nn.layers import MLP, Dense, Embed, LayerNorm


def mask_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions [B, S] of the tokens a mask marks: 0, 1, ... over real tokens, -1 at padding."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask - 1


class BioGptDecoderLayer(ModelBase):
    """One pre-LN block: (h, mask, kv, index, segments) -> (h, (h, attention probs, kv)).

    kv: None or this layer's cache (key, value) [B, N, S, H], returned updated.
    """

    deterministic: bool = True
    output_hidden_states: bool = False
    output_attentions: bool = False

    @nn.compact
    def __call__(self, h, mask, kv_cache, cache_index, segments):  # h [B, T, D]
        c = self.config  # mask [B, 1|N, T|1, S]
        kw = {"init_std": c.initializer_range, **self.numerics}
        norm = dict(
            epsilon=c.REFERENCE_LAYER_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype
        )
        attn, probs, new_kv = SelfAttention(
            c.num_attention_heads,
            c.head_dim,
            c.attention_probs_dropout_prob,
            **kw,
            name="self_attn",
        )(
            LayerNorm(**norm, name="self_attn_layer_norm")(h),
            mask,
            segments=segments,
            kv_cache=kv_cache,
            cache_index=cache_index,
            deterministic=self.deterministic,
            need_probs=self.output_attentions,
        )
        h = h + nn.Dropout(c.hidden_dropout_prob)(attn, deterministic=self.deterministic)
        mlp = MLP(
            c.hidden_size,
            c.intermediate_size,
            c.hidden_act,
            c.activation_dropout,
            **kw,
            name="mlp",
        )(LayerNorm(**norm, name="final_layer_norm")(h), self.deterministic)
        h = h + nn.Dropout(c.hidden_dropout_prob)(mlp, deterministic=self.deterministic)
        h = nn.with_logical_constraint(h, ("batch", "length", "act_embed"))
        return h, (
            h if self.output_hidden_states else None,
            probs if self.output_attentions else None,
            new_kv,
        )


class BioGptDecoder(ModelBase):
    """The stack of `BioGptDecoderLayer`s: params under layers/layer_{i} (or layers/layer, scanned)."""

    @nn.compact
    def __call__(
        self,
        h,
        mask,
        segments,
        kv_cache,
        cache_index,
        deterministic,
        output_hidden_states,
        output_attentions,
    ):
        layers = layer_stack(
            BioGptDecoderLayer,
            self.config.num_hidden_layers,
            scan=self.scan_layers,
            remat=self.gradient_checkpointing,
            in_axes=(nn.broadcast, nn.broadcast if kv_cache is None else 0) + (nn.broadcast,) * 2,
            remat_policy=self.remat_policy,
            config=self.config,
            **self.numerics,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        # kv_cache: L x (key, value) [B, N, S, H] | None
        # -> h [B, T, D], (L x [B, T, D] | None, L x [B, N, T, S] | None, (L x key, L x value) | None)
        return layers(h, mask, kv_cache, cache_index, segments)


def check_call(
    config, input_ids, attention_mask=None, position_ids=None, *, cache=None, **_
) -> None:
    """A BioGPT model call's arrays, checked on the host (values too, when concrete)."""
    slots = None if cache is None else cache.max_length
    check_inputs(config, input_ids, attention_mask, None, position_ids, mask_slots=slots)
    _check_cache_inputs(config, input_ids, attention_mask, cache, position_ids is None)


class BioGptModel(ModelBase):
    """Scaled token embeddings + learned positions, the decoder stack, a final LayerNorm."""

    def check_call(self, *args, **kwargs) -> None:
        check_call(self.config, *args, **kwargs)

    def setup(self) -> None:
        c, kw = self.config, {"init_std": self.config.initializer_range, **self.numerics}
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), **kw)
        self.embed_positions = Embed(
            c.max_position_embeddings + c.POSITION_OFFSET,
            c.hidden_size,
            ("positions", "embed"),
            **kw,
        )
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.layers = BioGptDecoder(c, **self.numerics, **self.stack_options)
        self.layer_norm = LayerNorm(c.REFERENCE_LAYER_NORM_EPS, self.dtype, self.param_dtype)

    def __call__(
        self,
        input_ids: jax.Array,  # [B, T] int
        attention_mask: jax.Array | None = None,  # [B, T], or [B, S] with a cache; 1 = token
        position_ids: jax.Array | None = None,  # [B, T]
        *,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        deterministic: bool = True,
    ) -> BaseModelOutput:
        """Masks as `nn.attention.make_attention_mask` takes them: a [B, S] padding mask (made
        causal here; positions derived from it), or a whole [B, T, S] / [B, N, T, S] mask used
        as given (as transformers; positions then default to the slots, 0..T-1 without a cache)."""
        c = self.config
        check_call(c, input_ids, attention_mask, position_ids, cache=cache)
        batch, length = input_ids.shape
        slots = length if cache is None else cache.max_length
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        query_slots = index + jnp.arange(length)  # [T]
        if attention_mask is None:
            attention_mask = jnp.broadcast_to(jnp.arange(slots) < index + length, (batch, slots))
        padding_mask = attention_mask.ndim == 2
        if position_ids is None and padding_mask:
            position_ids = jax.lax.dynamic_slice_in_dim(
                mask_positions(attention_mask), index, length, axis=1
            )
        elif position_ids is None:
            position_ids = jnp.broadcast_to(query_slots, (batch, length))
        mask = make_attention_mask(attention_mask, query_slots)  # [B, 1|N, T|1, S]
        fused = None  # the same mask as segment ids, for a splash policy (no cache: slots 0..T-1)
        if self.numerics["policy"].attention == "splash" and padding_mask and cache is None:
            fused = segment_mask(attention_mask, causal=True)

        h = self.embed_tokens(input_ids) * jnp.asarray(c.embed_scale, self.dtype)
        h = h + self.embed_positions(position_ids + c.POSITION_OFFSET)
        h = self.dropout(h, deterministic=deterministic)  # [B, T, D]
        kv = None if cache is None else tuple(zip(cache.key, cache.value, strict=True))
        last, (all_hidden, all_attentions, new_kv) = self.layers(
            h, mask, fused, kv, index, deterministic, output_hidden_states, output_attentions
        )
        last = self.layer_norm(last)
        new_cache = None
        if cache is not None:
            # A write past the last slot would be clamped by dynamic_update_slice: poison instead.
            last = jnp.where(index + length > slots, jnp.nan, last)
            new_cache = KVCache(new_kv[0], new_kv[1], index + length)
        hidden_states = None
        if output_hidden_states:
            # As HF: the embeddings, each layer's output, and the last one after the final LayerNorm.
            hidden_states = (h, *all_hidden[:-1], last)
        return BaseModelOutput(
            last_hidden_state=last,
            hidden_states=hidden_states,
            attentions=all_attentions,
            cache=new_cache,
        )


def _check_cache_inputs(config, input_ids, attention_mask, cache, default_positions) -> None:
    """Errors for a cache that does not fit; with concrete values, positions past the table."""
    batch, length = input_ids.shape
    slots = length if cache is None else cache.max_length
    if cache is not None:
        if len(cache.key) != config.num_hidden_layers or len(cache.value) != len(cache.key):
            raise ValueError(
                f"cache has {len(cache.key)} key and {len(cache.value)} value arrays for "
                f"{config.num_hidden_layers} layers: make it with config.init_cache"
            )
        if cache.batch_size != batch:
            raise ValueError(f"cache batch {cache.batch_size} != input batch {batch}")
        if v.exceeds(length, slots):
            raise ValueError(f"{length} new tokens do not fit a cache of {slots} slots")
        if not v.is_traced(cache.index) and v.exceeds(int(cache.index) + length, slots):
            raise ValueError(
                f"cache is full: index {int(cache.index)} + {length} tokens > {slots} slots"
            )
    if not default_positions or (attention_mask is not None and v.is_traced(attention_mask)):
        return
    limit = config.max_position_embeddings
    if attention_mask is not None and attention_mask.ndim == 2:  # positions from the mask
        count = int(np.asarray(attention_mask).astype(bool).sum(axis=1).max(initial=0))
    elif cache is None or not v.is_traced(cache.index):  # positions are the slots (or the default
        count = (0 if cache is None else int(cache.index)) + length  # mask's: every slot so far)
    else:
        return
    if v.exceeds(count, limit):
        raise ValueError(f"{count} tokens exceed max_position_embeddings {limit}")


class _BioGptWithHead(ModelBase):
    """Shared call plumbing of the task models: run `self.biogpt`, then `self.head` on its output."""

    def check_call(self, *args, **kwargs) -> None:
        check_call(self.config, *args, **kwargs)

    returns_cache: ClassVar[bool] = False  # whether the head's output carries the updated KV cache

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        *,
        cache: KVCache | None = None,
        output_hidden_states=False,
        output_attentions=False,
        deterministic=True,
    ):
        if cache is not None and not self.returns_cache:
            raise ValueError(
                f"{type(self).__name__} does not return a KV cache; incremental decoding with "
                "`cache=` is for BioGptForCausalLM"
            )
        out = self.biogpt(
            input_ids,
            attention_mask,
            position_ids,
            cache=cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            deterministic=deterministic,
        )
        return self.head(out, input_ids, deterministic)

    def _backbone(self) -> BioGptModel:
        return BioGptModel(self.config, **self.numerics, **self.stack_options)


class BioGptForCausalLM(_BioGptWithHead):
    """BioGPT + output projection tied to the (unscaled) token embedding table, no bias."""

    returns_cache: ClassVar[bool] = True

    def setup(self) -> None:
        self.biogpt = self._backbone()

    def head(self, out: BaseModelOutput, input_ids, deterministic: bool) -> CausalLMOutput:
        logits = self.biogpt.embed_tokens.attend(out.last_hidden_state)  # [B, T, V]
        return CausalLMOutput(
            logits.astype(jnp.float32), out.hidden_states, out.attentions, out.cache
        )


def last_token_index(input_ids: jax.Array, pad_token_id: int | None) -> jax.Array:
    """[B]: as HF, the rightmost index whose id is not the pad id (0 for an all-pad row).

    Without a pad id HF takes the last index, and only for a batch of one.
    """
    batch, length = input_ids.shape
    if pad_token_id is None:
        if batch != 1:
            raise ValueError("batch sizes > 1 need config.pad_token_id to find each last token")
        return jnp.full((batch,), length - 1)
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)  # [B, T]
    return jnp.argmax(jnp.arange(length) * not_pad, axis=1)


class BioGptForSequenceClassification(_BioGptWithHead):
    """BioGPT + bias-free `score` on the last token that is not `pad_token_id` (as HF)."""

    def setup(self) -> None:
        c = self.config
        self.biogpt = self._backbone()
        self.score = Dense(
            c.num_labels,
            ("embed", "labels"),
            use_bias=False,
            init_std=c.initializer_range,
            **self.numerics,
        )

    def head(
        self, out: BaseModelOutput, input_ids, deterministic: bool
    ) -> SequenceClassifierOutput:
        last = last_token_index(input_ids, self.config.pad_token_id)  # [B]
        pooled = jnp.take_along_axis(out.last_hidden_state, last[:, None, None], axis=1)[:, 0]
        logits = self.score(pooled).astype(jnp.float32)  # [B, num_labels]
        return SequenceClassifierOutput(logits, out.hidden_states, out.attentions)


class BioGptForTokenClassification(_BioGptWithHead):
    """BioGPT + dropout + linear classifier on every token."""

    def setup(self) -> None:
        c = self.config
        self.biogpt = self._backbone()
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        self.dropout = nn.Dropout(rate)
        self.classifier = Dense(
            c.num_labels, ("embed", "labels"), init_std=c.initializer_range, **self.numerics
        )

    def head(self, out: BaseModelOutput, input_ids, deterministic: bool) -> TokenClassifierOutput:
        h = self.dropout(out.last_hidden_state, deterministic=deterministic)
        logits = self.classifier(h).astype(jnp.float32)  # [B, T, num_labels]
        return TokenClassifierOutput(logits, out.hidden_states, out.attentions)
