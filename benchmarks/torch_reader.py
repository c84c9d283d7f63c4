"""pytorch_model.bin reading speed: the checked reader against an earlier revision's; prints JSON.

    python benchmarks/torch_reader.py [--mb 100] [--rounds 7] [--baseline-rev 2efa90b] [--quick]

Builds a BERT-shaped state dict of about `--mb` MB with torch.save (float32, a few transposed
views and a storage offset among them), then reads it with `load_torch_zip` of this tree and of
`--baseline-rev` (its source taken with `git show`), interleaved round by round (the order
alternates), each timed in wall and process-CPU seconds; reports the median of each and checks
that both readers return identical arrays. `--quick`: 4 MB, 3 rounds (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build_checkpoint(path: Path, mb: float) -> int:
    """A BERT-like state dict of about `mb` MB (layers are added until it is reached)."""
    import torch

    torch.manual_seed(0)
    d, f = (768, 3072) if mb >= 64 else (128, 512)  # small files: narrow layers
    vocab = max(100, min(30522, int(mb * 2**20 * 0.2 / (4 * d))))  # ~20% of the file
    state = {"embeddings.word_embeddings.weight": torch.randn(vocab, d)}
    state["embeddings.position_embeddings.weight"] = torch.randn(600, d)[88:]  # storage offset
    layer = 0
    while sum(t.numel() * 4 for t in state.values()) < mb * 2**20:
        p = f"encoder.layer.{layer}."
        for name in ("query", "key", "value", "output"):
            state[p + name + ".weight"] = torch.randn(d, d)
            state[p + name + ".bias"] = torch.randn(d)
        state[p + "intermediate.weight"] = torch.randn(d, f).t()  # a transposed view
        state[p + "output.dense.weight"] = torch.randn(d, f)
        layer += 1
    torch.save(state, path)
    return path.stat().st_size


def baseline_reader(rev: str) -> Callable[[Path], dict[str, np.ndarray]]:
    source = subprocess.run(
        ["git", "show", f"{rev}:biomed_jax/weights/torch_zip.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"torch_zip_{rev}")
    exec(compile(source, f"{rev}:torch_zip.py", "exec"), module.__dict__)
    return module.load_torch_zip


def _timed(read: Callable[[Path], dict], path: Path) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = read(path)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-rev", default="2efa90b")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.rounds = 4, 3

    from biomed_jax.weights.torch_zip import load_torch_zip

    readers = {"checked": load_torch_zip, "baseline": baseline_reader(args.baseline_rev)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pytorch_model.bin"
        size = build_checkpoint(path, args.mb)
        outputs = {}
        for r in range(args.rounds):
            order = list(readers) if r % 2 == 0 else list(readers)[::-1]
            for name in order:
                wall, cpu, outputs[name] = _timed(readers[name], path)
                times[name].append((wall, cpu))
    a, b = outputs["checked"], outputs["baseline"]
    identical = a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )
    result = {
        "file_mb": round(size / 2**20, 1),
        "tensors": len(a),
        "rounds": args.rounds,
        "baseline_rev": args.baseline_rev,
        "identical": identical,
        **{
            f"{name}_{kind}_s": round(statistics.median(t[i] for t in ts), 4)
            for name, ts in times.items()
            for i, kind in enumerate(("wall", "cpu"))
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
