"""int8 weight-only inference through qwix: exactly the float model on the rounded weights.

What int8 changes is the weights alone: each kernel becomes q * s with s = max |w| of its output
column / 127.5 (qwix's symmetric int8 bound: codes -128..127, the range widened by half a step)
and q = round(w / s) in [-128, 127], so every weight moves by at most s / 2, and the int8 model must compute
what the float model computes on those rounded weights (float32 round-off: the same products,
scaled before or after the sum). How far that is from the float model depends on the weights; on
a real checkpoint (MiniLM-L6, 6 layers, D=384) every token's last hidden state keeps a cosine
similarity of 0.9991 with float32's (measured); the test allows 0.998, twice that loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import biomed_jax
from biomed_jax.models.common import to_layout
from biomed_jax.quantization import quantize_int8
from biomed_jax.trees import flatten

qwix = pytest.importorskip("qwix")

from conformance import tiny  # noqa: E402

TEXTS = ["Aspirin reduces fever in mice.", "Tumor growth of human cancer cells was inhibited."]
MIN_COSINE = 0.998  # measured 0.9991 on MiniLM-L6 (module docstring)


def is_quantized(x) -> bool:
    return isinstance(x, qwix._src.providers.ptq.WithAux)


def rounded(qparams):
    """The float params the int8 model stands for: every int8 kernel dequantized."""
    return jax.tree.map(
        lambda x: qwix.dequantize(x.array) if is_quantized(x) else x, qparams, is_leaf=is_quantized
    )


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "BioGptForCausalLM"])
def test_int8_model_is_the_float_model_on_rounded_weights(arch, tmp_path):
    family = "bert" if arch.startswith("Bert") else "biogpt"
    path = getattr(tiny, f"save_{family}")(tmp_path / family)
    pre = biomed_jax.from_pretrained(path, architecture=arch, scan_layers=True)
    qmodule, qparams = quantize_int8(pre.module, pre.params)
    assert not qmodule.scan_layers  # unrolled: one scale per layer's kernel

    flat = flatten(qparams)
    quantized = {k for k, v in flat.items() if is_quantized(v)}
    dense = {k for k in flat if k.endswith("/kernel")}
    assert quantized == dense  # every Dense kernel, no embedding table
    original = flatten(to_layout(pre.params, False))
    for key in quantized:
        q = flat[key].array
        assert q.qvalue.dtype == jnp.int8
        w = np.asarray(original[key])
        scale = np.asarray(q.scale)  # [1, out]: one per output feature
        assert scale.shape == (1, w.shape[1])
        np.testing.assert_allclose(scale[0], np.abs(w).max(0) / 127.5, rtol=1e-6)
        error = np.abs(np.asarray(qwix.dequantize(q)) - w)
        # round to nearest, up to float32 round-off of w / s (|w / s| <= 128: 1 ulp is 1.5e-5)
        assert (error <= scale * (0.5 + 2e-5)).all(), key

    ids = np.random.RandomState(0).randint(3, pre.config.vocab_size, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    int8 = np.asarray(qmodule.apply({"params": qparams}, ids, mask).logits)
    plain = pre.module.clone(scan_layers=False)
    expected = np.asarray(plain.apply({"params": rounded(qparams)}, ids, mask).logits)
    np.testing.assert_allclose(int8, expected, rtol=0, atol=2e-6 * np.abs(expected).max())
    assert not np.array_equal(int8, np.asarray(pre(ids, mask).logits))  # the rounding shows


def test_int8_minilm_stays_close_to_float(minilm_dir):
    pre = biomed_jax.from_pretrained(minilm_dir)
    enc = pre.tokenizer(TEXTS, padding=True, return_tensors="np")
    qmodule, qparams = quantize_int8(pre.module, pre.params)
    ours = np.asarray(qmodule.apply({"params": qparams}, **enc).last_hidden_state)
    ref = np.asarray(pre(**enc).last_hidden_state)
    valid = enc["attention_mask"].astype(bool)
    a, b = ours[valid], ref[valid]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= MIN_COSINE
    assert cosine.min() < 1 - 1e-6  # int8 is not float: the comparison could fail


def test_int8_refuses_the_float64_policy(tmp_path):
    pre = biomed_jax.from_pretrained(tiny.save_bert(tmp_path / "b"), policy="exact")
    with pytest.raises(ValueError, match="float64_sums"):
        quantize_int8(pre.module, pre.params)
