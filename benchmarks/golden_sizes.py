"""Goldens of full-size checkpoints: their size, and what their replay catches.

    python benchmarks/golden_sizes.py [--models bert,biogpt] [--sweep-texts 8]
    python benchmarks/golden_sizes.py --quick     # smoke test: the tiny shapes

Builds seeded random checkpoints of BiomedBERT-base's shape (BertForMaskedLM, vocab 30522, 12
layers, 768 wide) and BioGPT-347M's (BioGptForCausalLM, vocab 42384, 24 layers, 1024 wide) with
tokenizers that cover the shipped texts (`conformance.tiny`, vocabularies filled up to the real
sizes), then per model:
- size: `conformance.run(dir, record=FILE)` on the default texts (48 PubMed titles and first
  sentences, both paddings, generation for BioGPT) in float32, and the golden's size in bytes
  (float32 and bfloat16 record the same arrays: a dtype adds two numbers per output), the share
  of its arrays, and whether its replay passes;
- sweep: one weight matrix of ours (not of the reference: a bug of ours, not a changed
  checkpoint) changed by scale x std x N(0, 1), seeded; on the first `--sweep-texts` texts, the
  live check and the replay of a golden of the unchanged model, float32: the outputs failing in
  each.
Prints JSON. Memory: BioGPT-347M about 4.5 GB (ours, and transformers toggled to float64).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

MATRICES = {  # the matrix the sweep changes: a middle layer's first MLP kernel
    "bert": "bert/encoder/layer_{}/mlp/fc_in/kernel",
    "biogpt": "biogpt/layers/layer_{}/mlp/fc_in/kernel",
}
SCALES = (1e-7, 1e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3)


def build(name: str, directory: Path, quick: bool) -> Path:
    from conformance import bert, biogpt, tiny

    if quick:
        return (tiny.save_bert if name == "bert" else tiny.save_biogpt)(directory)
    if name == "bert":
        return tiny.save_bert(directory, **bert.BASE, initializer_range=0.02)
    return tiny.save_biogpt(directory, **biogpt.FULL, initializer_range=0.02)


def golden_size(path: Path) -> dict:
    from conformance import golden

    recorded = golden.read(path)
    groups: dict[str, int] = {}
    for key, value in recorded.arrays.items():
        part = key.split("/")[0] + (
            "/" + key.rsplit("/", 1)[1] if key.startswith("forward") else ""
        )
        groups[part] = groups.get(part, 0) + value.nbytes
    return {"bytes": path.stat().st_size, "arrays": dict(sorted(groups.items()))}


def sweep(directory: Path, name: str, texts: list[str], layers: int, work: Path) -> list[dict]:
    from biomed_jax.trees import flatten, unflatten
    from conformance import golden
    from conformance.checkpoint import load_ours, locate
    from conformance.judging import Settings
    from conformance.live import live
    from conformance.replay import replay

    checkpoint = locate(directory)
    settings = Settings(dtypes=("float32",), generation=False)
    base = load_ours(checkpoint)
    path = work / f"{name}-sweep.safetensors"
    live(checkpoint, texts, settings, path, base)
    recorded = golden.read(path)
    flat = flatten(base.params)
    key = MATRICES[name].format(layers // 2)
    w = np.asarray(flat[key])
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)

    def failed(rows) -> list[str]:
        names = {
            f"{r.suite.split('/')[2]} {r.name.removesuffix(' (row projections)')}"
            for r in rows
            if not r.passed and r.name != "parameters as recorded"
        }
        return sorted(names)

    out = []
    for scale in SCALES:
        params = dict(flat, **{key: w + np.float32(scale * w.std()) * noise})
        ours = dataclasses.replace(base, params=unflatten(params))
        live_failed = failed(live(checkpoint, texts, settings, None, ours).rows)
        replay_failed = failed(replay(checkpoint, recorded, None, ours).rows)
        out.append(
            {
                "matrix": key,
                "scale": scale,
                "live_failed": len(live_failed),
                "replay_failed": len(replay_failed),
                "live_only": sorted(set(live_failed) - set(replay_failed)),
                "replay_only": sorted(set(replay_failed) - set(live_failed)),
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bert,biogpt")
    parser.add_argument("--sweep-texts", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    args = parser.parse_args(argv)
    from transformers.utils import logging

    from conformance import corpus, model

    logging.disable_progress_bar()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            directory = build(name, work / name, args.quick)
            gc.collect()  # the saved transformers model (reference cycles): its GBs back now
            path = work / f"{name}.safetensors"
            recorded = model.run(directory, record=path, dtypes=("float32",))
            replayed = model.run(directory, golden=path)
            config = json.loads((directory / "config.json").read_text())
            results[name] = {
                "config": {
                    k: config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers")
                },
                "texts": len(corpus.pubmed_texts()),
                "golden": golden_size(path),
                "live_rows": len(recorded.rows),
                "live_failed": sum(not r.passed for r in recorded.rows),
                "replay_rows": len(replayed.rows),
                "replay_failed": sum(not r.passed for r in replayed.rows),
                "sweep": sweep(
                    directory,
                    name,
                    corpus.pubmed_texts()[: args.sweep_texts],
                    config["num_hidden_layers"],
                    work,
                ),
            }
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
