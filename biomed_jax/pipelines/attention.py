"""Attention maps of one text with its token strings, and a heat-map grid (matplotlib, optional)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from biomed_jax import validation as v
from biomed_jax.compilation import jit
from biomed_jax.extras import require
from biomed_jax.pipelines._common import (
    DECODERS,
    DEFAULT_ENCODER,
    ENCODERS,
    Model,
    as_list,
    check_max_length,
    check_token_ids,
    pad_batch,
    resolve_model,
)


@jit(static_argnames=("module",))
def _attentions(module: nn.Module, params, ids, mask):
    """[L, N, T, S] float32 attention probabilities of the one row."""
    out = module.apply({"params": params}, ids, mask, output_attentions=True)
    return jnp.stack(out.attentions)[:, 0].astype(jnp.float32)


def _select(chosen: int | Sequence[int] | None, count: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(count))
    if not isinstance(chosen, (int, np.integer, list, tuple)) or isinstance(chosen, bool):
        raise TypeError(f"{what}s must be an int or a list of ints, got {chosen!r}")
    picked = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]
    if not picked:
        raise ValueError(f"{what}s is empty")
    for k in picked:
        if not -count <= v.integer(f"{what}s", k) < count:
            raise ValueError(f"{what} {k} out of range: the model has {count} {what}s")
    return [int(k) % count for k in picked]


def attention(
    text: str,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    model: Model = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """{"tokens": [T] strings, "attentions": [L, N, T, T] float32, "layers", "heads"}.

    attentions[l, n, i, j] is how much token i attends to token j in the l-th chosen layer's n-th
    chosen head (None: all). Texts over max_length tokens are truncated with a warning.
    `model`: a BERT encoder or BioGPT (a decoder's maps are causal: zero above the diagonal).
    """
    (text,), _ = as_list(text, "text")
    pretrained = resolve_model(
        model, DEFAULT_ENCODER, takes=ENCODERS + DECODERS, pipeline="attention"
    )
    config, tok = pretrained.config, pretrained.tokenizer
    max_length = check_max_length(max_length, config)
    layer_ids = _select(layers, config.num_hidden_layers, "layer")
    head_ids = _select(heads, config.num_attention_heads, "head")
    ids = tok(text)["input_ids"]
    if len(ids) > max_length:
        warnings.warn(
            f"text truncated from {len(ids)} to max_length={max_length} tokens", stacklevel=2
        )
        ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
    check_token_ids(pretrained, [ids], [text])
    batch, mask = pad_batch([ids], max_length, 1, tok.pad_token_id)
    maps = np.asarray(_attentions(pretrained.module, pretrained.params, batch, mask))
    n = len(ids)
    return {
        "tokens": tok.convert_ids_to_tokens(ids),
        "attentions": maps[np.ix_(layer_ids, head_ids)][:, :, :n, :n],
        "layers": layer_ids,
        "heads": head_ids,
    }


def plot_attention(result: dict[str, Any], path: str | Path) -> Path:
    """Draw `attention(...)`'s maps as a grid (rows: layers, columns: heads) into an image file."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt

    from biomed_jax.files import atomic_path

    maps, tokens = result["attentions"], result["tokens"]
    rows, cols = maps.shape[:2]
    cell = max(1.5, 0.18 * len(tokens))
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(maps[r, c], vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"layer {result['layers'][r]} head {result['heads'][c]}", fontsize=8)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
