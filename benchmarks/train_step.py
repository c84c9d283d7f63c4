"""BERT-base training step (token classification, AdamW, clipping, dropout on): our jitted
`train_step` against PyTorch eager on the same machine, in the same run, with and without remat.

    python benchmarks/train_step.py [--batch 8] [--length 128] [--repeats 5] [--no-memory]
    python benchmarks/train_step.py --quick    # smoke test: 2 layers, 2x32, no memory probes

Seeded random BiomedBERT-base weights (vocab 30522, 768 wide, 12 layers), float32 at the library's
defaults (the "fast" numerics policy unless --policy says otherwise; printed in the JSON), torch's
default attention (sdpa). Ours and torch at the same remat setting are timed interleaved (one
step of each per round) so machine drift hits both alike. Peak memory: each configuration also
runs alone in a fresh subprocess (2 steps) and reports its peak resident memory (CPU: VmHWM) or peak device memory
(GPU: torch.cuda.max_memory_allocated / jax peak_bytes_in_use); ours also reports XLA's planned
step memory (memory_analysis). Prints JSON; ratio = torch_ms / ours_ms (>1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    num_labels=5,
)
CONFIGS = ("ours", "ours+remat", "torch", "torch+remat")


def make_batch(batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    return {
        "input_ids": rng.randint(0, BASE["vocab_size"], (batch, length)).astype(np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "labels": rng.randint(0, BASE["num_labels"], (batch, length)).astype(np.int32),
    }


def torch_step_fn(remat: bool, batch: dict[str, np.ndarray]):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(transformers.BertConfig(**BASE))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    if remat:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    inputs = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}

    def step() -> float:
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())  # synchronizes
        return value

    return step


def ours_step_fn(
    remat: bool, batch: dict[str, np.ndarray], analyze: bool = False, policy: str = "fast"
):
    import jax

    from biomed_jax import BertConfig, BertForTokenClassification, train
    from biomed_jax.loading import init_params

    module = BertForTokenClassification(BertConfig(**BASE), policy=policy)
    tx = train.create_optimizer(1e-5, 1000, weight_decay=0.01)
    state = train.create_train_state(module, init_params(module), tx, gradient_checkpointing=remat)
    data = jax.device_put(batch)
    holder = {"state": state, "i": 0}

    def step() -> float:
        holder["i"] += 1
        holder["state"], metrics = train.train_step(
            holder["state"], data, jax.random.key(holder["i"])
        )
        return float(metrics["loss"])

    planned = None
    analysis = None
    if analyze:  # an extra (AOT) compile, so only in the memory probe
        compiled = train.train_step.lower(state, data, jax.random.key(0)).compile()
        analysis = compiled.memory_analysis()
    if analysis is not None:
        planned = int(
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
    return step, planned


def build(config: str, batch: dict[str, np.ndarray], analyze: bool = False, policy: str = "fast"):
    """(step function, XLA-planned bytes or None)."""
    remat = config.endswith("+remat")
    if config.startswith("torch"):
        return torch_step_fn(remat, batch), None
    return ours_step_fn(remat, batch, analyze, policy)


def peak_rss_bytes() -> int:
    """This process's resident high-water mark (VmHWM; ru_maxrss would include the parent's)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def probe(config: str, batch: int, length: int, policy: str) -> dict:
    """Run in a fresh process: build, 2 steps, report peak memory."""
    step, planned = build(config, make_batch(batch, length), analyze=True, policy=policy)
    step()
    step()
    out = {"config": config, "peak_rss_bytes": peak_rss_bytes()}
    if planned is not None:
        out["xla_planned_step_bytes"] = planned
    import torch

    if config.startswith("torch") and torch.cuda.is_available():
        out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    if config.startswith("ours"):
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--layers", type=int, default=BASE["num_hidden_layers"])
    parser.add_argument(
        "--policy", default="fast", choices=("fast", "exact"), help="biomed_jax.numerics preset"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--quick", action="store_true", help="2 layers, batch 2x32, 2 repeats")
    parser.add_argument("--probe", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.batch, args.length, args.repeats, args.no_memory = 2, 2, 32, 2, True
    BASE["num_hidden_layers"] = args.layers
    if args.probe:
        print(json.dumps(probe(args.probe, args.batch, args.length, args.policy)))
        return

    import jax
    import torch

    from biomed_jax import numerics

    configs = args.configs.split(",")
    batch = make_batch(args.batch, args.length)
    compile_s, times = {}, {c: [] for c in configs}
    # Pairs (ours vs torch at one remat setting) are alive together and interleaved; one pair at
    # a time keeps the process under ~4 GB.
    for kind in ("", "+remat"):
        pair = [c for c in (f"ours{kind}", f"torch{kind}") if c in configs]
        steps = {}
        for config in pair:
            start = time.perf_counter()
            steps[config], _ = build(config, batch, policy=args.policy)
            steps[config]()  # the first step compiles (ours) / warms up (torch)
            compile_s[config] = time.perf_counter() - start
            print(f"{config}: first step {compile_s[config]:.1f} s", file=sys.stderr, flush=True)
        for _ in range(args.repeats):
            for config in pair:
                start = time.perf_counter()
                steps[config]()
                times[config].append(time.perf_counter() - start)
        del steps

    result: dict = {
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "length": args.length,
        "layers": args.layers,
        "dtype": "float32",
        **numerics.resolve(args.policy).describe(),
        "repeats": args.repeats,
        "configs": {},
    }
    for config in configs:
        ms = statistics.median(times[config]) * 1e3
        result["configs"][config] = {
            "median_ms": round(ms, 1),
            "examples_per_s": round(args.batch / (ms / 1e3), 2),
            "first_step_s": round(compile_s[config], 1),
        }
    for kind in ("", "+remat"):
        if f"ours{kind}" in times and f"torch{kind}" in times:
            ours_ms = result["configs"][f"ours{kind}"]["median_ms"]
            torch_ms = result["configs"][f"torch{kind}"]["median_ms"]
            result[f"ratio{kind or '_no_remat'}"] = round(torch_ms / ours_ms, 3)
    if not args.no_memory:
        for config in configs:
            cmd = [sys.executable, __file__, "--probe", config]
            cmd += ["--batch", str(args.batch), "--length", str(args.length)]
            cmd += ["--layers", str(args.layers), "--policy", args.policy]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result["configs"][config]["memory"] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
