"""End-to-end relation extraction: BC5CDR (chemical-induced disease), DDI, KD-DTI.

As examples/RE-BC5CDR, RE-DDI and RE-DTI of microsoft/BioGPT:
- source (`rebuild_data.py`): lower-cased "title. abstract" (no extra period when the title ends
  in a non-word character; DDI: the abstract alone, newlines as spaces); documents without gold
  relations are left out;
- answer (`postprocess.py`): sentences "the relation between C and D exists" split at ";"
  (BC5CDR) or "the interaction between D and T is R" split at "; " (DDI, KD-DTI); a line with
  none is a failure and predicts nothing;
- scores: BC5CDR as BioCreative V's `bc5cdr_eval.jar relation CID` on the names mapped to MeSH ids
  through the split's entity maps (unknown names map to "-1": a false positive); DDI and KD-DTI
  as their `hard_match_evaluation.py` (per-document multi-label P/R/F1 averaged, and ontology
  level over the set of all triples, names normalized, abbreviation or body match).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from biomed_jax.errors import shown
from biomed_jax.tasks.data import Dataset, Example, field, read_json_object
from biomed_jax.tasks.prompting import BC5CDR_PREFIXES, TaskSettings, answer_text

# train.sh of each task: --learned-prompt 9 --max-source-positions 640
SETTINGS = TaskSettings(learned_prompt=9, max_source_positions=640)
CID = re.compile(r"the relation between (.*) and (.*) exists")
INTERACTION = re.compile(r"the interaction between (.*) and (.*) is (.*)")
Triple = tuple[str, str, str]  # (head, relation, tail)


def title_abstract(title: str, abstract: str) -> str:
    """BC5CDR / KD-DTI rebuild_data.py: "title. abstract", lower-cased."""
    joiner = " " if re.search(r"\W$", title) else ". "
    return (title + joiner + abstract).lower()


def _load(
    path: Path, gold_field: str, source: Callable[[dict, str], str], gold: Callable[[list], Any]
) -> Dataset:
    examples, skipped = [], []
    for pmid, record in read_json_object(path).items():
        relations = field(record, gold_field, (list, type(None)), path, pmid)
        if not relations:
            skipped.append(pmid)
            continue
        try:
            answer = gold(relations)
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: record {pmid!r} has a malformed {gold_field!r}: {e!r}"
            ) from None
        extra = {k: record[k] for k in ("chemical2id", "disease2id") if k in record}
        examples.append(Example(pmid, source(record, pmid), answer, extra))
    return Dataset(examples, skipped)


# -- BC5CDR ----------------------------------------------------------------------------------------
def load_bc5cdr(path: Path) -> Dataset:
    """`data/BC5CDR/raw/test.json`: {pmid: {title, abstract, relations: [{chemical, disease}],
    chemical2id, disease2id}}."""

    def source(record: dict, pmid: str) -> str:
        for name in ("chemical2id", "disease2id"):
            field(record, name, dict, path, pmid)
        title = field(record, "title", str, path, pmid)
        return title_abstract(title, field(record, "abstract", str, path, pmid))

    def gold(relations: list) -> set[tuple[str, str]]:
        return {(r["chemical"], r["disease"]) for r in relations}

    return _load(path, "relations", source, gold)


def parse_bc5cdr(line: str) -> tuple[str, list[tuple[str, str]] | None]:
    """(answer text, [(chemical name, disease name)] or None when no sentence parses)."""
    text = answer_text(line, BC5CDR_PREFIXES)
    pairs = []
    for sentence in text.split(";"):
        found = CID.match(sentence.strip())
        if found:
            pairs.append((found.group(1).strip(), found.group(2).strip()))
    return text, pairs or None


def entity_maps(examples: Iterable[Example]) -> dict[str, dict[str, str]]:
    """The split's name -> MeSH id maps: every document's merged in order (what the repo ships
    as `test.entities.json` for its test split)."""
    maps: dict[str, dict[str, str]] = {"chemical2id": {}, "disease2id": {}}
    for example in examples:
        for kind, names in maps.items():
            names.update(example.extra.get(kind, {}))
    return maps


def check_entities(entities: Any) -> dict[str, dict[str, str]]:
    """`entities` (a `--entities` file's JSON) as the name -> id maps, or a ValueError saying
    what is wrong: {"chemical2id": {name: id}, "disease2id": {name: id}}, names and ids strings."""
    shape = "entities must be {'chemical2id': {name: id}, 'disease2id': {name: id}}"
    if not isinstance(entities, dict):
        raise ValueError(f"{shape}, got a {type(entities).__name__}: {shown(entities)}")
    for kind in ("chemical2id", "disease2id"):
        names = entities.get(kind)
        if not isinstance(names, dict):
            raise ValueError(f"{shape}; {kind} is {shown(names)}")
        bad = [(k, i) for k, i in names.items() if not (isinstance(k, str) and isinstance(i, str))]
        if bad:
            raise ValueError(f"{shape}; {kind} holds entries that are not strings: {shown(bad)}")
    return entities


def cid_relations(
    pmid: str, pairs: list[tuple[str, str]] | None, maps: dict[str, dict[str, str]]
) -> list[tuple[str, str, str]]:
    """postprocess.py's PubTator rows (pmid, chemical id, disease id); unknown names get "-1"."""
    chemicals, diseases = maps["chemical2id"], maps["disease2id"]
    return [(pmid, chemicals.get(c, "-1"), diseases.get(d, "-1")) for c, d in pairs or ()]


def score_bc5cdr(
    examples: list[Example], parsed: list[Any], entities: dict | None = None
) -> dict[str, Any]:
    """bc5cdr_eval.jar relation CID: sets of (pmid, chemical id, disease id); precision and F are
    None where the jar prints NaN (nothing predicted)."""
    maps = entity_maps(examples) if entities is None else check_entities(entities)
    gold = {(e.id, c, d) for e in examples for c, d in e.gold}
    predicted = {r for e, pairs in zip(examples, parsed) for r in cid_relations(e.id, pairs, maps)}
    tp, fp, fn = len(predicted & gold), len(predicted - gold), len(gold - predicted)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


# -- DDI and KD-DTI --------------------------------------------------------------------------------
def _gold_triples(triples: list) -> list[Triple]:
    return [(t["drug"], t["interaction"], t["target"]) for t in triples]


def load_ddi(path: Path) -> Dataset:
    """`data/DDI/raw/test.json`: {id: {abstract, triples: [{drug, target, interaction}]}}."""

    def source(record: dict, pmid: str) -> str:
        return field(record, "abstract", str, path, pmid).strip().replace("\n", " ").lower()

    return _load(path, "triples", source, _gold_triples)


def load_dti(path: Path) -> Dataset:
    """`data/KD-DTI/raw/test.json`: {pmid: {title, abstract, triples: [...]}}."""

    def source(record: dict, pmid: str) -> str:
        title = field(record, "title", str, path, pmid)
        return title_abstract(title, field(record, "abstract", str, path, pmid))

    return _load(path, "triples", source, _gold_triples)


def parse_interactions(line: str) -> tuple[str, list[Triple] | None]:
    """(answer text, [(drug, interaction, target)] or None when no sentence parses)."""
    text = answer_text(line)
    triples = []
    for sentence in text.split("; "):
        found = INTERACTION.match(sentence)
        if found:
            drug, target, relation = (g.strip() for g in found.groups())
            triples.append((drug, relation, target))
    return text, triples or None


def normalize_name(s: str) -> str:
    """hard_match_evaluation.py: final digit as a Roman numeral, "-type" dropped, only [a-zA-Z0-9]."""
    s = s.strip()
    romans = dict(zip("0123456789", ("0", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")))
    if len(s) > 2 and s[-1].isnumeric() and not s[-2].isnumeric() and s[-1] in romans:
        s = s[:-1] + romans[s[-1]]
    return re.sub("[^a-zA-Z0-9]+", "", s.replace("-type", ""))


def _body(s: str) -> str:
    """ "aaa (bb)" -> aaa, normalized."""
    s = s.strip()
    return normalize_name(s[: s.rfind("(")].strip() if "(" in s and s.endswith(")") else s)


def _abbreviation(s: str) -> str:
    """ "aaa (bb)" -> bb, normalized."""
    s = s.strip()
    return normalize_name(s[s.rfind("(") + 1 : -1].strip() if "(" in s and s.endswith(")") else s)


def _mapped(items: set, fn: Callable[[str], str]) -> set:
    return {tuple(fn(x) for x in item) if isinstance(item, tuple) else fn(item) for item in items}


def _precision(pred: set, gold: set) -> float:
    return float(pred == gold) if not pred else len(pred & gold) / len(pred)


def _recall(pred: set, gold: set) -> float:
    return float(pred == gold) if not gold else len(pred & gold) / len(gold)


def _accuracy(pred: set, gold: set) -> float:
    return float(pred == gold) if not gold else len(pred & gold) / len(pred | gold)


def _normed(metric: Callable[[set, set], float], pred: set, gold: set) -> float:
    """Either the abbreviations or the bodies match: the better of the two."""
    return max(
        metric(_mapped(pred, _abbreviation), _mapped(gold, _abbreviation)),
        metric(_mapped(pred, _body), _mapped(gold, _body)),
    )


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _squash(s: str) -> str:
    return s.strip().lower().replace(" ", "")


def score_interactions(examples: list[Example], parsed: list[Any], **_: Any) -> dict[str, Any]:
    """hard_match_evaluation.py of RE-DDI / RE-DTI. `f1` is its sample-level "tp micro f1" (the
    mean of per-document F1), the figure the paper reports."""
    per_doc: dict[str, list[float]] = {k: [] for k in ("p", "r", "f1", "d", "t", "i")}
    everything: dict[str, set] = {
        k: set() for k in ("pred", "gold", "pd", "gd", "pt", "gt", "pi", "gi")
    }
    for example, triples in zip(examples, parsed):
        pred = {(_squash(d), _squash(t), _squash(i)) for d, i, t in triples or ()}
        gold = {(_squash(d), _squash(t), _squash(i)) for d, i, t in example.gold}
        parts = {name: ({x[k] for x in pred}, {x[k] for x in gold}) for k, name in enumerate("dti")}
        per_doc["p"].append(_normed(_precision, pred, gold))
        per_doc["r"].append(_normed(_recall, pred, gold))
        per_doc["f1"].append(_f1(per_doc["p"][-1], per_doc["r"][-1]))
        for name, (p, g) in parts.items():
            per_doc[name].append(_normed(_accuracy, p, g))
            everything["p" + name] |= p
            everything["g" + name] |= g
        everything["pred"] |= pred
        everything["gold"] |= gold
    if not examples:
        return {}
    mean = {k: sum(v) / len(v) for k, v in per_doc.items()}

    def onto(p: str, g: str) -> tuple[float, float]:
        pair = everything[p], everything[g]
        return _normed(_precision, *pair), _normed(_recall, *pair)

    all_p, all_r = onto("pred", "gold")
    return {
        "precision": mean["p"],
        "recall": mean["r"],
        "f1": mean["f1"],
        "macro_f1": _f1(mean["p"], mean["r"]),
        "accuracy_drug": mean["d"],
        "accuracy_target": mean["t"],
        "accuracy_interaction": mean["i"],
        "ontology_precision": all_p,
        "ontology_recall": all_r,
        "ontology_f1": _f1(all_p, all_r),
        **{
            f"ontology_f1_{n}": _f1(*onto("p" + k, "g" + k))
            for k, n in (("d", "drug"), ("t", "target"), ("i", "interaction"))
        },
    }
