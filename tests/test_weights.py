"""Conversion and loading: name tables, the safe torch reader, atomic writes, loud failures."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import torch
import transformers

from biomed_jax import (
    CheckpointError,
    UnsafeCheckpointError,
    convert,
    files,
    from_pretrained,
    load_params,
)
from biomed_jax.trees import flatten
from biomed_jax.weights.torch_zip import load_torch_zip

SMALL = dict(
    vocab_size=61,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=40,
    max_position_embeddings=32,
)


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**SMALL)).eval()
    path = tmp_path_factory.mktemp("hf_mlm")
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return model, path


def _same_tree(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_torch_zip_reader_matches_torch(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "i64": torch.arange(7),
        "transposed": torch.randn(4, 6).t(),  # non-contiguous view
        "slice": torch.randn(10)[3:8],  # storage offset
        "scalar": torch.tensor(2.5),
    }
    torch.save(tensors, tmp_path / "x.bin")
    loaded = load_torch_zip(tmp_path / "x.bin")
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        np.testing.assert_array_equal(
            loaded[k].astype(np.float64), t.float().numpy().astype(np.float64), err_msg=k
        )
    assert str(loaded["bf16"].dtype) == "bfloat16" and loaded["i64"].dtype == np.int64


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"weight": torch.zeros(2), "evil": _Exploit(marker)}
    torch.save(payload, tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_torch_zip(tmp_path / "evil.bin")
    assert not marker.exists()

    # A hand-made torch-style zip whose data.pkl calls os.system directly.
    with zipfile.ZipFile(tmp_path / "evil2.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_torch_zip(tmp_path / "evil2.bin")
    assert not marker.exists()


def test_legacy_non_zip_format_is_a_clear_error(tmp_path):
    (tmp_path / "old.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeCheckpointError, match="not a torch zip checkpoint"):
        load_torch_zip(tmp_path / "old.bin")


def test_pytorch_bin_loads_like_safetensors(hf_mlm, tmp_path):
    model, path = hf_mlm
    # transformers v5 only writes safetensors; write the legacy file as v4 did.
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    _same_tree(from_pretrained(tmp_path).params, from_pretrained(path).params)


def test_convert_then_load_params(hf_mlm, tmp_path):
    _, path = hf_mlm
    dst = convert(path, tmp_path / "out")
    assert {p.name for p in dst.iterdir()} == {"config.json", "model.safetensors", "vocab.txt"}
    direct = from_pretrained(path)
    _same_tree(load_params(dst), direct.params)
    again = from_pretrained(dst)
    assert type(again.module).__name__ == "BertForMaskedLM"
    _same_tree(again.params, direct.params)
    assert load_params(dst, dtype=np.float16)["decoder_bias"].dtype == np.float16


def test_state_dict_without_prefix_and_legacy_layernorm_names(hf_mlm, tmp_path):
    model, path = hf_mlm
    state = {k: v.numpy() for k, v in model.bert.state_dict().items()}  # no "bert." prefix
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in state.items()
    }
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ours = from_pretrained(tmp_path, architecture="BertModel")
    ref = from_pretrained(path, architecture="BertModel")
    flat_ours, flat_ref = flatten(ours.params), flatten(ref.params)
    for k in flat_ours:
        if not k.startswith("pooler"):
            np.testing.assert_array_equal(flat_ours[k], flat_ref[k], err_msg=k)


def test_missing_unexpected_and_misshapen_tensors_reported_together(hf_mlm, tmp_path):
    model, path = hf_mlm
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    del state["bert.encoder.layer.1.output.dense.weight"]
    state["bert.encoder.layer.0.attention.self.query.bias"] = np.zeros(5, np.float32)
    state["bert.mystery.weight"] = np.zeros(3, np.float32)
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        from_pretrained(tmp_path)
    message = str(info.value)
    assert "bert.mystery.weight" in message
    assert "encoder/layer_1/mlp/fc_out/kernel" in message  # layer 1 missing
    assert "query/bias" in message


def test_task_head_absent_from_checkpoint_is_initialized(hf_mlm):
    _, path = hf_mlm
    model = from_pretrained(path, architecture="BertForSequenceClassification", num_labels=4)
    assert model.params["classifier"]["kernel"].shape == (24, 4)
    assert model.config.num_labels == 4


def test_fresh_weights_warning_names_the_model_and_a_random_pooler(hf_mlm, caplog):
    _, path = hf_mlm  # a BertForMaskedLM checkpoint: no pooler
    with caplog.at_level(logging.WARNING, logger="biomed_jax.weights.reader"):
        from_pretrained(path, architecture="BertModel")
    (record,) = [r for r in caplog.records if r.name == "biomed_jax.weights.reader"]
    assert record.getMessage().startswith(f"{path}: newly initialized (not in the checkpoint): ")
    assert "pooler/kernel" in record.getMessage()
    assert "pooler_output is random until the model is trained" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="biomed_jax.weights.reader"):
        from_pretrained(path, architecture="BertForTokenClassification", num_labels=3)
    (record,) = [r for r in caplog.records if r.name == "biomed_jax.weights.reader"]
    assert "classifier/kernel" in record.getMessage() and "pooler" not in record.getMessage()


def test_interrupted_conversion_leaves_no_complete_looking_file(hf_mlm, tmp_path, monkeypatch):
    _, path = hf_mlm

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.numpy.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        convert(path, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no half-built directory, no temporary left behind


def test_corrupt_safetensors_is_a_clear_error(hf_mlm, tmp_path):
    _, path = hf_mlm
    dst = convert(path, tmp_path / "out")
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_params(dst)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.txt"
    files.atomic_write_text(target, "one")
    files.atomic_write_text(target, "two")
    assert target.read_text() == "two" and len(list(tmp_path.iterdir())) == 1


def test_loaded_model_runs(hf_mlm):
    model, path = hf_mlm
    ours = from_pretrained(path)
    ids = np.array([[2, 7, 9, 3]], np.int32)
    logits = jax.jit(lambda p, i: ours.module.apply({"params": p}, i).logits)(ours.params, ids)
    with torch.no_grad():
        ref = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)


def test_nan_or_inf_weights_are_named_at_load(hf_mlm, tmp_path, caplog):
    """Issue 30: NaN weights loaded without a word, and `generate` then returned token 0
    throughout. They still load as stored, with one warning naming every such tensor."""
    import logging
    import shutil

    from safetensors.numpy import load_file, save_file

    _, path = hf_mlm
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    nan_key = "bert.encoder.layer.1.output.dense.weight"
    inf_key = "bert.embeddings.word_embeddings.weight"
    tensors[nan_key][0, 0] = np.nan
    tensors[inf_key][3, 1] = -np.inf
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    for scan_layers in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="biomed_jax.weights.reader"):
            loaded = from_pretrained(broken, scan_layers=scan_layers)
        messages = [r.getMessage() for r in caplog.records if "NaN or Inf" in r.getMessage()]
        assert len(messages) == 1, caplog.text
        assert "2 tensor(s)" in messages[0] and nan_key in messages[0] and inf_key in messages[0]
        values = [np.asarray(v) for v in flatten(loaded.params).values()]
        assert any(np.isnan(v).any() for v in values) and any(np.isinf(v).any() for v in values)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="biomed_jax.weights.reader"):
        from_pretrained(path)
    assert "NaN or Inf" not in caplog.text
