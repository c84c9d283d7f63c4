"""BioGPT conformance: our Flax decoder against `transformers` on the same checkpoint and batch.

How the reference is called, and why:
- Seeded random HF models (`torch.manual_seed`) saved with `save_pretrained` to a temp directory
  and loaded through our real loader (`biomed_jax.from_pretrained`), so conversion is tested too.
  `attn_implementation="eager"`: the default sdpa path returns no attention maps.
- Positions: transformers v5's BioGPT forward uses positions 0..T-1 when `position_ids` is not
  passed, even for a left-padded batch (v4 derived them from the mask; v5 `generate` derives them
  too). Our model derives them from the mask (`cumsum(mask) * mask - 1`, offset 2), so the
  reference is called with exactly those `position_ids`.
- Outputs are compared on non-padding positions only (padding rows carry no meaning, and HF's
  attention implementations differ there), for right- and left-padded batches. Each batch has a
  fully padded row, checked for finite outputs and not compared. Padding ids are `pad_token_id`,
  so the sequence classifier's last-non-pad pooling (HF reads ids, not the mask) sees the same
  rows as the mask.
- Cached path (causal LM): a prefill of the first half, then one token per jitted step, into a
  cache with spare slots; every hidden state and the logits at every valid position against the
  reference's full forward pass, and the step must compile once.
- Every output is judged against the same reference run in float64 (`model.double()`): ours
  within 3x transformers' own error against it in the same dtype (`conformance.report.judge`).
  bfloat16: our model computes in bfloat16 (float32 params; bfloat16 cache), transformers runs
  `model.to(torch.bfloat16)`. The cached path is judged against the float64 full forward pass,
  with transformers' full-forward error as the yardstick.
- 347M, float32, measured (CPU, jax 0.10.2, torch 2.13, 4x24 tokens): transformers' float32 is up
  to 1.0e-5 from float64 in the middle layers (|h| up to 12.5). Ours at the "fast" policy (XLA:CPU's
  plain float32 matmuls) up to 1.6e-5, worst ratio 1.75 on hidden states, 1.92 on attention maps;
  at the "exact" policy (float32 matmuls summed in float64, `nn.layers.dense_float64_sum`) 3.3e-6,
  worst ratio 0.50. docs/numerics.md has the table.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from conformance.bert import compare_outputs, fused_rows, run_references
from conformance.report import Row, compare

# Absolute bounds (never relaxed to make a run pass): on our error against float64 where
# transformers cannot run in the dtype, and on our cached path against our full forward pass.
FP32_TOL = {"hidden": 1e-5, "attention": 1e-5, "logits": 1e-4}
# bfloat16 compute (float32 params, softmax and LayerNorm statistics). Measured worst cases
# against float32 (347M, 24 layers, |h| up to 12.5): hidden 0.225 (cached path 0.35),
# attention 0.0071, logits 0.048 (cached 0.055); bounds are about 2-3x those.
BF16_TOL = {"hidden": 0.75, "attention": 0.02, "logits": 0.15}

ALL_ARCHITECTURES = (
    "BioGptModel",
    "BioGptForCausalLM",
    "BioGptForSequenceClassification",
    "BioGptForTokenClassification",
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    hf_config: dict
    architectures: tuple[str, ...]


# microsoft/biogpt (347M), spelled out.
FULL = dict(
    vocab_size=42384,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    max_position_embeddings=1024,
    scale_embedding=True,
)
SMALL_CASES = (
    Case(
        "odd-5heads-noscale",
        dict(
            vocab_size=1001,
            hidden_size=40,
            num_hidden_layers=3,
            num_attention_heads=5,
            intermediate_size=72,
            hidden_act="gelu",
            max_position_embeddings=64,
            scale_embedding=False,
            num_labels=3,
        ),
        ALL_ARCHITECTURES,
    ),
    Case(
        "odd-3heads-scaled-gelu_new",
        dict(
            vocab_size=997,
            hidden_size=36,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=50,
            hidden_act="gelu_new",
            max_position_embeddings=40,
            scale_embedding=True,
        ),
        ("BioGptForCausalLM",),
    ),
)
FULL_CASE = Case("biogpt-347m", FULL, ("BioGptForCausalLM",))
PAD_ID = 1  # HF's and our BioGptConfig default


def make_batch(
    vocab_size: int, side: str, batch: int = 4, length: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Rows: full, 5 padding slots, half padding, all padding; padding on `side` ("left"/"right")."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(PAD_ID + 1, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for row, pads in ((1, 5), (2, length // 2), (3, length)):
        if side == "left":
            mask[row, :pads] = 0
        else:
            mask[row, length - pads :] = 0
    ids[mask == 0] = PAD_ID
    return {"input_ids": ids, "attention_mask": mask}


def mask_positions(mask: np.ndarray) -> np.ndarray:
    """The positions our model derives from the mask (HF v4's formula), passed to the reference."""
    return np.cumsum(mask, axis=1) * mask - 1


def _reference(arch: str, hf_config: dict, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BioGptConfig(**hf_config, attn_implementation="eager")
    return getattr(transformers, arch)(config).eval()


def _run_reference(model, batch: dict[str, np.ndarray]):
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
            position_ids=torch.tensor(mask_positions(batch["attention_mask"]), dtype=torch.long),
            output_hidden_states=True,
            output_attentions=True,
        )


def check_cached(
    suite: str, model, batch: dict[str, np.ndarray], refs, full_logits, dtype, tol
) -> Iterator[Row]:
    """Prefill half the batch, then one jitted step per token; against the full forward passes."""
    import types

    import jax
    import jax.numpy as jnp

    ids, mask = batch["input_ids"], batch["attention_mask"]
    batch_size, length = ids.shape
    slots = length + 3  # spare, never-written slots stay masked
    cache_mask = np.zeros((batch_size, slots), np.int32)
    cache_mask[:, :length] = mask
    cache = model.config.init_cache(batch_size, slots, model.module.dtype)
    step = jax.jit(
        lambda params, ids, cache: model.module.apply(
            {"params": params}, ids, jnp.asarray(cache_mask), cache=cache, output_hidden_states=True
        )
    )
    prefill = length // 2
    chunks = [(0, prefill)] + [(t, t + 1) for t in range(prefill, length)]
    outs = []
    for start, stop in chunks:
        out = step(model.params, jnp.asarray(ids[:, start:stop]), cache)
        cache = out.cache
        outs.append(out)
    layers = len(outs[0].hidden_states)
    cached = types.SimpleNamespace(
        hidden_states=[
            np.concatenate([np.asarray(o.hidden_states[i]) for o in outs], axis=1)
            for i in range(layers)
        ],
        attentions=None,
        logits=np.concatenate([np.asarray(o.logits) for o in outs], axis=1),
    )
    names = [f"hidden_states[{i}]" for i in range(layers)] + ["logits"]
    yield from compare_outputs(suite, cached, refs, batch, dtype, tol, "cached ", names)
    yield compare(
        suite,
        "cached logits vs our full forward",
        cached.logits,
        full_logits,
        tol["logits"],
        mask.astype(bool),
    )
    compiles = step._cache_size()
    yield Row(
        suite,
        "jit compilations (prefill + decode step)",
        (),
        float(compiles),
        2.0,
        compiles == 2,
        note=f"{len(chunks)} calls",
    )
    yield Row(
        suite,
        "cache index after the last step",
        (),
        float(abs(int(cache.index) - length)),
        0.0,
        int(cache.index) == length,
    )


def check_architecture(
    case_name: str,
    arch: str,
    hf_config: dict,
    dtypes: tuple[str, ...],
    sides: tuple[str, ...] = ("right", "left"),
    seed: int = 0,
    length: int = 20,
    cached: bool = True,
    policy: str = "fast",
) -> list[Row]:
    """One seeded HF model through our loader at numerics `policy`: full forward per padding side
    and dtype, then the cached path for causal LMs; every output judged against float64."""
    import jax
    import jax.numpy as jnp

    from biomed_jax import from_pretrained

    ref_model = _reference(arch, hf_config, seed)
    length = min(length, hf_config["max_position_embeddings"])
    batches = {side: make_batch(hf_config["vocab_size"], side, length=length) for side in sides}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_model.save_pretrained(tmp)
        found = run_references(ref_model, list(batches.values()), dtypes, _run_reference)
        refs = dict(zip(batches, found, strict=True))
        del ref_model
        model = from_pretrained(tmp, policy=policy)
    params = jax.device_put(model.params)
    for dtype in dtypes:
        module = model.module.clone(dtype=jnp.dtype(dtype))
        model = dataclasses.replace(model, module=module, params=params)
        forward = jax.jit(
            lambda p, ids, mask, module=module: module.apply(
                {"params": p}, ids, mask, output_hidden_states=True, output_attentions=True
            )
        )
        without_maps = jax.jit(
            lambda p, ids, mask, module=module: module.apply(
                {"params": p}, ids, mask, output_hidden_states=True
            )
        )
        tol = FP32_TOL if dtype == "float32" else BF16_TOL
        for side, batch in batches.items():
            suite = f"{case_name}/{arch}/{side}-pad/{dtype}"
            inputs = (jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
            ours = forward(params, *inputs)
            rows += compare_outputs(suite, ours, refs[side], batch, dtype, tol)
            if module.policy.attention != "xla":
                rows += fused_rows(
                    suite, without_maps(params, *inputs), refs[side], batch, dtype, tol
                )
            if cached and arch == "BioGptForCausalLM":
                full_logits = np.asarray(ours.logits)
                rows += check_cached(suite, model, batch, refs[side], full_logits, dtype, tol)
    return rows


def cases(
    full_size: bool = True, dtypes: tuple[str, ...] = ("float32", "bfloat16")
) -> list[tuple[str, Callable[[], list[Row]]]]:
    """All BioGPT checks: small odd configs, and (full_size) the 347M configuration."""
    out = [
        (
            f"{case.name}/{arch}",
            functools.partial(check_architecture, case.name, arch, case.hf_config, dtypes),
        )
        for case in SMALL_CASES
        for arch in case.architectures
    ]
    if full_size:
        out += [
            (
                f"{FULL_CASE.name}/{arch}",
                functools.partial(
                    check_architecture, FULL_CASE.name, arch, FULL_CASE.hf_config, dtypes, length=24
                ),
            )
            for arch in FULL_CASE.architectures
        ]
    return out
