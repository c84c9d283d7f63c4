"""BioGPT generation: our compiled `generate` against HF PyTorch `generate`, same run and threads.

On a GPU both run there (PyTorch on CUDA).

    python benchmarks/generate.py [--cases greedy:1,greedy:4,beam5:1] [--repeats 3]
                                  [--new-tokens 32,128] [--policy fast]
    python benchmarks/generate.py --quick     # smoke test: 2 layers, 4 new tokens

Random seeded BioGPT weights of the real size (347M: 24 layers, 1024 wide, vocab 42384), fp32, at
the library's defaults (the "fast" policy) unless told otherwise; the JSON says which policy ran.
Prompts of 8 tokens; each case runs with 32 and with 128 new tokens by default (min_new_tokens
too, so no row stops early). Calls alternate (ours, HF, ours, HF, ...) so machine drift hits both
alike. Prints JSON per case and count: median seconds per call, generated tokens/s, ms per
generated token (per decode step, prefill included), our compile time (trace + lowering + XLA
compile, from jax.monitoring), the speed-up over HF, and whether both produced the same tokens.
Before the cases, `generate`'s one-time [out, in] copy of the Dense kernels
(`generation.layout`) is made and timed (`layout_s`, `layout_bytes`; 0 where the policy keeps
[in, out]), as the first call would. The memory-bandwidth bound: bytes of weights read per
decode step divided by the bandwidth measured here (a large jitted reduction); `bound_fraction`
= bound ms / our ms per step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

PROMPT, NEW = 8, "32,128"
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of a jitted sum over a `gib` GiB float32 array (reads every byte once)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        total(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return x.nbytes / min(times) / 1e9


def _ours(generate, ids, kwargs) -> np.ndarray:
    return np.asarray(generate(ids, **kwargs))


def _reference(hf, ids, kwargs) -> np.ndarray:
    import torch

    with torch.inference_mode():
        ids = torch.from_numpy(ids).to(hf.device)
        return hf.generate(ids, do_sample=False, **kwargs).cpu().numpy()  # .cpu() synchronizes


def _case(case, new, args, ours_generate, hf, compile_events, bound_ms) -> dict:
    """One case ("greedy:B" or "beamK:B") at `new` new tokens, ours and HF interleaved."""
    strategy, batch = case.split(":")
    beams = int(strategy.removeprefix("beam")) if strategy.startswith("beam") else 1
    batch = int(batch)
    ids = np.random.RandomState(batch).randint(4, 42384, (batch, PROMPT))
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams)
    ours = functools.partial(_ours, ours_generate, ids, kwargs)
    reference = functools.partial(_reference, hf, ids, kwargs)
    compile_events.clear()
    ours_tokens = ours()  # compiles
    compile_s = sum(compile_events)
    if hf is not None:
        ref_tokens = reference()  # warm-up
    ours_s, ref_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours()
        ours_s.append(time.perf_counter() - t)
        if hf is not None:
            t = time.perf_counter()
            reference()
            ref_s.append(time.perf_counter() - t)
    sec = statistics.median(ours_s)
    row = {
        "case": case,
        "new_tokens": new,
        "ours_s": round(sec, 3),
        "ours_tokens_per_s": round(batch * new / sec, 1),
        "ours_ms_per_token": round(sec / new * 1e3, 1),
        "compile_s": round(compile_s, 2),
    }
    if batch == 1 and beams == 1:
        row["bound_ms_per_token"] = round(bound_ms, 1)
        row["bound_fraction"] = round(bound_ms / (sec / new * 1e3), 3)
    if hf is not None:
        ref = statistics.median(ref_s)
        row |= {
            "hf_s": round(ref, 3),
            "hf_tokens_per_s": round(batch * new / ref, 1),
            "hf_ms_per_token": round(ref / new * 1e3, 1),
            "speedup_vs_hf": round(ref / sec, 2),
            "same_tokens": bool(np.array_equal(ours_tokens, ref_tokens)),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="greedy:1,greedy:4,beam5:1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--new-tokens", default=NEW, help="new tokens per call; several: comma-separated"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--policy", default="fast", choices=("fast", "exact"), help="biomed_jax.numerics preset"
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=("highest", "high", "default"),
        help="replace the policy's matmul precision (default: the policy's, 'highest')",
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 layers, 4 new tokens, greedy:1 and beam5:1, 1 repeat",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.new_tokens, args.repeats = 2, "4", 1
        args.cases = "greedy:1,beam5:1"
    counts = [int(n) for n in str(args.new_tokens).split(",")]

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from biomed_jax import from_pretrained, generate
    from biomed_jax.generation import layout

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.BioGptConfig(num_hidden_layers=args.layers)
    hf = transformers.BioGptForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        numerics = {"policy": args.policy, "precision": args.precision}
        if args.dtype != "float32":
            numerics["dtype"] = jnp.dtype(args.dtype)
        model = from_pretrained(
            tmp,
            architecture="BioGptForCausalLM",
            **{k: v for k, v in numerics.items() if v is not None},
        )
    if args.no_torch:
        hf = None
    else:
        hf.to("cuda" if jax.default_backend() == "gpu" else "cpu")  # where we run
    params = jax.device_put(model.params)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    start = time.perf_counter()  # the first generate call's one-time [out, in] copy
    converted = jax.block_until_ready(layout.decoding_params(model.module, params))
    layout_s = time.perf_counter() - start
    layout_bytes = layout.converted_bytes(params) if converted is not params else 0
    bandwidth = measure_bandwidth()
    bound_ms = weight_bytes / (bandwidth * 1e9) * 1e3

    compile_events: list[float] = []  # trace + lowering + XLA compile, from jax.monitoring

    def on_event(event: str, seconds: float, **_) -> None:
        if event in COMPILE_EVENTS:
            compile_events.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    ours_generate = functools.partial(generate, model.module, params)
    results = []
    for case in args.cases.split(","):
        for new in counts:
            row = _case(case, new, args, ours_generate, hf, compile_events, bound_ms)
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress: JSON at the end
    print(
        json.dumps(
            {
                "benchmark": "generate",
                "device": jax.devices()[0].device_kind,
                "torch_device": "none" if hf is None else str(hf.device),
                "layers": args.layers,
                "dtype": args.dtype,
                **model.module.policy.describe(),
                "threads": args.threads,
                "repeats": args.repeats,
                "prompt_tokens": PROMPT,
                "new_tokens": counts,
                "weight_bytes": weight_bytes,
                "layout_s": round(layout_s, 2),
                "layout_bytes": layout_bytes,
                "bandwidth_gb_s": round(bandwidth, 1),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
