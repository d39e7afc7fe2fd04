"""portable.onnx against Scorer.score: file size, session creation, latency at batch 1 and 256.

    python bench/portable.py MODEL_DIR [--rounds 30] [--threads 1] [--json OUT.json]

One process, engines measured in alternating rounds (this machine is shared: compare the ratios).
Every session runs on the calling thread (`--threads 1`, the default), so the figures are the process's
CPU time (`time.process_time`), which other processes on a loaded machine do not inflate; wall-clock
medians are reported beside them.
Rows are raw requests drawn from the model's vocabularies (10% unseen ids, history lengths uniform in
0..max_len). Latency per call, median over rounds (each round: `calls` calls, mean):
- scorer: `Scorer.score(rows)`, the runtime encoding in Python, then model.onnx;
- portable graph: `session.run` of portable.onnx on prebuilt tensors, what a Node.js / C++ caller pays
  after building its tensors;
- portable + feeds: `raw_feeds(rows)` in Python then `session.run`, a Python caller of portable.onnx;
- model.onnx alone: `session.run` of model.onnx on the arrays `Scorer.encode` built, so that
  scorer - model is the Python encoding and portable graph - model the in-graph lookups.
Session creation: a fresh `InferenceSession` from the file bytes (model.onnx vs portable.onnx), and
`Scorer.load` (manifest, vocabularies, hash, session) for reference.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
from din_runtime import Scorer
from din_runtime.manifest import read_portable

from din_export.portable_check import raw_feeds, raw_requests


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _timed(fn, calls: int = 1) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


def _medians(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {"cpu": 1e3 * statistics.median(s[0] for s in samples),
            "wall": 1e3 * statistics.median(s[1] for s in samples)}


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="onnxruntime intra-op threads of every session.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(model_dir: Path, rounds: int, threads: int, json_out: Path | None) -> None:
    scorer = Scorer.load(model_dir, threads=threads, short_history=False)  # model.onnx, the graph portable wraps
    m = scorer.manifest
    if m.portable_path is None:
        sys.exit(f"{model_dir} has no portable.onnx; add one with `din-export portable {model_dir}`")
    model_bytes, portable_bytes = m.model_path.read_bytes(), read_portable(m)
    entry = dict(m.raw["portable"])
    session = _session(portable_bytes, threads)
    vocabs = {k: list(v) for k, v in m.vocabs.items()}
    rng = np.random.default_rng(0)
    batches = {b: raw_requests(m.raw, vocabs, rng.integers(0, m.max_len + 1, b).tolist(), rng) for b in (1, 256)}
    for rows in batches.values():  # the engines agree before they are timed
        got = session.run(["prob"], raw_feeds(entry, rows))[0]
        np.testing.assert_allclose(got, scorer.score(rows), rtol=0, atol=1e-6)

    create: dict[str, list[tuple[float, float]]] = {}
    latency: dict[str, list[tuple[float, float]]] = {}
    for _ in range(max(3, rounds // 3)):
        create.setdefault("model.onnx session", []).append(_timed(lambda: _session(model_bytes, threads)))
        create.setdefault("portable.onnx session", []).append(_timed(lambda: _session(portable_bytes, threads)))
        create.setdefault("Scorer.load", []).append(_timed(lambda: Scorer.load(model_dir, threads=threads)))
    feeds = {b: raw_feeds(entry, rows) for b, rows in batches.items()}
    model_session = _session(model_bytes, threads)
    encoded = {b: scorer.encode(rows).arrays for b, rows in batches.items()}
    for _ in range(rounds):
        for b, rows in batches.items():
            calls = 50 if b == 1 else 5
            engines = {
                "scorer": lambda rows=rows: scorer.score(rows),
                "portable graph": lambda b=b: session.run(["prob"], feeds[b]),
                "portable + feeds": lambda rows=rows: session.run(["prob"], raw_feeds(entry, rows)),
                "model.onnx alone": lambda b=b: model_session.run(["prob"], encoded[b]),
            }
            for name, fn in engines.items():
                latency.setdefault(f"B={b} {name}", []).append(_timed(fn, calls))

    result = {
        "model_dir": str(model_dir), "threads": threads, "rounds": rounds,
        "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
        "vocab_ids": {k: len(v) for k, v in vocabs.items()},
        "bytes": {"model.onnx": len(model_bytes), "portable.onnx": len(portable_bytes)},
        "create_ms": {k: _medians(v) for k, v in create.items()},
        "latency_ms": {k: _medians(v) for k, v in latency.items()},
    }
    print(f"{model_dir}: vocabularies {result['vocab_ids']}, onnxruntime {ort.__version__}, {threads} thread(s)")
    b = result["bytes"]
    print(f"size: model.onnx {b['model.onnx']:,} B, portable.onnx {b['portable.onnx']:,} B "
          f"({b['portable.onnx'] / b['model.onnx']:.2f}x)")
    print("median per call, CPU ms (wall ms)")
    for name, ms in result["create_ms"].items():
        print(f"create {name:<24} {ms['cpu']:9.2f} ({ms['wall']:.2f})")
    for batch in (1, 256):
        base = result["latency_ms"][f"B={batch} scorer"]["cpu"]
        for name in ("scorer", "portable graph", "portable + feeds", "model.onnx alone"):
            ms = result["latency_ms"][f"B={batch} {name}"]
            print(f"B={batch:<4} {name:<18} {ms['cpu']:9.3f} ({ms['wall']:.3f})  {base / ms['cpu']:.2f}x the Scorer's "
                  "speed (CPU)")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
