"""Weight layout against rows: BioGPT-347M's weight matmuls with kernels stored [in, out] (HF-Flax's
layout, the checkpoints') or [out, in] (PyTorch `Linear`'s, what `generate` decodes with), at the
row counts decoding and prefill run.

    python benchmarks/kernel_layout.py [--rows 1,4,5,8,16,32,64,128] [--repeats 5] [--layers 24]
    python benchmarks/kernel_layout.py --quick    # smoke test: 2 layers, rows 1,4

Per layer the decoder's six weight matmuls in sequence (query, key, value, out [D, D]; fc_in
[D, F]; fc_out [F, D]; D 1024, F 4096), tanh between them, float32, through our `Dense` at the
default policy: a `kernel` [in, out] multiplies as rows @ kernel; a `weight` [out, in]
(`nn.layers.weights_out_in`) as weight @ rows^T up to the policy's `stream_weight_rows`, else
as rows @ weight^T. One `jax.jit` per layout and row count, compiled as `generate`'s decoding
loop is (plain `jax.jit`, XLA's default options). Rows 1: greedy decoding of one prompt; 4-16:
batched greedy decoding and beam search (5 beams); 64-128: a prefill or forward pass. Both
layouts are timed interleaved (one call of each per round). Prints JSON: per row count the
median ms of each layout, the weights' GB/s and `in_out_over_out_in` (above 1: [in, out] is
slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

D, F = 1024, 4096
SHAPES = ((D, D),) * 4 + ((D, F), (F, D))  # [in, out] of one layer's weight matmuls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,5,8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="2 layers, rows 1,4, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.rows, args.repeats = 2, "1,4", 2

    import jax
    import jax.numpy as jnp

    from biomed_jax.nn.layers import Dense, weights_out_in
    from biomed_jax.numerics import Policy

    rng = np.random.default_rng(0)
    in_out = [
        rng.standard_normal(s, dtype=np.float32) * 0.03 for _ in range(args.layers) for s in SHAPES
    ]
    layers = [{"kernel": jnp.asarray(w), "bias": jnp.zeros(w.shape[1])} for w in in_out]
    kernels = {"in_out": layers, "out_in": [weights_out_in(w) for w in layers]}
    weight_bytes = sum(w.nbytes for w in in_out)
    policy = Policy.fast()

    def chain(x, weights):  # x [M, D]
        for w, (_, out) in zip(weights, SHAPES * args.layers, strict=True):
            x = jnp.tanh(Dense(out, ("embed", "mlp"), policy=policy).apply({"params": w}, x))
        return x

    programs = {layout: jax.jit(chain) for layout in kernels}
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        x = jnp.full((rows, D), 0.1, jnp.float32)
        outputs = {k: np.asarray(f(x, kernels[k])) for k, f in programs.items()}  # compiles
        times: dict[str, list[float]] = {k: [] for k in programs}
        for _ in range(args.repeats):
            for layout, program in programs.items():
                start = time.perf_counter()
                program(x, kernels[layout]).block_until_ready()
                times[layout].append(time.perf_counter() - start)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = {
            "rows": rows,
            **{f"{k}_ms": round(v, 1) for k, v in ms.items()},
            **{f"{k}_gb_s": round(weight_bytes / v / 1e6, 1) for k, v in ms.items()},
            "in_out_over_out_in": round(ms["in_out"] / ms["out_in"], 2),
            "max_abs_diff": float(np.abs(outputs["in_out"] - outputs["out_in"]).max()),
        }
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress: the JSON comes at the end
    print(
        json.dumps(
            {
                "benchmark": "kernel_layout",
                "device": jax.devices()[0].device_kind,
                "layers": args.layers,
                **policy.describe(),
                "weight_bytes": weight_bytes,
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
