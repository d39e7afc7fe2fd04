"""Batch scoring throughput: din-score vs din_runtime.spark on Spark local mode (docs/runtime.md, "Spark").

    python bench/spark_scoring.py [MODEL_DIR] [--rows 1000000] [--rounds 2] [--master local[2]]
                                  [--jobs cli-jsonl,cli-parquet,arrow,arrow-rows,pandas]
                                  [--work /tmp/spark-bench] [--out bench/results/spark_scoring.json]

Writes `--rows` requests drawn from MODEL_DIR's vocabularies (default models/demo; a tenth with unseen
target ids, history lengths uniform in 0..1.6 max_len, so some are cut) once as JSONL and once as Parquet
(row groups of 50k rows, split into about 4 partitions per core) under `--work`, then times the `--jobs`
in alternating rounds:
- cli-jsonl, cli-parquet: din-score on the JSONL / the Parquet (a subprocess, onnxruntime on all cores);
- arrow: the Spark job reading the Parquet and writing request_id + score as Parquet with
  `din_runtime.spark.score` (mapInArrow, Arrow-vectorised encoding of clean batches);
- arrow-rows: the same job, every batch through the row path (dicts -> Scorer.encode, as din-score);
- pandas: the row path fed by mapInPandas instead of mapInArrow.
rows/s are medians over the rounds. Spark's start-up (JVM, then a first small job per engine that starts
the Python workers and loads the model) is reported apart, not in its rows/s.

    python bench/spark_scoring.py --python-side [--rows 100000] [--work ...]

prints instead the CPU time of the Python side alone for one Arrow batch of 10,000 of the requests, per
variant (7 alternating rounds, one onnxruntime thread, no Spark).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from din_runtime import load_manifest
from din_runtime.spark import _request_fields, _rows, _score_batch, _score_rows, _worker_model, score

REPO = Path(__file__).resolve().parents[1]


def write_requests(model_dir: Path, rows: int, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """`rows` requests as JSONL and Parquet (the same rows), in chunks to bound memory."""
    m = load_manifest(model_dir)
    rng = np.random.default_rng(seed)
    jsonl, parquet = work / "requests.jsonl", work / "requests.parquet"
    writer = None
    with jsonl.open("w") as out:
        for start in range(0, rows, 100_000):
            table = _chunk(m, min(100_000, rows - start), start, rng)
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table, row_group_size=50_000)
            out.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in table.to_pylist())
    writer.close()
    return jsonl, parquet


def _chunk(m, n: int, start: int, rng: np.random.Generator) -> pa.Table:
    columns: dict[str, pa.Array] = {"request_id": pa.array([f"r{start + i}" for i in range(n)])}
    known = {v: np.array(list(m.vocabs[v]) + ["unseen"]) for v in m.vocabs}
    lengths = rng.integers(0, int(1.6 * m.max_len) + 1, n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    for s in m.sparse:
        columns[s.name] = pa.array(rng.choice(known[s.vocab][:-1], n))
    for b in m.behaviour:
        ids = known[b.vocab]
        target = rng.choice(ids[:-1], n)
        target[rng.random(n) < 0.1] = "unseen"
        columns[b.target] = pa.array(target)
        columns[b.history] = pa.ListArray.from_arrays(offsets, pa.array(rng.choice(ids, int(lengths.sum()))))
    for name in m.dense:
        columns[name] = pa.array(rng.uniform(1, 80, n).astype(np.float32).astype(np.float64))
    return pa.table(columns)


def pandas_task(frames, model_dir: str):
    """mapInPandas twin of din_runtime.spark's mapInArrow function (stop mode), for the comparison."""
    scorer = _worker_model(model_dir).scorer
    fields = _request_fields(scorer.manifest)
    histories = set(scorer.manifest.histories)
    for frame in frames:
        columns = [[a.tolist() for a in frame[f]] if f in histories else frame[f].tolist() for f in fields]
        rows = [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]
        probs, oov, _ = _score_rows(scorer, rows, skip=False)
        yield frame.assign(score=probs, oov=oov)


def rows_task(batches, model_dir: str):
    """din_runtime.spark's mapInArrow function with every batch on the row path (stop mode)."""
    import pyarrow as pa

    scorer = _worker_model(model_dir).scorer
    fields = _request_fields(scorer.manifest)
    for batch in batches:
        probs, oov, _ = _score_rows(scorer, _rows(batch, fields), skip=False)
        yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(probs), pa.array(oov)],
                                         names=[*batch.schema.names, "score", "oov"])


def python_side(parquet: Path, model_dir: Path, rounds: int = 7) -> None:
    model = _worker_model(str(model_dir))
    scorer = model.scorer
    fields = _request_fields(scorer.manifest)
    batch = pq.ParquetFile(parquet).read_row_group(0).to_batches(max_chunksize=10_000)[0]

    def pandas_rows() -> None:
        frame = batch.to_pandas()
        histories = set(scorer.manifest.histories)
        columns = [[a.tolist() for a in frame[f]] if f in histories else frame[f].tolist() for f in fields]
        _score_rows(scorer, [dict(zip(fields, v, strict=True)) for v in zip(*columns, strict=True)], skip=False)

    variants = {"mapInArrow, vectorised (din_runtime.spark)": lambda: _score_batch(model, fields, batch, 0, 0,
                                                                                   False, None),
                "mapInArrow, row path": lambda: _score_rows(scorer, _rows(batch, fields), skip=False),
                "mapInPandas, row path": pandas_rows,
                "onnxruntime alone (score_arrays)": lambda: scorer.score_arrays(model.encoder.inputs(batch))}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            t = time.process_time()
            run()
            cpu[name].append(time.process_time() - t)
    for name, seconds in cpu.items():
        median = float(np.median(seconds))
        print(f"{name}: {median * 1000:.0f} ms CPU per {batch.num_rows:,} rows "
              f"({batch.num_rows / median:,.0f} rows per CPU-second)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, nargs="?", default=REPO / "models" / "demo")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--jobs", default="cli-jsonl,cli-parquet,arrow,arrow-rows,pandas")
    parser.add_argument("--work", type=Path, default=Path("/tmp/spark-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "spark_scoring.json")
    parser.add_argument("--python-side", action="store_true", help="time the Python side of one batch, no Spark")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir.resolve()
    t = time.perf_counter()
    jsonl, parquet = args.work / "requests.jsonl", args.work / "requests.parquet"
    if jsonl.exists() and parquet.exists() and pq.ParquetFile(parquet).metadata.num_rows == args.rows:
        print(f"reusing {jsonl}, {parquet}", flush=True)  # written by an earlier run with the same --rows
    else:
        jsonl, parquet = write_requests(model_dir, args.rows, args.work)
        print(f"wrote {args.rows:,} requests in {time.perf_counter() - t:.0f} s: {jsonl}, {parquet}", flush=True)
    if args.python_side:
        python_side(parquet, model_dir)
        return

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession
    from pyspark.sql.types import FloatType, IntegerType, StructField, StructType

    t = time.perf_counter()
    spark = (SparkSession.builder.master(args.master).config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g")
             .config("spark.sql.files.maxPartitionBytes", str(max(1 << 20, parquet.stat().st_size // 16)))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = {"SparkSession": time.perf_counter() - t}
    out = args.work / "out"

    def cli(path: Path) -> None:
        subprocess.run([sys.executable, "-m", "din_runtime", str(model_dir), str(path), "--id-field", "request_id",
                        "-o", str(out / f"{path.suffix[1:]}.jsonl")], check=True, stderr=subprocess.DEVNULL)

    def spark_job(engine: str, limit: int | None = None) -> None:
        df = spark.read.parquet(str(parquet))
        df = df if limit is None else df.limit(limit)
        extra = StructType(df.schema.fields + [StructField("score", FloatType()), StructField("oov", IntegerType())])
        if engine == "arrow":
            scored = score(df, model_dir)
        elif engine == "arrow-rows":
            scored = df.mapInArrow(lambda batches: rows_task(batches, str(model_dir)), extra)
        else:
            scored = df.mapInPandas(lambda frames: pandas_task(frames, str(model_dir)), extra)
        scored.select("request_id", "score").write.mode("overwrite").parquet(str(out / engine))

    out.mkdir(exist_ok=True)
    every = {"cli-jsonl": ("din-score JSONL", lambda: cli(jsonl)),
             "cli-parquet": ("din-score Parquet", lambda: cli(parquet)),
             "arrow": (f"Spark {args.master} mapInArrow", lambda: spark_job("arrow")),
             "arrow-rows": (f"Spark {args.master} mapInArrow, row path", lambda: spark_job("arrow-rows")),
             "pandas": (f"Spark {args.master} mapInPandas, row path", lambda: spark_job("pandas"))}
    jobs = dict(every[j] for j in args.jobs.split(","))
    for engine in ("arrow", "arrow-rows", "pandas"):
        if engine in args.jobs.split(","):
            t = time.perf_counter()
            spark_job(engine, limit=2000)
            startup[f"first {engine} job (2,000 rows)"] = time.perf_counter() - t
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(args.rounds):
        for name, job in (jobs.items() if r % 2 == 0 else reversed(jobs.items())):
            t = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t)
            print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    spark.stop()
    rates = {name: args.rows / float(np.median(t)) for name, t in times.items()}
    base_name = next(iter(rates))
    for name, rate in rates.items():
        print(f"{name}: {rate:,.0f} rows/s ({rate / rates[base_name]:.2f}x {base_name})")
    print("start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(sys.argv), "rows": args.rows, "rounds": args.rounds, "master": args.master,
        "cpu": cpu, "cores": os.cpu_count(), "seconds": times, "rows_per_s": rates,
        "startup_s": startup}, indent=2) + "\n")


if __name__ == "__main__":
    main()
