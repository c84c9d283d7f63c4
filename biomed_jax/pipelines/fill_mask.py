"""Fill-mask: the top_k tokens for every [MASK], as transformers' fill-mask pipeline returns them.

Each batch is split over all local devices (see `_common.run_split`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import sharding as shd
from biomed_jax import validation as v
from biomed_jax.compilation import jit
from biomed_jax.pipelines._common import (
    DEFAULT_ENCODER,
    Devices,
    Model,
    as_list,
    check_token_ids,
    data_mesh,
    length_sorted_batches,
    pad_batch,
    place,
    resolve_model,
    run_split,
)


@jit(static_argnames=("module", "top_k"))
def _top_k(module: nn.Module, params, ids, mask, top_k: int):
    """Softmax over the vocab and its top_k at every position: ([B, T, K] probs, [B, T, K] ids)."""
    logits = module.apply({"params": params}, ids, mask).logits  # [B, T, V]
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), top_k)


def fill_mask(
    text_or_texts: str | Sequence[str],
    top_k: int = 5,
    *,
    model: Model = None,
    batch_size: int = 32,
    devices: Devices = None,
    rules: shd.Rules | str | None = None,
) -> list[Any]:
    """For each [MASK]: the top_k `{score, token, token_str, sequence}`, best first.

    One text with one mask gives a list of dicts; with several masks, one such list per mask (and
    `sequence` keeps the special tokens, as HF does). A list of texts gives one result per text.
    Scores are softmax probabilities. devices, rules: as `embed`'s (default: every batch split
    over all of this process's devices, params replicated).
    """
    texts, single = as_list(text_or_texts)
    mesh = data_mesh(devices)
    model = resolve_model(
        model, DEFAULT_ENCODER, "BertForMaskedLM", takes=("BertForMaskedLM",), pipeline="fill_mask"
    )
    vocab_size = model.config.vocab_size
    if not 1 <= v.integer("top_k", top_k) <= vocab_size:
        raise ValueError(f"top_k must be in 1..{vocab_size} (the vocabulary size), got {top_k}")
    v.integer("batch_size", batch_size, low=1)
    pretrained = place(model, mesh, rules)
    tok = pretrained.tokenizer
    limit = pretrained.config.max_position_embeddings
    encoded = [tok(text)["input_ids"] for text in texts]
    check_token_ids(pretrained, encoded, texts)
    for i, ids in enumerate(encoded):
        if tok.mask_token_id not in ids:
            raise ValueError(f"no mask token ({tok.mask_token}) in text {i}: {texts[i]!r}")
        if len(ids) > limit:
            raise ValueError(f"text {i} has {len(ids)} tokens; the model takes at most {limit}")

    results: list[Any] = [None] * len(texts)
    top = functools.partial(_top_k, pretrained.module, top_k=top_k)
    for index in length_sorted_batches([len(e) for e in encoded], batch_size):
        rows = [encoded[i] for i in index]
        ids, mask = pad_batch(rows, limit, batch_size, tok.pad_token_id)
        probs, tokens = run_split(top, pretrained.params, ids, mask, mesh=mesh, rules=rules)
        for row, i in enumerate(index):
            results[i] = _postprocess(tok, rows[row], probs[row], tokens[row])
    return results[0] if single else results


def _postprocess(tok, ids: list[int], probs: np.ndarray, tokens: np.ndarray) -> list[Any]:
    positions = [t for t, token in enumerate(ids) if token == tok.mask_token_id]
    single_mask = len(positions) == 1
    per_mask = []
    for t in positions:
        row = []
        for score, token in zip(probs[t].tolist(), tokens[t].tolist()):
            filled = list(ids)
            filled[t] = token
            row.append(
                {
                    "score": score,
                    "token": token,
                    "token_str": tok.decode([token]),
                    "sequence": tok.decode(filled, skip_special_tokens=single_mask),
                }
            )
        per_mask.append(row)
    return per_mask[0] if single_mask else per_mask
