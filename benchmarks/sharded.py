"""Sharded forward throughput: one device against meshes of 8, and bf16 on one GPU when present.

    python benchmarks/sharded.py [--layers 4] [--batch 8] [--length 128] [--repeats 5] [--gpu-only]
    python benchmarks/sharded.py --quick      # smoke test: 1 layer, 8x16, 2 repeats

Models run at the library's defaults (the "fast" numerics policy, printed in the JSON).

CPU section (always): 8 host CPU devices are forced (XLA_FLAGS), and a BERT-base-architecture
encoder (D=768, 12 heads, F=3072, vocab 30522; `--layers` of them, random seeded weights, fp32) runs
on one device and on the meshes (8,1) DP, (8,1) FSDP, (4,2) FSDP+TP, (2,4) TP, (1,8) TP, timed
interleaved (one call of each per round). The forced devices share the same cores, so this shows
the partitioning overhead and that every layout computes the same thing (max abs difference of
the last hidden state against one device), not a speed-up.
GPU section (when JAX sees a GPU): BERT-base (12 layers) and BioGPT-347M (24 layers) forward on
one GPU in float32 and bfloat16 (bf16 matmuls, fp32 master weights), interleaved; with several
local GPUs, also data parallel over all of them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import BertConfig, BertModel, BioGptConfig, BioGptModel, numerics
from biomed_jax import sharding as shd
from biomed_jax.files import atomic_write_text
from biomed_jax.trees import flatten, unflatten

CPU_LAYOUTS = (
    ((8, 1), "dp"),
    ((8, 1), "fsdp"),
    ((4, 2), "fsdp_tp"),
    ((2, 4), "tp"),
    ((1, 8), "tp"),
)


def random_params(module, seed=0):
    rng = np.random.default_rng(seed)
    flat = flatten(nn.unbox(shd.abstract_params(module)))
    return unflatten(
        {
            k: rng.normal(1.0 if k.endswith("scale") else 0.0, 0.02, v.shape).astype(v.dtype)
            for k, v in flat.items()
        }
    )


def _inputs(config, batch, length, seed=0):
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length), np.int32)
    return ids, np.ones((batch, length), np.int32)


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def interleaved(cases: dict[str, tuple], repeats: int) -> dict[str, dict]:
    """cases: name -> (fn, args). First call compiles; then `repeats` rounds, one call of each."""
    result, times, outs = {}, {name: [] for name in cases}, {}
    for name, (fn, args) in cases.items():
        compile_s, outs[name] = _timed(fn, *args)
        result[name] = {"first_call_s": round(compile_s, 3)}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            times[name].append(_timed(fn, *args)[0])
    for name in cases:
        result[name]["median_ms"] = round(1e3 * statistics.median(times[name]), 2)
    return result, outs


def cpu_section(args) -> dict:
    config = BertConfig(num_hidden_layers=args.layers)
    module = BertModel(config, add_pooling_layer=False)
    params = random_params(module)
    ids, mask = _inputs(config, args.batch, args.length)
    cpu = jax.devices("cpu")
    single = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).last_hidden_state)
    one = jax.device_put(params, cpu[0])
    cases = {"1 device": (single, (one, jax.device_put(ids, cpu[0]), jax.device_put(mask, cpu[0])))}
    memory = {}
    for shape, rules in CPU_LAYOUTS:
        mesh = shd.make_mesh(*shape, devices=cpu)
        placed = shd.shard_params(params, mesh, rules, module=module)
        forward = shd.jit_forward(module, mesh, rules)
        name = f"mesh {shape[0]}x{shape[1]} {rules}"
        batch = shd.shard_batch((ids, mask), mesh, rules)
        cases[name] = (lambda f: lambda *a: f(*a).last_hidden_state)(forward), (placed, *batch)
        memory[name] = max(shd.bytes_per_device(placed).values())
    timings, outs = interleaved(cases, args.repeats)
    tokens = args.batch * args.length
    base = timings["1 device"]["median_ms"]
    total_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    for name, row in timings.items():
        row["tokens_per_s"] = round(tokens / row["median_ms"] * 1e3, 1)
        row["speedup_vs_1_device"] = round(base / row["median_ms"], 3)
        row["max_abs_diff_vs_1_device"] = float(
            np.abs(np.asarray(outs[name]) - outs["1 device"]).max()
        )
        row["param_bytes_per_device"] = memory.get(name, total_bytes)
    return {
        "model": f"BERT-base architecture, {args.layers} layers, fp32",
        **numerics.resolve().describe(),
        "shape": [args.batch, args.length],
        "host_cpus": os.cpu_count(),
        "total_param_bytes": total_bytes,
        "results": timings,
    }


def gpu_section(args) -> dict:
    gpus = jax.devices("gpu")
    out = {"device": gpus[0].device_kind, "local_gpus": len(gpus), "models": {}}
    for label, config, module_cls, batch, length in (
        ("bert-base", BertConfig(), BertModel, 32, 128),
        ("biogpt-347m", BioGptConfig(), BioGptModel, 8, 512),
    ):
        cases = {}
        ids, mask = _inputs(config, batch, length)
        params = None
        for dtype in ("float32", "bfloat16"):
            module = module_cls(config, dtype=jnp.dtype(dtype))
            params = random_params(module) if params is None else params
            on_gpu = jax.device_put(params, gpus[0])
            fn = jax.jit(
                lambda p, i, m, mod=module: mod.apply({"params": p}, i, m).last_hidden_state
            )
            cases[f"1 gpu {dtype}"] = (
                fn,
                (on_gpu, jax.device_put(ids, gpus[0]), jax.device_put(mask, gpus[0])),
            )
        if len(gpus) > 1:
            module = module_cls(config, dtype=jnp.bfloat16)
            mesh = shd.make_mesh(len(gpus), 1, devices=gpus)
            dp_ids, dp_mask = (np.tile(x, (len(gpus), 1)) for x in (ids, mask))
            forward = shd.jit_forward(module, mesh, "dp")
            cases[f"{len(gpus)} gpus dp bfloat16 (batch x{len(gpus)})"] = (
                lambda *a, f=forward: f(*a).last_hidden_state,
                (
                    shd.shard_params(params, mesh, "dp", module=module),
                    *shd.shard_batch((dp_ids, dp_mask), mesh, "dp"),
                ),
            )
        timings, outs = interleaved(cases, args.repeats)
        for name, row in timings.items():
            rows = batch * len(gpus) if "dp" in name else batch
            row["tokens_per_s"] = round(rows * length / row["median_ms"] * 1e3, 1)
        ref = np.asarray(outs["1 gpu float32"], np.float32)
        timings["1 gpu bfloat16"]["max_abs_diff_vs_float32"] = float(
            np.abs(np.asarray(outs["1 gpu bfloat16"], np.float32) - ref).max()
        )
        out["models"][label] = {"shape": [batch, length], "results": timings}
    out |= numerics.resolve().describe()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="1 layer, 8x16, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.batch, args.length, args.repeats = 1, 8, 16, 2
    report = {"jax": jax.__version__, "backend": jax.default_backend()}
    if not args.gpu_only:
        report["cpu_mesh"] = cpu_section(args)
    if jax.default_backend() == "gpu":
        report["gpu"] = gpu_section(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
