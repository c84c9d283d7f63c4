"""NER data path: BIO tags from character spans through word-piece offsets and back, entity and
multi-label metrics, and the two example scripts end to end on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_models import save_random_init_bert

from biomed_jax.tokenizers import BertTokenizer
from biomed_jax.train import metrics, ner

TYPES = ("Chemical", "Disease")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "nal", "##ox", "##one", "-", "induced"]
VOCAB += ["hypo", "##tension", ".", "in", "rats"]
TEXT = "Naloxone-induced hypotension in rats."
GOLD = [(0, 8, "Chemical"), (17, 28, "Disease")]
X = -100


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)})


@pytest.mark.parametrize(
    "scheme, expected",
    [
        # [CLS] nal ##ox ##one - induced hypo ##tension in rats . [SEP] [PAD] [PAD]
        ("first", [X, 1, X, X, 0, 0, 3, X, 0, 0, 0, X, X, X]),
        ("all", [X, 1, 2, 2, 0, 0, 3, 4, 0, 0, 0, X, X, X]),
    ],
)
def test_bio_labels_from_character_spans(tiny_tokenizer, scheme, expected):
    enc = ner.encode_for_ner(tiny_tokenizer, [TEXT], [GOLD], TYPES, max_length=14, scheme=scheme)
    assert ner.bio_tags(TYPES) == ("O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease")
    assert enc.labels[0].tolist() == expected
    assert enc.offsets[0, 1].tolist() == [0, 3] and enc.offsets[0, 7].tolist() == [21, 28]
    # Gold tags decode back to the exact gold spans (continuations fill their word).
    assert ner.decode_spans(np.maximum(enc.labels, 0), enc, TYPES) == [set(GOLD)]


def test_predictions_map_back_to_character_spans(tiny_tokenizer):
    enc = ner.encode_for_ner(tiny_tokenizer, [TEXT], [[]], TYPES, max_length=14, scheme="all")
    #              [CLS] nal ##ox ##one -  induced hypo ##tension in rats .  [SEP] pad pad
    predicted = [[0, 2, 2, 2, 0, 1, 3, 2, 0, 4, 0, 3, 1, 1]]
    # I without B opens an entity; a type change splits; specials and padding are never read.
    assert ner.decode_spans(np.array(predicted), enc, TYPES) == [
        {(0, 8, "Chemical"), (9, 16, "Chemical"), (17, 21, "Disease"), (21, 28, "Chemical")}
        | {(32, 36, "Disease")}
    ]


def test_bad_spans_and_schemes_raise(tiny_tokenizer):
    with pytest.raises(ValueError, match="entity type 'Gene'"):
        ner.encode_for_ner(tiny_tokenizer, [TEXT], [[(0, 3, "Gene")]], TYPES)
    with pytest.raises(ValueError, match="scheme"):
        ner.encode_for_ner(tiny_tokenizer, [TEXT], [GOLD], TYPES, scheme="last")
    with pytest.raises(ValueError, match="bad span"):
        ner.encode_for_ner(tiny_tokenizer, [TEXT], [[(5, 5, "Chemical")]], TYPES)


def test_entity_scores_exact_match():
    gold = [{(0, 8, "Chemical"), (17, 28, "Disease")}, {(3, 5, "Disease")}]
    pred = [{(0, 8, "Chemical"), (17, 27, "Disease")}, {(3, 5, "Disease"), (9, 12, "Chemical")}]
    s = metrics.entity_scores(gold, pred)
    assert (s["precision"], s["recall"], s["support"]) == (0.5, 2 / 3, 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["per_type"]["Chemical"]["precision"] == 0.5
    assert s["per_type"]["Disease"]["recall"] == 0.5


def test_multilabel_micro_f1_matches_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.RandomState(0)
    y_true, y_pred = rng.rand(50, 10) > 0.8, rng.rand(50, 10) > 0.7
    s = metrics.multilabel_micro_f1(y_true, y_pred)
    assert s["f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert s["precision"] == pytest.approx(precision_score(y_true, y_pred, average="micro"))
    assert s["recall"] == pytest.approx(recall_score(y_true, y_pred, average="micro"))


@pytest.mark.parametrize("scheme", ner.SCHEMES)
def test_bc5cdr_gold_spans_survive_the_round_trip(shared_data, minilm_dir, scheme):
    """Real documents, real vocabulary: tagging gold spans and decoding them recovers (almost)
    every entity; what is lost are entities cut by the sentence splitter or starting mid-word."""
    from biomed_jax.examples import finetune_ner

    docs = finetune_ner.read_documents(shared_data / "pubmed" / "bc5cdr_dev.jsonl", 60)
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    args = type("Args", (), {"max_length": 256, "scheme": scheme})
    sents, enc = finetune_ner.encode(tokenizer, docs, args)
    decoded = ner.decode_spans(np.maximum(enc.labels, 0), enc, TYPES)
    got = finetune_ner.document_spans(sents, decoded, len(docs))
    scores = metrics.entity_scores([set(s) for _, s in docs], got)
    assert scores["support"] > 500
    assert scores["precision"] >= 0.98 and scores["recall"] >= 0.98, scores


@pytest.fixture(scope="module")
def random_bert(tmp_path_factory, minilm_dir):
    return save_random_init_bert(
        tmp_path_factory.mktemp("tiny_bert"),
        minilm_dir,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


COMMON = ["--random-init", "--epochs", "2", "--batch-size", "8", "--lr", "3e-3"]
COMMON += ["--max-length", "48", "--log-every", "1", "--warmup-ratio", "0"]


def test_finetune_ner_example_runs_and_saves(random_bert, tmp_path):
    from biomed_jax import from_pretrained
    from biomed_jax.examples import SAMPLE_DATA, finetune_ner

    argv = ["--model", str(random_bert), "--data", str(SAMPLE_DATA / "bc5cdr")]
    argv += ["--max-train", "4", "--max-eval", "2", *COMMON]
    argv += ["--output", str(tmp_path / "out"), "--json", str(tmp_path / "h.json")]
    history = finetune_ner.main(argv)
    losses = [h["loss"] for h in history["loss"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert json.loads((tmp_path / "h.json").read_text())["eval"][-1]["ceiling_f1"] > 0.9
    model = from_pretrained(tmp_path / "out")
    assert type(model.module).__name__ == "BertForTokenClassification"
    assert model.tokenizer is not None and model.config.id2label == ner.bio_tags(TYPES)


def test_finetune_hoc_example_runs(random_bert, tmp_path):
    from biomed_jax.examples import SAMPLE_DATA, finetune_hoc

    argv = ["--model", str(random_bert), "--data", str(SAMPLE_DATA / "hoc")]
    argv += ["--max-train", "48", "--max-eval", "16", *COMMON]
    history = finetune_hoc.main(argv)
    losses = [h["loss"] for h in history["loss"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert 0.0 <= history["eval"][-1]["f1"] <= 1.0 and history["eval"][-1]["chance_f1"] > 0


@pytest.mark.parametrize("example", ["finetune_ner", "finetune_hoc"])
def test_a_missing_data_file_is_one_line_and_exit_status_2(example, tmp_path):
    """Named by the command line (python -m), as a user runs it: no traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", f"biomed_jax.examples.{example}", "--model", str(tmp_path / "m"),
         "--data", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    first = "bc5cdr_train.jsonl" if example == "finetune_ner" else "train.jsonl"
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"{example}: error: {tmp_path / 'nothing' / first}: no such file (--data names the "
        "directory holding it)\n"
    )


def test_a_malformed_record_names_the_file_line_and_field(tmp_path, capsys):
    from biomed_jax.examples import SAMPLE_DATA, finetune_hoc, finetune_ner

    data = tmp_path / "bc5cdr"
    data.mkdir()
    lines = (SAMPLE_DATA / "bc5cdr" / "bc5cdr_train.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["entities"][0]["end"] = 10**6
    (data / "bc5cdr_train.jsonl").write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(SystemExit) as info:
        finetune_ner.main(["--model", "unused", "--data", str(data)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"{data / 'bc5cdr_train.jsonl'}:2: entity" in err and "<= start < end <=" in err
    hoc = tmp_path / "hoc"
    hoc.mkdir()
    (hoc / "train.jsonl").write_text('{"text": "Tumor growth .", "labels": ["growth"]}\n')
    with pytest.raises(SystemExit):
        finetune_hoc.main(["--model", "unused", "--data", str(hoc)])
    assert f"{hoc / 'train.jsonl'}:1: unknown labels ['growth']" in capsys.readouterr().err


@pytest.mark.parametrize("corpus", ["bc5cdr", "hoc"])
def test_the_sample_data_is_what_the_examples_read(corpus):
    """biomed_jax.examples.SAMPLE_DATA: real records in the documented layout, every split."""
    from biomed_jax.examples import SAMPLE_DATA, finetune_hoc, finetune_ner

    if corpus == "bc5cdr":
        splits = {s: finetune_ner.read_documents(SAMPLE_DATA / corpus / f"bc5cdr_{s}.jsonl", None)
                  for s in ("train", "dev", "test")}  # fmt: skip
        assert [len(v) for v in splits.values()] == [8, 8, 4]
        text, spans = splits["train"][0]
        assert text.startswith("Naloxone") and (0, 8, "Chemical") in spans
    else:
        splits = {s: finetune_hoc.read_split(SAMPLE_DATA / corpus / f"{s}.jsonl", None)
                  for s in ("train", "test")}  # fmt: skip
        assert [len(v) for v in splits.values()] == [128, 32]
        assert any(labels for _, labels in splits["train"])
