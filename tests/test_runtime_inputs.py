"""Bad inputs at every public entry point: an error of the documented type naming the argument,
or, under jit where values are traced, a NaN row, never a plausible result (docs/runtime-inputs.md).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from biomed_jax import BertConfig, BioGptConfig, BioGptTokenizer, generate
from biomed_jax.cli import main as cli_main
from biomed_jax.loading import Pretrained, from_pretrained, init_params
from biomed_jax.models.bert import BertForMaskedLM, BertModel
from biomed_jax.models.biogpt import BioGptForCausalLM
from biomed_jax.pipelines import attention, embed, embed_file, fill_mask, generate_text

VOCAB = 50
MAX_POS = 16
BERT = BertConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
    max_position_embeddings=MAX_POS,
)
BIOGPT = BioGptConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
    max_position_embeddings=MAX_POS,
)
IDS = (np.arange(10).reshape(2, 5) + 5).astype(np.int32)  # [B=2, T=5]
ONES = np.ones_like(IDS)


@pytest.fixture(scope="module")
def models():
    out = {}
    for name, module in (("bert", BertForMaskedLM(BERT)), ("biogpt", BioGptForCausalLM(BIOGPT))):
        out[name] = Pretrained(module.config, init_params(module), module)
    return out


# (case, models it applies to, call kwargs, error type, text the message must hold)
MODEL_CASES = [
    ("ids as a list", "bert biogpt", {"input_ids": IDS.tolist()}, TypeError, "input_ids"),
    ("float ids", "bert biogpt", {"input_ids": IDS.astype(np.float32)}, TypeError, "input_ids"),
    ("1-D ids", "bert biogpt", {"input_ids": IDS[0]}, ValueError, "input_ids"),
    ("no tokens", "bert biogpt", {"input_ids": IDS[:, :0]}, ValueError, "input_ids"),
    ("id = vocab", "bert biogpt", {"input_ids": np.where(IDS == 5, VOCAB, IDS)}, ValueError,
     "input_ids contains values outside [0, 50)"),
    ("id -1", "bert biogpt", {"input_ids": np.where(IDS == 5, -1, IDS)}, ValueError, "input_ids"),
    ("id 2^31-1", "bert biogpt", {"input_ids": np.where(IDS == 5, 2**31 - 1, IDS)}, ValueError,
     "input_ids"),
    ("(1, 1) mask", "bert biogpt", {"attention_mask": np.ones((1, 1), np.int32)}, ValueError,
     "attention_mask must be [batch, length] like input_ids = (2, 5), got shape (1, 1)"),
    ("(2, 4) mask", "bert biogpt", {"attention_mask": ONES[:, :4]}, ValueError, "attention_mask"),
    ("mask of 2s", "bert biogpt", {"attention_mask": 2 * ONES}, ValueError, "attention_mask"),
    ("float mask", "bert biogpt", {"attention_mask": ONES.astype(np.float32)}, TypeError,
     "attention_mask"),
    ("(1, 1) token types", "bert", {"token_type_ids": np.zeros((1, 1), np.int32)}, ValueError,
     "token_type_ids must be [batch, length] like input_ids = (2, 5)"),
    ("token type 2", "bert", {"token_type_ids": 2 * ONES}, ValueError, "token_type_ids"),
    ("(2, 4) positions", "bert biogpt", {"position_ids": ONES[:, :4]}, ValueError,
     "position_ids"),
    ("position = table", "bert biogpt", {"position_ids": MAX_POS * ONES}, ValueError,
     "position_ids"),
    ("too long", "bert biogpt", {"input_ids": np.full((1, MAX_POS + 1), 5, np.int32)},
     ValueError, "max_position_embeddings"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "message"),
    [
        pytest.param(m, kw, err, msg, id=f"{m}: {case}")
        for case, names, kw, err, msg in MODEL_CASES
        for m in names.split()
    ],
)
def test_model_call_refuses(models, model, kwargs, error, message):
    kwargs = {"input_ids": IDS, **kwargs}
    with pytest.raises(error) as info:
        models[model](**kwargs)
    assert message in str(info.value)


def _logits_under_jit(pretrained, **kwargs):
    fn = jax.jit(lambda kw: pretrained.module.apply({"params": pretrained.params}, **kw).logits)
    return np.asarray(fn(kwargs))


@pytest.mark.parametrize("model", ["bert", "biogpt"])
def test_out_of_range_id_under_jit_gives_a_nan_row(models, model):
    """A row with an id outside the vocabulary is NaN everywhere (even before it, under causal
    attention), never a wrapped or clamped row; the clean row stays finite."""
    bad = [-1, -2, VOCAB, 2**31 - 1]
    ids = np.tile(IDS[:1], (len(bad) + 1, 1))
    for row, value in enumerate(bad):
        ids[row, 2] = value
    logits = _logits_under_jit(models[model], input_ids=ids, attention_mask=np.ones_like(ids))
    assert np.isnan(logits[:-1]).all()
    assert np.isfinite(logits[-1]).all()


def test_out_of_range_types_and_positions_under_jit_give_nan_rows(models):
    bert, biogpt = models["bert"], models["biogpt"]
    for bad in (-1, 2):
        types = np.zeros_like(IDS)
        types[0, 4] = bad
        logits = _logits_under_jit(bert, input_ids=IDS, token_type_ids=types)
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()
    positions = np.broadcast_to(np.arange(5), IDS.shape).copy()
    positions[0, 4] = MAX_POS
    for model in (bert, biogpt):
        logits = _logits_under_jit(model, input_ids=IDS, position_ids=positions)
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()


def test_mask_shape_is_refused_under_jit_too(models):
    for model in models.values():
        with pytest.raises(ValueError, match="attention_mask must be"):
            _logits_under_jit(model, input_ids=IDS, attention_mask=np.ones((1, 1), np.int32))


# -- generate -------------------------------------------------------------------------------------

GENERATE_CASES = [
    ({"num_beams": 2.0}, TypeError, "num_beams"),
    ({"num_beams": 0}, ValueError, "num_beams"),
    ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"max_length": 2.5}, TypeError, "max_length"),
    ({"max_new_tokens": 2**40}, ValueError, "max_new_tokens"),
    ({"top_k": 2**40}, ValueError, "top_k"),
    ({"top_k": -1}, ValueError, "top_k"),
    ({"top_k": 1.5}, TypeError, "top_k"),
    ({"eos_token_id": 2**40}, ValueError, "eos_token_id"),
    ({"eos_token_id": [2, VOCAB]}, ValueError, "eos_token_id=50 (argument) is outside the vocab"),
    ({"eos_token_id": "2"}, TypeError, "eos_token_id"),
    ({"pad_token_id": VOCAB}, ValueError, "pad_token_id=50 (argument) is outside the vocabulary"),
    ({"pad_token_id": -1}, ValueError, "pad_token_id"),
    ({"length_penalty": float("nan")}, ValueError, "length_penalty"),
    ({"length_penalty": float("inf")}, ValueError, "length_penalty"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"do_sample": True, "temperature": 0.0, "rng": jax.random.key(0)}, ValueError,
     "temperature"),
    ({"top_p": float("nan")}, ValueError, "top_p"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"repetition_penalty": float("inf")}, ValueError, "repetition_penalty"),
    ({"do_sample": "yes"}, TypeError, "do_sample"),
    ({"num_return_sequences": 1.0}, TypeError, "num_return_sequences"),
    ({"min_new_tokens": -1}, ValueError, "min_new_tokens"),
    ({"no_repeat_ngram_size": 2.0}, TypeError, "no_repeat_ngram_size"),
    ({"do_sample": True, "rng": 42}, TypeError, "rng"),
    ({"do_sample": True}, ValueError, "rng="),
    ({"early_stopping": "yes"}, ValueError, "early_stopping"),
    ({"attention_mask": np.ones((1, 1), np.int32)}, ValueError, "attention_mask"),
    ({"input_ids": IDS.astype(np.float32)}, TypeError, "input_ids"),
    ({"input_ids": np.where(IDS == 5, VOCAB, IDS)}, ValueError, "input_ids"),
    # more than any device holds: refused before anything is allocated
    ({"num_beams": 10**8}, ValueError, "200000000 rows over"),
    ({"num_beams": 2**31 - 1}, ValueError, "lower num_beams, the batch or max_new_tokens"),
    ({"do_sample": True, "rng": jax.random.key(0), "num_return_sequences": 10**8}, ValueError,
     "lower num_beams"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), GENERATE_CASES, ids=str)
def test_generate_refuses(models, kwargs, error, message):
    lm = models["biogpt"]
    kwargs = {"input_ids": IDS, "max_new_tokens": 3, **kwargs}
    with pytest.raises(error) as info:
        generate(lm.module, lm.params, **kwargs)
    assert message in str(info.value)


def test_special_ids_outside_the_vocabulary_in_config_are_refused(models):
    """Issue 18: such a pad id made the bucket padding NaN and returned the prompt, no error.
    config.json is now refused at load, naming the field; an argument is refused by generate."""
    from biomed_jax import ConfigError

    for name, value in (("pad_token_id", VOCAB + 3), ("eos_token_id", -5), ("bos_token_id", VOCAB)):
        with pytest.raises(ConfigError, match=rf"{name} {value} is not an id of the vocabulary"):
            BIOGPT.replace(**{name: value})
    lm = models["biogpt"]
    with pytest.raises(ValueError, match=r"pad_token_id=53 .*is outside"):
        generate(lm.module, lm.params, IDS[:, 2:], max_new_tokens=3, pad_token_id=VOCAB + 3)
    out = np.asarray(generate(lm.module, lm.params, IDS[:, 2:], max_new_tokens=3, top_k=2**20))
    assert out.shape == (2, 6) and (out[:, :3] == IDS[:, 2:]).all()


# -- pipelines and the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert(hf_bert):
    return from_pretrained(hf_bert)


@pytest.fixture(scope="module")
def biogpt(tmp_path_factory):
    """A random BioGptForCausalLM with a tiny BPE vocabulary (no shared data needed)."""
    path = tmp_path_factory.mktemp("tiny_biogpt")
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "ab</w>", "a</w>", "b</w>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("a b</w> 5\n")
    tok = BioGptTokenizer.from_pretrained(path)
    module = BioGptForCausalLM(BIOGPT.replace(vocab_size=len(tokens)))
    return Pretrained(module.config, init_params(module), module, tok, path)


PIPELINE_CASES = [
    ("embed", {"batch_size": 2.5}, TypeError, "batch_size"),
    ("embed", {"batch_size": 0}, ValueError, "batch_size"),
    ("embed", {"max_length": 2.5}, TypeError, "max_length"),
    ("embed", {"max_length": 0}, ValueError, "max_length"),
    ("embed", {"max_length": 2}, ValueError, "max_length=2 leaves no room"),
    ("embed", {"stride": -1}, ValueError, "stride"),
    ("embed", {"stride": 1.5}, TypeError, "stride"),
    ("embed", {"layers": 1.5}, TypeError, "layers"),
    ("embed", {"layers": True}, TypeError, "layers"),
    ("embed", {"layers": [0, 99]}, ValueError, "layer 99 out of range"),
    ("embed", {"pooling": "max"}, ValueError, "pooling"),
    ("embed", {"texts": 5}, TypeError, "texts"),
    ("embed", {"texts": ["fine", 1]}, TypeError, "texts[1]"),
    ("fill_mask", {"top_k": 2.0}, TypeError, "top_k"),
    ("fill_mask", {"top_k": 10**6}, ValueError, "top_k"),
    ("fill_mask", {"batch_size": 0}, ValueError, "batch_size"),
    ("attention", {"layers": [0, 9]}, ValueError, "layer 9 out of range"),
    ("attention", {"heads": 1.5}, TypeError, "heads"),
    ("attention", {"max_length": 1.0}, TypeError, "max_length"),
]  # fmt: skip
PIPELINES = {
    "embed": lambda texts="aspirin [MASK]", **kw: embed(texts, **kw),
    "fill_mask": lambda **kw: fill_mask("aspirin [MASK]", **kw),
    "attention": lambda **kw: attention("aspirin", **kw),
}


@pytest.mark.parametrize(("pipeline", "kwargs", "error", "message"), PIPELINE_CASES, ids=str)
def test_pipeline_refuses(bert, pipeline, kwargs, error, message):
    with pytest.raises(error) as info:
        PIPELINES[pipeline](model=bert, **kwargs)
    assert message in str(info.value)


def test_pipelines_refuse_models_they_do_not_fit(bert, biogpt, tmp_path):
    encoders = "BertModel or BertForMaskedLM or BertForSequenceClassification or "
    with pytest.raises(ValueError, match=f"embed needs a {encoders}.* got a BioGptForCausalLM"):
        embed(["a b", "b a"], model=biogpt)
    docs = tmp_path / "docs.txt"
    docs.write_text("a b\n")
    with pytest.raises(
        ValueError, match=r"embed_file needs a BertModel or .* got a BioGptForCausalLM"
    ):
        embed_file(docs, tmp_path / "out", model=biogpt)
    assert not (tmp_path / "out").exists()
    with pytest.raises(
        ValueError, match=r"fill_mask needs a BertForMaskedLM model, got a BioGpt\w+ \(\S+\)$"
    ):
        fill_mask("a [MASK]", model=biogpt)
    encoder = dataclasses.replace(bert, module=BertModel(bert.config))  # the family, not the head
    with pytest.raises(ValueError, match=r"got a BertModel .*architecture='BertForMaskedLM'"):
        fill_mask("a [MASK]", model=encoder)
    with pytest.raises(
        ValueError, match=r"generate_text needs a BioGptForCausalLM model, got a BertForMasked"
    ):
        generate_text("aspirin", model=bert)
    with pytest.raises(TypeError, match="max_new_tokens"):
        generate_text("a b", model=biogpt, max_new_tokens=2.5)
    # a decoder's attention maps are causal: every query's weight above the diagonal is 0
    maps = attention("a b ab", model=biogpt)["attentions"]  # [L, N, T, T]
    assert maps.shape[-1] == 4 and np.allclose(maps.sum(-1), 1.0, atol=1e-6)
    assert (np.triu(maps, k=1) == 0).all()


def test_cli_prints_one_line_for_bad_arguments(hf_bert, tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("aspirin\nfever\n")
    out = tmp_path / "out"
    base = ["--no-compilation-cache", "embed", str(docs), str(out), "--model", str(hf_bert)]
    assert cli_main([*base, "--max-length", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_length must be in [1," in err and "Traceback" not in err
    assert not out.exists()  # nothing that would block the corrected rerun
    assert cli_main([*base, "--max-length", "8", "--quiet"]) == 0
    assert "2 documents in 1 shards" in capsys.readouterr().out


# -- a tokenizer that does not fit the model ------------------------------------------------------

WIDE = 30_522  # BERT's uncased vocabulary size, beside a model of 1,000 token embeddings
ROWS = 1_000


def _wide_vocab() -> list[str]:
    """30,522 entries: the specials at BERT's ids 0..4, the tiny vocabulary's pieces at the end
    (ids past the model's 1,000 rows), [unused] fillers between."""
    from _tiny_models import BERT_VOCAB

    head, rest = BERT_VOCAB[:5], BERT_VOCAB[5:]
    return head + [f"[unused{i}]" for i in range(WIDE - len(BERT_VOCAB))] + rest


@pytest.fixture(scope="module")
def rows_1000(tmp_path_factory):
    """A random BertForMaskedLM with 1,000 token embeddings and no tokenizer files."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("rows_1000")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=ROWS,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
    )
    transformers.BertForMaskedLM(config).eval().save_pretrained(path)
    return path


def _with_vocab(model_dir, tmp_path, entries: list[str]):
    path = tmp_path / "model"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        (path / name).write_bytes((model_dir / name).read_bytes())
    (path / "vocab.txt").write_text("\n".join(entries) + "\n", encoding="utf-8")
    return path


def test_a_tokenizer_past_the_model_vocabulary_is_refused_at_load(rows_1000, tmp_path):
    from biomed_jax import ConfigError

    path = _with_vocab(rows_1000, tmp_path, _wide_vocab())
    with pytest.raises(ConfigError, match=r"ids 0\.\.30521, the model 1000 token embeddings"):
        from_pretrained(path)
    docs = tmp_path / "docs.txt"
    docs.write_text("Aspirin for fever.\nTumor growth in mice.\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "biomed_jax.cli", "--no-compilation-cache", "embed", str(docs),
         str(out), "--model", str(path), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "biomed-jax embed: error:" in done.stderr and "1000 token embeddings" in done.stderr
    assert not out.exists()  # no shard, no manifest


def test_a_smaller_tokenizer_loads_with_a_warning_naming_both_sizes(rows_1000, tmp_path, caplog):
    from _tiny_models import BERT_VOCAB

    path = _with_vocab(rows_1000, tmp_path, BERT_VOCAB)
    with caplog.at_level("WARNING", logger="biomed_jax.loading"):
        model = from_pretrained(path)
    assert (
        f"the tokenizer has {len(BERT_VOCAB)} ids, the model 1000 token embeddings" in caplog.text
    )
    assert np.isfinite(embed(["Aspirin for fever."], model=model)).all()


@pytest.fixture(scope="module")
def mismatched(rows_1000, tmp_path_factory):
    """The 1,000-row model with the 30,522-entry tokenizer attached by hand (no load check)."""
    from biomed_jax import BertTokenizer

    model = from_pretrained(rows_1000)
    vocab = {token: i for i, token in enumerate(_wide_vocab())}
    return dataclasses.replace(model, tokenizer=BertTokenizer(vocab=vocab, model_max_length=32))


def test_pipelines_refuse_ids_outside_the_vocabulary_naming_the_text(mismatched):
    texts = ["[UNK] [UNK]", "Aspirin for fever."]  # ids 1, 1 fit; aspirin's is past 1,000
    said = r"token '\w+' has id \d{5}, but the model .* has 1000 token embeddings"
    with pytest.raises(ValueError, match=r"text 1 \('Aspirin for fever\.'\): " + said):
        embed(texts, model=mismatched)
    with pytest.raises(ValueError, match=r"text 0 \('Aspirin for \[MASK\]\.'\): " + said):
        fill_mask("Aspirin for [MASK].", model=mismatched)
    with pytest.raises(ValueError, match=r"text 0 .*1000 token embeddings"):
        attention("Aspirin for fever.", model=mismatched)
    np.testing.assert_array_equal(np.isfinite(embed(texts[:1], model=mismatched)), True)


def test_embed_file_writes_no_shard_for_ids_outside_the_vocabulary(mismatched, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("[UNK]\n[UNK] [UNK]\nAspirin for fever.\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"text 0 \('Aspirin for fever\.'\)"):
        embed_file(docs, out, model=mismatched, shard_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.npy"]
    assert np.isfinite(np.load(out / "shard-00000.npy")).all()  # the first shard's two documents


def test_generate_text_refuses_prompt_ids_outside_the_vocabulary(biogpt):
    shifted = {t: i if i < 4 else i + VOCAB for t, i in biogpt.tokenizer.vocab.items()}
    tok = BioGptTokenizer(shifted, biogpt.path / "merges.txt")
    with pytest.raises(ValueError, match=r"prompt 0 \('a b'\): token 'a</w>' has id \d+, but"):
        generate_text("a b", model=dataclasses.replace(biogpt, tokenizer=tok), max_new_tokens=2)


def test_embed_file_never_writes_a_nan_row(bert, tmp_path):
    """Whatever makes a vector NaN (here a weight), its shard is not written: the error names the
    document's line."""
    from biomed_jax.trees import flatten, unflatten

    params = flatten(bert.params)
    key = next(k for k in params if k.endswith("word_embeddings/embedding"))
    table = np.array(params[key])
    fever = bert.tokenizer.convert_tokens_to_ids("fever")
    table[fever] = np.nan
    broken = dataclasses.replace(bert, params=unflatten({**params, key: table}))
    docs = tmp_path / "docs.txt"
    docs.write_text("aspirin\nmice\ntumor growth\nfever\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"docs\.txt:4: the document embeds to NaN .*shard-00001"):
        embed_file(docs, out, model=broken, shard_size=2, progress=False)
    assert not (out / "shard-00001.npy").exists()
    assert np.isfinite(np.load(out / "shard-00000.npy")).all()


TASK_SETTING_CASES = [
    ({"learned_prompt": 10**9}, "learned_prompt must be an int in [0, 65536], got 1000000000"),
    ({"learned_prompt": True}, "learned_prompt must be an int"),
    ({"num_beams": 2**31}, "num_beams must be an int in [1, 2147483647]"),
    ({"num_beams": "5"}, "num_beams must be an int in [1, 2147483647], got '5'"),
    ({"max_source_positions": 1.5}, "max_source_positions"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"learned_prompt_pattern": "two words"}, "learned_prompt_pattern must be a word"),
]


@pytest.mark.parametrize(("changes", "message"), TASK_SETTING_CASES, ids=str)
def test_task_settings_refuse_before_building_anything(changes, message):
    from biomed_jax.errors import ConfigError
    from biomed_jax.tasks import TaskSettings

    with pytest.raises(ConfigError) as info:
        TaskSettings().replace(**changes)
    assert message in str(info.value)


def test_stored_task_arguments_are_checked_and_echoed_short():
    """A fairseq checkpoint's task arguments go through the same checks; a huge stored value
    is shown cut short."""
    from biomed_jax.errors import ConfigError
    from biomed_jax.tasks import TaskSettings

    with pytest.raises(ConfigError) as info:
        TaskSettings().with_fairseq_args({"learned_prompt": ["x" * (1 << 20)] * 100_000})
    assert "learned_prompt must be an int" in str(info.value) and len(str(info.value)) < 2000


@pytest.mark.parametrize(
    "entities, message",
    [
        ([["aspirin", "D001241"]], "got a list"),
        ({"chemical2id": {}}, "disease2id is None"),
        ({"chemical2id": {"aspirin": 1}, "disease2id": {}}, "not strings: [('aspirin', 1)]"),
    ],
)
def test_entity_maps_must_be_name_to_id_objects(entities, message):
    from biomed_jax.tasks.relation_extraction import score_bc5cdr

    with pytest.raises(ValueError) as info:
        score_bc5cdr([], [], entities=entities)
    assert message in str(info.value)
