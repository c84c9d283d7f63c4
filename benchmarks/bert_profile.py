"""Where a BERT-base layer's time goes, ours against PyTorch's, from each framework's profiler.

    python benchmarks/bert_profile.py [--shape 8x512] [--layers 4] [--repeats 3]
    python benchmarks/bert_profile.py --quick    # smoke test: 1 layer, 2x64, 1 repeat

Random seeded BiomedBERT-base weights, float32, our model at the library's defaults compiled as
the pipelines compile it. Each forward pass's time per layer is split into:
- `weight_matmuls`: the projections and MLP (ours: XLA:CPU's dot fusions outside the attention
  loop; PyTorch: `aten::linear`);
- `attention_core`: softmax(q k^T) v (ours: every op of the attention loop over heads, its
  matmuls also reported alone as `attention_matmuls`; PyTorch:
  `aten::scaled_dot_product_attention`);
- `elementwise` (ours): the other ops (LayerNorm, GELU, bias and residual adds, embeddings,
  copies), where no matmul or attention op ran at the same time;
- `other`: the rest of the profiled passes' time (PyTorch: elementwise ops and framework
  overhead; ours: no op running).
Each category is the time it occupied (overlapping ops counted once) in profiled passes, which
run a little slower than unprofiled ones: `wall_ms` comes from a separate interleaved loop
without profilers. Ours is
classified from the compiled HLO: an op is in the attention loop when it sits in a while body,
and a matmul when its name says dot (XLA:CPU names its library matmuls `ynn_fusion`). The
attention loops where its scores exceed the policy's `per_head_score_bytes` (8x512 does; at
smaller shapes its ops count as weight matmuls and other).
`matmuls_alone_vs_torch`: PyTorch's wall time over our matmul time alone (weight and attention
matmuls, FLOP for FLOP PyTorch's), the ratio we could reach if everything else cost nothing.
Prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import numpy as np

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")  # unindented: a header
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = ")
_WHILE_BODY = re.compile(r"\bbody=%?([\w.\-]+)")


def hlo_ops(hlo: str) -> dict[str, bool]:
    """Instruction name -> whether it sits in a while body (the attention loop), for the
    instructions of the entry computation and of while bodies (what the runtime executes)."""
    owner: dict[str, str] = {}
    bodies: set[str] = set()
    computation = ""
    for line in hlo.splitlines():
        if match := _COMPUTATION.match(line):
            computation = match.group(1)
        elif match := _INSTRUCTION.match(line):
            owner[match.group(1)] = computation
            bodies.update(_WHILE_BODY.findall(line))
    return {name: comp in bodies for name, comp in owner.items()}


def _is_matmul(name: str) -> bool:
    return "dot" in name or name.startswith("ynn_fusion")


def _covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: time a category occupied, counted once
    where XLA:CPU ran two of its ops at the same time."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def ours_breakdown(compiled, args, runs: int, layers: int) -> dict[str, float]:
    """ms per layer by category, from a JAX profiler trace of `runs` calls."""
    import jax

    in_loop = hlo_ops(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(runs):
                compiled(*args).block_until_ready()
            wall = time.perf_counter() - start
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path, "rt") as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    spans = collections.defaultdict(list)
    for event in events:
        name = event.get("name")
        if event.get("ph") != "X" or name not in in_loop:
            continue
        span, loop = (event["ts"], event["ts"] + event["dur"]), in_loop[name]
        if loop:
            spans["attention_core"].append(span)
            if _is_matmul(name):
                spans["attention_matmuls"].append(span)
        else:
            spans["weight_matmuls" if _is_matmul(name) else "elementwise"].append(span)
    matmuls_and_core = _covered(spans["weight_matmuls"] + spans["attention_core"])
    busy = _covered(
        [s for k in ("weight_matmuls", "attention_core", "elementwise") for s in spans[k]]
    )
    us = {
        "weight_matmuls": _covered(spans["weight_matmuls"]),
        "attention_matmuls": _covered(spans["attention_matmuls"]),
        "attention_core": matmuls_and_core - _covered(spans["weight_matmuls"]),
        "elementwise": busy - matmuls_and_core,  # where neither ran
        "other": wall * 1e6 - busy,  # no op running: dispatch, the runtime, the profiler
    }
    return {k: v / 1e3 / runs / layers for k, v in us.items()}


def torch_breakdown(forward, runs: int, layers: int) -> dict[str, float]:
    """ms per layer by category, from torch.profiler over `runs` calls."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(runs):
            forward()
        wall = time.perf_counter() - start
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    names = {
        "weight_matmuls": "aten::linear",
        "attention_core": "aten::scaled_dot_product_attention",
    }
    us = {k: totals.get(op, 0.0) for k, op in names.items()}
    us["other"] = wall * 1e6 - sum(us.values())
    return {k: v / 1e3 / runs / layers for k, v in us.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8x512", help="BATCHxLENGTH")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="profiled and timed passes each")
    parser.add_argument("--quick", action="store_true", help="1 layer, 2x64, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.layers, args.repeats = "2x64", 1, 1

    import jax
    import torch
    from bert_forward import seeded_bert_base  # benchmarks/, beside this script

    from biomed_jax.compilation import compiler_options

    ref, model = seeded_bert_base(args.layers)
    params = jax.device_put(model.params)
    batch, length = map(int, args.shape.split("x"))
    ids = (
        np.random.RandomState(0).randint(0, ref.config.vocab_size, (batch, length)).astype(np.int32)
    )
    mask = np.ones_like(ids)

    @functools.partial(jax.jit, compiler_options=compiler_options())  # as our pipelines compile
    def forward(params, ids, mask):
        return model.module.apply({"params": params}, ids, mask).last_hidden_state

    compiled = forward.lower(params, ids, mask).compile()
    ours_args = (params, ids, mask)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def torch_forward():
        return ref(ids_t, mask_t).last_hidden_state

    wall = {"ours": [], "torch": []}
    with torch.inference_mode():
        compiled(*ours_args).block_until_ready()  # warm-up
        torch_forward()
        for _ in range(args.repeats):  # interleaved, no profiler
            start = time.perf_counter()
            compiled(*ours_args).block_until_ready()
            wall["ours"].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            torch_forward()
            wall["torch"].append((time.perf_counter() - start) * 1e3)
        parts = {
            "ours": ours_breakdown(compiled, ours_args, args.repeats, args.layers),
            "torch": torch_breakdown(torch_forward, args.repeats, args.layers),
        }
    report = {"benchmark": "bert_profile", "shape": args.shape, "layers": args.layers}
    report["policy"] = model.module.policy.describe()
    report["compiler_options"] = compiler_options()
    per_layer = {side: statistics.median(times) / args.layers for side, times in wall.items()}
    for side, split in parts.items():
        report[side] = {"wall_ms": round(per_layer[side], 1)}
        report[side] |= {k: round(v, 1) for k, v in sorted(split.items())}
    matmuls = parts["ours"]["weight_matmuls"] + parts["ours"].get("attention_matmuls", 0.0)
    report["torch_over_ours"] = round(per_layer["torch"] / per_layer["ours"], 3)
    report["matmuls_alone_vs_torch"] = round(per_layer["torch"] / matmuls, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
