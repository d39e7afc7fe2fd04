"""Rows per onnxruntime run: how din_runtime's run budget was chosen (docs/runtime.md, "Chunking").

    python bench/chunking.py MODEL_DIR [MODEL_DIR ...] [--batch 256] [--lengths 20,50,100,500]
                             [--budgets 512,1024,2048,4096,8192] [--rounds 25] [--back-to-back 1] [--threads 1]
                             [--out bench/results/chunking.json]

For each model directory, one batch of `--batch` rows at each history length is scored by bare sessions
of its model.onnx, whole and in runs of max(1, P // L) rows for each position budget P; the variants
alternate (din_export.bench.timing.alternate; `--back-to-back K`: K batches in a row, K - 1 timed, as
a server scoring batch after batch) and the medians are printed as rows/s. Each variant has
its own InferenceSession, as a Scorer's session sees only its own run sizes: one session taking turns
at every size carried the state the previous size left (its arena, its memory pattern per shape), and a
variant doing exactly the whole batch's work read 0.94x of it (bench/results/chunking.json, L=20).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from machine import cpu_model  # bench/, on the path when this script runs

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc
from din_export.schema import Schema, write_json_atomic


def measure(model_dir: Path, batch: int, lengths: list[int], budgets: list[int], rounds: int,
            threads: int, back_to_back: int = 1) -> dict[str, dict[str, float]]:
    schema = Schema.from_dict(json.loads((model_dir / "manifest.json").read_text())["schema"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = (model_dir / "model.onnx").read_bytes()

    def session() -> ort.InferenceSession:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    results: dict[str, dict[str, float]] = {}
    for seq in lengths:
        feeds = {k: v for k, v in workload_arrays(schema, batch, seq, seed=seq).items() if k in schema.input_names()}
        whole = session()
        thunks = {"whole batch": lambda s=whole, f=feeds: s.run(["prob"], f)}
        for budget in budgets:
            rows = max(1, budget // seq)
            chunks = [{k: v[i:i + rows] for k, v in feeds.items()} for i in range(0, batch, rows)]
            own = session()
            thunks[f"{budget} positions ({rows} rows)"] = lambda s=own, cs=chunks: [s.run(["prob"], c) for c in cs]
        times = alternate(thunks, rounds, back_to_back=back_to_back)
        results[str(seq)] = {name: batch / float(np.median(t)) for name, t in times.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lengths", default="20,50,100,500")
    parser.add_argument("--budgets", default="512,1024,2048,4096,8192", help="positions per run, comma separated")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--back-to-back", type=int, default=1, help="batches per variant in a row per round, "
                        "the first untimed (din_export.bench.timing.alternate): a session serving batch after batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/chunking.json"))
    args = parser.parse_args()
    malloc = pin_malloc()
    lengths = [int(x) for x in args.lengths.split(",")]
    budgets = [int(x) for x in args.budgets.split(",")]
    report = {"cpu": cpu_model(), "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
              "back_to_back": args.back_to_back,
              "malloc": malloc, "load_before": os.getloadavg(), "rows_per_s": {}}
    for model_dir in args.model_dirs:
        results = measure(model_dir, args.batch, lengths, budgets, args.rounds, args.threads, args.back_to_back)
        report["rows_per_s"][str(model_dir)] = results
        for seq, row in results.items():
            whole = row["whole batch"]
            print(f"{model_dir.name} L={seq}: " + ", ".join(f"{name} {r:,.0f} rows/s ({r / whole:.2f}x)"
                                                             for name, r in row.items()), flush=True)
    report["load_after"] = os.getloadavg()
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
