"""Spark: `embed` as a DataFrame column (`embed_column`) or a `pyspark.ml` Transformer
(`BertEmbeddings`), run in Spark's Python workers (the `spark` extra: pyspark, pandas, pyarrow).

Rows travel to a worker as Arrow batches (`spark.sql.execution.arrow.maxRecordsPerBatch` rows,
10,000 by default) through a pandas iterator UDF; each batch is one `embed` call, which sorts
its texts by length and buckets them. A null text gives null; every other row gives exactly
what `embed` gives for it (over-long texts: truncated with a warning in the executor's log, or
windows with `stride`); a value that is not a string fails the task with the column's name.

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

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

try:
    import pandas as pd
    from pyspark import TaskContext, keyword_only
    from pyspark.ml import Transformer
    from pyspark.ml.param import Param, Params, TypeConverters
    from pyspark.ml.param.shared import HasInputCol, HasOutputCol
    from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
    from pyspark.sql import Column, DataFrame
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "biomed_jax.spark needs pyspark with pandas and pyarrow: pip install 'pyspark[sql]>=3.5' "
        "(in a checkout of biomed_jax: pip install '.[spark]')"
    ) from e

from biomed_jax.loading import Pretrained, from_pretrained
from biomed_jax.pipelines._common import DEFAULT_ENCODER
from biomed_jax.pipelines.embed import POOLINGS, embed

__all__ = ["BertEmbeddings", "embed_column", "worker_environment"]


@dataclass(frozen=True)
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
            T.StructField("embedding", embedding),
        ]
    )
    return T.ArrayType(token)


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


def _spark_value(result: Any, pooling: str, single_layer: bool) -> Any:
    """One `embed` result as the UDF's row value (lists of 1-d float32 arrays for Arrow)."""
    if pooling != "none":
        return result if single_layer else list(result)
    rows = []
    for vector, (start, stop), token in zip(
        result["embeddings"], result["offsets"].tolist(), result["tokens"]
    ):
        span = (start, stop - 1) if stop > start else (None, None)  # special tokens: no text
        embedding = vector if single_layer else list(vector)
        rows.append({"begin": span[0], "end": span[1], "token": token, "embedding": embedding})
    return rows


def _embed_batch(texts: pd.Series, column: str, settings: _Settings) -> pd.Series:
    """The UDF's output for one Arrow batch: `embed` of the non-null texts, null for null."""
    if not (pd.api.types.is_object_dtype(texts) or pd.api.types.is_string_dtype(texts)):
        raise TypeError(f"column {column!r} must hold strings, got {texts.dtype} values")
    present = ~texts.isna().to_numpy()
    values = texts[present].tolist()
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"column {column!r} must hold strings, got a {type(value).__name__}")
    out: list[Any] = [None] * len(texts)
    if values:
        results = embed(
            values,
            model=_worker_model(settings.model),
            layers=settings.layers,
            pooling=settings.pooling,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            stride=settings.stride,
        )
        for row, result in zip(present.nonzero()[0], results):
            out[row] = _spark_value(result, settings.pooling, settings.single_layer)
    return pd.Series(out, index=texts.index, dtype=object)


# ---- driver side ---------------------------------------------------------------------------


def embed_column(
    col: str | Column,
    *,
    model: str | os.PathLike = DEFAULT_ENCODER,
    pooling: str = "cls",
    layers: int | Sequence[int] = -1,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
) -> Column:
    """A Column of `embed(text, ...)` for each text of the string column `col` (null for null).

    model: a hub id or a path every executor can read. pooling "cls"/"mean": array<float> for
    an int `layers`, array<array<float>> (one per layer) for a list. pooling "none": per text an
    array of token structs {begin, end, token, embedding}, special tokens included, where
    begin/end are the first and last character of the token in the text (inclusive, as in
    Spark NLP; null for special tokens). max_length, stride, batch_size: as in `embed`.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    settings = _Settings(
        str(model), pooling, _check_layers(layers), max_length, stride, int(batch_size)
    )
    name = col if isinstance(col, str) else str(col)

    def embed_batches(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for texts in batches:
            yield _embed_batch(texts, name, settings)

    udf = pandas_udf(embed_batches, _return_type(pooling, settings.single_layer))
    return udf(col)


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
    ) -> None:
        super().__init__()
        self._setDefault(
            inputCol="text",
            outputCol="embeddings",
            model=DEFAULT_ENCODER,
            pooling="cls",
            layers=-1,
            batchSize=32,
            maxSentenceLength=None,
            stride=None,
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

    def _transform(self, dataset: DataFrame) -> DataFrame:
        column = self.getInputCol()
        if column not in dataset.columns:
            raise ValueError(f"inputCol {column!r} is not a column of {dataset.columns}")
        kind = dataset.schema[column].dataType
        if not isinstance(kind, T.StringType):
            raise TypeError(
                f"inputCol {column!r} must be a string column, got {kind.simpleString()}"
            )
        embeddings = embed_column(
            column,
            model=self.getOrDefault(self.model),
            pooling=self.getOrDefault(self.pooling),
            layers=self.getOrDefault(self.layers),
            max_length=self.getOrDefault(self.maxSentenceLength),
            stride=self.getOrDefault(self.stride),
            batch_size=self.getOrDefault(self.batchSize),
        )
        return dataset.withColumn(self.getOutputCol(), embeddings)
