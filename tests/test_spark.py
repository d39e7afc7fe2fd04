"""din_runtime.spark on pyspark local[2]: the same scores and the same bad-row verdicts as din-score, one
Scorer load per Python worker, a model directory shipped as an archive, and schema errors before any job.

Off CI a missing pyspark or java skips this module with the reason printed; on CI (CI=true) it fails.
One SparkSession serves the module: starting the JVM is most of its time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from din_runtime import InputError, load_manifest
from din_runtime.cli import main as score_cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo"
EXAMPLES = REPO / "examples" / "requests.jsonl"
JDK17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'din-toolkit[spark]')"
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        if not (JDK17 / "bin" / "java").exists():
            return "no java: set JAVA_HOME or put java (17 or later) on PATH"
        os.environ["JAVA_HOME"] = str(JDK17)
    return None


_REASON = _missing()
if _REASON is not None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"tests/test_spark.py cannot run on CI: {_REASON}", pytrace=False)
    print(f"\ntests/test_spark.py skipped: {_REASON}", file=sys.__stderr__)
    pytest.skip(_REASON, allow_module_level=True)

import pyarrow as pa  # noqa: E402  (pyspark and its sql extra are known to be present from here on)
from din_runtime import spark as din_spark  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

# pyspark 4.3 warns at each Arrow UDF that it does not yet fully support pandas 3, which the dev setup has.
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
MANIFEST = load_manifest(DEMO)
SCHEMA = ("request_id string, user_id string, gender string, age long, price double, item_id string, "
          "cate_id string, hist_item_id array<string>, hist_cate_id array<string>, label long")


@pytest.fixture(scope="module")
def spark():
    # The workers must be this interpreter, which has din_runtime installed; pyspark's default is `python3`.
    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("din-toolkit-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g")
               .config("spark.python.worker.reuse", "true")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if saved is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = saved


def generated_requests(n: int, seed: int = 0) -> list[dict]:
    """Rows drawn from models/demo's vocabularies, with unseen ids, empty histories and histories longer
    than max_len among them."""
    rng = np.random.default_rng(seed)
    items = list(MANIFEST.vocabs["item_id"])
    cates = list(MANIFEST.vocabs["cate_id"])
    rows = []
    for i in range(n):
        kind = i % 5
        length = {0: 0, 1: int(rng.integers(1, 10)), 2: MANIFEST.max_len + 1 + int(rng.integers(0, 40)),
                  3: MANIFEST.max_len, 4: int(rng.integers(1, 30))}[kind]
        hist_items = [str(x) for x in rng.choice(items, length)]
        hist_cates = [str(x) for x in rng.choice(cates, length)]
        if kind == 4:  # unseen ids in the history, the target and a sparse field
            hist_items[0] = f"new-item-{i}"
            hist_cates[-1] = f"new-cate-{i}"
        rows.append({
            "request_id": f"gen-{i}", "user_id": f"user-{i % 37}",
            "gender": "X" if kind == 4 else str(rng.choice(["F", "M"])),
            "age": int(rng.integers(18, 70)), "price": float(np.float32(rng.uniform(1, 60))),
            "item_id": f"new-item-{i}" if i % 10 == 4 else str(rng.choice(items)),
            "cate_id": str(rng.choice(cates)), "hist_item_id": hist_items, "hist_cate_id": hist_cates,
            "label": int(rng.integers(0, 2)),
        })
    return rows


def request_rows() -> list[dict]:
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()] + generated_requests(300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def din_score(*args: str) -> None:
    result = CliRunner().invoke(score_cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def unseen_ids(row: dict) -> int:
    """The row's ids that models/demo does not know, counting only the history items the runtime keeps."""
    count = sum(str(row[f]) not in MANIFEST.vocabs[MANIFEST.vocab_of(f)]
                for f in (*(s.name for s in MANIFEST.sparse), *MANIFEST.targets))
    for b in MANIFEST.behaviour:
        count += sum(x not in MANIFEST.vocabs[b.vocab] for x in row[b.history][-MANIFEST.max_len:])
    return count


def test_scores_equal_din_score(spark, tmp_path):
    rows = request_rows()
    requests = write_jsonl(tmp_path / "requests.jsonl", rows)
    din_score(DEMO, requests, "--id-field", "request_id", "-o", tmp_path / "scores.jsonl")
    expected = {r["request_id"]: np.float32(r["score"]) for r in read_jsonl(tmp_path / "scores.jsonl")}

    df = spark.read.schema(SCHEMA).json(str(requests)).repartition(3)
    out = din_spark.score(df, DEMO).select("request_id", "score", "oov").collect()

    assert len(out) == len(rows) == len(expected)
    got = {r.request_id: np.float32(r.score) for r in out}
    assert got.keys() == expected.keys()
    ids = sorted(expected)
    # Spark's batches differ from din-score's, so histories are padded to other widths: equal up to float
    # rounding, as the runtime's chunking is (docs/runtime.md).
    np.testing.assert_allclose([got[i] for i in ids], [expected[i] for i in ids], rtol=0, atol=1e-6)
    oov = {r.request_id: r.oov for r in out}
    assert oov == {r["request_id"]: unseen_ids(r) for r in rows}
    assert sum(oov.values()) > 0 and any(len(r["hist_item_id"]) > MANIFEST.max_len for r in rows)


BAD = {  # request_id -> what is wrong; JSON nulls, which Spark reads as the same nulls
    "bad-price": {"price": None},
    "bad-item": {"item_id": None},
    "bad-history": {"hist_cate_id": None},
    "bad-length": {"hist_cate_id": ["c1"]},
    "bad-history-item": {"hist_item_id": ["86", None, "701"]},
}


def with_bad_rows() -> list[dict]:
    rows = generated_requests(60, seed=1)
    for k, (rid, change) in enumerate(BAD.items()):
        at = 7 + 11 * k
        bad = {**rows[at], **change, "request_id": rid}
        if rid == "bad-history-item":
            bad["hist_cate_id"] = ["c1", "c2", "c3"]
        if rid == "bad-length":
            bad["hist_item_id"] = ["86", "701"]
        rows[at] = bad
    return rows


def test_skip_sets_bad_rows_aside_as_din_score_does(spark, tmp_path):
    rows = with_bad_rows()
    requests = write_jsonl(tmp_path / "requests.jsonl", rows)
    din_score(DEMO, requests, "--id-field", "request_id", "-o", tmp_path / "scores.jsonl",
              "--on-error", "skip", "--errors", tmp_path / "errors.jsonl")
    cli_scores = {r["request_id"]: np.float32(r["score"]) for r in read_jsonl(tmp_path / "scores.jsonl")}
    cli_errors = {json.loads(e["raw"])["request_id"]: (e["field"], e["error"])
                  for e in read_jsonl(tmp_path / "errors.jsonl")}
    assert set(cli_errors) == set(BAD)

    df = spark.read.schema(SCHEMA).json(str(requests)).repartition(2)
    result = din_spark.score(df, DEMO, on_error="skip", id_field="request_id")
    scores, errors = result
    try:
        scored = {r.request_id: np.float32(r.score) for r in scores.collect()}
        rejected = errors.collect()
        assert df.count() == len(rows) == len(scored) + len(rejected)
    finally:
        result.unpersist()
    assert errors.columns == ["partition", "row", "request_id", "field", "error", "raw"]
    assert {e.request_id: (e.field, e.error) for e in rejected} == cli_errors
    assert all(json.loads(e.raw)["request_id"] == e.request_id and e.row >= 1 for e in rejected)
    assert scored.keys() == cli_scores.keys()
    ids = sorted(scored)
    np.testing.assert_allclose([scored[i] for i in ids], [cli_scores[i] for i in ids], rtol=0, atol=1e-6)


def test_stop_fails_the_job_naming_partition_row_and_field(spark, tmp_path):
    rows = generated_requests(10)
    rows[3] = {**rows[3], "request_id": "the-bad-one", "price": None}
    df = spark.read.schema(SCHEMA).json(str(write_jsonl(tmp_path / "requests.jsonl", rows)))
    scored = din_spark.score(df, DEMO, id_field="request_id")  # lazy: nothing has run yet
    with pytest.raises(Exception, match=r"partition 0, row 4 \(request_id 'the-bad-one'\), field 'price': "
                                        r"expected a number, got null \(use on_error='skip'"):
        scored.collect()


def test_one_scorer_load_per_python_worker(spark, tmp_path):
    model = shutil.copytree(DEMO, tmp_path / "model")  # a directory no other test has loaded
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "8")
    try:
        df = spark.createDataFrame(generated_requests(240), SCHEMA).repartition(8)
        assert din_spark.score(df, model).count() == 240  # 8 tasks of 30 rows in batches of 8, 2 cores
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    key = str(model.resolve())

    def loads(batches):
        import pyarrow as pa
        from din_runtime import spark as worker_side

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"pid": os.getpid(), "loads": worker_side._LOADS[key]}])

    probe = spark.range(0, 8, numPartitions=8).mapInArrow(loads, "pid long, loads long").collect()
    per_worker = {r.pid: r.loads for r in probe}
    # Spark reuses its Python workers: the probe's 8 tasks meet the processes that scored, each of which
    # loaded the model once over its several tasks and batches.
    assert max(per_worker.values()) == 1, per_worker
    assert sum(per_worker.values()) <= 2, per_worker


def test_model_dir_shipped_as_an_archive(spark, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "demo"), "zip", DEMO)
    spark.sparkContext.addArchive(f"{archive}#demo_shipped")
    rows = request_rows()[:20]
    df = spark.createDataFrame(rows, SCHEMA)
    out = {r.request_id: r.score for r in din_spark.score(df, "demo_shipped").collect()}
    expected = din_spark._worker_model(str(DEMO)).scorer.score(rows)
    np.testing.assert_allclose([out[r["request_id"]] for r in rows], expected, rtol=0, atol=1e-6)


def test_model_dir_missing_on_the_workers(spark):
    df = spark.createDataFrame(request_rows()[:3], SCHEMA)
    with pytest.raises(Exception, match=r"model directory 'no-such-model' not found on this node.*--archives"):
        din_spark.score(df, "no-such-model").collect()


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda df: df.drop("price"), "price", "no such column"),
    (lambda df: df.withColumn("age", F.col("age").cast("string")), "age", "must be a number column"),
    (lambda df: df.withColumn("hist_item_id", F.concat_ws("|", "hist_item_id")), "hist_item_id",
     "must be an array of string or integer ids"),
    (lambda df: df.withColumn("gender", F.lit(True)), "gender", "must be a string or integer column"),
    (lambda df: df.withColumn("score", F.lit(0.5)), "score", "already has a column"),
])
def test_schema_errors_before_any_job(spark, change, field, message):
    df = change(spark.createDataFrame(request_rows()[:2], SCHEMA))
    with pytest.raises(InputError, match=message) as e:
        din_spark.score(df, DEMO)
    assert e.value.field == field


def test_schema_checked_on_the_workers_when_the_driver_cannot_read_the_model(spark, monkeypatch):
    monkeypatch.setattr(din_spark, "_driver_manifest", lambda model_dir: None)  # as if shipped to executors only
    df = spark.createDataFrame(request_rows()[:2], SCHEMA).withColumn("age", F.col("age").cast("string"))
    scored = din_spark.score(df, DEMO)
    with pytest.raises(Exception, match=r"field 'age': a dense field must be a number column, got string"):
        scored.collect()


def test_decimal_and_integer_columns_score_like_doubles_and_strings(spark):
    rows = request_rows()[:40]
    df = spark.createDataFrame(rows, SCHEMA)
    typed = df.withColumn("price", F.col("price").cast("decimal(20,10)")).withColumn("age", F.col("age").cast("int"))
    base = {r.request_id: r.score for r in din_spark.score(df, DEMO).collect()}
    other = {r.request_id: r.score for r in din_spark.score(typed, DEMO).collect()}
    assert other.keys() == base.keys()
    np.testing.assert_allclose([other[k] for k in base], list(base.values()), rtol=0, atol=1e-6)


def arrow_batch(rows: list[dict], schema: str = SCHEMA) -> pa.RecordBatch:
    types = {"string": pa.string(), "long": pa.int64(), "double": pa.float64(), "int": pa.int32(),
             "array<string>": pa.list_(pa.string()), "array<long>": pa.list_(pa.int64()), "float": pa.float32()}
    fields = [pa.field(name, types[kind]) for name, kind in (f.split(" ", 1) for f in schema.split(", "))]
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema(fields))


def test_arrow_encoder_equals_encode_on_clean_batches():
    """The vectorised path gives exactly the arrays Scorer.encode gives the same rows as dicts."""
    model = din_spark._worker_model(str(DEMO))
    rows = request_rows()
    as_ints = [{**r, "item_id": int(r["item_id"]) if r["item_id"].isdigit() else 0,
                "hist_item_id": [int(x) if x.isdigit() else -1 for x in r["hist_item_id"]]} for r in rows]
    int_schema = SCHEMA.replace("item_id string", "item_id long").replace(
        "hist_item_id array<string>", "hist_item_id array<long>").replace("price double", "price float")
    for batch in (arrow_batch(rows), arrow_batch(rows).slice(5, 90), arrow_batch(as_ints, int_schema),
                  arrow_batch(rows[:1]), arrow_batch([{**r, "hist_item_id": [], "hist_cate_id": []}
                                                      for r in rows[:4]])):
        fields = din_spark._request_fields(model.scorer.manifest)
        expected = model.scorer.encode(din_spark._rows(batch, fields)).arrays
        got = model.encoder.inputs(batch)
        assert got is not None and list(got) == list(expected)
        for name in expected:
            assert got[name].dtype == expected[name].dtype and np.array_equal(got[name], expected[name]), name


@pytest.mark.parametrize("change", [
    {"price": None}, {"item_id": None}, {"hist_cate_id": None}, {"hist_item_id": ["86", None]},
    {"hist_cate_id": ["c1"]}, {"age": 1e300},
])
def test_arrow_encoder_leaves_rows_needing_checks_to_the_row_path(change):
    model = din_spark._worker_model(str(DEMO))
    rows = request_rows()[:6]
    rows[2] = {**rows[2], "hist_item_id": ["86", "701"], "hist_cate_id": ["c1", "c2"], **change}
    schema = SCHEMA.replace("age long", "age double")
    assert model.encoder.inputs(arrow_batch(rows, schema)) is None


def test_cached_scorer_is_reloaded_when_the_model_dir_changes(tmp_path):
    model = shutil.copytree(DEMO, tmp_path / "model")
    first = din_spark._worker_model(str(model)).scorer
    assert din_spark._worker_model(str(model)).scorer is first
    manifest = model / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # exported again at the same path
    second = din_spark._worker_model(str(model)).scorer
    assert second is not first
    assert din_spark._LOADS[str(model.resolve())] == 2
