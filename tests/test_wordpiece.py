"""BertTokenizer stage by stage (tiny vocab, exact offsets), bad input, and HF on arbitrary Unicode.

Property tests (hypothesis) compare every output field with HF's Rust tokenizer for four
normalizer settings; where HF's Rust and pure-Python tokenizers disagree we follow Rust, and the
known cases are listed in `test_where_hf_implementations_disagree`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomed_jax.tokenizers import BertTokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = [*SPECIALS, "un", "##want", "##ed", "want", "wa", "runn", "##ing", ",", "low", "lowest", "."]
TINY += ["caf", "##e", "##é", "博", "推", "ah", "zz", "ο", "##δ", "##ο"]


def write_vocab(path, tokens):
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("tiny") / "vocab.txt", TINY)


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return BertTokenizer(tiny_file)


def pieces(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(tok.ids_to_tokens[i], o) for i, o in zip(enc["input_ids"], enc["offset_mapping"])]


# ---- stages, exact offsets ---------------------------------------------------------------------
def test_wordpiece_greedy_longest_match(tiny):
    assert pieces(tiny, "UNwant\u00e9d,running") == [
        ("un", (0, 2)),
        ("##want", (2, 6)),
        ("##ed", (6, 8)),
        (",", (8, 9)),
        ("runn", (9, 13)),
        ("##ing", (13, 16)),
    ]
    # a word with no full cover is one [UNK] over the whole word
    assert pieces(tiny, "unwantedX lowest") == [("[UNK]", (0, 9)), ("lowest", (10, 16))]


def test_normalizer_offsets_into_original_text(tiny):
    # control chars dropped, NBSP is a space, accents stripped (NFD: 1 char -> 2, then Mn dropped)
    assert pieces(tiny, "\x00un\u200bwant\u00a0LOW\ufffd") == [
        ("un", (1, 3)),
        ("##want", (4, 8)),
        ("low", (9, 12)),
    ]
    assert pieces(tiny, "Cafe\u0301 cafe") == [
        ("caf", (0, 3)),
        ("##e", (3, 4)),  # the dropped accent is no part of the piece
        ("caf", (6, 9)),
        ("##e", (9, 10)),
    ]
    # CJK ideographs are words of their own; Greek with a breathing mark and accent
    assert pieces(tiny, "ah博推zz") == [
        ("ah", (0, 2)),
        ("博", (2, 3)),
        ("推", (3, 4)),
        ("zz", (4, 6)),
    ]
    assert pieces(tiny, "Ὀδό") == [("ο", (0, 1)), ("##δ", (1, 2)), ("##ο", (2, 3))]


def test_special_tokens_kept_whole(tiny):
    assert pieces(tiny, "un[MASK]want [mask]") == [
        ("un", (0, 2)),
        ("[MASK]", (2, 8)),
        ("want", (8, 12)),
        ("[UNK]", (13, 14)),  # "[" is punctuation; lower-case "mask" is not a special token
        ("[UNK]", (14, 18)),
        ("[UNK]", (18, 19)),
    ]


def test_cased_keeps_accents(tiny_file):
    tok = BertTokenizer(tiny_file, do_lower_case=False)
    assert pieces(tok, "caf\u00e9 Caf") == [("caf", (0, 3)), ("##é", (3, 4)), ("[UNK]", (5, 8))]
    assert tok.tokenize("cafe\u0301") == ["[UNK]"]  # no NFC: "e" + U+0301 is not "é"


def test_max_input_chars_per_word(tiny_file):
    tok = BertTokenizer(tiny_file, max_input_chars_per_word=5)
    assert tok.tokenize("runn runnin running") == ["runn", "[UNK]", "[UNK]"]


def test_call_keys_tensors_and_decode(tiny):
    enc = tiny(["un want", "low"], ["running"] * 2, padding=True, return_tensors="np")
    assert list(enc) == ["input_ids", "token_type_ids", "attention_mask"]
    assert all(v.dtype == np.int32 and v.shape == (2, 7) for v in enc.values())
    np.testing.assert_array_equal(enc["token_type_ids"][1], [0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(enc["attention_mask"][1], [1, 1, 1, 1, 1, 1, 0])
    assert tiny.decode(enc["input_ids"][0]) == "[CLS] un want [SEP] running [SEP]"
    assert tiny.decode(enc["input_ids"][1], skip_special_tokens=True) == "low running"
    assert tiny.convert_tokens_to_ids(["low", "nope"]) == [TINY.index("low"), 1]
    assert tiny.convert_ids_to_tokens([5, 6]) == ["un", "##want"]
    assert tiny.vocab_size == len(TINY) and tiny.get_vocab()["."] == TINY.index(".")


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda t: t(3), TypeError, "text must be a str"),
        (lambda t: t(["ok", None]), TypeError, r"text\[1\] must be a str"),
        (lambda t: t("a", b"b"), TypeError, "text_pair must be a str"),
        (lambda t: t(["a"], "b"), TypeError, "text_pair must be a list"),
        (lambda t: t(["a", "b"], ["c"]), ValueError, "does not match"),
        (lambda t: t([]), ValueError, "empty list"),
        (lambda t: t("a", padding="yes"), ValueError, "padding must be"),
        (lambda t: t("a", truncation="middle"), ValueError, "truncation must be"),
        (lambda t: t("a", max_length=-1), ValueError, "max_length"),
        (lambda t: t("a", stride=-2), ValueError, "stride"),
        (lambda t: t("a", return_tensors="pt"), ValueError, "return_tensors"),
        (lambda t: t("a", padding_side="middle"), ValueError, "padding_side"),
        (lambda t: t(["a", "a b"], return_tensors="np"), ValueError, "padding=True"),
        (lambda t: t("a\ud800"), ValueError, "surrogate"),
        # a pair whose truncation cannot fit: the title cannot absorb the whole cut
        (
            lambda t: t("un", "want " * 20, truncation="only_first", max_length=8),
            ValueError,
            "first sequence",
        ),
        (lambda t: t("un want", truncation="only_second", max_length=3), ValueError, "text_pair"),
        (
            lambda t: t("un want", "low", truncation=True, max_length=2),
            ValueError,
            "special tokens",
        ),
        (lambda t: t("un " * 9, truncation=True, max_length=6, stride=5), ValueError, "stride"),
        (lambda t: t.decode([[1, 2]]), TypeError, "one sequence"),
    ],
)
def test_bad_input_errors(tiny, call, error, match):
    with pytest.raises(error, match=match):
        call(tiny)


def test_bad_vocab_errors(tmp_path):
    with pytest.raises(ValueError, match=r"special tokens missing.*mask_token='\[MASK\]'"):
        BertTokenizer(write_vocab(tmp_path / "a.txt", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "x"]))
    with pytest.raises(ValueError, match="duplicate vocabulary entry 'x' on lines 6 and 8"):
        BertTokenizer(write_vocab(tmp_path / "b.txt", [*SPECIALS, "x", "y", "x"]))
    with pytest.raises(NotImplementedError, match="never_split"):
        BertTokenizer(write_vocab(tmp_path / "c.txt", SPECIALS), never_split=["foo"])
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    write_vocab(tmp_path / "vocab.txt", SPECIALS)
    added = {
        "0": {"content": "[PAD]", "special": True},
        "5": {"content": "<gene>", "special": False},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    with pytest.raises(NotImplementedError, match=r"'<gene>' \(id 5\)"):
        BertTokenizer.from_pretrained(tmp_path)
    del added["5"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    assert BertTokenizer.from_pretrained(tmp_path).vocab_size == 5


# ---- model_max_length ---------------------------------------------------------------------------
def test_model_max_length_falls_back_to_max_position_embeddings(tmp_path, tiny_file):
    """BiomedBERT-style checkpoints have no model_max_length: HF silently stops truncating, we use
    the model's max_position_embeddings (via the loader), else 512."""
    import torch

    from biomed_jax import from_pretrained

    (tmp_path / "vocab.txt").write_bytes(tiny_file.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(TINY), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=24,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(tmp_path)
    tok = from_pretrained(tmp_path).tokenizer
    assert isinstance(tok, BertTokenizer) and tok.model_max_length == 24
    assert len(tok("low " * 40, truncation=True)["input_ids"]) == 24
    assert BertTokenizer.from_pretrained(tmp_path).model_max_length == 512
    hf = transformers.BertTokenizer.from_pretrained(tmp_path)
    assert len(hf("low " * 40, truncation=True)["input_ids"]) == 42  # HF: no limit known
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    assert from_pretrained(tmp_path).tokenizer.model_max_length == 16


# ---- HF's two implementations disagree: we follow Rust --------------------------------------------
@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return {
        "ours": BertTokenizer.from_pretrained(minilm_dir),
        "rust": transformers.BertTokenizer.from_pretrained(minilm_dir),
        "legacy": transformers.BertTokenizerLegacy.from_pretrained(minilm_dir),
    }


DISAGREEMENTS = {
    # legacy lower-cases with str.lower (context: final sigma); Rust maps char by char
    "final sigma": "ΟΔΟΣ.",
    # Rust's control-character table leaves unassigned code points and some newer Cf in the text
    "unassigned U+0378": "a\u0378b",
    "newer Cf U+0890": "a\u0890b",
    # Rust's CJK ranges start extension E at U+2B920, Python's at U+2B820
    "CJK U+2B820": "x\U0002b820y",
    # punctuation and nonspacing-mark tables of different Unicode versions
    "U+166D is punctuation in Rust": "a\u166db",
    "U+111C9 is punctuation in Rust": "a\U000111c9b",
    "U+1734 is a nonspacing mark in Rust": "a\u1734b",
    "U+07FD is no nonspacing mark in Rust": "a\u07fdb",
    # Rust lower-cases with newer Unicode data (U+1C89 -> U+1C8A)
    "lower-case U+1C89": "\u1c89",
}


@pytest.mark.parametrize("name", DISAGREEMENTS)
def test_where_hf_implementations_disagree(minilm, name):
    text = DISAGREEMENTS[name]
    ours, rust, legacy = (minilm[k](text)["input_ids"] for k in ("ours", "rust", "legacy"))
    assert ours == rust
    assert rust != legacy


def test_disagreement_nfc_and_longest_first(tiny_file, minilm):
    """Legacy composes (NFC) before splitting; legacy longest_first cuts a pair one token at a time."""
    ours = BertTokenizer(tiny_file, do_lower_case=False)
    rust = transformers.BertTokenizer(vocab=str(tiny_file), do_lower_case=False)
    legacy = transformers.BertTokenizerLegacy(str(tiny_file), do_lower_case=False)
    assert ours.tokenize("cafe\u0301") == rust.tokenize("cafe\u0301") == ["[UNK]"]
    assert legacy.tokenize("cafe\u0301") == ["caf", "##é"]
    a, b = "low " * 12, "low " * 30
    kw = dict(truncation="longest_first", max_length=20)
    assert ours(a, b, **kw) == dict(rust(a, b, **kw))
    assert ours(a, b, **kw)["token_type_ids"].count(0) == 1 + 8 + 1  # Rust: 8 + 9 tokens
    assert legacy(a, b, return_token_type_ids=True, **kw)["token_type_ids"].count(0) == 1 + 9 + 1


# ---- property tests: arbitrary Unicode against HF Rust ----------------------------------------------
NASTY = (
    "aeiouxyzAEIOUXYZ0123456789 .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`"
    "\u00e9\u00c9\u0301\u0300\u0323\u0308\u0345\u1e0b\u00df\u0130\u0131\u03a3\u03c2\u1f08\ufb01"
    "\u4e2d\u6587\u3400\uf900\U00020000\U0002b820\U0002b920\u3042\u30a2"  # CJK, kana
    "\ud55c\uad6d\u1100\u1161\u11a8"  # Hangul syllables and jamo
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22"  # Thai
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629\u064b"  # Arabic with a mark
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\U0001f44d\U0001f3fd\ufe0f\u2764"  # emoji, ZWJ
    "\x00\x01\x08\x0b\x0c\x1c\x1f\x7f\x85\x9f\u200b\u200c\u200e\u2060\ufeff\u00ad\ufffd\ue000"
    "\t\n\r\u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000"
    "\u0378\u0890\u166d\U000111c9\u1734\u07fd\u1c89\U00011938\u037e\u1fef\u212a\u2126"
)
TEXT = st.one_of(
    st.text(st.sampled_from(NASTY), max_size=60),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.lists(
        st.one_of(
            st.sampled_from(["the", "Patients", "[MASK]", "[SEP]", "naïve", "Ärzte", "x" * 101]),
            st.text(st.sampled_from(NASTY), min_size=1, max_size=8),
            st.text("ab", min_size=95, max_size=110),  # around max_input_chars_per_word
        ),
        max_size=8,
    ).map(" ".join),
)
SETTINGS = {
    "uncased": {},
    "cased": {"do_lower_case": False},
    "cased_strip_accents": {"do_lower_case": False, "strip_accents": True},
    "uncased_keep_accents_no_cjk": {"strip_accents": False, "tokenize_chinese_chars": False},
}


@pytest.fixture(scope="module")
def variants(minilm_dir):
    out = {}
    for name, kw in SETTINGS.items():
        rust = transformers.BertTokenizer(vocab=str(minilm_dir / "vocab.txt"), **kw)
        normalizer = rust.backend_tokenizer.normalizer
        assert normalizer.lowercase == kw.get("do_lower_case", True)
        assert normalizer.strip_accents == kw.get("strip_accents")
        out[name] = (BertTokenizer(minilm_dir / "vocab.txt", **kw), rust)
    return out


ALL_FIELDS = dict(return_offsets_mapping=True, return_special_tokens_mask=True)


@pytest.mark.parametrize("name", SETTINGS)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=TEXT, pair=st.one_of(st.none(), TEXT))
def test_arbitrary_unicode_matches_hf_rust(variants, name, text, pair):
    ours, rust = variants[name]
    want = dict(rust(text, pair, **ALL_FIELDS))
    want["offset_mapping"] = [tuple(o) for o in want["offset_mapping"]]
    assert ours(text, pair, **ALL_FIELDS) == want
    ids = want["input_ids"]
    assert ours.decode(ids) == rust.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == rust.decode(ids, skip_special_tokens=True)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    texts=st.lists(TEXT, min_size=1, max_size=3),
    max_length=st.integers(4, 24),
    stride=st.integers(0, 3),
    strategy=st.sampled_from([True, "longest_first", "only_first", "only_second"]),
    padding=st.sampled_from([False, True, "max_length"]),
    side=st.sampled_from(["right", "left"]),
)
def test_windows_match_hf_rust(variants, texts, max_length, stride, strategy, padding, side):
    """Truncation windows with stride over pairs: every field, and the same errors."""
    ours, rust = variants["uncased"]
    kw = dict(
        truncation=strategy, max_length=max_length, stride=stride, padding=padding,
        padding_side=side, return_overflowing_tokens=True, **ALL_FIELDS,
    )  # fmt: skip
    pairs = texts[::-1]
    try:
        want = dict(rust(texts, pairs, **kw))
    except BaseException as e:  # Rust panics (PanicException) on some strides
        if isinstance(e, KeyboardInterrupt):
            raise
        with pytest.raises(ValueError):
            ours(texts, pairs, **kw)
        return
    want["offset_mapping"] = [[tuple(o) for o in row] for row in want["offset_mapping"]]
    assert ours(texts, pairs, **kw) == want
