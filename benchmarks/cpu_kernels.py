"""The kernels behind the CPU figures: our weight matmuls and attention as our models compile them,
against PyTorch's on the same shapes, same threads, timed interleaved.

    python benchmarks/cpu_kernels.py [--repeats 7] [--threads 2]
    python benchmarks/cpu_kernels.py --quick    # smoke test: small shapes, 2 repeats

Cases:
- `gemm MxKxN`: one float32 matmul x [M, K] @ W [K, N] at full float32 precision, compiled as the
  BERT forward pass is (`biomed_jax.compilation.jit`'s options); PyTorch: `F.linear` with its
  [N, K] weight. The shapes of BERT-base at 8x512 (M = 4096 rows): fc_in, fc_out, and the four
  [768, 768] projections.
- `decode rows R`: BioGPT-347M's six weight matmuls of a layer in sequence (D 1024, F 4096), tanh
  between them, 4 layers, R rows, as `generate`'s loop runs them: our `Dense` on [out, in]
  weights (`nn.layers.weights_out_in`, streamed at the default policy), plain `jax.jit`;
  PyTorch the same chain through `F.linear`. R = 1: greedy decoding of one prompt; 4: batch 4;
  5: beam 5.
- `attention 8x512`: BERT-base's attention core at 8x512 (12 heads of 64), ours
  `nn.attention.dot_product_attention` at the default policy; PyTorch
  `F.scaled_dot_product_attention` with an additive mask (what HF's BERT runs by default).

Prints JSON: per case our and PyTorch's median ms, `torch_over_ours` (above 1: we are faster) and
GFLOP/s (gemm, attention) or weight GB/s (decode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

BERT_GEMMS = ((4096, 768, 3072), (4096, 3072, 768), (4096, 768, 768))  # M, K, N at 8x512
D, F = 1024, 4096
DECODE_SHAPES = ((D, D),) * 4 + ((D, F), (F, D))  # [in, out] of one BioGPT layer's matmuls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 repeats")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    from biomed_jax import compilation
    from biomed_jax.nn.attention import dot_product_attention
    from biomed_jax.nn.layers import Dense, weights_out_in
    from biomed_jax.numerics import Policy

    torch.set_num_threads(args.threads or torch.get_num_threads())
    gemms, layers, decode_rows, (batch, length) = BERT_GEMMS, 4, (1, 4, 5), (8, 512)
    if args.quick:
        gemms, layers, decode_rows, (batch, length) = ((64, 96, 128),), 1, (1, 4), (2, 64)
        args.repeats = 2
    rng = np.random.default_rng(0)
    highest = jax.lax.Precision.HIGHEST
    cases = {}  # name -> (ours: () -> None, torch: () -> None, flop or bytes, unit)

    for m, k, n in gemms:
        x, w = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n)))
        ours = compilation.jit(lambda a, b: jnp.dot(a, b, precision=highest))
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        xt, wt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))
        cases[f"gemm {m}x{k}x{n}"] = (
            lambda f=ours, a=xj, b=wj: f(a, b).block_until_ready(),
            lambda a=xt, b=wt: torch.nn.functional.linear(a, b),
            2 * m * k * n,
            "gflop_s",
        )

    weights = [
        rng.standard_normal(s, dtype=np.float32) * 0.03
        for _ in range(layers)
        for s in DECODE_SHAPES
    ]
    weights_j = [weights_out_in({"kernel": jnp.asarray(w)}) for w in weights]  # [out, in]
    weights_t = [torch.from_numpy(np.ascontiguousarray(w.T)) for w in weights]
    fast = Policy.fast()

    def chain_ours(x, ws):
        for w in ws:
            dense = Dense(w["weight"].shape[0], ("embed", "mlp"), use_bias=False, policy=fast)
            x = jnp.tanh(dense.apply({"params": w}, x))
        return x

    def chain_torch(x):
        for w in weights_t:
            x = torch.tanh(torch.nn.functional.linear(x, w))
        return x

    decode = jax.jit(chain_ours)
    for rows in decode_rows:
        x = np.full((rows, D), 0.1, np.float32)
        xj, xt = jnp.asarray(x), torch.from_numpy(x)
        cases[f"decode rows {rows}"] = (
            lambda a=xj: decode(a, weights_j).block_until_ready(),
            lambda a=xt: chain_torch(a),
            sum(w.nbytes for w in weights),
            "gb_s",
        )

    heads, head_dim = 12, 64
    q, k, v = (
        rng.standard_normal((batch, length, heads, head_dim), dtype=np.float32) for _ in range(3)
    )
    mask = np.ones((batch, 1, 1, length), bool)
    policy = Policy.fast()
    attend = compilation.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m, policy=policy)[0])
    qj, kj, vj, mj = (jnp.asarray(a) for a in (q, k, v, mask))
    qt, kt, vt = (torch.from_numpy(a).transpose(1, 2) for a in (q, k, v))
    additive = torch.zeros((batch, 1, 1, length))
    cases[f"attention {batch}x{length}"] = (
        lambda: attend(qj, kj, vj, mj).block_until_ready(),
        lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=additive),
        4 * batch * heads * length * length * head_dim,
        "gflop_s",
    )

    results = []
    for name, (ours, reference, amount, unit) in cases.items():
        ours()  # compiles
        with torch.inference_mode():
            reference()
        times: dict[str, list[float]] = {"ours": [], "torch": []}
        for r in range(args.repeats):  # alternate who goes first: the first of a pair runs warmer
            for side in ("ours", "torch") if r % 2 else ("torch", "ours"):
                start = time.perf_counter()
                with torch.inference_mode():
                    (ours if side == "ours" else reference)()
                times[side].append(time.perf_counter() - start)
        sec = {side: statistics.median(t) for side, t in times.items()}
        row = {
            "case": name,
            "ours_ms": round(sec["ours"] * 1e3, 2),
            "torch_ms": round(sec["torch"] * 1e3, 2),
            "torch_over_ours": round(sec["torch"] / sec["ours"], 3),
            **{f"{side}_{unit}": round(amount / s / 1e9, 1) for side, s in sec.items()},
        }
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress: the JSON comes at the end
    print(
        json.dumps(
            {
                "benchmark": "cpu_kernels",
                "device": jax.devices()[0].device_kind,
                "torch_threads": torch.get_num_threads(),
                **policy.describe(),
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
