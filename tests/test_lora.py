"""LoRA through qwix on our Linen modules: adapters trained alone, merged back, exported to
transformers (outputs judged by the conformance rule)."""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
import pytest
import transformers

import biomed_jax
from biomed_jax import lora
from biomed_jax.models.common import init_params, to_layout
from biomed_jax.train import token_classification_loss
from biomed_jax.trees import flatten

qwix = pytest.importorskip("qwix")

from conformance import bert as conf_bert  # noqa: E402
from conformance import tiny  # noqa: E402

RULE = qwix.LoraRule(module_path=lora.TARGETS, rank=4, alpha=8.0)
FALLBACK = dict.fromkeys(("hidden", "attention", "logits", "pooler"), conf_bert.FP32_TOL)


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    """A BERT token classifier (fresh head) and a labelled batch."""
    path = tiny.save_bert(tmp_path_factory.mktemp("bert"))
    pre = biomed_jax.from_pretrained(path, architecture="BertForTokenClassification", num_labels=3)
    enc = pre.tokenizer(
        ["Aspirin reduces fever in mice.", "Tumor growth inhibits gene expression."],
        padding=True,
        return_tensors="np",
    )
    labels = np.where(enc["attention_mask"] == 1, np.arange(enc["input_ids"].shape[1]) % 3, -100)
    return pre, dict(enc), labels


def train_adapters(lora_module, params, enc, labels, steps=4):
    """The recipe of docs/fine-tuning.md: gradients and Adam on the adapters only."""
    adapters, frozen = lora.split_lora(params)
    tx = optax.adam(1e-2)

    def loss_fn(adapters):
        out = lora_module.apply({"params": lora.combine(frozen, adapters)}, **enc)
        return token_classification_loss(out.logits, labels)

    @jax.jit
    def step(adapters, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(adapters)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(adapters, updates), opt_state, loss

    opt_state, losses = tx.init(adapters), []
    for _ in range(steps):
        adapters, opt_state, loss = step(adapters, opt_state)
        losses.append(float(loss))
    return lora.combine(frozen, adapters), losses


@pytest.mark.parametrize("scan", [False, True])
def test_training_changes_only_the_adapters(ner, scan):
    pre, enc, labels = ner
    module = pre.module.clone(scan_layers=scan)
    base = to_layout(pre.params, scan)
    lora_module = lora.apply_lora(module, RULE)
    params = lora.init_lora(lora_module, base, seed=0)
    added = {k: v for k, v in flatten(params).items() if lora.is_lora_path(k)}
    per_stack = 1 if scan else pre.config.num_hidden_layers  # scanned: [L, ...] adapters
    assert len(added) == 2 * 6 * per_stack  # A and B on query, key, value, out, fc_in, fc_out
    # B starts at zero: the adapted model starts as the base model
    np.testing.assert_array_equal(
        lora_module.apply({"params": params}, **enc).logits,
        module.apply({"params": base}, **enc).logits,
    )

    trained, losses = train_adapters(lora_module, params, enc, labels)
    assert losses[-1] < losses[0]
    before, after = flatten(params), flatten(trained)
    assert before.keys() == after.keys()
    for key in before:
        changed = not np.array_equal(np.asarray(before[key]), np.asarray(after[key]))
        assert changed == lora.is_lora_path(key), key  # every adapter moved, nothing else


def test_merged_adapters_export_to_transformers(ner, tmp_path):
    """merge(kernel + A @ B * alpha / rank) computes what the adapted model does; saved with the
    rules, transformers loads the merged weights and passes the conformance rule against them."""
    pre, enc, labels = ner
    lora_module = lora.apply_lora(pre.module, RULE)
    trained, _ = train_adapters(lora_module, lora.init_lora(lora_module, pre.params), enc, labels)
    merged = lora.merge_lora(trained, RULE)
    assert not lora.has_lora(merged)
    adapted = np.asarray(lora_module.apply({"params": trained}, **enc).logits)
    plain = np.asarray(pre.module.apply({"params": merged}, **enc).logits)
    # the same sums in another order (x W + (x A) B s vs x (W + A B s)): float32 round-off
    np.testing.assert_allclose(plain, adapted, rtol=0, atol=1e-5 * np.abs(adapted).max())

    out = biomed_jax.save_pretrained(
        tmp_path / "ner", trained, pre.config, tokenizer=pre.tokenizer, lora=RULE
    )
    hf, info = transformers.BertForTokenClassification.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()), info
    batch = conf_bert.make_batch(pre.config.vocab_size, length=12)
    (refs,) = conf_bert.run_references(hf.eval(), [batch], ("float32",))
    ours = pre.module.apply(
        {"params": merged}, **batch, output_hidden_states=True, output_attentions=True
    )
    rows = list(conf_bert.compare_outputs("lora", ours, refs, batch, "float32", FALLBACK))
    assert rows and all(r.passed for r in rows), [r for r in rows if not r.passed]
    np.testing.assert_array_equal(  # lora= merges exactly as merge_lora does
        hf.classifier.weight.detach().numpy().T, np.asarray(merged["classifier"]["kernel"])
    )
    query = hf.bert.encoder.layer[1].attention.self.query.weight.detach().numpy().T
    kernel = merged["bert"]["encoder"]["layer_1"]["attention"]["query"]["kernel"]
    np.testing.assert_array_equal(query, np.asarray(kernel))


def test_merge_refuses_what_it_cannot_merge(ner):
    pre, _, _ = ner
    params = lora.init_lora(lora.apply_lora(pre.module, RULE), pre.params)
    other = qwix.LoraRule(module_path=".*/classifier", rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="no rule's module_path matches"):
        lora.merge_lora(params, other)
    tied = qwix.LoraRule(module_path=".*word_embeddings", rank=2, alpha=2.0)
    from biomed_jax.models.bert import BertForMaskedLM

    head = BertForMaskedLM(pre.config)
    with_table = lora.init_lora(lora.apply_lora(head, tied), init_params(head))
    assert "embedding_lora_a" in with_table["bert"]["embeddings"]["word_embeddings"]
    with pytest.raises(ValueError, match="only Dense kernels merge"):
        lora.merge_lora(with_table, tied)
    with pytest.raises(ValueError, match="policy"):
        lora.apply_lora(pre.module.clone(policy="exact"), RULE)
    with pytest.raises(ValueError, match="no Dense layer matched"):
        lora.init_lora(
            lora.apply_lora(pre.module, qwix.LoraRule(module_path="nothing", rank=2, alpha=2.0)),
            pre.params,
        )


def test_qwix_extra_is_named_when_missing(ner, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwix", None)  # as if not installed
    with pytest.raises(
        ModuleNotFoundError, match=r"needs qwix: pip install qwix .*pip install '\.\[qwix\]'"
    ):
        lora.apply_lora(ner[0].module, RULE)
    lora.merge_lora(lora.combine({}, {}), RULE)  # merging needs no qwix
