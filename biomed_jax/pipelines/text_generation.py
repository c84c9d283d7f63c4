"""Text in, text out generation with a causal LM (BioGPT): prompts batched by length, left-padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from biomed_jax import validation as v
from biomed_jax.extras import require
from biomed_jax.loading import Pretrained
from biomed_jax.pipelines._common import (
    DECODERS,
    DEFAULT_DECODER,
    Model,
    as_list,
    check_token_ids,
    length_sorted_batches,
    resolve_model,
)


def generate_text(
    prompt_or_prompts: str | Sequence[str],
    max_new_tokens: int = 50,
    num_beams: int = 1,
    do_sample: bool = False,
    *,
    model: Model = None,
    batch_size: int = 8,
    seed: int = 0,
    num_return_sequences: int = 1,
    **generate_kwargs: Any,
) -> Any:
    """Prompt + continuation, decoded without special tokens (as the BioGPT model card shows).

    One prompt gives a str (a list of num_return_sequences strs when that is > 1); a list gives
    one such result per prompt, in input order. Other keyword arguments (min_length, top_k,
    top_p, temperature, length_penalty, early_stopping, no_repeat_ngram_size, ...) go to
    `biomed_jax.generation.generate`; sampling draws from `jax.random.key(seed)`.
    """
    from biomed_jax.generation import generate

    prompts, single = as_list(prompt_or_prompts, "prompts")
    if not isinstance(model, Pretrained):
        require("sacremoses")  # BioGPT's tokenizer: say so before loading the model
    pretrained = resolve_model(
        model, DEFAULT_DECODER, "BioGptForCausalLM", takes=DECODERS, pipeline="generate_text"
    )
    v.integer("batch_size", batch_size, low=1)
    v.integer("seed", seed, low=-(2**63), high=2**64 - 1)
    num_return_sequences = v.integer("num_return_sequences", num_return_sequences, low=1)
    tok = pretrained.tokenizer
    encoded = [tok(p)["input_ids"] for p in prompts]
    check_token_ids(pretrained, encoded, prompts, "prompt")
    rng = jax.random.key(seed) if do_sample else None
    results: list[Any] = [None] * len(prompts)
    for index in length_sorted_batches([len(e) for e in encoded], batch_size):
        rows = [encoded[i] for i in index]
        width = max(len(r) for r in rows)  # generate() pads prompts to its own length buckets
        ids = np.full((len(rows), width), tok.pad_token_id, np.int32)
        mask = np.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = row
            mask[r, width - len(row) :] = 1
        key = None
        if do_sample:
            rng, key = jax.random.split(rng)
        sequences = np.asarray(
            generate(
                pretrained.module,
                pretrained.params,
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=do_sample,
                num_return_sequences=num_return_sequences,
                rng=key,
                **generate_kwargs,
            )
        ).reshape(len(rows), num_return_sequences, -1)
        for r, i in enumerate(index):
            texts = [tok.decode(seq, skip_special_tokens=True) for seq in sequences[r]]
            results[i] = texts[0] if num_return_sequences == 1 else texts
    return results[0] if single else results
