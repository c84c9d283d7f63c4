"""Generation conformance: `biomed_jax.generate` against `transformers` `generate`, token for token.

How the reference is called, and why:
- Seeded random BioGPT weights (`torch.manual_seed`), saved with `save_pretrained` and loaded through
  our real loader. Real prompts: PubMed titles (BC5CDR test split, shipped in `conformance/data`)
  tokenized by `transformers.BioGptTokenizer` with real BioGPT ids (`conformance.corpus`), cut to
  5..16 tokens, batched
  with left padding (HF's convention for decoder-only generation), float32 on CPU, eager attention.
- Random weights make flat, near-tied logits, where float32 rounding (ours vs torch, ~1e-6) could
  legitimately flip an argmax. So the small model uses initializer_range 0.2 (logits spread over
  several units), and the EOS embedding row is scaled so that some rows end early and beam
  search's finished-hypothesis logic runs. Each greedy row notes the smallest top-1 / top-2 gap of
  HF's processed scores over all steps: a mismatch with a gap far above 1e-5 is a real bug.
- Strategies: greedy; greedy with repetition penalty, no-repeat-ngram and min_new_tokens; beam
  search num_beams=5 with min_length and early_stopping=True (the BioGPT model card's setting);
  beam search with early_stopping=False and num_return_sequences; "never" with a length penalty.
- Every row of a batched call is also generated alone (no padding) and must give the same tokens.
- Processors: the processed logits of each sampling processor equal HF's LogitsProcessor on the
  same scores and ids (tolerance 1e-6; the -inf pattern must match exactly).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np

from conformance import corpus
from conformance.report import Row, compare, exact

PROCESSOR_TOL = 1e-6  # float32 processed logits against HF's processors
SMALL = dict(
    vocab_size=42384,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=128,
    initializer_range=0.2,
)
FULL = dict(initializer_range=0.02)  # microsoft/biogpt's shape (BioGptConfig defaults), 347M
# Scale of the EOS embedding row (the LM head is tied to it): makes EOS win on some rows.
EOS_SCALE = {"small": 6.0, "full": 4.0}
STRATEGIES = {
    "greedy": dict(),
    "greedy+processors": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=6),
    "beam5-min_length-early": dict(num_beams=5, min_length=24, early_stopping=True),
    "beam5-return2": dict(num_beams=5, early_stopping=False, num_return_sequences=2),
    "beam4-never-lp0.5": dict(num_beams=4, early_stopping="never", length_penalty=0.5),
}
ALONE_STRATEGIES = ("greedy", "beam5-min_length-early")


def pubmed_prompts(count: int) -> list[list[int]]:
    """Token ids of the first `count` shipped BC5CDR test titles (with BioGPT's leading </s>), cut."""
    tokenizer = corpus.biogpt_tokenizer()
    titles = [a["title"] for a in corpus.pubmed_articles()[:count]]
    if len(titles) < count:
        raise ValueError(f"conformance ships {len(titles)} PubMed titles, {count} asked for")
    # Lengths 5..16 so the batch is left-padded; all share one length bucket.
    return [tokenizer(t)["input_ids"][: 5 + (7 * i) % 12] for i, t in enumerate(titles)]


def left_pad(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    return ids, mask


def build_models(hf_config: dict, eos_scale: float, seed: int = 0):
    """(HF BioGptForCausalLM, our Pretrained) on the same seeded random weights."""
    import torch
    import transformers

    from biomed_jax import from_pretrained

    torch.manual_seed(seed)
    config = transformers.BioGptConfig(**hf_config, attn_implementation="eager")
    hf = transformers.BioGptForCausalLM(config).eval()
    with torch.no_grad():
        hf.biogpt.embed_tokens.weight[config.eos_token_id] *= eos_scale
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = from_pretrained(tmp, architecture="BioGptForCausalLM")
    return hf, ours


def hf_generate(
    hf, ids: np.ndarray, mask: np.ndarray, base=None, **kwargs
) -> tuple[np.ndarray, float]:
    """HF's sequences, and the smallest top-1 minus top-2 gap of its scores (greedy only).
    `kwargs` update `base`, a GenerationConfig (default: the model's own)."""
    import copy

    import torch

    config = copy.deepcopy(hf.generation_config if base is None else base)
    greedy = kwargs.get("num_beams", 1) == 1
    config.update(do_sample=False, return_dict_in_generate=True, output_scores=greedy, **kwargs)
    # transformers fills a passed config's default-valued fields from the model's own (a
    # checkpoint's generation_config.json with num_beams 2 turned greedy into beam search): the
    # model's is this one for the call.
    own, hf.generation_config = hf.generation_config, config
    try:
        with torch.no_grad():
            out = hf.generate(
                torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                generation_config=config,
            )
    finally:
        hf.generation_config = own
    gap = float("nan")
    if out.scores:
        top2 = torch.stack(out.scores).topk(2, dim=-1).values  # [steps, B, 2]
        gaps = (top2[..., 0] - top2[..., 1]).numpy()
        finite = gaps[np.isfinite(gaps)]
        gap = float(finite.min()) if finite.size else gap
    return out.sequences.numpy(), gap


def check_model(
    size: str,
    hf_config: dict,
    prompts: list[list[int]],
    max_new_tokens: int,
    strategies=STRATEGIES,
    alone: int | None = None,
    chunk: int | None = None,
) -> list[Row]:
    """Ours vs HF for each strategy, batched and left-padded, `chunk` prompts per call (default
    all; full size needs smaller calls to fit in memory). The first `alone` prompts (default all)
    are also generated one by one and must equal their batched rows."""
    from biomed_jax import generate

    hf, ours = build_models(hf_config, EOS_SCALE[size])
    pad, eos = hf.config.pad_token_id, hf.config.eos_token_id
    step = chunk or len(prompts)
    batches = [prompts[i : i + step] for i in range(0, len(prompts), step)]
    rows = []
    for name, kwargs in strategies.items():
        suite = f"biogpt-{size}/{name}/fp32"
        kwargs = dict(kwargs, max_new_tokens=max_new_tokens)
        mismatches, count, ended, gaps, first = 0, 0, 0, [], None
        for batch in batches:
            ids, mask = left_pad(batch, pad)
            ref, gap = hf_generate(hf, ids, mask, **kwargs)
            got = np.asarray(generate(ours.module, ours.params, ids, mask, **kwargs))
            row = exact(suite, "sequences", got, ref)
            mismatches += row.max_abs_diff
            count += ref.shape[0]
            ended += int((ref[:, ids.shape[1] :] == eos).any(axis=1).sum())
            gaps.append(gap)
            first = first or (batch, got)
        note = f"{len(prompts)} prompts in calls of {step}, {ended} rows hit EOS"
        if not np.isnan(gaps).all():
            note += f", min top-2 gap {np.nanmin(gaps):.2g}"
        rows.append(Row(suite, "sequences", (count,), mismatches, 0, mismatches == 0, note))
        if name in ALONE_STRATEGIES:
            batch, got = first
            take = len(batch) if alone is None else min(alone, len(batch))
            per_prompt = got.shape[0] // len(batch)
            width = max(map(len, batch))
            rows.append(
                _alone_row(suite, ours, batch[:take], got[: take * per_prompt], width, kwargs, pad)
            )
    return rows


def _alone_row(suite, ours, prompts, batched, width, kwargs, pad) -> Row:
    """Each prompt generated alone equals its rows of the batched call (padding stripped)."""
    from biomed_jax import generate

    per_prompt = batched.shape[0] // len(prompts)
    if "min_length" in kwargs:  # it counts the (padded) prompt: alone, the same new-token minimum
        kwargs = dict(kwargs)
        kwargs["min_new_tokens"] = max(kwargs.pop("min_length") - width, 0)
    mismatches = 0
    for i, p in enumerate(prompts):
        alone = np.asarray(generate(ours.module, ours.params, np.array([p]), **kwargs))
        for r in range(per_prompt):
            a = _strip(alone[r, len(p) :], pad)
            b = _strip(batched[i * per_prompt + r, width:], pad)
            mismatches += not np.array_equal(a, b)
    return Row(
        suite,
        "rows alone == batched",
        (len(prompts),),
        float(mismatches),
        0,
        mismatches == 0,
        "generated tokens compared after stripping trailing padding",
    )


def _strip(tokens: np.ndarray, pad: int) -> np.ndarray:
    keep = len(tokens)
    while keep and tokens[keep - 1] == pad:
        keep -= 1
    return tokens[:keep]


def check_processors(seed: int = 0) -> list[Row]:
    """Each processor, and the whole sampling chain, against HF's LogitsProcessor classes."""
    import jax.numpy as jnp
    import torch
    from transformers.generation import logits_process as lp

    from biomed_jax.generation.processors import (
        History,
        min_length,
        no_repeat_ngram,
        process,
        repetition_penalty,
        top_k,
        top_p,
    )

    rng = np.random.default_rng(seed)
    rows_, vocab, length, junk = 6, 50, 12, 3
    scores = (rng.normal(size=(rows_, vocab)) * 3).astype(np.float32)
    ids = rng.integers(0, 6, size=(rows_, length))  # a small alphabet: n-grams repeat
    ids[:, 0] = rng.integers(0, vocab, size=rows_)
    first_real = np.array([0, 2, 5, 0, 1, 3])  # left padding lengths per row
    # Our buffer: `junk` extra bucket slots before the caller's ids, then room after them.
    buffer = np.concatenate(
        [np.full((rows_, junk), 4), ids, np.full((rows_, 5), 4)], axis=1
    ).astype(np.int32)
    history = History(
        jnp.asarray(buffer),
        jnp.int32(junk + length),
        jnp.int32(junk),
        jnp.asarray(first_real + junk),
    )
    eos = np.array([2, 7], np.int32)
    t_ids, t_scores = torch.from_numpy(ids), torch.from_numpy(scores)
    s = jnp.asarray(scores)
    # HF's processors, built per row: the padding each row's repetition penalty ignores is an int
    # in every transformers 5.x (a per-row tensor only in later ones).
    cases = {
        "repetition_penalty 1.4": (
            repetition_penalty(s, history, jnp.float32(1.4)),
            lambda pad: lp.RepetitionPenaltyLogitsProcessor(1.4, pad),
        ),
        "repetition_penalty 0.7": (
            repetition_penalty(s, history, jnp.float32(0.7)),
            lambda pad: lp.RepetitionPenaltyLogitsProcessor(0.7, pad),
        ),
        "top_k 5": (top_k(s, jnp.int32(5)), lambda pad: lp.TopKLogitsWarper(5)),
        "top_p 0.8 keep 2": (
            top_p(s, jnp.float32(1.0 - 0.8), 2),
            lambda pad: lp.TopPLogitsWarper(0.8, min_tokens_to_keep=2),
        ),
    }
    for n in (1, 2, 3):
        cases[f"no_repeat_ngram {n}"] = (
            no_repeat_ngram(s, history, n),
            lambda pad, n=n: lp.NoRepeatNGramLogitsProcessor(n),
        )
    for least in (length, length + 1):
        settings = _processor_settings(eos, min_length=least)
        cases[f"min_length {least}"] = (
            min_length(s, history, settings),
            lambda pad, least=least: lp.MinLengthLogitsProcessor(least, torch.from_numpy(eos)),
        )
    chain = _processor_settings(
        eos, min_length=length + 1, repetition_penalty=1.2, temperature=0.7, top_k=8, top_p=0.9,
        no_repeat_ngram_size=2,
    )  # fmt: skip
    cases["sampling chain (HF order)"] = (
        process(s, history, chain),
        lambda pad: lp.LogitsProcessorList(
            [
                lp.RepetitionPenaltyLogitsProcessor(1.2, pad),
                lp.NoRepeatNGramLogitsProcessor(2),
                lp.MinLengthLogitsProcessor(length + 1, torch.from_numpy(eos)),
                lp.TemperatureLogitsWarper(0.7),
                lp.TopKLogitsWarper(8),
                lp.TopPLogitsWarper(0.9),
            ]
        ),
    )
    out = []
    for name, (ours, processor) in cases.items():
        ref = np.concatenate(
            [
                processor(int(pad))(t_ids[r : r + 1], t_scores[r : r + 1].clone()).numpy()
                for r, pad in enumerate(first_real)
            ]
        )
        ours = np.asarray(ours)
        suite = f"processors/{name}/fp32"
        finite = np.isfinite(ref)
        out.append(exact(suite, "-inf pattern", np.isfinite(ours), finite))
        out.append(
            compare(
                suite, "scores", np.where(finite, ours, 0), np.where(finite, ref, 0), PROCESSOR_TOL
            )
        )
    return out


def _processor_settings(eos: np.ndarray, **values):
    import jax.numpy as jnp

    from biomed_jax.generation.processors import ProcessorSettings

    top_k, top_p = values.get("top_k", 0), values.get("top_p", 1.0)
    return ProcessorSettings(
        min_length=jnp.int32(values.get("min_length", 0)),
        eos_token_ids=jnp.asarray(eos),
        repetition_penalty=jnp.float32(values.get("repetition_penalty", 1.0)),
        temperature=jnp.float32(values.get("temperature", 1.0)),
        top_k=jnp.int32(top_k),
        top_p_cutoff=jnp.float32(1.0 - top_p),
        no_repeat_ngram_size=values.get("no_repeat_ngram_size", 0),
        use_repetition_penalty="repetition_penalty" in values,
        do_sample=True,
        use_top_k=top_k > 0,
        use_top_p=top_p < 1.0,
    )


def cases(full_size: bool, dtypes: tuple[str, ...]) -> list[tuple[str, Callable[[], list[Row]]]]:
    """Processors, the small model (24 prompts), and with full_size microsoft/biogpt's shape.

    Generation is checked in float32 only (token identity needs the reference's precision);
    `dtypes` is accepted for the suite's interface.
    """
    del dtypes
    out: list[tuple[str, Callable[[], list[Row]]]] = [
        ("processors", check_processors),
        (
            "biogpt-small",
            lambda: check_model("small", SMALL, pubmed_prompts(24), max_new_tokens=20),
        ),
    ]
    if full_size:
        full = {k: STRATEGIES[k] for k in ("greedy", "beam5-min_length-early")}
        out.append(
            (
                "biogpt-full",
                lambda: check_model(
                    "full",
                    FULL,
                    pubmed_prompts(20),
                    max_new_tokens=12,
                    strategies=full,
                    alone=2,
                    chunk=4,
                ),
            )
        )
    return out
