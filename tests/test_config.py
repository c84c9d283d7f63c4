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


def test_every_problem_in_one_error_naming_the_file(tmp_path):
    hf = transformers.BertConfig().to_dict() | {
        "hidden_size": "64",
        "num_attention_heads": 0,
        "layer_norm_eps": float("nan"),
        "id2label": {"0": "A", "2": "C"},
        "foo": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError) as info:
        BertConfig.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "config.json") in message
    for text in (
        "hidden_size must be an int, got '64'",
        "num_attention_heads must be positive",
        "layer_norm_eps",
        "no label for ids [1]",
        "'foo'",
    ):
        assert text in message, text


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"id2label": {"0": "A", "1": "B"}, "label2id": {"A": 1, "B": 0}}, "label2id"),
        ({"id2label": {"0": "A", "01": "B"}}, "'01'"),
        ({"id2label": {"0": 5}}, "must be a string"),
        ({"id2label": ["A"]}, "must be an object"),
        ({"label2id": {"A": 0}}, "without id2label"),
    ],
)
def test_inconsistent_labels_are_refused(labels, message):
    hf = transformers.BertConfig().to_dict()
    del hf["id2label"], hf["label2id"]
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_dict(hf | labels)


def test_labels_written_by_transformers_are_read():
    hf = json.loads(
        transformers.BertConfig(id2label={0: "NEG", 1: "POS", 2: "NEU"}).to_json_string()
    )
    assert BertConfig.from_dict(hf).id2label == ("NEG", "POS", "NEU")


@pytest.mark.parametrize(
    ("arch", "config_cls", "hf_cls"),
    [
        ("BertForMaskedLM", BertConfig, transformers.BertForMaskedLM),
        ("BertForSequenceClassification", BertConfig, transformers.BertForSequenceClassification),
        ("BertForTokenClassification", BertConfig, transformers.BertForTokenClassification),
        ("BioGptForCausalLM", BioGptConfig, transformers.BioGptForCausalLM),
        (
            "BioGptForSequenceClassification",
            BioGptConfig,
            transformers.BioGptForSequenceClassification,
        ),
        ("BioGptForTokenClassification", BioGptConfig, transformers.BioGptForTokenClassification),
    ],
)
def test_parameter_bound_covers_every_architecture(arch, config_cls, hf_cls):
    """The size cap's count is an upper bound on HF's own parameter count (a small one)."""
    import torch

    from biomed_jax.models.config import num_parameters_bound

    sizes = dict(
        vocab_size=97,
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=40,
        max_position_embeddings=33,
        num_labels=5,
    )
    ours = config_cls(**sizes)
    hf_config = getattr(transformers, config_cls.__name__)(**sizes)
    with torch.device("meta"):
        model = hf_cls(hf_config)
    count = sum(p.numel() for p in model.parameters())  # tied weights counted once
    bound = num_parameters_bound(ours)
    assert count <= bound <= count + 2 * 24 * 97 + 2 * 24 * 24 + 4 * 24 * 5, (count, bound)


def test_size_cap_is_this_machines_memory(monkeypatch):
    from biomed_jax.models import config as config_module

    small = BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    needed = config_module.num_parameters_bound(small) * config_module.PARAM_BYTES
    monkeypatch.setattr(config_module, "memory_bytes", lambda: needed)
    assert small.replace(num_labels=2) == small  # exactly fits
    with pytest.raises(ConfigError, match="more than this machine's memory"):
        small.replace(num_labels=3)
    with pytest.raises(ConfigError, match="above the cap of 256"):
        small.replace(num_hidden_layers=257)


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown config override 'num_lables'"):
        BertConfig.from_dict(transformers.BertConfig().to_dict(), num_lables=3)
