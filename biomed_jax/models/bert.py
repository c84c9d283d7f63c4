"""BERT encoder (BiomedBERT) and its heads, as in Hugging Face `modeling_bert.py`.

Axis legend: B batch, T length, D hidden, N heads, H head dim, F intermediate, V vocab.
Post-LayerNorm blocks: x = LN(x + Attn(x)); x = LN(x + MLP(x)). Layers run unrolled, or under one
`nn.scan` with `scan_layers=True` (`models.common.layer_stack`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from biomed_jax.models.common import ModelBase, check_inputs, layer_stack
from biomed_jax.models.outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from biomed_jax.nn.attention import SelfAttention, make_attention_mask, packed_sequence_ids
from biomed_jax.nn.kernels import SegmentMask, segment_mask
from biomed_jax.nn.layers import MLP, Dense, Embed, LayerNorm, activation


class BertEmbeddings(ModelBase):
    """word + position + token type embeddings, LayerNorm, dropout."""

    def setup(self) -> None:
        c, kw = self.config, {"init_std": self.config.initializer_range, **self.numerics}
        self.word_embeddings = Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), **kw)
        self.position_embeddings = Embed(
            c.max_position_embeddings, c.hidden_size, ("positions", "embed"), **kw
        )
        self.token_type_embeddings = Embed(
            c.type_vocab_size, c.hidden_size, ("token_types", "embed"), **kw
        )
        self.LayerNorm = LayerNorm(c.layer_norm_eps, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool = True):
        h = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )  # [B, T, D]
        return self.dropout(self.LayerNorm(h), deterministic=deterministic)


class BertLayer(ModelBase):
    """One post-LN encoder block: (h, mask) -> (h, (h, attention probs))."""

    deterministic: bool = True
    output_hidden_states: bool = False
    output_attentions: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, segments: SegmentMask | None):
        c = self.config  # h [B, T, D], mask [B, 1|N, 1|T, T]
        kw = {"init_std": c.initializer_range, **self.numerics}
        attn, probs, _ = SelfAttention(
            c.num_attention_heads,
            c.head_dim,
            c.attention_probs_dropout_prob,
            **kw,
            name="attention",
        )(
            h,
            mask,
            segments=segments,
            deterministic=self.deterministic,
            need_probs=self.output_attentions,
        )
        attn = nn.Dropout(c.hidden_dropout_prob)(attn, deterministic=self.deterministic)
        h = LayerNorm(c.layer_norm_eps, self.dtype, self.param_dtype, name="attention_norm")(
            h + attn
        )
        mlp = MLP(c.hidden_size, c.intermediate_size, c.hidden_act, **kw, name="mlp")(h)
        mlp = nn.Dropout(c.hidden_dropout_prob)(mlp, deterministic=self.deterministic)
        h = LayerNorm(c.layer_norm_eps, self.dtype, self.param_dtype, name="output_norm")(h + mlp)
        h = nn.with_logical_constraint(h, ("batch", "length", "act_embed"))
        return h, (
            h if self.output_hidden_states else None,
            probs if self.output_attentions else None,
        )


class BertEncoder(ModelBase):
    """The stack of `BertLayer`s: params under encoder/layer_{i} (or encoder/layer, scanned)."""

    @nn.compact
    def __call__(
        self,
        h,
        mask,
        segments,
        deterministic: bool,
        output_hidden_states: bool,
        output_attentions: bool,
    ):
        layers = layer_stack(
            BertLayer,
            self.config.num_hidden_layers,
            scan=self.scan_layers,
            remat=self.gradient_checkpointing,
            remat_policy=self.remat_policy,
            in_axes=(nn.broadcast, nn.broadcast),
            config=self.config,
            **self.numerics,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return layers(
            h, mask, segments
        )  # h [B, T, D], (L x [B, T, D] | None, L x [B, N, T, T] | None)


def check_call(
    config, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **_
) -> None:
    """A BERT model call's arrays, checked on the host (values too, when concrete)."""
    check_inputs(config, input_ids, attention_mask, token_type_ids, position_ids)


class BertModel(ModelBase):
    """Embeddings, encoder stack and (optionally) the tanh pooler over [CLS]."""

    def check_call(self, *args, **kwargs) -> None:
        check_call(self.config, *args, **kwargs)

    add_pooling_layer: bool = True

    def setup(self) -> None:
        self.embeddings = BertEmbeddings(self.config, **self.numerics)
        self.encoder = BertEncoder(self.config, **self.numerics, **self.stack_options)
        if self.add_pooling_layer:
            self.pooler = Dense(
                self.config.hidden_size,
                ("embed", "embed_out"),
                init_std=self.config.initializer_range,
                **self.numerics,
            )

    def __call__(
        self,
        input_ids: jax.Array,  # [B, T] int
        attention_mask: jax.Array | None = None,  # [B, T] 1 = token; or [B, T, T], [B, N, T, T]
        token_type_ids: jax.Array | None = None,  # [B, T]
        position_ids: jax.Array | None = None,  # [B, T]
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        deterministic: bool = True,
    ) -> BaseModelOutput:
        """Masks as `nn.attention.make_attention_mask` takes them. As transformers: without
        `attention_mask`, `position_ids` that restart (0, 1, 2, 0, 1) mark packed sequences, each
        attending only to itself."""
        c = self.config
        check_call(c, input_ids, attention_mask, token_type_ids, position_ids)
        batch, length = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        segments = None
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), (batch, length))
        elif attention_mask is None:
            segments = packed_sequence_ids(position_ids)
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)

        embedded = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        mask = make_attention_mask(attention_mask, segment_ids=segments)  # [B, 1|N, 1|T, T]
        fused = None  # the same mask as segment ids, for a splash policy
        if self.numerics["policy"].attention == "splash" and attention_mask.ndim == 2:
            fused = segment_mask(attention_mask, segments)
        h, (all_hidden, all_attentions) = self.encoder(
            embedded, mask, fused, deterministic, output_hidden_states, output_attentions
        )
        pooled = jnp.tanh(self.pooler(h[:, 0])) if self.add_pooling_layer else None
        return BaseModelOutput(
            last_hidden_state=h,
            pooler_output=pooled,
            hidden_states=(embedded, *all_hidden) if output_hidden_states else None,
            attentions=all_attentions,
        )


class _BertWithHead(ModelBase):
    """Shared call plumbing of the task models: run `self.bert`, then `self.head` on its output."""

    def check_call(self, *args, **kwargs) -> None:
        check_call(self.config, *args, **kwargs)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        output_hidden_states=False,
        output_attentions=False,
        deterministic=True,
    ):
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            deterministic=deterministic,
        )
        return self.head(out, deterministic)

    def _encoder_and_classifier(self, add_pooling_layer: bool) -> None:
        """`self.bert`, `self.dropout` (classifier_dropout, else hidden_dropout_prob) and
        `self.classifier` (hidden -> num_labels) of the classification models."""
        c = self.config
        self.bert = BertModel(
            c, **self.numerics, add_pooling_layer=add_pooling_layer, **self.stack_options
        )
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        self.dropout = nn.Dropout(rate)
        self.classifier = Dense(
            c.num_labels, ("embed", "labels"), init_std=c.initializer_range, **self.numerics
        )


class BertForMaskedLM(_BertWithHead):
    """BERT + prediction head (dense, activation, LayerNorm) + decoder tied to word embeddings."""

    def setup(self) -> None:
        c = self.config
        self.bert = BertModel(
            c,
            **self.numerics,
            add_pooling_layer=False,
            **self.stack_options,
        )
        self.transform = Dense(
            c.hidden_size, ("embed", "embed_out"), init_std=c.initializer_range, **self.numerics
        )
        self.transform_norm = LayerNorm(c.layer_norm_eps, self.dtype, self.param_dtype)
        self.decoder_bias = self.param(
            "decoder_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (c.vocab_size,),
            self.param_dtype,
        )

    def head(self, out: BaseModelOutput, deterministic: bool) -> MaskedLMOutput:
        h = activation(self.config.hidden_act)(self.transform(out.last_hidden_state))
        h = self.transform_norm(h)
        logits = self.bert.embeddings.word_embeddings.attend(h) + self.decoder_bias.astype(
            self.dtype
        )
        return MaskedLMOutput(logits.astype(jnp.float32), out.hidden_states, out.attentions)


class BertForSequenceClassification(_BertWithHead):
    """BERT + pooler + dropout + linear classifier over [CLS] (num_labels outputs)."""

    def setup(self) -> None:
        self._encoder_and_classifier(add_pooling_layer=True)

    def head(self, out: BaseModelOutput, deterministic: bool) -> SequenceClassifierOutput:
        pooled = self.dropout(out.pooler_output, deterministic=deterministic)
        logits = self.classifier(pooled).astype(jnp.float32)
        return SequenceClassifierOutput(logits, out.hidden_states, out.attentions)


class BertForTokenClassification(_BertWithHead):
    """BERT (no pooler) + dropout + linear classifier on every token."""

    def setup(self) -> None:
        self._encoder_and_classifier(add_pooling_layer=False)

    def head(self, out: BaseModelOutput, deterministic: bool) -> TokenClassifierOutput:
        h = self.dropout(out.last_hidden_state, deterministic=deterministic)
        logits = self.classifier(h).astype(jnp.float32)
        return TokenClassifierOutput(logits, out.hidden_states, out.attentions)
