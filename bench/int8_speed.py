"""int8 against fp32 for exported model directories of one run: throughput at B=256 and latency at B=1.

    python bench/int8_speed.py FP32_DIR INT8_DIR [MORE_DIRS...] [--seq 100] [--threads 1] [--rounds 40]

Each directory's model.onnx in its own onnxruntime session (CPU, `--threads` intra-op threads), fed the
same inputs (every history `--seq` long, known ids: din_export.bench.data.workload_arrays), timed in
alternating rounds (din_export.bench.timing.alternate: the engines take turns, so a busy machine slows all of
them alike). Prints p50 per directory and batch, each as a ratio to the first directory's, and the
file sizes; the first directory is the reference (the fp32 export).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from din_export.bench.data import workload_arrays
from din_export.bench.engines import onnx_session
from din_export.bench.timing import alternate
from din_export.schema import Schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    names = [d.name for d in args.dirs]
    schema = Schema.from_dict(json.loads((args.dirs[0] / "manifest.json").read_text())["schema"])
    sessions = {d.name: onnx_session(d, args.threads, "cpu") for d in args.dirs}
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), history {args.seq}")
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


if __name__ == "__main__":
    main()
