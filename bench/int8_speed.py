"""int8 against fp32 for exported model directories of one run: throughput at B=256 and latency at B=1,
and where the time goes (onnxruntime's per-node profile).

    python bench/int8_speed.py FP32_DIR INT8_DIR [MORE_DIRS...] [--seq 100] [--threads 1] [--rounds 40]
                               [--profile-runs 30]

Each directory's model.onnx in its own onnxruntime session (CPU, `--threads` intra-op threads), fed the
same inputs (every history `--seq` long, known ids: din_export.bench.data.workload_arrays), timed in
alternating rounds (din_export.bench.timing.alternate: the engines take turns, so a busy machine slows all of
them alike). Prints p50 per directory and batch, each as a ratio to the first directory's, and the
file sizes; the first directory is the reference (the fp32 export).

Then, at B=256, each directory's kernel time by kind of node (`--profile-runs` runs after 3 warm-up
runs, onnxruntime's `enable_profiling`), and for each later directory the share of the reference's
kernel time spent in the nodes that directory runs as integer kernels (matched by node name in the
first directory without integer nodes that has them all: int8 quantises the same graph its fp32 export
is) with the bound it puts on the speed-up (Amdahl: those nodes taking no time at all).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
from pathlib import Path

import numpy as np
from profile_graph import node_times  # bench/, on the path when this script runs

from din_export.bench.data import workload_arrays
from din_export.bench.engines import onnx_session
from din_export.bench.timing import alternate
from din_export.schema import Schema

KINDS = {
    "matrix product": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"},
    "int8 matrix product": {"QGemm", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"},
    "quantise / dequantise": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
    "elementwise": {"Add", "Sub", "Mul", "Div", "Sigmoid", "Where", "Softmax", "PRelu", "Relu", "Cast", "Less"},
    "gather": {"Gather", "GatherND"},
}
INTEGER = KINDS["int8 matrix product"]


def kind(op: str) -> str:
    return next((k for k, ops in KINDS.items() if op in ops), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--profile-runs", type=int, default=30)
    args = parser.parse_args()
    names = [d.name for d in args.dirs]
    schema = Schema.from_dict(json.loads((args.dirs[0] / "manifest.json").read_text())["schema"])
    sessions = {d.name: onnx_session(d, args.threads, "cpu") for d in args.dirs}
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), history {args.seq}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for d in args.dirs:
        print(f"{d.name}: model.onnx {(d / 'model.onnx').stat().st_size / 1e3:.1f} KB")
    for batch, rounds in ((256, args.rounds), (1, 10 * args.rounds)):
        arrays = workload_arrays(schema, batch, args.seq, seed=batch)
        thunks = {name: (lambda s=s, a=arrays: s.run(["prob"], a)) for name, s in sessions.items()}
        times = alternate(thunks, rounds, warmup=3)
        p50 = {name: float(np.median(t)) for name, t in times.items()}
        ref = p50[names[0]]
        cells = [f"{name} {p50[name] * 1e3:.3f} ms ({ref / p50[name]:.2f}x)" for name in names]
        print(f"B={batch} L={args.seq}, {rounds} rounds: " + ", ".join(cells), flush=True)
    if args.profile_runs:
        arrays = workload_arrays(schema, 256, args.seq, seed=256)
        profiles = {d.name: {n: (v["op"], v["us"] * 1e-6) for n, v in
                             node_times(d / "model.onnx", arrays, args.threads, args.profile_runs, warmup=3).items()}
                    for d in args.dirs}
        for name, nodes in profiles.items():
            total = sum(t for _, t in nodes.values())
            by_kind = collections.Counter()
            for op, t in nodes.values():
                by_kind[kind(op)] += t
            shares = ", ".join(f"{k} {t / total:.0%}" for k, t in by_kind.most_common())
            print(f"profile B=256 L={args.seq} {name}: kernels {total * 1e3:.1f} ms: {shares}")
        for name in names:
            integer = {n for n, (op, _) in profiles[name].items() if op in INTEGER}
            # the reference: the first directory without integer nodes that has every one of these nodes
            ref = next((r for r in names if integer and integer <= profiles[r].keys()
                        and not any(op in INTEGER for op, _ in profiles[r].values())), None)
            if ref is None:
                continue
            total = sum(t for _, t in profiles[ref].values())
            share = sum(t for n, (_, t) in profiles[ref].items() if n in integer) / total
            print(f"{name}: its {len(integer)} integer nodes take {share:.0%} of {ref}'s kernel time at B=256: "
                  f"speed-up bound 1 / (1 - {share:.2f}) = {1 / (1 - share):.2f}x")

if __name__ == "__main__":
    main()
