"""biomed_jax.spark on a real local Spark (local[2]): embed_column and BertEmbeddings equal
`embed` on real PubMed texts (with a null, an empty and over-long texts), in order; a saved and
loaded PipelineModel; Parquet round trips; non-string columns fail naming the column; the model
is loaded once per Python worker. Needs Java; skips without it, except in CI (CI=true), where it
fails instead."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # one JVM and a few Spark jobs: ~1-2 min on 2 busy cores


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; the Spark tests must run in CI (.ci/run installs what they need)")
    pytest.skip(reason)


try:
    import pyspark  # noqa: F401

    HAVE_PYSPARK = True
except ImportError:
    HAVE_PYSPARK = False

ATOL = 1e-5
TEXTS_PER_PARTITION = 7  # rows of 28 over 4 partitions; Arrow batches of 3 rows


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    _require(HAVE_PYSPARK, "pyspark is not installed (pip install '.[spark]')")
    _require(shutil.which("java") is not None, "no Java runtime (java) on PATH for Spark")
    from pyspark.sql import SparkSession

    # Workers run this interpreter and import this checkout's biomed_jax.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        env.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        env.delenv("XLA_FLAGS", raising=False)  # one CPU device per worker, as in production
        session = (
            SparkSession.builder.master("local[2]")
            .appName("biomed_jax-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "3")
            .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local")))
            .getOrCreate()
        )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from _tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("spark_bert"), max_position_embeddings=128)


@pytest.fixture(scope="module")
def texts() -> list[str | None]:
    """24 real PubMed titles (the conformance suite's; three over 128 tokens), a null, "", a
    whole article (the fine-tuning sample's first dev article: 557 tokens)."""
    from biomed_jax.examples import SAMPLE_DATA
    from conformance import corpus

    titles = [a["title"] for a in corpus.pubmed_articles()]
    first = (
        (SAMPLE_DATA / "bc5cdr" / "bc5cdr_dev.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    record = json.loads(first)
    article = record["title"] + " " + record["abstract"]
    return [*titles[:5], None, *titles[5:12], "", *titles[12:], article, titles[0]]


@pytest.fixture(scope="module")
def frame(spark, texts):
    rows = [(i, t) for i, t in enumerate(texts)]
    return spark.sparkContext.parallelize(rows, len(rows) // TEXTS_PER_PARTITION).toDF(
        "id long, text string"
    )


def _expected(texts, bert_dir, **kwargs):
    """`embed` on the non-null texts, None for the nulls, in the texts' order."""
    from biomed_jax import embed

    present = [t for t in texts if t is not None]
    truncates = kwargs.get("stride") is None
    with pytest.warns(UserWarning, match="truncated") if truncates else contextlib.nullcontext():
        results = iter(embed(present, model=str(bert_dir), **kwargs))
    return [None if t is None else next(results) for t in texts]


def _check_pooled(got, expected):
    assert len(got) == len(expected)
    for value, want in zip(got, expected):
        if want is None:
            assert value is None
        else:
            np.testing.assert_allclose(np.asarray(value, np.float32), want, atol=ATOL, rtol=0)


def _check_tokens(got, expected):
    assert len(got) == len(expected)
    for rows, want in zip(got, expected):
        if want is None:
            assert rows is None
            continue
        assert [r["token"] for r in rows] == want["tokens"]
        for r, (start, stop) in zip(rows, want["offsets"].tolist()):
            span = (start, stop - 1) if stop > start else (None, None)
            assert (r["begin"], r["end"]) == span
        vectors = np.asarray([r["embedding"] for r in rows], np.float32)
        np.testing.assert_allclose(vectors, want["embeddings"], atol=ATOL, rtol=0)


def _by_id(frame):
    """The result column "e" of `frame`, by id (each row's id travels with its text, so a
    result put on another row's id shows as a mismatch)."""
    rows = frame.orderBy("id").collect()
    assert [r["id"] for r in rows] == list(range(len(rows)))
    return [r["e"] for r in rows]


def _through_parquet(spark, frame, path):
    frame.write.parquet(str(path))
    back = spark.read.parquet(str(path))
    assert back.schema == frame.schema
    return back


def test_cls_through_parquet_equals_embed(spark, frame, texts, bert_dir, tmp_path):
    from biomed_jax.spark import embed_column

    out = frame.select("id", embed_column("text", model=str(bert_dir)).alias("e"))
    back = _through_parquet(spark, out, tmp_path / "cls.parquet")
    _check_pooled(_by_id(back), _expected(texts, bert_dir))


MEAN = dict(pooling="mean", layers=[0, 2, 1], stride=16, batch_size=2)


def test_mean_several_layers_with_stride_equals_embed(frame, texts, bert_dir):
    from biomed_jax.spark import embed_column

    column = embed_column(frame["text"], model=str(bert_dir), **MEAN)
    rows = frame.select("id", column.alias("e")).collect()
    assert [r["id"] for r in rows] == list(range(len(texts)))  # collect keeps the input order
    assert np.asarray(rows[0]["e"]).shape == (3, 32)
    _check_pooled([r["e"] for r in rows], _expected(texts, bert_dir, **MEAN))


def test_tokens_through_parquet_equal_embed(spark, frame, texts, bert_dir, tmp_path):
    from biomed_jax.spark import embed_column

    kwargs = dict(pooling="none", layers=[1, -1], max_length=64)
    out = frame.select("id", embed_column("text", model=str(bert_dir), **kwargs).alias("e"))
    got = _by_id(_through_parquet(spark, out, tmp_path / "tokens.parquet"))
    _check_tokens(got, _expected(texts, bert_dir, **kwargs))
    assert got[0][0]["token"] == "[CLS]" and got[0][0]["begin"] is None
    first = got[0][1]
    assert texts[0][first["begin"] : first["end"] + 1].lower() == first["token"]


def test_pipeline_model_saved_and_loaded_equals_embed(spark, frame, texts, bert_dir, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel

    from biomed_jax.spark import BertEmbeddings

    stage = BertEmbeddings(inputCol="text", outputCol="e", model=str(bert_dir))
    stage.setPooling("mean").setLayers([0, 2, 1]).setBatchSize(2).setStride(16)
    stage.setMaxSentenceLength(128)
    Pipeline(stages=[stage]).fit(frame).write().overwrite().save(str(tmp_path / "pipe"))
    loaded = PipelineModel.load(str(tmp_path / "pipe"))
    (embedder,) = loaded.stages
    assert isinstance(embedder, BertEmbeddings)
    assert {p.name: embedder.getOrDefault(p) for p in embedder.params} == {
        "inputCol": "text",
        "outputCol": "e",
        "model": str(bert_dir),
        "pooling": "mean",
        "layers": [0, 2, 1],
        "batchSize": 2,
        "maxSentenceLength": 128,
        "stride": 16,
    }
    out = loaded.transform(frame)
    assert out.columns == ["id", "text", "e"]
    _check_pooled(_by_id(out), _expected(texts, bert_dir, **MEAN))


def test_non_string_column_fails_naming_it(spark, bert_dir):
    from biomed_jax.spark import BertEmbeddings, embed_column

    numbers = spark.createDataFrame([(1,), (2,)], "pmid long")
    with pytest.raises(Exception, match=r"column 'pmid' must hold strings, got int64"):
        numbers.select(embed_column("pmid", model=str(bert_dir))).collect()
    with pytest.raises(TypeError, match=r"inputCol 'pmid' must be a string column, got bigint"):
        BertEmbeddings(inputCol="pmid", model=str(bert_dir)).transform(numbers)
    with pytest.raises(ValueError, match=r"inputCol 'text' is not a column"):
        BertEmbeddings(model=str(bert_dir)).transform(numbers)


def test_bad_settings_fail_on_the_driver():
    pytest.importorskip("pyspark")
    from biomed_jax.spark import BertEmbeddings, embed_column

    with pytest.raises(ValueError, match="pooling must be one of"):
        embed_column("text", pooling="max")
    with pytest.raises(ValueError, match="layers must be an int or a non-empty list"):
        embed_column("text", layers=[])
    with pytest.raises(TypeError, match="layers"):
        BertEmbeddings(layers=["a"])


def test_model_loaded_once_per_worker(spark, frame, bert_dir):
    """After the jobs above (4 tasks of 3 Arrow batches each, 4 settings), every Python worker
    that embedded has loaded the model exactly once (Spark reuses the workers across tasks and
    jobs, and they keep the model), with XLA:CPU on spark.task.cpus (1) threads."""
    from pyspark.sql.functions import pandas_udf

    from biomed_jax.spark import embed_column

    frame.select(embed_column("text", model=str(bert_dir))).collect()  # in case it runs alone

    model = str(bert_dir)

    @pandas_udf("string")
    def report(ids):
        import biomed_jax.spark as spark_module

        seen = [spark_module._LOADS.get(model, 0), os.environ.get("PJRT_NPROC")]
        return ids.map(lambda _: json.dumps([os.getpid(), seen]))

    rows = spark.range(0, 8, numPartitions=8).select(report("id").alias("r")).collect()
    workers = dict(json.loads(r["r"]) for r in rows)
    embedded = [seen for seen in workers.values() if seen[0]]
    assert embedded, f"no worker of {workers} has the model: were the workers replaced?"
    assert all(seen == [1, "1"] for seen in embedded), workers


def test_worker_environment():
    pytest.importorskip("pyspark")
    from biomed_jax.spark import worker_environment

    assert worker_environment(3) == {"PJRT_NPROC": "3", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert worker_environment(1, ["0", "2"])["CUDA_VISIBLE_DEVICES"] == "0,2"
    with pytest.raises(ValueError, match="cpus must be positive"):
        worker_environment(0)
