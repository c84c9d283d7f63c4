"""Embeddings: pooled or per-token hidden states of any subset of the layers, in input order.

Axes: N texts, T tokens, L selected hidden states, D model dim. Hidden state 0 is the embedding
output, k the output of layer k (HF's `hidden_states`). Texts longer than max_length are truncated
with a warning, or, with `stride`, covered by overlapping windows of max_length tokens that share
`stride` tokens: each token then takes its vector from the window where it has the most context,
"cls" averages the windows' first tokens and "mean" averages the merged token vectors.
Each batch is split over all local devices (see `_common.run_split`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from biomed_jax import sharding as shd
from biomed_jax import validation as v
from biomed_jax.compilation import jit
from biomed_jax.loading import Pretrained
from biomed_jax.pipelines._common import (
    DEFAULT_ENCODER,
    ENCODERS,
    Devices,
    Model,
    as_list,
    bucketed_batches,
    check_max_length,
    check_token_ids,
    data_mesh,
    pad_to,
    place,
    resolve_model,
    run_split,
)

POOLINGS = ("cls", "mean", "none")


@dataclasses.dataclass
class EmbedStats:
    """What `embed` calls did, summed over the calls given it (`embed(..., stats=...)`): texts,
    those truncated to max_length (without stride), real tokens of the rows computed (windows,
    special tokens included) and the tokens computed with padding (rows x length per batch)."""

    texts: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0


@jit(static_argnames=("module", "layers", "pooling"))
def _hidden(module: nn.Module, params, ids, mask, layers: tuple[int, ...], pooling: str):
    """[B, L, D] pooled ("cls", "mean") or [B, T, L, D] ("none") float32 hidden states."""
    out = module.apply({"params": params}, ids, mask, output_hidden_states=True)
    h = jnp.stack([out.hidden_states[k] for k in layers], axis=2).astype(jnp.float32)
    if pooling == "cls":
        return h[:, 0]
    if pooling == "mean":
        weights = mask.astype(jnp.float32)[:, :, None, None]  # [B, T, 1, 1]
        return (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    return h


def _layer_indices(layers: int | Sequence[int], count: int) -> tuple[tuple[int, ...], bool]:
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    if not single and not isinstance(layers, (list, tuple, np.ndarray)):
        raise TypeError(f"layers must be an int or a list of ints, got {layers!r}")
    chosen = [v.integer("layers", k) for k in ([layers] if single else layers)]
    if not chosen:
        raise ValueError("layers is empty")
    for k in chosen:
        if not -count <= k < count:
            raise ValueError(f"layer {k} out of range: the model has {count} hidden states")
    return tuple(k % count for k in chosen), single


def _special_tokens(tok) -> tuple[list[int], list[int]]:
    """The special-token ids the tokenizer puts before and after a single text."""
    template = tok._template(False)
    at = next(i for i, (piece, _) in enumerate(template) if piece == "A")
    if any(type_id != 0 for _, type_id in template):
        raise ValueError("embed supports single-text templates with token type 0 only")
    return [p for p, _ in template[:at]], [p for p, _ in template[at + 1 :]]


def _windows(n: int, capacity: int, stride: int | None) -> list[tuple[int, int]]:
    if n <= capacity or stride is None:
        return [(0, min(n, capacity))]
    step = capacity - stride
    starts = range(0, max(n - stride, 1), step)
    return [(s, min(s + capacity, n)) for s in starts]


def _best_window(windows: list[tuple[int, int]], n: int) -> np.ndarray:
    """For each of n content tokens, the window where it is farthest from both window edges."""
    best = np.zeros(n, np.int64)
    score = np.full(n, -1)
    for w, (s, e) in enumerate(windows):
        j = np.arange(s, e)
        context = np.minimum(j - s, e - 1 - j)
        better = context > score[s:e]
        best[s:e][better] = w
        score[s:e][better] = context[better]
    return best


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
    """`embed`'s settings, checked against the model: what `embed_file` validates up front."""

    layers: tuple[int, ...]  # hidden-state indices in [0, num_hidden_layers]
    single_layer: bool
    pooling: str
    batch_size: int
    max_length: int
    stride: int | None
    prefix: tuple[int, ...]  # special tokens before / after each window's content
    suffix: tuple[int, ...]

    @property
    def capacity(self) -> int:
        """Content tokens per window."""
        return self.max_length - len(self.prefix) - len(self.suffix)


def embed_options(
    pretrained: Pretrained,
    layers: int | Sequence[int] = -1,
    pooling: str = "cls",
    batch_size: int = 32,
    max_length: int | None = None,
    stride: int | None = None,
) -> EmbedOptions:
    """`embed`'s arguments checked (types, ranges, the model's positions and layers)."""
    v.choice("pooling", pooling, POOLINGS)
    config, tok = pretrained.config, pretrained.tokenizer
    max_length = check_max_length(max_length, config)
    chosen, single_layer = _layer_indices(layers, config.num_hidden_layers + 1)
    prefix, suffix = _special_tokens(tok)
    capacity = max_length - len(prefix) - len(suffix)
    if capacity < 1:
        raise ValueError(f"max_length={max_length} leaves no room beside the special tokens")
    if stride is not None and not 0 <= v.integer("stride", stride) < capacity:
        raise ValueError(f"stride must be in 0..{capacity - 1} for max_length={max_length}")
    return EmbedOptions(
        chosen,
        single_layer,
        pooling,
        v.integer("batch_size", batch_size, low=1),
        max_length,
        stride,
        tuple(prefix),
        tuple(suffix),
    )


def embed(
    texts: str | Sequence[str],
    *,
    model: Model = None,
    layers: int | Sequence[int] = -1,
    pooling: str = "cls",
    batch_size: int = 32,
    max_length: int | None = None,
    stride: int | None = None,
    devices: Devices = None,
    rules: shd.Rules | str | None = None,
    stats: EmbedStats | None = None,
) -> Any:
    """Embeddings of `texts` as numpy float32, in input order.

    model: a BERT encoder (`ENCODERS`). A decoder such as BioGPT is refused: under causal
    attention its first token sees only itself, so "cls" would give every text one vector.
    max_length: tokens per row (default: 512, or the model's positions if fewer).
    devices: the devices each batch of `batch_size` rows is split over (default: all of this
    process's), or a Mesh of them; rules: how params are placed there (default: replicated).
    pooling "cls"/"mean": an array [N, D] for an int `layers`, [N, L, D] for a list of layers
    (no N axis for a single string). pooling "none": per text a dict with "embeddings" ([T, D] or
    [T, L, D], special tokens included), "offsets" ([T, 2] character spans, (0, 0) for special
    tokens) and "tokens". `stats`: an `EmbedStats` this call adds its counts to.
    Batches: `bucketed_batches` (sorted by length, cut for the least padding, two length
    buckets per octave).
    """
    items, single_text = as_list(texts)
    mesh = data_mesh(devices)
    model = resolve_model(model, DEFAULT_ENCODER, takes=ENCODERS, pipeline="embed")
    options = embed_options(model, layers, pooling, batch_size, max_length, stride)
    pretrained = place(model, mesh, rules)
    tok = pretrained.tokenizer
    chosen, single_layer = options.layers, options.single_layer
    batch_size, max_length, stride = options.batch_size, options.max_length, options.stride
    prefix, suffix, capacity = list(options.prefix), list(options.suffix), options.capacity

    encoded = tok(items, add_special_tokens=False, return_offsets_mapping=True)
    content, offsets = encoded["input_ids"], encoded["offset_mapping"]
    check_token_ids(pretrained, content, items)
    windows = [_windows(len(ids), capacity, stride) for ids in content]
    truncated = sum(len(ids) > capacity for ids in content) if stride is None else 0
    if stats is not None:
        stats.texts += len(items)
        stats.truncated += truncated
    if truncated:
        warnings.warn(
            f"{truncated} of {len(items)} texts are longer than max_length={max_length} tokens "
            "and were truncated; pass stride= to embed whole texts in overlapping windows",
            stacklevel=2,
        )

    # One row per window; rows of texts that need token vectors go through the "none" path.
    per_token = [pooling == "none" or (pooling == "mean" and len(w) > 1) for w in windows]
    rows = [(i, s, e) for i, w in enumerate(windows) for s, e in w]
    out: dict[tuple[int, int], np.ndarray] = {}
    for mode in {("none" if per_token[i] else pooling) for i, _, _ in rows}:
        group = [r for r in rows if ("none" if per_token[r[0]] else pooling) == mode]
        ids_of = [prefix + content[i][s:e] + suffix for i, s, e in group]
        hidden = functools.partial(_hidden, pretrained.module, layers=chosen, pooling=mode)
        for index, shape in bucketed_batches([len(x) for x in ids_of], batch_size, max_length):
            batch = [ids_of[k] for k in index]
            ids, mask = pad_to(batch, shape, tok.pad_token_id)
            if stats is not None:
                stats.tokens += sum(map(len, batch))
                stats.padded_tokens += ids.size
            h = run_split(hidden, pretrained.params, ids, mask, mesh=mesh, rules=rules)
            for row, k in enumerate(index):
                i, s, _ = group[k]
                out[i, s] = h[row, : len(batch[row])] if mode == "none" else h[row]

    results = []
    for i, w in enumerate(windows):
        if not per_token[i]:
            vector = np.mean([out[i, s] for s, _ in w], axis=0)  # "cls": windows' first tokens
            results.append(vector[0] if single_layer else vector)
            continue
        n = w[-1][1]
        best = _best_window(w, n)
        pieces = [out[i, w[0][0]][: len(prefix)]]
        pieces += [out[i, w[b][0]][len(prefix) + j - w[b][0]][None] for j, b in enumerate(best)]
        pieces.append(out[i, w[-1][0]][len(out[i, w[-1][0]]) - len(suffix) :])
        vectors = np.concatenate(pieces)  # [T, L, D]
        if single_layer:
            vectors = vectors[:, 0]
        if pooling == "mean":
            results.append(vectors.mean(0))
            continue
        spans = [(0, 0)] * len(prefix) + [tuple(o) for o in offsets[i][:n]] + [(0, 0)] * len(suffix)
        results.append(
            {
                "embeddings": vectors,
                "offsets": np.asarray(spans, np.int64).reshape(-1, 2),
                "tokens": tok.convert_ids_to_tokens(prefix + content[i][:n] + suffix),
            }
        )
    if pooling == "none":
        return results[0] if single_text else results
    return results[0] if single_text else np.stack(results)
