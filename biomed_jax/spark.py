"""Spark: `embed` as a DataFrame column (`embed_column`) or a `pyspark.ml` Transformer
(`BertEmbeddings`), run in Spark's Python workers (the `spark` extra: pyspark, pandas, pyarrow).

The driver checks every setting before any job: types and ranges, and, reading the model's
config.json and tokenizer without its weights, the architecture, layers and positions.
Rows travel to a worker as Arrow batches (`spark.sql.execution.arrow.maxRecordsPerBatch` rows,
10,000 by default) through a pandas iterator UDF; each batch is one `embed` call, which groups
its texts by length bucket. A null text gives null; every other row gives exactly what `embed`
gives for it (over-long texts: truncated, counted in the `embed_stats` accumulator and warned
about in the executor's log, or windows with `stride`); a value that is not a string fails the
task with the column's name.

Worker processes: Spark reuses a Python worker across tasks (`spark.python.worker.reuse`, on
by default). A worker loads the model on its first batch and keeps it in this module's cache,
keyed by `model`, for the life of the process. Before that first load, while JAX has no
backend in the process yet (the driver never starts one for this), the worker sets, unless
already set in its environment (`worker_environment`):
- `PJRT_NPROC` = the task's CPUs (`spark.task.cpus`, 1 by default): the size of XLA:CPU's
  thread pool, so the executor's concurrent workers (`spark.executor.cores / spark.task.cpus`)
  share its cores instead of each one running a thread per core of the machine.
- `XLA_PYTHON_CLIENT_PREALLOCATE=false`: on GPU, JAX allocates as it goes instead of taking
  75 % of the device up front, so several workers can share one GPU.
- `CUDA_VISIBLE_DEVICES` = the task's GPU addresses, when Spark schedules GPUs
  (`spark.task.resource.gpu.amount`); a reused worker keeps the GPU of its first task.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import pandas as pd
    from pyspark import Accumulator, AccumulatorParam, SparkContext, TaskContext, keyword_only
    from pyspark.ml import Transformer
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.param import Param, Params, TypeConverters
    from pyspark.ml.param.shared import HasInputCol, HasOutputCol
    from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
    from pyspark.sql import Column, DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "biomed_jax.spark needs pyspark with pandas and pyarrow: pip install 'pyspark[sql]>=3.5' "
        "(in a checkout of biomed_jax: pip install '.[spark]')"
    ) from e

from biomed_jax import hub
from biomed_jax import validation as v
from biomed_jax.loading import MissingTokenizer, Pretrained, build, from_pretrained, load_tokenizer
from biomed_jax.pipelines._common import DEFAULT_ENCODER, ENCODERS
from biomed_jax.pipelines.embed import POOLINGS, EmbedStats, embed, embed_options

__all__ = ["BertEmbeddings", "embed_column", "embed_stats", "worker_environment"]
STATS_FIELDS = tuple(f.name for f in dataclasses.fields(EmbedStats))


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What a worker needs to embed a batch: `embed`'s arguments, the model as a name or path."""

    model: str
    pooling: str
    layers: int | tuple[int, ...]
    max_length: int | None
    stride: int | None
    batch_size: int

    @property
    def single_layer(self) -> bool:
        return isinstance(self.layers, int)


def _check_layers(layers: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        return layers
    chosen = tuple(layers)
    if not chosen or not all(isinstance(k, int) and not isinstance(k, bool) for k in chosen):
        raise ValueError(f"layers must be an int or a non-empty list of ints, got {layers!r}")
    return chosen


def _return_type(pooling: str, single_layer: bool) -> T.DataType:
    """array<float> per text ([D]), array<array<float>> ([L, D]); "none": one struct per token."""
    vector = T.ArrayType(T.FloatType())
    embedding = vector if single_layer else T.ArrayType(vector)
    if pooling != "none":
        return embedding
    token = T.StructType(
        [
            T.StructField("begin", T.IntegerType()),
            T.StructField("end", T.IntegerType()),
            T.StructField("token", T.StringType()),
            T.StructField("sentence", T.IntegerType()),
            T.StructField("pieceId", T.IntegerType()),
            T.StructField("isWordStart", T.BooleanType()),
            T.StructField("embedding", embedding),
        ]
    )
    return T.ArrayType(token)


def _as_vectors(column: Column, pooling: str, single_layer: bool) -> Column:
    """The UDF's float arrays as `pyspark.ml.linalg` dense Vectors (null stays null)."""

    def vectors(embedding: Column) -> Column:
        return (
            array_to_vector(embedding) if single_layer else F.transform(embedding, array_to_vector)
        )

    if pooling == "none":
        return F.transform(column, lambda t: t.withField("embedding", vectors(t["embedding"])))
    return F.when(column.isNotNull(), vectors(column))  # array_to_vector fails on null


# ---- worker side ---------------------------------------------------------------------------

_MODELS: dict[str, Pretrained] = {}  # this process's loaded models, by `model`
_LOADS: dict[str, int] = {}  # how often this process loaded each model (1 each, by design)


def worker_environment(cpus: int, gpus: Sequence[str] = ()) -> dict[str, str]:
    """The JAX settings for a Spark Python worker whose task has `cpus` cores and the GPUs
    `gpus` (addresses): XLA:CPU threads, no GPU memory preallocation, the task's GPUs."""
    if cpus < 1:
        raise ValueError(f"cpus must be positive, got {cpus}")
    env = {"PJRT_NPROC": str(cpus), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _configure_worker() -> None:
    """Apply `worker_environment` for the current task (where unset), before JAX starts."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(
            "JAX already runs in this Spark worker; its thread and memory settings stay as they are",
            stacklevel=2,
        )
        return
    task = TaskContext.get()
    cpus = task.cpus() if task is not None else 1
    gpus = task.resources().get("gpu") if task is not None else None
    for key, value in worker_environment(cpus, gpus.addresses if gpus else ()).items():
        os.environ.setdefault(key, value)


def _worker_model(model: str) -> Pretrained:
    """The `Pretrained` for `model`, loaded on this worker's first call and then kept."""
    if model not in _MODELS:
        if not _MODELS:
            _configure_worker()
        _MODELS[model] = from_pretrained(model)
        _LOADS[model] = _LOADS.get(model, 0) + 1
    return _MODELS[model]


def _spark_value(result: Any, pooling: str, single_layer: bool, tokenizer: Any) -> Any:
    """One `embed` result as the UDF's row value (lists of 1-d float32 arrays for Arrow)."""
    if pooling != "none":
        return result if single_layer else list(result)
    rows = []
    ids = tokenizer.convert_tokens_to_ids(result["tokens"])
    for vector, (start, stop), token, piece in zip(
        result["embeddings"], result["offsets"].tolist(), result["tokens"], ids
    ):
        text = stop > start  # special tokens cover no text: no span, no word
        rows.append(
            {
                "begin": start if text else None,
                "end": stop - 1 if text else None,
                "token": token,
                "sentence": 0,  # the row's text is one sentence (no sentence splitting)
                "pieceId": piece,
                "isWordStart": not token.startswith("##") if text else None,
                "embedding": vector if single_layer else list(vector),
            }
        )
    return rows


def _embed_batch(
    texts: pd.Series, column: str, settings: _Settings, stats: Accumulator | None = None
) -> pd.Series:
    """The UDF's output for one Arrow batch: `embed` of the non-null texts, null for null;
    its counts (`EmbedStats`) added to `stats`."""
    if not (pd.api.types.is_object_dtype(texts) or pd.api.types.is_string_dtype(texts)):
        raise TypeError(f"column {column!r} must hold strings, got {texts.dtype} values")
    present = ~texts.isna().to_numpy()
    values = texts[present].tolist()
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"column {column!r} must hold strings, got a {type(value).__name__}")
    out: list[Any] = [None] * len(texts)
    if values:
        pretrained = _worker_model(settings.model)
        counts = EmbedStats()
        results = embed(
            values,
            model=pretrained,
            layers=settings.layers,
            pooling=settings.pooling,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            stride=settings.stride,
            stats=counts,
        )
        for row, result in zip(present.nonzero()[0], results):
            value = _spark_value(
                result, settings.pooling, settings.single_layer, pretrained.tokenizer
            )
            out[row] = value
        if stats is not None:
            stats.add(dataclasses.asdict(counts))
    return pd.Series(out, index=texts.index, dtype=object)


# ---- driver side ---------------------------------------------------------------------------


class _CountsParam(AccumulatorParam):
    """Accumulates dicts of counts key by key (the `EmbedStats` fields)."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return dict.fromkeys(value, 0)

    def addInPlace(self, total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
        for key, count in more.items():
            total[key] = total.get(key, 0) + count
        return total


def embed_stats(spark: Any = None) -> Accumulator:
    """An accumulator for `embed_column(..., stats=)`: after an action its `.value` is a dict of
    the texts embedded, those truncated to max_length, their tokens and the tokens computed with
    padding, summed over every task (`spark`: a SparkSession or SparkContext; default the active
    one). A task Spark runs again (a failure, a recomputed stage) counts again."""
    context = getattr(spark, "sparkContext", spark) or SparkContext.getOrCreate()
    return context.accumulator(dict.fromkeys(STATS_FIELDS, 0), _CountsParam())


def _driver_model(model: str) -> Pretrained | None:
    """The model's config, module and tokenizer, without weights, as the driver sees it: a
    directory, or a hub id's config and tokenizer files (from the driver's hub cache, or
    downloaded). None when a hub id cannot be reached from the driver (offline)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"model {model!r} is a file; expected a model directory or a hub id")
    if not path.is_dir() and not hub.is_hub_id(model):
        raise ValueError(
            f"model {model!r} is not a directory the driver can read (nor a hub id): a local "
            "path must exist on the driver and on every executor (a shared disk), so that the "
            "settings are checked before any task runs"
        )
    try:
        directory = hub.resolve(model, weights=False).path
    except hub.ModelNotFoundError as e:
        if isinstance(e.__cause__, LocalEntryNotFoundError):
            warnings.warn(
                f"cannot check the settings against {model}'s config.json on the driver ({e}); "
                "the executors will",
                stacklevel=3,
            )
            return None
        raise ValueError(str(e)) from e
    config, module = build(directory)
    tokenizer = load_tokenizer(directory, config)
    if tokenizer is None:
        tokenizer = MissingTokenizer(directory, ())
    return Pretrained(config, None, module, tokenizer, directory)


def _check_worker_python() -> None:
    """`spark.pyspark.python` set once the driver runs (SparkSession.builder.config) does not
    reach the workers: PySpark sends them the PYSPARK_PYTHON of the driver's environment
    (default python3), and they fail on `import biomed_jax` after every retry."""
    context = SparkContext._active_spark_context
    if context is None:  # Spark Connect, or no session yet
        return
    asked = context.getConf().get("spark.pyspark.python")
    if asked and asked != context.pythonExec:
        raise ValueError(
            f"spark.pyspark.python={asked} is set but the Python workers run "
            f"{context.pythonExec}: PySpark reads it only at launch. Pass it to spark-submit "
            f"(--conf spark.pyspark.python={asked}), or set PYSPARK_PYTHON={asked} in the "
            "environment before the session starts"
        )


def _check_on_driver(settings: _Settings) -> None:
    """Every setting checked before any Spark job, as a worker's `embed` would check it: types
    and ranges, the workers' Python, then the model (an encoder with a tokenizer), its layers
    and positions."""
    v.choice("pooling", settings.pooling, POOLINGS)
    v.integer("batch_size", settings.batch_size, low=1)
    v.optional_integer("max_length", settings.max_length, low=1)
    v.optional_integer("stride", settings.stride, low=0)
    _check_worker_python()
    pretrained = _driver_model(settings.model)
    if pretrained is None:
        return
    kind = type(pretrained.module).__name__
    if kind not in ENCODERS:
        raise ValueError(
            f"embed_column needs a {' or '.join(ENCODERS)} model, got a {kind} ({settings.model})"
        )
    if isinstance(pretrained.tokenizer, MissingTokenizer):
        raise ValueError(f"{settings.model} has no tokenizer files: embed_column needs them")
    layers = settings.layers if settings.single_layer else list(settings.layers)
    embed_options(
        pretrained,
        layers,
        settings.pooling,
        settings.batch_size,
        settings.max_length,
        settings.stride,
    )


def embed_column(
    col: str | Column,
    *,
    model: str | os.PathLike = DEFAULT_ENCODER,
    pooling: str = "cls",
    layers: int | Sequence[int] = -1,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    as_vector: bool = False,
    stats: Accumulator | None = None,
) -> Column:
    """A Column of `embed(text, ...)` for each text of the string column `col` (null for null).

    model: a hub id or a directory the driver and every executor can read. pooling
    "cls"/"mean": array<float> for an int `layers`, array<array<float>> (one per layer) for a
    list. pooling "none": per text an array of token structs {begin, end, token, sentence,
    pieceId, isWordStart, embedding}, special tokens included, where begin/end are the first
    and last character of the token in the text (inclusive, as in Spark NLP; null for special
    tokens), sentence is 0 (a row is one sentence), pieceId the token's id and isWordStart
    whether it starts a word (not a "##" piece). max_length, stride, batch_size: as in `embed`.
    as_vector: `pyspark.ml.linalg` dense Vectors instead of float arrays (each per-layer or
    per-token embedding a Vector). stats: an `embed_stats()` accumulator the workers add their
    counts to (texts, truncated, tokens, padded tokens).
    Every setting is checked here, on the driver, against the model's config.json and
    tokenizer (read without the weights), before any job runs.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    settings = _Settings(str(model), pooling, _check_layers(layers), max_length, stride, batch_size)
    _check_on_driver(settings)
    as_vector = v.boolean("as_vector", as_vector)
    name = col if isinstance(col, str) else str(col)

    def embed_batches(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for texts in batches:
            yield _embed_batch(texts, name, settings, stats)

    udf = pandas_udf(embed_batches, _return_type(pooling, settings.single_layer))
    column = udf(col)
    return _as_vectors(column, pooling, settings.single_layer) if as_vector else column


def _int_or_ints(value: Any) -> int | list[int]:
    """Param converter for `layers`: an int stays an int (one layer), a list stays a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return list(_check_layers(TypeConverters.toListInt(value)))


def _optional_int(value: Any) -> int | None:
    return None if value is None else TypeConverters.toInt(value)


class BertEmbeddings(
    Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable
):
    """Adds `outputCol` = `embed_column(inputCol, ...)`; Params named as Spark NLP's
    BertEmbeddings where it has one (maxSentenceLength is `embed`'s max_length)."""

    model = Param(Params._dummy(), "model", "hub id or path", TypeConverters.toString)
    pooling = Param(Params._dummy(), "pooling", f"one of {POOLINGS}", TypeConverters.toString)
    layers = Param(Params._dummy(), "layers", "hidden state index, or a list", _int_or_ints)
    batchSize = Param(Params._dummy(), "batchSize", "rows per forward pass", TypeConverters.toInt)
    maxSentenceLength = Param(Params._dummy(), "maxSentenceLength", "tokens per row", _optional_int)
    stride = Param(Params._dummy(), "stride", "window overlap (None: truncate)", _optional_int)
    outputAsVector = Param(
        Params._dummy(), "outputAsVector", "ML Vectors instead of arrays", TypeConverters.toBoolean
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "text",
        outputCol: str = "embeddings",
        model: str = DEFAULT_ENCODER,
        pooling: str = "cls",
        layers: int | list[int] = -1,
        batchSize: int = 32,
        maxSentenceLength: int | None = None,
        stride: int | None = None,
        outputAsVector: bool = False,
    ) -> None:
        super().__init__()
        self.stats: Accumulator | None = None  # the last transform's `embed_stats()`
        self._setDefault(
            inputCol="text",
            outputCol="embeddings",
            model=DEFAULT_ENCODER,
            pooling="cls",
            layers=-1,
            batchSize=32,
            maxSentenceLength=None,
            stride=None,
            outputAsVector=False,
        )
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> BertEmbeddings:
        return self._set(**self._input_kwargs)

    def setInputCol(self, value: str) -> BertEmbeddings:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> BertEmbeddings:
        return self._set(outputCol=value)

    def setModel(self, value: str) -> BertEmbeddings:
        return self._set(model=value)

    def setPooling(self, value: str) -> BertEmbeddings:
        return self._set(pooling=value)

    def setLayers(self, value: int | list[int]) -> BertEmbeddings:
        return self._set(layers=value)

    def setBatchSize(self, value: int) -> BertEmbeddings:
        return self._set(batchSize=value)

    def setMaxSentenceLength(self, value: int | None) -> BertEmbeddings:
        return self._set(maxSentenceLength=value)

    def setStride(self, value: int | None) -> BertEmbeddings:
        return self._set(stride=value)

    def setOutputAsVector(self, value: bool) -> BertEmbeddings:
        return self._set(outputAsVector=value)

    def getModel(self) -> str:
        return self.getOrDefault(self.model)

    def getPooling(self) -> str:
        return self.getOrDefault(self.pooling)

    def getLayers(self) -> int | list[int]:
        return self.getOrDefault(self.layers)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getMaxSentenceLength(self) -> int | None:
        return self.getOrDefault(self.maxSentenceLength)

    def getStride(self) -> int | None:
        return self.getOrDefault(self.stride)

    def getOutputAsVector(self) -> bool:
        return self.getOrDefault(self.outputAsVector)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        column = self.getInputCol()
        if column not in dataset.columns:
            raise ValueError(f"inputCol {column!r} is not a column of {dataset.columns}")
        kind = dataset.schema[column].dataType
        if not isinstance(kind, T.StringType):
            raise TypeError(
                f"inputCol {column!r} must be a string column, got {kind.simpleString()}"
            )
        stats = embed_stats(dataset.sparkSession)
        embeddings = embed_column(
            column,
            model=self.getModel(),
            pooling=self.getPooling(),
            layers=self.getLayers(),
            max_length=self.getMaxSentenceLength(),
            stride=self.getStride(),
            batch_size=self.getBatchSize(),
            as_vector=self.getOutputAsVector(),
            stats=stats,
        )
        self.stats = stats
        return dataset.withColumn(self.getOutputCol(), embeddings)
