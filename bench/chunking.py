"""Rows per onnxruntime run: how din_runtime's POSITIONS_PER_RUN was chosen (docs/runtime.md, "Chunking").

    python bench/chunking.py MODEL_DIR [--batch 256] [--lengths 20,50,100,500] [--rounds 25] [--threads 1]
                             [--out bench/results/chunking.json]

One batch of `--batch` rows at each history length is scored by the model's bare session, whole and in
runs of max(1, P // L) rows for several position budgets P; every variant alternates with the others
(din_export.bench.timing.alternate) and the medians are printed as rows/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc
from din_export.schema import Schema, write_json_atomic

BUDGETS = (512, 1024, 2048, 4096, 8192)


def measure(model_dir: Path, batch: int, lengths: list[int], rounds: int, threads: int) -> dict[str, dict[str, float]]:
    schema = Schema.from_dict(json.loads((model_dir / "manifest.json").read_text())["schema"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession((model_dir / "model.onnx").read_bytes(), options,
                                   providers=["CPUExecutionProvider"])
    results: dict[str, dict[str, float]] = {}
    for seq in lengths:
        feeds = {k: v for k, v in workload_arrays(schema, batch, seq, seed=seq).items() if k in schema.input_names()}
        thunks = {"whole batch": lambda f=feeds: session.run(["prob"], f)}
        for budget in BUDGETS:
            rows = max(1, budget // seq)
            chunks = [{k: v[i:i + rows] for k, v in feeds.items()} for i in range(0, batch, rows)]
            thunks[f"{budget} positions ({rows} rows)"] = lambda cs=chunks: [session.run(["prob"], c) for c in cs]
        times = alternate(thunks, rounds)
        results[str(seq)] = {name: batch / float(np.median(t)) for name, t in times.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lengths", default="20,50,100,500")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/chunking.json"))
    args = parser.parse_args()
    malloc = pin_malloc()
    lengths = [int(x) for x in args.lengths.split(",")]
    results = measure(args.model_dir, args.batch, lengths, args.rounds, args.threads)
    for seq, row in results.items():
        whole = row["whole batch"]
        print(f"L={seq}: " + ", ".join(f"{name} {r:,.0f} rows/s ({r / whole:.2f}x)" for name, r in row.items()))
    write_json_atomic(args.out, {"model_dir": str(args.model_dir), "batch": args.batch, "threads": args.threads,
                                 "rounds": args.rounds, "malloc": malloc, "rows_per_s": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
