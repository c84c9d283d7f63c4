"""Checkpoint load times: `from_pretrained` of HF safetensors, pytorch_model.bin, our converted format,
the scanned layout and a mesh, and `convert`; prints JSON.

    python benchmarks/loading.py [--size base|small] [--repeats 5] [--quick]

A random `BertForMaskedLM` of the chosen size (base: BERT-base, 110M parameters, 440 MB float32;
small: 6 layers of 384, as MiniLM) is saved with `transformers` into a temporary directory. Each
round loads every case once, cases interleaved; the figure is the median wall time of the rounds
after a first warm-up round (which also fills the OS page cache). `--quick`: a tiny model, 2 rounds
(checks that the script runs).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

SIZES = {
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "small": dict(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    ),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
}


def save_checkpoint(directory: Path, size: str) -> Path:
    """A random HF BertForMaskedLM in `directory`: safetensors in hf/, pytorch_model.bin in bin/."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, **SIZES[size])
    model = transformers.BertForMaskedLM(config).eval()
    for name, safe in (("hf", True), ("bin", False)):
        model.save_pretrained(directory / name, safe_serialization=safe)
        (directory / name / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    return directory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny model, 2 rounds")
    args = p.parse_args()
    if args.quick:
        args.size, args.repeats = "tiny", 2

    logging.getLogger("biomed_jax").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run_rounds(Path(tmp), args.size, args.repeats), indent=2))


def run_rounds(tmp: Path, size: str, repeats: int) -> dict:
    import jax

    import biomed_jax

    save_checkpoint(tmp, size)
    biomed_jax.convert(tmp / "hf", tmp / "ours")
    mesh = biomed_jax.make_mesh(model=2 if len(jax.devices()) % 2 == 0 else 1)

    def load(path: Path, **kwargs: object):
        return lambda: jax.block_until_ready(biomed_jax.from_pretrained(path, **kwargs).params)

    cases = {
        "hf safetensors": load(tmp / "hf"),
        "pytorch_model.bin": load(tmp / "bin"),
        "converted": load(tmp / "ours"),
        "hf safetensors, scan_layers": load(tmp / "hf", scan_layers=True),
        f"hf safetensors, mesh {dict(mesh.shape)}": load(tmp / "hf", mesh=mesh),
        "convert (hf safetensors -> ours)": lambda: biomed_jax.convert(tmp / "hf", tmp / "ours"),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats + 1):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        "size": size,
        "parameters": sum(x.size for x in jax.tree.leaves(cases["converted"]())),
        "rounds": repeats,
        "seconds": {name: round(statistics.median(t[1:]), 3) for name, t in times.items()},
        "devices": len(jax.devices()),
    }


if __name__ == "__main__":
    main()
