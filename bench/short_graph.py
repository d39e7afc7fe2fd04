"""When the short-history graph pays: the Scorer with and without it on narrow and on mixed traffic.

    python bench/short_graph.py MODEL_DIR [--threads 1] [--batch 256] [--narrow 20] [--wide 100] [--rounds 20]
                                [--json OUT]

MODEL_DIR must hold a short-history graph (`din-export export RUN --out MODEL_DIR --short-graph`). Two
Scorers on it, `Scorer.load(MODEL_DIR, threads=1)` (short.onnx for batches up to max_width wide) and
`Scorer.load(MODEL_DIR, threads=1, short_history=False)` (model.onnx for every batch), timed in alternating rounds
(din_export.bench.timing.alternate, 3 calls in a row per round, the first untimed) on two workloads of
two batches each: "narrow" (two batches `--narrow` wide) and "mixed" (one `--narrow` wide, then one
`--wide`); only at --threads 1, the one setting where the Scorer loads short.onnx. Then, at any
--threads, the cost of switching onnxruntime sessions that a mixed workload pays: the same graph in one
session called twice against three sessions taking turns, with intra-op spinning on (onnxruntime's
default) and off: why the Scorer keeps to one session when it runs more than one thread. Last, what
loading it costs: `Scorer.load(MODEL_DIR, threads=1)` with and without it, each in a fresh process
(`--load-runs` of each), its wall time and the process's resident memory added by the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from din_runtime import Scorer
from din_runtime.manifest import load_manifest
from din_runtime.scorer import rows_per_run
from machine import cpu_model  # bench/, on the path when this script runs

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, quantiles
from din_export.schema import Schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--narrow", type=int, default=20)
    parser.add_argument("--wide", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load-runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    attention_width = load_manifest(args.model_dir).attention_width
    if "short_history" not in manifest:
        raise SystemExit(f"{args.model_dir} has no short-history graph: export it with --short-graph")
    schema = Schema.from_dict(manifest["schema"])
    narrow = workload_arrays(schema, args.batch, args.narrow, seed=1)
    wide = workload_arrays(schema, args.batch, args.wide, seed=2)
    record: dict = {"cpu": cpu_model(), "threads": args.threads, "batch": args.batch, "narrow": args.narrow,
                    "wide": args.wide, "load_average_start": os.getloadavg(),
                    "command": " ".join(["python", *sys.argv]), "workloads": {}}
    workloads = {"narrow": (narrow, narrow), "mixed": (narrow, wide)} if args.threads == 1 else {}
    scorers = {"with short.onnx": Scorer.load(args.model_dir, threads=1),
               "model.onnx only": Scorer.load(args.model_dir, threads=1, short_history=False)} if workloads else {}
    for workload, batches in workloads.items():
        thunks = {name: _calls(s, batches) for name, s in scorers.items()}
        times = alternate(thunks, args.rounds, warmup=3, back_to_back=3)
        result = {name: quantiles(t)["p50_ms"] for name, t in times.items()}
        result["speedup"] = result["model.onnx only"] / result["with short.onnx"]
        record["workloads"][workload] = result
        print(f"{workload}: " + "  ".join(f"{k} {v:.2f}" + ("x" if k == "speedup" else " ms")
                                          for k, v in result.items()), flush=True)
    record["session_switching"] = {}
    for spin in ("1", "0"):
        sessions = [_session(args.model_dir / manifest["model_file"], args.threads, spin) for _ in range(3)]
        one = _chunked(sessions[0], narrow, args.narrow, attention_width)
        same = alternate({"one session": one, "one session again": one}, args.rounds, warmup=3)
        turns = alternate({f"session {i}": _chunked(s, narrow, args.narrow, attention_width)
                           for i, s in enumerate(sessions)},
                          args.rounds, warmup=3)
        result = {"one session": quantiles(same["one session"])["p50_ms"],
                  "three sessions taking turns": quantiles(turns["session 0"])["p50_ms"]}
        record["session_switching"][f"allow_spinning={spin}"] = result
        print(f"allow_spinning={spin}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in result.items()), flush=True)
    record["load"] = {}
    for short_history in (True, False):
        runs = [_load_cost(args.model_dir, short_history) for _ in range(args.load_runs)]
        result = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        record["load"]["with short.onnx" if short_history else "model.onnx only"] = result
        print(f"Scorer.load, short_history={short_history}: {result['seconds'] * 1e3:.1f} ms, "
              f"+{result['rss_mb']:.1f} MB resident (median of {args.load_runs} processes)", flush=True)
    record["load_average_end"] = os.getloadavg()
    print(f"load average {record['load_average_start'][0]:.2f} -> {record['load_average_end'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


_LOAD = """
import sys, time
from din_runtime import Scorer
def rss_kb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
before, start = rss_kb(), time.perf_counter()
scorer = Scorer.load(sys.argv[1], threads=1, short_history=sys.argv[2] == "1")
print(time.perf_counter() - start, (rss_kb() - before) / 1024)
del scorer
"""


def _load_cost(model_dir: Path, short_history: bool) -> dict[str, float]:
    """Seconds and resident MB that one `Scorer.load` adds, in a fresh process (the import is not counted)."""
    out = subprocess.run([sys.executable, "-c", _LOAD, str(model_dir), "1" if short_history else "0"],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"seconds": float(out[0]), "rss_mb": float(out[1])}


def _calls(scorer: Scorer, batches: tuple[dict, ...]) -> Callable[[], object]:
    return lambda: [scorer.score_arrays(b) for b in batches]


def _session(path: Path, threads: int, spin: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


def _chunked(session: ort.InferenceSession, arrays: dict, width: int,
             attention_width: int | None) -> Callable[[], object]:
    """The Scorer's runs of `rows_per_run(width, attention_width)` rows, without its checks."""
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    n, step = len(arrays["hist_len"]), rows_per_run(width, attention_width)
    chunks = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]
    return lambda: [session.run(["prob"], c) for c in chunks]


if __name__ == "__main__":
    main()
