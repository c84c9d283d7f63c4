"""What every pipeline shares: the `model=` argument, length-bucketed batches, padding.

Batching sorts texts by token count, cuts the sorted list into batches and pads each batch to a
bucket length (a power of two, at least 8, at most max_length) and a bucket row count (a power of
two, at most batch_size), so a few shapes cover any input and few compilations happen. Callers
put results back in input order with the returned indices. `bucketed_batches` (embed) pads
less: two length buckets per octave, and batch cuts chosen for the least padding.

Data parallel: `data_mesh` makes a ("data", "model"=1) mesh of this process's devices (all of
them by default), `place` puts the params on it (replicated, or by a rule set) and `run_split`
pads a batch's rows up to a multiple of the batch shards, splits them over the mesh and brings
the real rows' outputs back to host. With one local device nothing changes: no mesh, no padding.
Each process of a multi-host job runs its own pipeline on its own devices (its own documents).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from biomed_jax import sharding as shd
from biomed_jax import validation as v
from biomed_jax.loading import ARCHITECTURES, MissingTokenizer, Pretrained, from_pretrained

DEFAULT_ENCODER = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
DEFAULT_DECODER = "microsoft/biogpt"
MIN_BUCKET = 8

Model = str | Path | Pretrained | None
Devices = Mesh | Sequence[jax.Device] | None


# The module classes each kind of pipeline takes (their architecture names, as in config.json).
ENCODERS = (
    "BertModel",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
)
DECODERS = ("BioGptForCausalLM",)


@functools.lru_cache(maxsize=4)
def _load(name: str, architecture: str | None) -> Pretrained:
    return from_pretrained(name, architecture=architecture)


def resolve_model(
    model: Model,
    default: str,
    architecture: str | None = None,
    *,
    takes: Sequence[str] = (),
    pipeline: str = "this pipeline",
) -> Pretrained:
    """A `Pretrained` from a hub id, a path (loaded once, then kept) or a `Pretrained` itself.

    `architecture`: the module class to load a checkpoint as; `takes`: the module classes the
    pipeline fits (default: `architecture`), any other is refused with an error listing them.
    """
    if isinstance(model, Pretrained):
        pretrained = model
    elif model is None or isinstance(model, (str, Path)):
        pretrained = _load(str(model or default), architecture)
    else:
        raise TypeError(
            f"model must be a hub id, a path or a Pretrained, got {type(model).__name__}"
        )
    got = type(pretrained.module).__name__
    takes = takes or ((architecture,) if architecture else ())
    if takes and got not in takes:
        hint = ""
        if architecture and type(pretrained.config) is ARCHITECTURES[architecture].config:
            hint = f"; load it with from_pretrained(..., architecture={architecture!r})"
        raise ValueError(
            f"{pipeline} needs a {' or '.join(takes)} model, got a {got} "
            f"({pretrained.path or 'in memory'}){hint}"
        )
    if isinstance(pretrained.tokenizer, MissingTokenizer):
        raise pretrained.tokenizer.error()
    return pretrained


def as_list(texts: str | Sequence[str], name: str = "texts") -> tuple[list[str], bool]:
    """(list of texts, whether a single string was given); rejects anything but str."""
    single = isinstance(texts, str)
    if not single and not isinstance(texts, Iterable):
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
    items = [texts] if single else list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    if not items:
        raise ValueError(f"{name} is empty")
    return items, single


def check_token_ids(
    pretrained: Pretrained, rows: Sequence[Sequence[int]], texts: Sequence[str], name: str = "text"
) -> None:
    """Refuse token ids past the model's embeddings before they reach it (under jit they would
    embed to NaN): an error naming the first text that has one, or the special token (padding
    fills every batch). Costs nothing when every id of the tokenizer fits, as it should."""
    size, tok = pretrained.config.vocab_size, pretrained.tokenizer
    if max(tok.ids_to_tokens) < size:
        return
    where = f"the model ({pretrained.path or 'in memory'}) has {size} token embeddings (vocab_size)"
    for token, i in zip(tok.all_special_tokens, tok.all_special_ids):
        if i >= size:
            raise ValueError(f"the tokenizer's {token!r} has id {i}, but {where}")
    for k, (ids, text) in enumerate(zip(rows, texts)):
        bad = next((i for i in ids if not 0 <= i < size), None)
        if bad is not None:
            raise ValueError(
                f"{name} {k} ({text[:60]!r}): token {tok.convert_ids_to_tokens(bad)!r} has id "
                f"{bad}, but {where}: the tokenizer does not belong to this model"
            )


def check_max_length(max_length: int | None, config: Any) -> int:
    """`max_length`, checked against the model's positions; None: 512 or the model's limit if less."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if max_length is None:
        return min(512, limit)
    max_length = v.integer("max_length", max_length, low=1)
    if max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions")
    return max_length


def bucket(n: int, smallest: int, largest: int) -> int:
    """The power of two >= n (and >= smallest), capped at largest."""
    return min(largest, max(smallest, 1 << (max(n, 1) - 1).bit_length()))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Indices into `lengths`, sorted by length (stable), in chunks of `batch_size`."""
    batch_size = v.integer("batch_size", batch_size, low=1)
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def length_bucket(n: int, largest: int) -> int:
    """Two buckets per octave: 8, 12, 16, 24, 32, 48, ... (at least MIN_BUCKET), capped at largest."""
    power = 1 << (max(n, 1) - 1).bit_length()
    three_quarters = power * 3 // 4
    return min(largest, max(MIN_BUCKET, three_quarters if n <= three_quarters else power))


# What a batch costs beyond its padded tokens, in tokens: a dispatch, and a compilation the
# first time its shape occurs. Keeps `bucketed_batches` from cutting a few rows off a batch to
# save less padding than that.
BATCH_COST = 1024


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, max_length: int
) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """(indices into `lengths`, padded shape (rows, length)) per batch, shortest first.

    The texts sorted by length (stable) are cut into runs of at most `batch_size`, each padded
    to a power-of-two row count and a `length_bucket` (two per octave), where the cuts minimise
    the padded tokens plus BATCH_COST per batch (dynamic programming over the sorted lengths).
    Fixed chunks of `batch_size` left a few hundred texts (one Spark partition of abstracts)
    padded 1.2x more than the whole corpus at once; the two length buckets per octave pad about
    15 % less than powers of two on PubMed titles and abstracts.
    """
    batch_size = v.integer("batch_size", batch_size, low=1)
    order = np.argsort(np.asarray(lengths), kind="stable")
    widths = [length_bucket(int(lengths[i]), max_length) for i in order]
    count = len(order)
    cost = [0] + [math.inf] * count  # cost[j]: best cut of the first j sorted texts
    start = [0] * (count + 1)  # start[j]: where the last batch of that cut begins
    for end in range(1, count + 1):
        width = widths[end - 1]  # the batch's longest text is its last
        for first in range(max(0, end - batch_size), end):
            total = cost[first] + bucket(end - first, 1, batch_size) * width + BATCH_COST
            if total < cost[end]:
                cost[end], start[end] = total, first
    cuts, end = [], count
    while end:
        cuts.append((start[end], end))
        end = start[end]
    for first, end in reversed(cuts):
        yield order[first:end], (bucket(end - first, 1, batch_size), widths[end - 1])


def pad_to(
    rows: Sequence[Sequence[int]], shape: tuple[int, int], pad_id: int, left: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask (int32) of `shape` [B, T]: the rows (right-padded, or left), then padding."""
    ids = np.full(shape, pad_id, np.int32)
    mask = np.zeros(shape, np.int32)
    length = shape[1]
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def pad_batch(
    rows: Sequence[Sequence[int]], max_length: int, batch_size: int, pad_id: int, left: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """ids [B, T] and mask [B, T] (int32), B and T rounded up to buckets; extra rows are padding."""
    length = bucket(max(len(r) for r in rows), MIN_BUCKET, max_length)
    return pad_to(rows, (bucket(len(rows), 1, batch_size), length), pad_id, left)


def data_mesh(devices: Devices = None) -> Mesh | None:
    """The mesh a pipeline splits its batches over: `devices` itself if a Mesh, else a
    ("data", "model"=1) mesh of `devices` (default: all of this process's devices; None if that
    is a single device, which runs as is)."""
    if isinstance(devices, Mesh):
        mesh = devices
    else:
        chosen = list(jax.local_devices() if devices is None else devices)
        if not chosen:
            raise ValueError("devices is empty")
        if devices is None and len(chosen) == 1:
            return None
        mesh = shd.make_mesh(model=1, devices=chosen)
    foreign = [d for d in mesh.devices.flat if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(
            f"pipelines run on this process's devices only (process {jax.process_index()}); "
            f"the mesh has {len(foreign)} devices of other processes"
        )
    return mesh


def pipeline_rules(rules: shd.Rules | str | None) -> shd.Rules:
    """A pipeline's rule set: data parallel (params replicated) unless one is given."""
    return shd.DP if rules is None else shd.resolve_rules(rules)


@functools.lru_cache(maxsize=8)
def _param_shardings(module: nn.Module, mesh: Mesh, rules: shd.Rules) -> Any:
    return shd.param_shardings(module, mesh, rules)


def place(
    pretrained: Pretrained, mesh: Mesh | None, rules: shd.Rules | str | None = None
) -> Pretrained:
    """`pretrained` with its params on `mesh` by `rules` (default: replicated); as is without a
    mesh. Params already placed so are not copied again."""
    rules = pipeline_rules(rules)
    if mesh is None:
        return pretrained
    shardings = _param_shardings(pretrained.module, mesh, rules)
    return dataclasses.replace(pretrained, params=jax.device_put(pretrained.params, shardings))


def run_split(
    fn: Callable[..., Any],
    params: Any,
    *arrays: np.ndarray,
    mesh: Mesh | None,
    rules: shd.Rules | str | None = None,
) -> Any:
    """fn(params, *arrays) as host numpy arrays. With a mesh, the arrays' rows (all [B, ...])
    are padded up to a multiple of the batch shards with copies of the last row, split over the
    mesh's batch axes, and only the B real rows of every output come back."""
    if mesh is None:
        return jax.device_get(fn(params, *arrays))
    rules = pipeline_rules(rules)
    rows = arrays[0].shape[0]
    ways = math.prod(mesh.shape[axis] for axis in shd.batch_axes(rules))
    extra = -rows % ways
    padded = [np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in arrays]
    with shd.use(mesh, rules):
        out = fn(params, *shd.shard_batch(padded, mesh, rules))
    return jax.tree.map(lambda x: np.asarray(x)[:rows], out)
