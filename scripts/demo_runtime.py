"""The serving half of `make demo`, run by the torch-free venv (.venv-runtime).

    .venv-runtime/bin/python scripts/demo_runtime.py MODEL_DIR REQUESTS.jsonl OUT_DIR

Checks that torch cannot be imported, runs `din-score` on REQUESTS (timed end to end: process start,
model load, parsing, scoring, writing), then times `Scorer.score` on one row at a time. Writes
OUT_DIR/scores.jsonl, OUT_DIR/score_metrics.json and OUT_DIR/runtime.json.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
from din_runtime import Scorer
from din_runtime.fs import write_json_atomic

THREADS = 1  # one intra-op thread: a single request is far too small to split across cores
WARMUP_CALLS = 50
TIMED_CALLS = 500


def run_din_score(model_dir: str, requests: str, out: Path) -> dict:
    din_score = Path(sys.executable).parent / "din-score"
    cmd = [str(din_score), model_dir, requests, "-o", str(out / "scores.jsonl"), "--label-field", "label",
           "--metrics-out", str(out / "score_metrics.json"), "--threads", str(THREADS)]
    print("$ " + shlex.join(["din-score", *cmd[1:]]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"din-score failed with exit status {done.returncode}")
    metrics = json.loads((out / "score_metrics.json").read_text())
    return {"rows": metrics["rows"], "seconds": seconds, "rows_per_s": metrics["rows"] / seconds,
            "auc": metrics["auc"], "gauc": metrics["gauc"], "logloss": metrics["logloss"]}


def single_row_latency(model_dir: str, requests: str) -> dict:
    scorer = Scorer.load(model_dir, threads=THREADS)
    with open(requests, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(TIMED_CALLS), f, strict=False)]
    for i in range(WARMUP_CALLS):
        scorer.score([rows[i % len(rows)]])
    times = np.empty(TIMED_CALLS)
    for i in range(TIMED_CALLS):
        row = rows[i % len(rows)]
        start = time.perf_counter()
        scorer.score([row])
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times * 1e3, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "calls": TIMED_CALLS, "threads": THREADS}


def main(model_dir: str, requests: str, out_dir: str) -> None:
    if importlib.util.find_spec("torch") is not None:
        sys.exit(f"torch is importable from {sys.executable}: the runtime venv must not have it")
    out = Path(out_dir)
    report = {"python": sys.executable, "torch_importable": False, "onnxruntime": onnxruntime.__version__,
              "din_score": run_din_score(model_dir, requests, out),
              "latency": single_row_latency(model_dir, requests)}
    if "torch" in sys.modules:
        sys.exit("din_runtime imported torch")
    write_json_atomic(str(out / "runtime.json"), report)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
