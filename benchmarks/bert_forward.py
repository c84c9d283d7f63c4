"""BERT-base forward: our jitted Flax model against PyTorch eager, same machine, threads and run.

On a GPU both run there (PyTorch on CUDA, synchronized after each call).

    python benchmarks/bert_forward.py [--shapes 1x128,8x128,8x512] [--repeats 7] [--policy fast]
    python benchmarks/bert_forward.py --quick     # smoke test: 2 layers, small shapes

Random seeded BiomedBERT-base weights (vocab 30522, 768 wide, 12 layers), fp32, at the library's
defaults (`from_pretrained` with no numerics arguments: the "fast" policy) unless told otherwise;
the JSON says which policy ran. The two frameworks
are timed interleaved (one call of each per round) so machine drift hits both alike. Prints JSON:
per shape, median ms, tokens/s, the ratio torch_ms / ours_ms (>1: we are faster), our jit compile
time, and the max abs difference of the last hidden state (a sanity check that both computed the
same thing). On a GPU, `--dtype bfloat16` reports bf16 throughput and its fraction of
`--peak-tflops` (the PyTorch reference stays float32).
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


def bert_flops(batch: int, length: int, d: int = 768, f: int = 3072, layers: int = 12) -> float:
    """Multiply-adds x2 of the encoder matmuls (projections, MLP, attention scores and values)."""
    tokens = batch * length
    per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * 2 * batch * length * length * d
    return float(layers * per_layer)


def seeded_bert_base(layers: int, **numerics):
    """(transformers BertModel, our `from_pretrained` of its saved checkpoint): BiomedBERT-base's
    architecture with `layers` layers, seeded random weights, ours with `numerics` (none: the
    defaults)."""
    import torch
    import transformers

    from biomed_jax import from_pretrained

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    ref = transformers.BertModel(config, add_pooling_layer=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        return ref, from_pretrained(tmp, **numerics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x128,8x128,8x512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--policy", default="fast", choices=("fast", "exact"), help="biomed_jax.numerics preset"
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=("highest", "high", "default"),
        help="replace the policy's matmul precision (default: the policy's, 'highest')",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 layers, shapes 1x32,2x64, 2 repeats"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--peak-tflops", type=float, default=None, help="chip peak, for GPU runs")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.shapes, args.repeats = 2, "1x32,2x64", 2

    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"  # the reference runs where we run
    numerics = {"policy": args.policy, "precision": args.precision}
    if args.dtype != "float32":
        numerics["dtype"] = jnp.dtype(args.dtype)
    ref, model = seeded_bert_base(
        args.layers, **{k: v for k, v in numerics.items() if v is not None}
    )
    params = jax.device_put(model.params)
    ref.to(device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    from biomed_jax.compilation import compiler_options

    @functools.partial(jax.jit, compiler_options=compiler_options())  # as our pipelines compile
    def forward(params, ids, mask):
        return model.module.apply({"params": params}, ids, mask).last_hidden_state

    results = []
    layers = args.layers
    for shape in args.shapes.split(","):
        batch, length = map(int, shape.split("x"))
        ids = np.random.RandomState(0).randint(0, 30522, (batch, length)).astype(np.int32)
        mask = np.ones_like(ids)
        ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
        start = time.perf_counter()
        compiled = forward.lower(params, ids_j, mask_j).compile()
        compile_s = time.perf_counter() - start
        ours_out = compiled(params, ids_j, mask_j).block_until_ready()  # warm-up
        ids_t = torch.tensor(ids, dtype=torch.long, device=device)
        mask_t = torch.tensor(mask, device=device)
        ours_ms, torch_ms = [], []
        with torch.inference_mode():
            if not args.no_torch:
                torch_out = ref(ids_t, mask_t).last_hidden_state  # warm-up
            for _ in range(args.repeats):
                t = time.perf_counter()
                compiled(params, ids_j, mask_j).block_until_ready()
                ours_ms.append((time.perf_counter() - t) * 1e3)
                if not args.no_torch:
                    t = time.perf_counter()
                    ref(ids_t, mask_t)
                    sync()
                    torch_ms.append((time.perf_counter() - t) * 1e3)
        ours = statistics.median(ours_ms)
        row = {
            "shape": shape,
            "ours_ms": round(ours, 2),
            "ours_tokens_per_s": round(batch * length / ours * 1e3, 1),
            "ours_tflops": round(bert_flops(batch, length, layers=layers) / ours / 1e9, 3),
            "compile_s": round(compile_s, 2),
        }
        if not args.no_torch:
            ref_ms = statistics.median(torch_ms)
            row |= {
                "torch_ms": round(ref_ms, 2),
                "torch_tokens_per_s": round(batch * length / ref_ms * 1e3, 1),
                "speedup_vs_torch": round(ref_ms / ours, 3),
                "max_abs_diff": float(
                    np.abs(np.asarray(ours_out, np.float32) - torch_out.cpu().numpy()).max()
                ),
            }
        if args.peak_tflops:
            row["fraction_of_peak"] = round(row["ours_tflops"] / args.peak_tflops, 3)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress: the JSON comes at the end
    print(
        json.dumps(
            {
                "benchmark": "bert_forward",
                "device": jax.devices()[0].device_kind,
                "torch_device": device,
                "torch_dtype": "float32",  # the reference runs float32 whatever --dtype says
                "layers": args.layers,
                "dtype": args.dtype,
                **model.module.policy.describe(),
                "threads": args.threads,
                "repeats": args.repeats,
                "compiler_options": compiler_options(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
