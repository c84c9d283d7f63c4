"""Configs: HF interop both ways, and refusal of what we do not implement."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

from biomed_jax import BertConfig, BioGptConfig, ConfigError


def test_bert_from_hf_dict_round_trip():
    hf = transformers.BertConfig(
        vocab_size=101,
        hidden_size=48,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=100,
        hidden_act="relu",
        num_labels=3,
    )
    ours = BertConfig.from_dict(hf.to_dict())
    assert (ours.vocab_size, ours.hidden_size, ours.num_attention_heads) == (101, 48, 3)
    assert ours.hidden_act == "relu" and ours.num_labels == 3 and ours.head_dim == 16
    back = transformers.BertConfig.from_dict(ours.to_dict())
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "num_labels",
        "type_vocab_size",
        "max_position_embeddings",
    ):
        assert getattr(back, key) == getattr(hf, key), key


def test_defaults_are_the_published_architectures():
    assert (BertConfig().vocab_size, BertConfig().num_hidden_layers) == (30522, 12)
    gpt = BioGptConfig()
    assert (
        gpt.vocab_size,
        gpt.hidden_size,
        gpt.num_hidden_layers,
        gpt.num_attention_heads,
        gpt.intermediate_size,
        gpt.max_position_embeddings,
    ) == (42384, 1024, 24, 16, 4096, 1024)
    assert gpt.scale_embedding and gpt.embed_scale == 32.0


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BertConfig().hidden_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("position_embedding_type", "relative_key", "position_embedding_type"),
        ("is_decoder", True, "is_decoder"),
        ("add_cross_attention", True, "add_cross_attention"),
        ("hidden_act", "mish", "hidden_act"),
        ("some_new_feature", 1, "unknown key 'some_new_feature'"),
        ("model_type", "roberta", "model_type"),
    ],
)
def test_unsupported_values_are_refused(key, value, message):
    hf = transformers.BertConfig().to_dict()
    hf[key] = value
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_dict(hf)


def test_all_problems_reported_together():
    hf = transformers.BertConfig().to_dict() | {"position_embedding_type": "relative_key", "foo": 1}
    with pytest.raises(ConfigError) as info:
        BertConfig.from_dict(hf)
    assert "foo" in str(info.value) and "position_embedding_type" in str(info.value)


def test_heads_must_divide_hidden():
    with pytest.raises(ConfigError, match="multiple"):
        BertConfig(hidden_size=50, num_attention_heads=3)


def test_from_pretrained_reads_file_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(transformers.BioGptConfig().to_dict()))
    assert BioGptConfig.from_pretrained(tmp_path) == BioGptConfig.from_pretrained(
        tmp_path / "config.json"
    )
    with pytest.raises(FileNotFoundError):
        BertConfig.from_pretrained(tmp_path / "missing")
