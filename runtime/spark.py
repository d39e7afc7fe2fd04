"""Spark batch scoring: add `score` and `oov` columns to a DataFrame of raw requests.

    from din_runtime.spark import score
    scored = score(requests, "models/demo")                           # the first bad row fails the job
    scored, errors = score(requests, "models/demo", on_error="skip")  # bad rows set aside in `errors`

Columns are the request fields of docs/design.md: sparse fields and behaviour targets as string or integer
columns, histories as arrays of them (oldest first), dense fields as numbers. Built on `mapInArrow`: each
Python worker process loads the model once (a per-process cache keyed by the model directory) and scores
the Arrow batches Spark hands it with `Scorer.score_arrays`. A clean batch is encoded on its Arrow columns,
vectorised, into the arrays `Scorer.encode` would make of its rows; a batch with a value that needs
encode's row checks goes through `Scorer.encode` row by row, as in din-score, so a row gets din-score's
score and verdict either way. Needs the `spark` extra (pyspark, pandas, pyarrow); nothing else in
din_runtime imports this module.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import numpy as np
from din_runtime.arrow import ArrowEncoder, decimals_as_doubles, oov_per_row
from din_runtime.errors import DinRuntimeError, InputError, ModelDirError
from din_runtime.features import LENGTH
from din_runtime.manifest import MANIFEST_FILE, Manifest, load_manifest
from din_runtime.scorer import Scorer

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

SPARK_INSTALL = "pip install 'din-toolkit[spark]'"
SCORE, OOV = "score", "oov"
# The per-row verdict of skip mode, split off into the errors frame; null on scored rows.
_ERROR = "__din_error"
_ERROR_FIELDS = (("partition", "int"), ("row", "bigint"), ("field", "string"), ("error", "string"),
                 ("raw", "string"))


@dataclass(frozen=True)
class Scored:
    """Skip mode's result: `scores` (the rows that scored) and `errors` (one row per rejected request).

    Both come from one scoring pass, persisted (memory and disk) so that writing both scores each row once;
    `unpersist()` frees it. Unpacks as `scores, errors = score(..., on_error="skip")`.
    """

    scores: DataFrame
    errors: DataFrame
    _pass: DataFrame

    def __iter__(self) -> Iterator[DataFrame]:
        return iter((self.scores, self.errors))

    def unpersist(self) -> None:
        self._pass.unpersist()


@overload
def score(df: DataFrame, model_dir: str | Path, *, on_error: Literal["stop"] = ..., id_field: str | None = ...,
          device: str = ..., threads: int | None = ..., short_history: bool = ...) -> DataFrame: ...
@overload
def score(df: DataFrame, model_dir: str | Path, *, on_error: Literal["skip"], id_field: str | None = ...,
          device: str = ..., threads: int | None = ..., short_history: bool = ...) -> Scored: ...
def score(df: DataFrame, model_dir: str | Path, *, on_error: Literal["stop", "skip"] = "stop",
          id_field: str | None = None, device: str = "cpu", threads: int | None = 1,
          short_history: bool = True) -> DataFrame | Scored:
    """The rows of `df` with `score` (float, the click probability) and `oov` (int, how many of the row's ids
    are not in the model's vocabularies) added; lazy, like any DataFrame transformation.

    `model_dir` is read on each worker: a path on storage every node mounts, or the name of a directory
    shipped with `spark-submit --archives model.zip#NAME` or `SparkContext.addFile(dir, recursive=True)`
    (looked up in the SparkFiles directory when it is not a path there). `on_error="stop"` fails the job at
    the first bad row with its partition, row and field; `"skip"` returns `Scored(scores, errors)`, with
    rows in = scores + errors. `id_field` names a column that identifies rows in error messages and is
    copied into `errors`. `device`, `threads` and `short_history` are those of `Scorer.load` for each
    worker's Scorer (default 1 thread: Spark runs one task per core; a model directory with a short-history
    graph then holds both graphs in every worker, `short_history=False` only model.onnx).
    """
    if on_error not in ("stop", "skip"):
        raise DinRuntimeError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    types = _pyspark_types()
    schema = df.schema
    for name in (SCORE, OOV) + ((_ERROR,) if on_error == "skip" else ()):
        if name in schema.names:
            raise InputError(f"the DataFrame already has a column {name!r}: drop or rename it first", field=name)
    if id_field is not None and id_field not in schema.names:
        raise InputError("no such column in the DataFrame (named by id_field)", field=id_field)
    manifest = _driver_manifest(str(model_dir))
    if manifest is not None:
        _check_schema(schema, manifest)
    extra = [types.StructField(SCORE, types.FloatType()), types.StructField(OOV, types.IntegerType())]
    if on_error == "skip":
        kinds = {"int": types.IntegerType(), "bigint": types.LongType(), "string": types.StringType()}
        extra.append(types.StructField(_ERROR, types.StructType(
            [types.StructField(n, kinds[t]) for n, t in _ERROR_FIELDS])))
    task = partial(_score_partition, model_dir=str(model_dir), skip=on_error == "skip", id_field=id_field,
                   device=device, threads=threads, short_history=short_history,
                   unchecked=schema if manifest is None else None)
    scored = df.mapInArrow(task, types.StructType(list(schema.fields) + extra))
    if on_error == "stop":
        return scored
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    failed = F.col(_ERROR).isNotNull()
    errors = scored.where(failed).select(
        F.col(f"{_ERROR}.partition").alias("partition"), F.col(f"{_ERROR}.row").alias("row"),
        *([F.col(id_field)] if id_field else []),
        *(F.col(f"{_ERROR}.{n}").alias(n) for n, _ in _ERROR_FIELDS[2:]))
    return Scored(scored.where(~failed).drop(_ERROR), errors, scored)


def _request_fields(manifest: Manifest) -> tuple[str, ...]:
    """The columns a request DataFrame needs for this model: sparse fields, targets, histories, dense."""
    return tuple(name for name, kind in manifest.spec.request_kinds.items() if kind != LENGTH)


def _check_schema(schema: StructType, manifest: Manifest) -> None:
    """InputError naming the first request column that is missing or of a type no row of it could pass.

    A column's type holds for every row, so a wrong one is refused before any work, in both error modes:
    skip mode would otherwise reject every row. Nulls and values are checked per row, as din-score does.
    """
    types = _pyspark_types()
    ids = (types.StringType, types.ByteType, types.ShortType, types.IntegerType, types.LongType,
           types.FloatType, types.DoubleType)
    numbers = (types.ByteType, types.ShortType, types.IntegerType, types.LongType, types.FloatType,
               types.DoubleType, types.DecimalType)
    present = {f.name: f.dataType for f in schema.fields}
    for name in _request_fields(manifest):
        kind = present.get(name)
        if kind is None:
            raise InputError(f"no such column in the DataFrame; the model reads {', '.join(_request_fields(manifest))}",
                             field=name)
        if schema.names.count(name) > 1:
            raise InputError("the DataFrame has two columns of this name", field=name)
        if name in manifest.histories:
            if not (isinstance(kind, types.ArrayType) and isinstance(kind.elementType, ids)):
                raise InputError(f"a history must be an array of string or integer ids (oldest first), got "
                                 f"{kind.simpleString()}; a delimited string splits with F.split(col, '\\\\|')",
                                 field=name)
        elif name in manifest.dense:
            if not isinstance(kind, numbers):
                raise InputError(f"a dense field must be a number column, got {kind.simpleString()}; "
                                 f"cast it: F.col({name!r}).cast('double')", field=name)
        elif not isinstance(kind, ids):
            raise InputError(f"an id must be a string or integer column, got {kind.simpleString()}", field=name)


class _Model(NamedTuple):
    """A worker's Scorer and the Arrow encoder of its vocabularies."""

    scorer: Scorer
    encoder: ArrowEncoder


# One model per Python worker process, kept across batches and tasks (Spark reuses its Python workers:
# spark.python.worker.reuse, on by default). Keyed by where the manifest is and its stat, so a model
# directory exported again at the same path is loaded again, not served stale.
_MODELS: dict[tuple[Any, ...], _Model] = {}
# Scorer.load calls of this process per model directory: the tests read it to prove one load per worker.
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def _worker_model(model_dir: str, device: str = "cpu", threads: int | None = 1, short_history: bool = True) -> _Model:
    """This process's model for `model_dir` (resolved as `score` does), loaded at its first use."""
    path = _resolve(model_dir)
    try:
        stat = (path / MANIFEST_FILE).stat()
    except OSError:
        raise ModelDirError(_not_found(model_dir, path)) from None
    key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size, device, threads, short_history)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            scorer = Scorer.load(path, device=device, threads=threads, short_history=short_history)
            _LOADS[key[0]] += 1
            model = _Model(scorer, ArrowEncoder(scorer.manifest))
            for old in [k for k in _MODELS if k[0] == key[0]]:
                del _MODELS[old]
            _MODELS[key] = model
        return model


def _resolve(model_dir: str) -> Path:
    path = Path(model_dir)
    if path.exists() or path.is_absolute():
        return path
    root = _spark_files_root()
    shipped = Path(root) / model_dir if root else None
    return shipped if shipped is not None and shipped.exists() else path


def _spark_files_root() -> str | None:
    try:
        from pyspark import SparkFiles

        return SparkFiles.getRootDirectory()
    except Exception:  # no SparkContext here (Spark Connect client) or no pyspark: nothing shipped to look in
        return None


def _not_found(model_dir: str, path: Path) -> str:
    root = _spark_files_root()
    where = f"{path}" + (f" nor in the SparkFiles directory {root}" if root and not path.is_absolute() else "")
    return (f"model directory {model_dir!r} not found on this node (looked at {where}): put it on storage every "
            f"node mounts, or ship it with spark-submit --archives model.zip#{Path(model_dir).name}")


def _driver_manifest(model_dir: str) -> Manifest | None:
    """The manifest when the driver can see the model directory (to check the schema before any task runs);
    None when only the workers have it (shipped to executors alone), whose tasks then check each batch."""
    path = _resolve(model_dir)
    if not (path / MANIFEST_FILE).exists():
        return None
    return load_manifest(path)


def _pyspark_types() -> Any:
    try:
        from pyspark.sql import types
    except ImportError:
        raise DinRuntimeError(f"Spark scoring needs pyspark: {SPARK_INSTALL}") from None
    return types


def _score_partition(batches: Iterator[pa.RecordBatch], *, model_dir: str, skip: bool, id_field: str | None,
                     device: str, threads: int | None, short_history: bool,
                     unchecked: StructType | None) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: each batch with its scores (skip mode: and each row's verdict) appended.
    `unchecked`: the DataFrame's schema when the driver could not read the model to check it."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    model = _worker_model(model_dir, device, threads, short_history)
    if unchecked is not None:
        _check_schema(unchecked, model.scorer.manifest)
    fields = _request_fields(model.scorer.manifest)
    offset = 0
    for batch in batches:
        yield _score_batch(model, fields, batch, partition, offset, skip, id_field)
        offset += batch.num_rows


def _score_batch(model: _Model, fields: Sequence[str], batch: pa.RecordBatch, partition: int, offset: int,
                 skip: bool, id_field: str | None) -> pa.RecordBatch:
    import pyarrow as pa

    arrays = model.encoder.inputs(batch)
    if arrays is not None:
        probs = model.scorer.score_arrays(arrays)
        oov = oov_per_row(model.scorer.manifest, arrays)
        bad: list[tuple[int, str | None, str]] = []
    else:
        probs, oov, bad = _score_rows(model.scorer, _rows(batch, fields), skip)
    if bad and not skip:
        i, field, reason = bad[0]
        raise InputError(f"{_where(batch, partition, offset, i, id_field)}"
                         f"{f', field {field!r}' if field else ''}: {reason} (use on_error='skip' to set bad rows "
                         f"aside)")
    n = batch.num_rows
    failed = np.zeros(n, dtype=bool)
    failed[[i for i, _, _ in bad]] = True
    columns = [*batch.columns, pa.array(probs, type=pa.float32(), mask=failed),
               pa.array(oov, type=pa.int32(), mask=failed)]
    names = [*batch.schema.names, SCORE, OOV]
    if skip:
        # One value per bad row (earliest first, as `_spread` places them), in _ERROR_FIELDS' order.
        values = [[partition] * len(bad), [offset + i + 1 for i, _, _ in bad], [f for _, f, _ in bad],
                  [r for _, _, r in bad], [_raw(batch, i) for i, _, _ in bad]]
        errors = pa.StructArray.from_arrays(
            [_spread(pa.array(v, type=t), failed) for v, t in zip(
                values, (pa.int32(), pa.int64(), pa.string(), pa.string(), pa.string()), strict=True)],
            names=[n for n, _ in _ERROR_FIELDS], mask=pa.array(~failed))
        columns.append(errors)
        names.append(_ERROR)
    return pa.RecordBatch.from_arrays(columns, names=names)


def _score_rows(scorer: Scorer, rows: list[dict[str, Any]], skip: bool
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str | None, str]]]:
    """Scores and per-row OOV counts of `rows` (0 where a row is bad), and (index, field, reason) of the bad
    rows, earliest first. Without `skip` only the earliest bad row is found, as din-score stops there."""
    n = len(rows)
    good = list(range(n))
    bad: list[tuple[int, str | None, str]] = []
    try:
        encoded = scorer.encode(rows)
    except InputError as e:
        if not skip:
            return np.zeros(n, np.float32), np.zeros(n, np.int32), [(e.row, e.field, e.reason)]
        # Rare path, as in din-score: find every bad row, then encode the rest together.
        good = []
        for i, row in enumerate(rows):
            try:
                scorer.encode([row])
                good.append(i)
            except InputError as one:
                bad.append((i, one.field, one.reason))
        encoded = scorer.encode([rows[i] for i in good])
    probs = np.zeros(n, np.float32)
    oov = np.zeros(n, np.int32)
    if good:
        probs[good] = scorer.score_arrays(encoded.arrays)
        oov[good] = oov_per_row(scorer.manifest, encoded.arrays)
    return probs, oov, bad


def _rows(batch: pa.RecordBatch, fields: Sequence[str]) -> list[dict[str, Any]]:
    columns = [decimals_as_doubles(batch.column(name)).to_pylist() for name in fields]
    return [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]


def _spread(values: pa.Array, failed: np.ndarray) -> pa.Array:
    """`values` (one per failed row) placed at the failed rows of the batch, null elsewhere."""
    import pyarrow as pa

    index = np.full(len(failed), -1, dtype=np.int64)
    index[failed] = np.arange(int(failed.sum()))
    return values.take(pa.array(index, mask=~failed))


def _where(batch: pa.RecordBatch, partition: int, offset: int, i: int, id_field: str | None) -> str:
    where = f"partition {partition}, row {offset + i + 1}"
    if id_field is not None:
        where += f" ({id_field} {batch.column(id_field)[i].as_py()!r:.80})"
    return where


def _raw(batch: pa.RecordBatch, i: int) -> str:
    return json.dumps(batch.slice(i, 1).to_pylist()[0], ensure_ascii=False, default=str)
