"""What the Scorer adds to a bare onnxruntime session at B=1: checks, casts, chunking, encoding.

    python bench/scorer_overhead.py MODEL_DIR [--lengths 20,100] [--rounds 400] [--json OUT]

Engines, all on MODEL_DIR's model.onnx with one intra-op thread, in one process:
  bare          onnxruntime.InferenceSession.run on ready int64/float32 arrays (nothing checked)
  score_arrays  Scorer.score_arrays on the same arrays (every check of the Scorer)
  score         Scorer.score on one raw request row (vocabulary lookups, encoding, checks)
Warm loop: each round calls each engine `--repeat` times in a row and times all but the first (so each
engine finds its own code in cache), the engines' order rotating each round. Printed: p50 per engine and
its overhead over bare, p50(engine) - p50(bare), per history length. The request's ids are known ones and
every row's history is L long (L is capped by the model's max_len in `score`, as the encoder keeps that).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from din_runtime import Scorer
from machine import cpu_model


def request(scorer: Scorer, seq: int, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One raw request row with known ids and a history of `seq` items, and its encoded arrays."""
    m = scorer.manifest
    rng = np.random.default_rng(seed)
    known = {v: list(ids) for v, ids in m.vocabs.items()}
    row: dict[str, Any] = {s.name: known[s.vocab][rng.integers(len(known[s.vocab]))] for s in m.sparse}
    for b in m.behaviour:
        row[b.target] = known[b.vocab][rng.integers(len(known[b.vocab]))]
        row[b.history] = [known[b.vocab][i] for i in rng.integers(len(known[b.vocab]), size=seq)]
    for d in m.dense:
        row[d] = float(rng.normal())
    return row, scorer.encode([row]).arrays


def warm_loop(thunks: dict[str, Callable[[], object]], rounds: int, repeat: int,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in thunks}
    names = list(thunks)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call = thunks[name]
            for i in range(repeat):
                start = clock()
                call()
                if i:
                    times[name].append(clock() - start)
    return times


def measure(model_dir: Path, lengths: list[int], rounds: int, repeat: int,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    scorer = Scorer.load(model_dir, threads=1, short_history=False)  # model.onnx, the bare session's graph
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    bare = ort.InferenceSession(scorer.manifest.model_path.read_bytes(), options,
                                providers=["CPUExecutionProvider"])
    results: dict[str, Any] = {}
    for seq in lengths:
        row, arrays = request(scorer, seq, seed=seq)
        feeds = {name: np.ascontiguousarray(arrays[name]) for name in scorer.input_names}
        expected = bare.run(["prob"], feeds)[0]
        for got in (scorer.score_arrays(arrays), scorer.score([row])):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        thunks = {"bare": lambda f=feeds: bare.run(["prob"], f),
                  "score_arrays": lambda a=arrays: scorer.score_arrays(a),
                  "score": lambda r=[row]: scorer.score(r)}
        times = warm_loop(thunks, rounds, repeat, clock)
        p50 = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
        results[str(seq)] = {"width": int(arrays["hist_len"][0]), "p50_us": p50,
                             "overhead_us": {n: p50[n] - p50["bare"] for n in p50 if n != "bare"}}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--lengths", default="20,100", help="history lengths, comma separated")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=6, help="calls per engine per round (the first untimed)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this thread's CPU time (time.thread_time), which leaves out the time other "
                             "processes hold the core: steadier on a shared machine")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    load_start = os.getloadavg()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    results = measure(args.model_dir, [int(x) for x in args.lengths.split(",")], args.rounds, args.repeat, clock)
    record = {"cpu": cpu_model(), "onnxruntime": ort.__version__, "numpy": np.__version__, "clock": args.clock,
              "load_average": [load_start, os.getloadavg()], "rounds": args.rounds, "repeat": args.repeat,
              "model_dir": str(args.model_dir), "results": results}
    print(f"{record['cpu']}; load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"B=1, 1 thread, warm loop, p50 of {args.rounds * (args.repeat - 1)} calls per engine, {args.clock} time")
    print(f"{'L':>5} {'bare us':>9} {'score_arrays us':>16} {'(+ us)':>8} {'score us':>9} {'(+ us)':>8}")
    for seq, r in results.items():
        p, o = r["p50_us"], r["overhead_us"]
        print(f"{seq:>5} {p['bare']:9.1f} {p['score_arrays']:16.1f} {o['score_arrays']:+8.1f} "
              f"{p['score']:9.1f} {o['score']:+8.1f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
