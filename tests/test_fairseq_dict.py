"""fairseq's dict.txt + bpecodes against the vocab.json / merges.txt of the same vocabulary.

The real BioGPT vocab.json was made by transformers' conversion script from BioGPT's dict.txt, so
writing dict.txt back from it (fairseq's format: `word count`, no specials, `@@` on word-internal
pieces) and reading it must give the same ids; the extra rows of fine-tuned models go where
fairseq's `Dictionary.add_symbol` puts them.
"""

from __future__ import annotations

import json
import re

import pytest

from biomed_jax import BioGptTokenizer
from biomed_jax.tokenizers.fairseq_dict import read_dict_txt

LEARNED = [f"learned{i}" for i in range(1, 10)]


def _write_dict(path, vocab: dict[str, int], extra_lines=()):
    """vocab.json -> dict.txt in fairseq's format (rows 4.. in id order)."""
    rows = sorted((i, t) for t, i in vocab.items() if i >= 4)
    lines = [f"{t[:-4] if t.endswith('</w>') else t + '@@'} {10**6 - i}\n" for i, t in rows]
    path.write_text("".join(lines) + "".join(extra_lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fairseq-vocab")
    vocab = json.loads((shared_data / "biogpt" / "vocab.json").read_text(encoding="utf-8"))
    dict_file = _write_dict(directory / "dict.txt", vocab)
    bpecodes = directory / "bpecodes"
    bpecodes.write_bytes((shared_data / "biogpt" / "merges.txt").read_bytes())
    return dict_file, bpecodes, vocab


def _texts(shared_data, n=150):
    docs = (shared_data / "pubmed" / "bc5cdr_dev.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(d)["title"] + " " + json.loads(d)["abstract"] for d in docs[:n]]
    hoc = (shared_data / "hoc" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return texts + [json.loads(h)["text"] for h in hoc]


def test_dict_txt_and_bpecodes_give_the_vocab_json_ids(shared_data, files):
    dict_file, bpecodes, vocab = files
    fairseq = BioGptTokenizer.from_fairseq(dict_file, bpecodes)
    hf_layout = BioGptTokenizer.from_pretrained(shared_data / "biogpt")
    assert fairseq.vocab == vocab  # 42,384 ids: <s> <pad> </s> <unk>, then dict.txt order
    assert len(fairseq) == 42384
    assert [fairseq.vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    for text in _texts(shared_data):
        assert fairseq(text)["input_ids"] == hf_layout(text)["input_ids"]


def test_prompt_tokens_are_appended_after_the_dictionary(files):
    dict_file, bpecodes, _ = files
    tok = BioGptTokenizer.from_fairseq(dict_file, bpecodes, prompt_words=LEARNED)
    assert len(tok) == 42393  # the fine-tuned RE models' embedding rows
    assert tok.prompt_ids == tuple(range(42384, 42393))
    assert tok.prompt_tokens[0] == "learned1</w>"


def test_prompt_words_already_in_dict_txt_keep_their_row(files, tmp_path):
    _, bpecodes, vocab = files
    extra = ["learned3 0\n", "<seqsep> 0\n"]  # a dictionary that already lists some of them
    with_extra = _write_dict(tmp_path / "dict.txt", vocab, extra)
    tok = BioGptTokenizer.from_fairseq(with_extra, bpecodes, prompt_words=LEARNED)
    # fairseq's add_symbol: learned3 exists (row 42384); the others follow in order
    assert tok.prompt_ids == (42386, 42387, 42384, 42388, 42389, 42390, 42391, 42392, 42393)
    assert tok.vocab["<seqsep></w>"] == 42385


def test_overwrite_flag_and_duplicates(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("a 5\nb@@ 4\na 3 #fairseq:overwrite\n", encoding="utf-8")
    d = read_dict_txt(path)
    assert d.symbols == ("<s>", "<pad>", "</s>", "<unk>", "a", "b@@", "a")
    assert d.indices["a"] == 6  # the overwriting row; row 4 stays (an embedding row) unreachable
    assert d.hf_vocab() == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a</w>": 6, "b": 5}
    path.write_text("a 5\nb 4\na 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: duplicate word 'a'"):
        read_dict_txt(path)
    path.write_text("a 5\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict\.txt line 2: expected '<word> <count>"):
        read_dict_txt(path)


def test_prompt_tokens_leave_decoded_text_only_when_asked(files):
    dict_file, bpecodes, _ = files
    tok = BioGptTokenizer.from_fairseq(dict_file, bpecodes, prompt_words=LEARNED)
    source = tok("Aspirin induced fever.")["input_ids"]
    answer = tok("the relation between aspirin and fever exists.")["input_ids"][1:]
    ids = source + list(tok.prompt_ids) + answer
    shown = tok.decode(ids)
    # as fairseq's Dictionary.string shows them: BioGPT's postprocess.py strips exactly this
    assert re.search(r"(learned[0-9]+ )+", shown).group(0) == " ".join(LEARNED) + " "
    clean = tok.decode(ids, skip_special_tokens=True)
    assert "learned" not in clean
    assert clean == "Aspirin induced fever. the relation between aspirin and fever exists."
    # text never produces prompt ids (fairseq adds them by id, after the source)
    assert not set(tok("learned1 learned2")["input_ids"]) & set(tok.prompt_ids)
