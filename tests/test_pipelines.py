"""Pipelines against transformers on a tiny saved random BERT (fill-mask, embeddings, attention)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _tiny_models import SENTENCES, save_tiny_biogpt

from biomed_jax import from_pretrained
from biomed_jax.pipelines import (
    attention,
    embed,
    embed_file,
    fill_mask,
    generate_text,
    plot_attention,
)
from biomed_jax.pipelines.stream import read_shards

FP32_TOL = 1e-5  # float32 on CPU, as in the conformance suite
MASKED = [
    "The patient was [MASK] with aspirin for fever.",
    "[MASK] growth of human [MASK] cells in mice.",
    "Aspirin [MASK].",
    "We found that protein expression inhibits tumor growth, and [MASK] expression is induced.",
]


@pytest.fixture(scope="module")
def ours(hf_bert):
    return from_pretrained(hf_bert)


@pytest.fixture(scope="module")
def reference(hf_bert):
    """transformers' BertModel (eager attention, so maps are returned) and fast tokenizer."""
    import transformers

    model = transformers.BertModel.from_pretrained(hf_bert, attn_implementation="eager").eval()
    return model, transformers.BertTokenizerFast.from_pretrained(hf_bert)


def hf_states(reference, ids):
    import torch

    model, _ = reference
    with torch.no_grad():
        out = model(
            torch.tensor([ids]), output_hidden_states=True, output_attentions=True, return_dict=True
        )
    return [h[0].numpy() for h in out.hidden_states], [a[0].numpy() for a in out.attentions]


def assert_same_candidates(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["token"], g["token_str"], g["sequence"]) == (
            w["token"],
            w["token_str"],
            w["sequence"],
        )
        assert abs(g["score"] - w["score"]) <= FP32_TOL


def test_fill_mask_equals_transformers_pipeline(hf_bert, ours):
    import transformers

    hf = transformers.pipeline("fill-mask", model=str(hf_bert), tokenizer=str(hf_bert))
    got = fill_mask(MASKED, top_k=7, model=ours, batch_size=2)
    for text, result in zip(MASKED, got):
        want = hf(text, top_k=7)
        if isinstance(want[0], dict):
            assert_same_candidates(result, want)
        else:  # several masks: one candidate list per mask, specials kept in `sequence`
            assert len(result) == len(want) == 2
            for r, w in zip(result, want):
                assert_same_candidates(r, w)
    assert_same_candidates(fill_mask(MASKED[0], model=str(hf_bert)), hf(MASKED[0]))


def test_fill_mask_bad_input(ours, hf_bert):
    with pytest.raises(ValueError, match=r"no mask token \(\[MASK\]\) in text 1"):
        fill_mask(["a [MASK]", "no mask here"], model=ours)
    with pytest.raises(ValueError, match=r"top_k must be in 1\.\."):
        fill_mask("a [MASK]", top_k=0, model=ours)
    with pytest.raises(TypeError, match="texts\\[0\\] must be a str"):
        fill_mask([3], model=ours)
    with pytest.raises(TypeError, match="model must be"):
        fill_mask("a [MASK]", model=3)
    encoder = from_pretrained(hf_bert, architecture="BertModel")
    with pytest.raises(ValueError, match="needs a BertForMaskedLM"):
        fill_mask("a [MASK]", model=encoder)


def test_embed_equals_transformers_hidden_states(ours, reference):
    _, tok = reference
    layers = [0, 1, -1]
    tokens = embed(SENTENCES, model=ours, layers=layers, pooling="none", batch_size=2)
    cls = embed(SENTENCES, model=ours, layers=layers, pooling="cls", batch_size=2)
    mean = embed(SENTENCES, model=ours, layers=-1, pooling="mean", batch_size=3)
    assert cls.shape == (len(SENTENCES), 3, 32) and mean.shape == (len(SENTENCES), 32)
    for i, text in enumerate(SENTENCES):
        encoded = tok(text, return_offsets_mapping=True)
        hidden, _ = hf_states(reference, encoded["input_ids"])
        want = np.stack([hidden[k] for k in layers], axis=1)  # [T, L, D]
        np.testing.assert_allclose(tokens[i]["embeddings"], want, rtol=0, atol=FP32_TOL)
        np.testing.assert_array_equal(tokens[i]["offsets"], encoded["offset_mapping"])
        assert tokens[i]["tokens"] == tok.convert_ids_to_tokens(encoded["input_ids"])
        np.testing.assert_allclose(cls[i], want[0], rtol=0, atol=FP32_TOL)
        np.testing.assert_allclose(mean[i], hidden[-1].mean(0), rtol=0, atol=FP32_TOL)
    single = embed(SENTENCES[0], model=ours, layers=1)
    np.testing.assert_allclose(single, cls[0, 1], rtol=0, atol=FP32_TOL)


def test_embed_long_texts_truncate_or_stride(ours, reference):
    _, tok = reference
    text = SENTENCES[-1]  # 33 tokens with [CLS] and [SEP]
    with pytest.warns(UserWarning, match="1 of 1 texts are longer than max_length=12"):
        cut = embed(text, model=ours, pooling="none", max_length=12)
    hidden, _ = hf_states(reference, tok(text, truncation=True, max_length=12)["input_ids"])
    np.testing.assert_allclose(cut["embeddings"], hidden[-1], rtol=0, atol=FP32_TOL)

    whole = embed(text, model=ours, pooling="none", max_length=12, stride=3)
    full = tok(text, return_offsets_mapping=True)
    assert whole["tokens"] == tok.convert_ids_to_tokens(full["input_ids"])
    np.testing.assert_array_equal(whole["offsets"], full["offset_mapping"])
    # Reference windows: HF's overflowing tokens with the same stride.
    windows = tok(
        text,
        max_length=12,
        truncation=True,
        stride=3,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert len(windows["input_ids"]) == 4
    states = [hf_states(reference, ids)[0][-1] for ids in windows["input_ids"]]
    for j, span in enumerate(full["offset_mapping"][1:-1], 1):
        candidates = []
        for w, offsets in enumerate(windows["offset_mapping"]):
            if tuple(span) in [tuple(o) for o in offsets[1:-1]]:
                p = [tuple(o) for o in offsets].index(tuple(span))
                candidates.append((min(p - 1, len(offsets) - 2 - p), -w, states[w][p]))
        np.testing.assert_allclose(
            whole["embeddings"][j], max(candidates, key=lambda c: c[:2])[2], atol=FP32_TOL
        )
    np.testing.assert_allclose(whole["embeddings"][0], states[0][0], atol=FP32_TOL)
    np.testing.assert_allclose(whole["embeddings"][-1], states[-1][-1], atol=FP32_TOL)
    cls = embed(text, model=ours, max_length=12, stride=3)
    np.testing.assert_allclose(cls, np.mean([s[0] for s in states], 0), atol=FP32_TOL)
    mean = embed(text, model=ours, pooling="mean", max_length=12, stride=3)
    np.testing.assert_allclose(mean, whole["embeddings"].mean(0), atol=FP32_TOL)
    with pytest.raises(ValueError, match=r"stride must be in 0\.\.9"):
        embed(text, model=ours, max_length=12, stride=10)
    with pytest.raises(ValueError, match="exceeds the model's 40 positions"):
        embed(text, model=ours, max_length=41)


def test_attention_equals_transformers(ours, reference, tmp_path, monkeypatch):
    _, tok = reference
    text = SENTENCES[1]
    got = attention(text, model=ours, layers=[1, 0], heads=[3, 0])
    ids = tok(text)["input_ids"]
    _, maps = hf_states(reference, ids)
    assert got["tokens"] == tok.convert_ids_to_tokens(ids)
    assert got["layers"] == [1, 0] and got["heads"] == [3, 0]
    want = np.stack([[maps[layer][h] for h in (3, 0)] for layer in (1, 0)])
    np.testing.assert_allclose(got["attentions"], want, rtol=0, atol=FP32_TOL)
    with pytest.raises(ValueError, match="head 4 out of range"):
        attention(text, model=ours, heads=[4])

    png = plot_attention(got, tmp_path / "maps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ModuleNotFoundError,
        match=r"pip install matplotlib \(in a checkout of biomed_jax: pip install '\.\[plot\]'\)",
    ):
        plot_attention(got, tmp_path / "again.png")


@pytest.mark.slow
def test_embed_file_resumes_after_kill(ours, hf_bert, tmp_path):
    """Kill a CLI `embed` for real midway; the rerun resumes and equals an uninterrupted run.

    The CLI gets as many devices as this process (each batch split over all of them), so both
    halves run the same programs and the result is bit-identical."""
    import jax

    docs = tmp_path / "docs.jsonl"
    texts = [SENTENCES[i % len(SENTENCES)] + f" {i}" for i in range(3000)]
    docs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "killed"
    args = ["embed", str(docs), str(out), "--field", "text", "--model", str(hf_bert),
            "--shard-size", "10", "--batch-size", "8", "--pooling", "mean",
            "--format", "safetensors"]  # fmt: skip
    devices = f"--xla_force_host_platform_device_count={jax.local_device_count()}"
    env = {"BIOMED_JAX_COMPILATION_CACHE": "off", "XLA_FLAGS": devices, "HF_HUB_OFFLINE": "1"}
    import os

    process = subprocess.Popen(
        [sys.executable, "-m", "biomed_jax.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.safetensors"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "no shards written"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    written = len(list(out.glob("shard-*.safetensors")))
    assert 3 <= written < 300, written

    resumed = embed_file(docs, out, field="text", model=ours, shard_size=10, fmt="safetensors",
                         progress=False, batch_size=8, pooling="mean")  # fmt: skip
    assert resumed["num_documents"] == 3000 and resumed["num_shards"] == 300
    whole = embed_file(docs, tmp_path / "whole", field="text", model=ours, shard_size=10,
                       fmt="safetensors", progress=False, batch_size=8, pooling="mean")  # fmt: skip
    assert whole["num_shards"] == 300
    got = read_shards(out)
    np.testing.assert_array_equal(got, read_shards(tmp_path / "whole"))
    np.testing.assert_allclose(
        got[[0, 1234, 2999]],
        embed([texts[0], texts[1234], texts[2999]], model=ours, pooling="mean"),
        rtol=0,
        atol=FP32_TOL,
    )
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(ValueError, match=r"other settings \(pooling\)"):
        embed_file(docs, out, field="text", model=ours, shard_size=10, fmt="safetensors",
                   progress=False, batch_size=8, pooling="cls")  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_embed_file_text_lines_and_progress(ours, tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SENTENCES) + "\n")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    manifest = embed_file(docs, tmp_path / "out", model=ours, shard_size=2, layers=[0, -1])
    assert manifest["num_documents"] == len(SENTENCES) and manifest["num_shards"] == 3
    np.testing.assert_allclose(  # other batch shapes than embed's: not bit-identical
        read_shards(tmp_path / "out"),
        embed(SENTENCES, model=ours, layers=[0, -1]),
        rtol=0,
        atol=FP32_TOL,
    )
    bar = terminal.getvalue().split("\r")[-1]  # tqdm's last redraw
    assert f"{len(SENTENCES)}/{len(SENTENCES)} [" in bar and "doc" in bar  # done, time, rate
    # Not a terminal (a log, a pipe), or progress=False: nothing on stderr.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    embed_file(docs, tmp_path / "quiet", model=ours, shard_size=2)
    embed_file(docs, tmp_path / "off", model=ours, shard_size=2, progress=False)
    assert sys.stderr.getvalue() == ""

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no string field 'text'"):
        embed_file(bad, tmp_path / "bad", field="text", model=ours)


def test_generate_text_equals_transformers_generate(tmp_path):
    """Greedy (batched, left-padded, different lengths) and beam search, decoded as HF does."""
    import transformers

    path = save_tiny_biogpt(tmp_path / "biogpt")
    hf = transformers.BioGptForCausalLM.from_pretrained(path).eval()
    tok = transformers.BioGptTokenizer.from_pretrained(path)
    prompts = ["COVID-19 is", "Aspirin inhibits the growth of tumor cells in", "The"]
    got = generate_text(prompts, max_new_tokens=6, model=str(path), batch_size=3)
    for prompt, text in zip(prompts, got):
        out = hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert text == tok.decode(out[0], skip_special_tokens=True)
    beams = generate_text(
        prompts[1], max_new_tokens=6, num_beams=3, num_return_sequences=2, model=str(path)
    )
    out = hf.generate(
        **tok(prompts[1], return_tensors="pt"),
        max_new_tokens=6,
        num_beams=3,
        num_return_sequences=2,
        do_sample=False,
    )
    assert beams == tok.batch_decode(out, skip_special_tokens=True)
