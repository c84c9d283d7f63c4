"""Export: params trained in memory -> `save_pretrained` -> transformers -> back to ours.

Outputs of the saved model are judged by the conformance rule (`conformance.report.judge`: ours
against transformers float64 at most 3x transformers float32's own error), and what comes back
into biomed_jax must be the very params that went out (float32 survives safetensors exactly).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import biomed_jax
import conformance
from biomed_jax import generate
from biomed_jax.errors import ConfigError
from biomed_jax.models.common import to_layout
from biomed_jax.saving import save_pretrained
from biomed_jax.train import token_classification_loss
from biomed_jax.trees import flatten
from biomed_jax.weights.export import export_state_dict
from biomed_jax.weights.formats import open_checkpoint
from conformance import bert as conf_bert
from conformance import biogpt as conf_biogpt
from conformance import corpus, tiny

LABELS = ("O", "B-Chemical", "I-Chemical")
TEXTS = ["Aspirin reduces fever in mice.", "Tumor growth inhibits gene expression."]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny.save_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def biogpt_dir(tmp_path_factory):
    return tiny.save_biogpt(tmp_path_factory.mktemp("biogpt"))


def assert_same_params(a, b):
    a, b = flatten(to_layout(a, False)), flatten(to_layout(b, False))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# Used only where transformers has no float32 run to judge by (never here: it always has one).
FALLBACK = dict.fromkeys(("hidden", "attention", "logits", "pooler"), conf_bert.FP32_TOL)


def judged(suite, ours, refs, batch):
    """Every output of transformers' judged by the conformance rule; all must pass."""
    rows = list(conf_bert.compare_outputs(suite, ours, refs, batch, "float32", FALLBACK))
    failed = [r for r in rows if not r.passed]
    assert rows and not failed, failed
    return rows


def load_hf(cls, directory):
    model, info = cls.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model.eval()


def test_bert_token_classifier_trained_in_own_loop_loads_in_transformers(bert_dir, tmp_path):
    """The issue's case: fresh head, a user's optax loop (scanned layers, remat with a policy),
    one call to save, transformers within the conformance rule, and back to ours unchanged."""
    model = biomed_jax.from_pretrained(
        bert_dir,
        architecture="BertForTokenClassification",
        num_labels=3,
        id2label=LABELS,
        scan_layers=True,
        gradient_checkpointing=True,
        remat_policy="dots_with_no_batch_dims_saveable",
        seed=1,
    )
    enc = model.tokenizer(TEXTS, padding=True, return_tensors="np")
    labels = np.where(enc["attention_mask"] == 1, np.arange(enc["input_ids"].shape[1]) % 3, -100)
    tx = optax.adamw(3e-3)

    def loss_fn(params, key):
        out = model.module.apply(
            {"params": params},
            enc["input_ids"],
            enc["attention_mask"],
            deterministic=False,
            rngs={"dropout": key},
        )
        return token_classification_loss(out.logits, labels)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = model.params, tx.init(model.params)
    losses = []
    for i in range(6):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    trained = dataclasses.replace(model, params=params)

    out = trained.save_pretrained(tmp_path / "ner")  # one call

    hf = load_hf(transformers.AutoModelForTokenClassification, out)
    assert type(hf).__name__ == "BertForTokenClassification"
    assert hf.config.id2label == dict(enumerate(LABELS))
    assert hf.config.label2id == {label: i for i, label in enumerate(LABELS)}
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXTS, padding=True)["input_ids"] == enc["input_ids"].tolist()

    batch = conf_bert.make_batch(trained.config.vocab_size, length=16)
    (refs,) = conf_bert.run_references(hf, [batch], ("float32",))
    ours = trained(**batch, output_hidden_states=True, output_attentions=True)
    judged("export/BertForTokenClassification", ours, refs, batch)
    rows = conformance.assert_conforms(out, TEXTS, dtypes=("float32",))  # `--model` on it passes
    assert any(r.name == "logits" for r in rows) and any("attentions" in r.name for r in rows)

    hf.save_pretrained(tmp_path / "again")  # transformers writes it back ...
    again = biomed_jax.from_pretrained(tmp_path / "again")  # ... and we read the same params
    assert type(again.module).__name__ == "BertForTokenClassification"
    assert again.config.id2label == LABELS
    assert_same_params(again.params, params)


ARCHITECTURES = [
    ("bert", "BertModel", False),
    ("bert", "BertForMaskedLM", True),
    ("bert", "BertForSequenceClassification", False),
    ("bert", "BertForTokenClassification", True),
    ("biogpt", "BioGptModel", True),
    ("biogpt", "BioGptForCausalLM", False),
    ("biogpt", "BioGptForSequenceClassification", True),
    ("biogpt", "BioGptForTokenClassification", False),
]


@pytest.mark.parametrize(("family", "arch", "scan"), ARCHITECTURES)
def test_every_architecture_round_trips_through_transformers(
    family, arch, scan, bert_dir, biogpt_dir, tmp_path
):
    """(params, config) in memory -> HF layout -> transformers (no key missing or unexpected,
    every output within the rule) -> ours (the same params); ours -> our layout -> ours."""
    src = bert_dir if family == "bert" else biogpt_dir
    pre = biomed_jax.from_pretrained(src, architecture=arch, scan_layers=scan, seed=2)
    out = save_pretrained(tmp_path / "hf", pre.params, pre.config, tokenizer=pre.tokenizer)
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    hf = load_hf(getattr(transformers, arch), out)
    if family == "bert":
        batch = conf_bert.make_batch(pre.config.vocab_size, length=12)
        refs = conf_bert.run_references(hf, [batch], ("float32",))[0]
        ours = pre(**batch, output_hidden_states=True, output_attentions=True)
    else:
        batch = conf_biogpt.make_batch(pre.config.vocab_size, "right", length=12)
        run = conf_biogpt._run_reference
        refs = conf_bert.run_references(hf, [batch], ("float32",), run)[0]
        ours = pre(**batch, output_hidden_states=True, output_attentions=True)
    judged(f"export/{arch}", ours, refs, batch)
    assert_same_params(biomed_jax.from_pretrained(out).params, pre.params)

    ours_dir = pre.save_pretrained(tmp_path / "ours", layout="biomed_jax")
    assert_same_params(biomed_jax.from_pretrained(ours_dir).params, pre.params)
    assert type(biomed_jax.from_pretrained(ours_dir).module).__name__ == arch


def test_exported_keys_read_back_through_the_same_name_table(bert_dir):
    """One table both ways: every key written maps, by the reading rules, to the path it came from."""
    from biomed_jax.architectures import name_table

    for arch in ("BertForMaskedLM", "BertForSequenceClassification"):
        pre = biomed_jax.from_pretrained(bert_dir, architecture=arch, scan_layers=True)
        table = name_table(arch)
        tensors = export_state_dict(pre.params, table, pre.config.num_hidden_layers)
        for key in tensors:
            match = table.match(key)
            assert match is not None, key
            assert match.path in flatten(pre.params)


def test_biogpt_fine_tuned_with_generation_config(biogpt_dir, tmp_path):
    """A causal LM trained a few steps, saved with generation settings: transformers reads the
    generation config, its logits pass the rule and its greedy search picks our tokens."""
    model = biomed_jax.from_pretrained(biogpt_dir)
    ids = np.random.RandomState(0).randint(3, model.config.vocab_size, (2, 10))  # no special ids
    tx = optax.adam(1e-2)

    def loss_fn(params):
        logits = model.module.apply({"params": params}, ids[:, :-1]).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    params, opt_state = model.params, tx.init(model.params)
    for _ in range(3):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    trained = dataclasses.replace(model, params=params)
    out = trained.save_pretrained(tmp_path / "lm", generation_config={"num_beams": 2})

    config = transformers.GenerationConfig.from_pretrained(out)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 2, 1)
    assert config.num_beams == 2
    hf = load_hf(transformers.BioGptForCausalLM, out)
    batch = conf_biogpt.make_batch(model.config.vocab_size, "right", length=12)
    refs = conf_bert.run_references(hf, [batch], ("float32",), conf_biogpt._run_reference)[0]
    ours = trained(**batch, output_hidden_states=True, output_attentions=True)
    judged("export/BioGptForCausalLM", ours, refs, batch)

    prompt = ids[:1, :4]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(prompt), max_new_tokens=6, num_beams=1, do_sample=False)
    ours = generate(trained.module, trained.params, jnp.asarray(prompt), max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
    conformance.assert_conforms(out, dtypes=("float32",), max_new_tokens=4)  # `--model` passes


def test_convert_to_hf_writes_bert_for_transformers(bert_dir, tmp_path):
    from _tiny_models import run_cli

    done = run_cli("convert", str(bert_dir), str(tmp_path / "hf"), "--to", "hf")
    assert done.returncode == 0, done.stderr
    hf = load_hf(transformers.BertForMaskedLM, tmp_path / "hf")
    with open_checkpoint(tmp_path / "hf") as checkpoint:
        assert not checkpoint.converted  # transformers' keys, not ours
    written = {p.name for p in (tmp_path / "hf").iterdir()}
    assert written == {"config.json", "model.safetensors", "vocab.txt"}  # the source's vocab.txt
    original = transformers.BertForMaskedLM.from_pretrained(bert_dir).eval()
    for (name, a), (_, b) in zip(
        hf.state_dict().items(), original.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_refusals_name_what_is_wrong(bert_dir, tmp_path):
    pre = biomed_jax.from_pretrained(bert_dir)
    with pytest.raises(ValueError, match="layout"):
        pre.save_pretrained(tmp_path / "a", layout="torch")
    with pytest.raises(ConfigError, match="architecture="):
        save_pretrained(tmp_path / "b", pre.params, pre.config.replace(architectures=None))
    with pytest.raises(ValueError, match="does not generate"):
        pre.save_pretrained(tmp_path / "c", generation_config={"num_beams": 2})
    adapters = {**pre.params, "cls": {"kernel_lora_a": jnp.zeros((2, 2))}}
    with pytest.raises(ValueError, match="lora="):
        save_pretrained(tmp_path / "d", adapters, pre.config)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        pre.save_pretrained(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    first = pre.save_pretrained(tmp_path / "twice")
    assert pre.save_pretrained(first) == first  # its own earlier output is replaced whole
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_tokenizers_write_files_both_libraries_read(bert_dir, biogpt_dir, tmp_path):
    from biomed_jax import BertTokenizer, BioGptTokenizer

    text = ["Café Aspirin reduces FEVER in mice.", "Tumor growth."]
    cased = BertTokenizer(
        bert_dir / "vocab.txt",
        do_lower_case=False,
        strip_accents=True,
        model_max_length=16,
        padding_side="left",
    )
    cased.save_pretrained(tmp_path / "bert")
    again = BertTokenizer.from_pretrained(tmp_path / "bert")
    assert again.tokenizer_config() == cased.tokenizer_config()
    assert again.vocab == cased.vocab
    ours = cased(text, padding=True, truncation=True)
    assert again(text, padding=True, truncation=True) == ours
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "bert")
    assert theirs(text, padding=True, truncation=True)["input_ids"] == ours["input_ids"]

    tok = BioGptTokenizer.from_pretrained(biogpt_dir)
    tok.save_pretrained(tmp_path / "biogpt")
    again = BioGptTokenizer.from_pretrained(tmp_path / "biogpt")
    assert again.bpe.ranks.keys() == tok.bpe.ranks.keys()
    order = sorted(tok.bpe.ranks, key=tok.bpe.ranks.__getitem__)
    assert sorted(again.bpe.ranks, key=again.bpe.ranks.__getitem__) == order
    theirs = transformers.BioGptTokenizer.from_pretrained(tmp_path / "biogpt")
    sentences = [a["sentence"] for a in corpus.pubmed_articles()[:3]]
    assert theirs(sentences)["input_ids"] == tok(sentences)["input_ids"]
