"""The Scorer against the best torch engine (eager, our rewrite in eager, torch.compile) at chosen shapes,
on an existing run and its export: the engine part of `din-export bench` without its training.

    python bench/compile_shapes.py RUN_DIR MODEL_DIR [--lengths 20,100,500] [--batch 256] [--threads 1]
        [--compile default] [--candidates 100x50,100x200,1000x50,1000x200] [--each-graph] [--json OUT]

Engines as in `din-export bench` (din_export/bench/timing.py: alternating rounds, the order rotating, medians)
plus `scorer`: Scorer.score_arrays on the same arrays, every check and its chunked runs included. Per
shape it prints each engine's p50 (B=1, cold: engines alternate call by call) or rows/s (B=batch), the
ratio to the best torch engine, and the model's FLOPs per row as a % of the CPU's peak. Then the
candidate-ranking workload (din_export.bench.torch_compile.candidate_ranking_workload) at each N x L of --candidates.

`scorer` runs MODEL_DIR as exported: with a short-history graph (manifest "short_history"), batches
up to its max_width positions wide run on short.onnx. --each-graph adds the Scorer pinned to each graph,
on copies of MODEL_DIR whose manifests differ only in that entry: `scorer-model.onnx` (the entry removed:
every batch on model.onnx) and `scorer-short.onnx` (max_width above every length: every batch on
short.onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from din_runtime import Scorer
from machine import cpu_model

from din_export.bench import torch_compile as bench_compile
from din_export.bench.data import workload_arrays
from din_export.bench.engines import CHUNKED, Engines
from din_export.bench.flops import cpu_peak, model_flops_per_row
from din_export.bench.plan import make_plan
from din_export.bench.report import best_torch
from din_export.bench.timing import alternate, pin_malloc, quantiles
from din_export.checkpoints import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--lengths", default="20,100,500")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", default="default", help="torch.compile modes, comma separated, or none")
    parser.add_argument("--latency-rounds", type=int, default=200)
    parser.add_argument("--throughput-rounds", type=int, default=10)
    parser.add_argument("--candidates", default="100x50,100x200,1000x50,1000x200", help="NxL, comma separated; "
                        "'' for none")
    parser.add_argument("--candidate-rounds", type=int, default=10)
    parser.add_argument("--back-to-back", type=int, default=1, help="B=batch: calls per engine in a row per round, "
                        "the first untimed (timing.alternate): with several threads, an engine's first call then "
                        "absorbs the previous engine's threads still spinning")
    parser.add_argument("--each-graph", action="store_true", help="also the Scorer pinned to model.onnx and to "
                        "short.onnx")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    pin_malloc()
    modes = () if args.compile == "none" else tuple(args.compile.split(","))
    shapes = tuple(tuple(int(v) for v in s.split("x")) for s in args.candidates.split(",") if s)
    plan = replace(make_plan(False, (args.threads,), "cpu", 1, modes), lengths=tuple(map(int, args.lengths.split(","))),
                   batch=args.batch, candidate_shapes=shapes, candidate_rounds=args.candidate_rounds)
    torch.set_num_threads(args.threads)
    model, schema, _ = load_run(args.run_dir)
    engines = Engines(model, schema, {"onnx-opt": args.model_dir}, args.threads, "cpu", modes)
    scorer = Scorer.load(args.model_dir, threads=args.threads)
    if args.each_graph and args.threads != 1:
        parser.error("--each-graph needs --threads 1: with more threads the Scorer loads no short-history graph")
    work = TemporaryDirectory(prefix="din-compile-shapes-")
    widest = max(plan.lengths)
    pinned = {f"scorer-{file}": Scorer.load(pinned_dir(args.model_dir, Path(work.name), file, widest),
                                            threads=args.threads)
              for file in ("model.onnx", "short.onnx")} if args.each_graph else {}
    peak = cpu_peak(args.threads)
    record: dict = {"cpu": cpu_model(), "load_average_start": os.getloadavg(), "threads": args.threads,
                    "back_to_back": args.back_to_back,
                    "peak": peak, "shapes": {}, "command": " ".join(["python", *sys.argv])}
    for seq in plan.lengths:
        flops = model_flops_per_row(model, seq)
        for batch in (1, plan.batch):
            arrays = workload_arrays(schema, batch, seq, seed=seq + batch)
            thunks = engines.thunks(arrays)
            if batch == 1:
                del thunks[CHUNKED]  # one run at B=1: the Scorer's graph unchunked, as `scorer` times it
            thunks["scorer"] = lambda a=arrays: scorer.score_arrays(a)
            thunks.update({name: lambda a=arrays, s=s: s.score_arrays(a) for name, s in pinned.items()})
            del thunks["deepctr"]
            rounds = args.latency_rounds if batch == 1 else args.throughput_rounds
            start = time.perf_counter()
            times = alternate(thunks, rounds, warmup=3, back_to_back=1 if batch == 1 else args.back_to_back)
            by_engine = {name: {**quantiles(t), "rows_per_s": batch / float(np.median(t))} for name, t in times.items()}
            best, rate = best_torch(by_engine, "rows_per_s", max)
            for r in by_engine.values():
                r["x_best_torch"] = r["rows_per_s"] / rate
                r["pct_of_peak"] = 100 * r["rows_per_s"] * flops / peak["flops_per_s"] if peak else None
            record["shapes"][f"B={batch} L={seq}"] = {"best_torch": best, "flops_per_row": flops,
                                                      "seconds": time.perf_counter() - start, "engines": by_engine}
            print(f"B={batch} L={seq} (best torch: {best}) " + "  ".join(
                f"{n} {r['p50_ms']:.3f}ms {r['x_best_torch']:.2f}x" for n, r in by_engine.items()), flush=True)
    record["compile"] = bench_compile.report(engines.compiled)
    if shapes:
        record["candidate_ranking"] = bench_compile.candidate_ranking_workload(model, args.model_dir, plan,
                                                                               Path(work.name))
        for shape, r in record["candidate_ranking"]["shapes"].items():
            print(f"{shape}: " + "  ".join(f"{n} {v:.2f}ms" for n, v in r["p50_ms"].items()) + "  score_candidates "
                  "faster by " + ", ".join(f"{v:.2f}x vs {n}" for n, v in r["speedup_vs"].items()), flush=True)
    record["load_average_end"] = os.getloadavg()
    print(json.dumps({"compile": record["compile"], "load_average": [record["load_average_start"],
                                                                     record["load_average_end"]]}))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    work.cleanup()


def pinned_dir(model_dir: Path, work: Path, file: str, widest: int) -> Path:
    """A copy of model_dir whose Scorer runs every batch up to `widest` positions on `file`."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if "short_history" not in manifest:
        raise SystemExit(f"--each-graph: {model_dir} has no short-history graph (manifest 'short_history')")
    target = work / file
    shutil.copytree(model_dir, target)
    if file == "model.onnx":
        del manifest["short_history"]
    else:
        manifest["short_history"]["max_width"] = widest
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return target


if __name__ == "__main__":
    main()
