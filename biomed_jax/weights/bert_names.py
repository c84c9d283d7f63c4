"""The BERT name table: HF `modeling_bert` keys -> our parameter paths."""

from __future__ import annotations

from biomed_jax.weights.names import NameTable, Rule

_BACKBONE = (
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight", "embeddings/position_embeddings/embedding"),
    Rule("embeddings.token_type_embeddings.weight", "embeddings/token_type_embeddings/embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings/LayerNorm/scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings/LayerNorm/bias"),
    *(
        rule
        for hf, ours in (
            ("attention.self.query", "attention/query"),
            ("attention.self.key", "attention/key"),
            ("attention.self.value", "attention/value"),
            ("attention.output.dense", "attention/out"),
            ("intermediate.dense", "mlp/fc_in"),
            ("output.dense", "mlp/fc_out"),
        )
        for rule in (
            Rule(
                f"encoder.layer.{{i}}.{hf}.weight", f"encoder/layer/{ours}/kernel", transpose=True
            ),
            Rule(f"encoder.layer.{{i}}.{hf}.bias", f"encoder/layer/{ours}/bias"),
        )
    ),
    *(
        rule
        for hf, ours in (
            ("attention.output.LayerNorm", "attention_norm"),
            ("output.LayerNorm", "output_norm"),
        )
        for rule in (
            Rule(f"encoder.layer.{{i}}.{hf}.weight", f"encoder/layer/{ours}/scale"),
            Rule(f"encoder.layer.{{i}}.{hf}.bias", f"encoder/layer/{ours}/bias"),
        )
    ),
)
_POOLER = (
    Rule("pooler.dense.weight", "pooler/kernel", transpose=True),
    Rule("pooler.dense.bias", "pooler/bias"),
)
_MLM_HEAD = (
    Rule("cls.predictions.transform.dense.weight", "transform/kernel", transpose=True),
    Rule("cls.predictions.transform.dense.bias", "transform/bias"),
    Rule("cls.predictions.transform.LayerNorm.weight", "transform_norm/scale"),
    Rule("cls.predictions.transform.LayerNorm.bias", "transform_norm/bias"),
    Rule("cls.predictions.bias", "decoder_bias"),
)
_CLASSIFIER = (
    Rule("classifier.weight", "classifier/kernel", transpose=True),
    Rule("classifier.bias", "classifier/bias"),
)
_PREFIX = r"(?:bert\.)?"
# Buffers, and the decoder tied to the word embeddings (its bias is cls.predictions.bias).
_ALWAYS_DROPPED = (r"position_ids$", r"^cls\.predictions\.decoder\.(weight|bias)$")
_PRETRAINING_HEADS = (r"^cls\.",)


def bert_name_table(architecture: str) -> NameTable:
    """The table for one of our BERT module classes."""
    if architecture == "BertModel":
        return NameTable(
            ((_PREFIX, "", _BACKBONE + _POOLER),),
            drop=(*_ALWAYS_DROPPED, *_PRETRAINING_HEADS, r"^classifier\."),
            fresh=("pooler/",),
        )
    if architecture == "BertForMaskedLM":
        return NameTable(
            ((_PREFIX, "bert/", _BACKBONE), ("", "", _MLM_HEAD)),
            drop=(*_ALWAYS_DROPPED, r"^(bert\.)?pooler\.", r"^cls\.seq_relationship\."),
        )
    if architecture == "BertForSequenceClassification":
        return NameTable(
            ((_PREFIX, "bert/", _BACKBONE + _POOLER), ("", "", _CLASSIFIER)),
            drop=_ALWAYS_DROPPED + _PRETRAINING_HEADS,
            fresh=("classifier/", "bert/pooler/"),
        )
    if architecture == "BertForTokenClassification":
        return NameTable(
            ((_PREFIX, "bert/", _BACKBONE), ("", "", _CLASSIFIER)),
            drop=_ALWAYS_DROPPED + _PRETRAINING_HEADS + (r"^(bert\.)?pooler\.",),
            fresh=("classifier/",),
        )
    raise ValueError(f"no BERT name table for architecture {architecture!r}")
