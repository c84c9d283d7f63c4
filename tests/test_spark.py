"""biomed_jax.spark on a real local Spark (local[2]): embed_column and BertEmbeddings equal
`embed` on real PubMed texts (with a null, an empty and over-long texts), in order, as arrays
or ML Vectors, tokens with their metadata; a saved and loaded PipelineModel; Parquet round
trips; every bad setting refused on the driver before any job; the counts (truncated texts,
padding) on the driver; non-string columns fail naming the column; the model is loaded once
per Python worker. Needs Java; skips without it, except in CI (CI=true), where it fails
instead."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import REPO

from biomed_jax import from_pretrained

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
            got = _array(value).astype(np.float32)
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def _check_tokens(got, expected, vocab):
    assert len(got) == len(expected)
    for rows, want in zip(got, expected):
        if want is None:
            assert rows is None
            continue
        assert [r["token"] for r in rows] == want["tokens"]
        assert [r["pieceId"] for r in rows] == [vocab[t] for t in want["tokens"]]
        assert {r["sentence"] for r in rows} == {0}
        for r, (start, stop) in zip(rows, want["offsets"].tolist()):
            span = (start, stop - 1) if stop > start else (None, None)
            assert (r["begin"], r["end"]) == span
            word_start = None if stop == start else not r["token"].startswith("##")
            assert r["isWordStart"] is word_start
        vectors = np.asarray([_array(r["embedding"]) for r in rows], np.float32)
        np.testing.assert_allclose(vectors, want["embeddings"], atol=ATOL, rtol=0)


def _array(value):
    """A float array, an ML Vector, or a list of either, as a numpy array."""
    if isinstance(value, list):
        return np.asarray([_array(x) for x in value])
    return value.toArray() if hasattr(value, "toArray") else np.asarray(value)


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
    vocab = from_pretrained(bert_dir).tokenizer.get_vocab()
    _check_tokens(got, _expected(texts, bert_dir, **kwargs), vocab)
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
        "outputAsVector": False,
    }
    assert (embedder.getModel(), embedder.getPooling(), embedder.getLayers()) == (
        str(bert_dir),
        "mean",
        [0, 2, 1],
    )
    assert (embedder.getBatchSize(), embedder.getMaxSentenceLength(), embedder.getStride()) == (
        2,
        128,
        16,
    )
    assert embedder.getOutputAsVector() is False
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


def test_bad_settings_are_refused_on_the_driver_before_any_job(spark, frame, bert_dir, tmp_path):
    """Each bad setting fails where embed_column (or BertEmbeddings.transform) is called, with
    a message naming it, and Spark never runs a job for it (no task, no model load)."""
    import shutil

    import transformers

    from biomed_jax.spark import BertEmbeddings, embed_column

    decoder = tmp_path / "decoder"
    transformers.BioGptConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                              intermediate_size=37, vocab_size=99).save_pretrained(decoder)  # fmt: skip
    untokenized = tmp_path / "untokenized"
    untokenized.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(bert_dir / name, untokenized / name)
    model = str(bert_dir)
    bad = [
        (dict(model=model, batch_size=0), ValueError, r"batch_size must be in \[1, "),
        (dict(model=model, layers=7), ValueError, "layer 7 out of range: the model has 3 hidden"),
        (dict(model=model, layers=[0, -4]), ValueError, "layer -4 out of range"),
        (dict(model=model, layers=[]), ValueError, "layers must be an int or a non-empty list"),
        (dict(model=model, pooling="max"), ValueError, "pooling must be one of"),
        (dict(model=model, max_length=1000), ValueError, "exceeds the model's 128 positions"),
        (dict(model=model, max_length=64, stride=62), ValueError, "stride must be in 0..61"),
        (dict(model=model, as_vector="yes"), TypeError, "as_vector must be True or False"),
        (dict(model=str(tmp_path / "missing")), ValueError, "is not a directory the driver"),
        (dict(model=str(bert_dir / "config.json")), ValueError, "is a file"),
        (dict(model=str(decoder)), ValueError, "needs a BertModel or .* got a BioGptModel"),
        (dict(model=str(untokenized)), ValueError, "has no tokenizer files"),
    ]
    tracker = spark.sparkContext.statusTracker()
    jobs = set(tracker.getJobIdsForGroup())  # every job so far (none of these tests sets groups)
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            frame.select(embed_column("text", **kwargs)).collect()
    with pytest.raises(ValueError, match="layer 7 out of range"):
        BertEmbeddings(model=model, layers=7).transform(frame).collect()
    with pytest.raises(ValueError, match="batch_size must be in"):
        BertEmbeddings(model=model).setBatchSize(0).transform(frame)
    conf = spark.sparkContext._conf  # as SparkSession.builder.config leaves it, after launch
    conf.set("spark.pyspark.python", "/opt/other/bin/python")
    try:
        with pytest.raises(ValueError, match="PySpark reads it only at launch"):
            frame.select(embed_column("text", model=model)).collect()
    finally:
        conf.set("spark.pyspark.python", sys.executable)
    assert set(tracker.getJobIdsForGroup()) == jobs  # no job was submitted
    with pytest.raises(TypeError, match="layers"):
        BertEmbeddings(layers=["a"])


def test_counts_of_truncation_and_padding_reach_the_driver(spark, frame, texts, bert_dir):
    """The workers' counts (EmbedStats) arrive in an accumulator: the texts truncated (they
    warn only in the executors' logs), tokens and padded tokens."""
    from biomed_jax import BertTokenizer, embed
    from biomed_jax.pipelines import EmbedStats
    from biomed_jax.spark import BertEmbeddings, embed_column, embed_stats

    stats = embed_stats(spark)
    frame.select(embed_column("text", model=str(bert_dir), stats=stats)).collect()
    present = [t for t in texts if t is not None]
    direct = EmbedStats()
    with pytest.warns(UserWarning, match="truncated"):
        embed(present, model=str(bert_dir), stats=direct)
    assert stats.value["texts"] == direct.texts == len(present)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    longer = sum(len(tokenizer(t)["input_ids"]) > 128 for t in present)
    assert longer == 4  # three titles, the article (see `texts`)
    assert stats.value["truncated"] == direct.truncated == longer
    assert stats.value["tokens"] == direct.tokens
    assert stats.value["padded_tokens"] > stats.value["tokens"]
    stage = BertEmbeddings(inputCol="text", outputCol="e", model=str(bert_dir))
    stage.transform(frame).collect()
    assert stage.stats.value == stats.value


def test_vector_output_equals_embed(spark, frame, texts, bert_dir, tmp_path):
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    from biomed_jax.spark import BertEmbeddings, embed_column

    single = frame.select(
        "id", embed_column("text", model=str(bert_dir), as_vector=True).alias("e")
    )
    assert isinstance(single.schema["e"].dataType, VectorUDT)
    _check_pooled(_by_id(single), _expected(texts, bert_dir))
    stage = BertEmbeddings(inputCol="text", outputCol="e", model=str(bert_dir), outputAsVector=True)
    stage.setPooling("mean").setLayers([0, 2, 1]).setBatchSize(2).setStride(16)
    several = stage.transform(frame).select("id", "e")
    assert several.schema["e"].dataType == T.ArrayType(VectorUDT(), True)
    back = _through_parquet(spark, several, tmp_path / "vectors.parquet")
    _check_pooled(_by_id(back), _expected(texts, bert_dir, **MEAN))
    kwargs = dict(pooling="none", max_length=64)
    tokens = embed_column("text", model=str(bert_dir), as_vector=True, **kwargs)
    got = _by_id(frame.select("id", tokens.alias("e")))
    vocab = from_pretrained(bert_dir).tokenizer.get_vocab()
    _check_tokens(got, _expected(texts, bert_dir, **kwargs), vocab)


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
