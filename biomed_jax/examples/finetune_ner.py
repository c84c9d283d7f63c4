"""Fine-tune a BERT checkpoint for chemical and disease NER on BC5CDR; entity-level P/R/F1.

    python -m biomed_jax.examples.finetune_ner --model PATH --data DIR [--scheme first|all] [--epochs 3] ...

Documents (title + " " + abstract) are split into sentences; each sentence is tokenized with
offsets and tagged BIO from the gold character spans. Predicted tags are mapped back to character
spans in the document and scored by exact (start, end, type) match against every gold entity.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np

from biomed_jax.examples import _common
from biomed_jax.train import metrics, ner

TYPES = ("Chemical", "Disease")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9(\[])")


def _problem(record: dict) -> str | None:
    """What is wrong with a BC5CDR record (docs/fine-tuning.md, "Data"), or None."""
    if not isinstance(record.get("title"), str) or not isinstance(record.get("abstract"), str):
        return 'needs "title" and "abstract" strings'
    if not isinstance(record.get("entities"), list):
        return 'needs "entities": a list of {"start", "end", "type"}'
    length = len(record["title"]) + 1 + len(record["abstract"])
    for e in record["entities"]:
        if not isinstance(e, dict) or e.get("type") not in TYPES:
            return f"entity {e!r}: its type must be one of {', '.join(TYPES)}"
        start, end = e.get("start"), e.get("end")
        if not (type(start) is int and type(end) is int and 0 <= start < end <= length):
            return (
                f"entity {e!r}: needs offsets 0 <= start < end <= {length} (title + ' ' + abstract)"
            )
    return None


def read_documents(file: Path, limit: int | None) -> list[tuple[str, list[ner.Span]]]:
    """(title + " " + abstract, [(start, end, type), ...]) of the first `limit` records."""
    return [
        (
            doc["title"] + " " + doc["abstract"],
            [(e["start"], e["end"], e["type"]) for e in doc["entities"]],
        )
        for doc in _common.read_jsonl(file, _problem, limit)
    ]


def sentences(docs):
    """(doc index, char offset, sentence text, spans in sentence coordinates) per sentence."""
    out = []
    for d, (text, spans) in enumerate(docs):
        bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
        for start, end in itertools.pairwise(bounds):
            sentence = text[start:end].rstrip()
            inside = [(s - start, e - start, t) for s, e, t in spans if start <= s < end]
            out.append((d, start, sentence, [(s, min(e, len(sentence)), t) for s, e, t in inside]))
    return out


def encode(tokenizer, docs, args):
    sents = sentences(docs)
    enc = ner.encode_for_ner(
        tokenizer,
        [s[2] for s in sents],
        [s[3] for s in sents],
        TYPES,
        max_length=args.max_length,
        scheme=args.scheme,
    )
    return sents, enc


def document_spans(sents, per_sentence, n_docs) -> list[set[ner.Span]]:
    out: list[set[ner.Span]] = [set() for _ in range(n_docs)]
    for (d, base, _, _), spans in zip(sents, per_sentence):
        out[d] |= {(s + base, e + base, t) for s, e, t in spans}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(
        __doc__.splitlines()[0], "BC5CDR directory with bc5cdr_{train,dev,test}.jsonl"
    )
    p.add_argument("--scheme", choices=ner.SCHEMES, default="first", help="subword labelling")
    p.add_argument("--eval-split", choices=("dev", "test"), default="dev")
    args = p.parse_args(argv)

    labels = ner.bio_tags(TYPES)
    with _common.user_errors("finetune_ner"):
        train_docs = read_documents(args.data / "bc5cdr_train.jsonl", args.max_train)
        eval_docs = read_documents(args.data / f"bc5cdr_{args.eval_split}.jsonl", args.max_eval)
        module, params, tokenizer = _common.load_model(args, "BertForTokenClassification", labels)
    _, train_enc = encode(tokenizer, train_docs, args)
    eval_sents, eval_enc = encode(tokenizer, eval_docs, args)
    gold = [set(spans) for _, spans in eval_docs]
    # The best any model can score through this tokenization, truncation and labelling scheme.
    oracle = document_spans(
        eval_sents,
        ner.decode_spans(np.maximum(eval_enc.labels, 0), eval_enc, TYPES),
        len(eval_docs),
    )
    ceiling = metrics.entity_scores(gold, oracle)["f1"]
    print(f"{len(train_enc.input_ids)} training sentences; alignment ceiling F1 {ceiling:.4f}")

    def evaluate(state):
        logits = _common.predict_all(state, eval_enc.batch(), args.batch_size)
        predicted = ner.decode_spans(logits.argmax(-1), eval_enc, TYPES)
        scores = metrics.entity_scores(gold, document_spans(eval_sents, predicted, len(gold)))
        return {"ceiling_f1": ceiling, **scores}

    return _common.fit(args, module, params, tokenizer, train_enc.batch(), evaluate)


if __name__ == "__main__":
    main()
