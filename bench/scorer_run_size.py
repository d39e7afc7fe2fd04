"""The Scorer at the run size its model's width gives it against the same Scorer at the default budget
(docs/runtime.md, "Chunking").

    python bench/scorer_run_size.py MODEL_DIR [--lengths 20,100,500] [--batch 256] [--rounds 30]
                                    [--back-to-back 1,3] [--threads 1] [--json OUT]

`width`: Scorer.load(MODEL_DIR), runs of din_runtime.scorer.positions_per_run(attention width) positions.
`default`: Scorer.load of a copy of MODEL_DIR whose manifest has no "model" entry, so its attention width
is unknown and its runs are POSITIONS_PER_RUN positions, what every model ran before the width rule.
Same graph, same arrays (din_export.bench.data.workload_arrays), `score_arrays` timed in alternating
rounds, once per `--back-to-back` K (1: each call follows the other Scorer's; K > 1: K calls in a row,
K - 1 timed: a server scoring batch after batch); p50 and width / default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

from din_runtime import Scorer
from din_runtime.scorer import positions_per_run
from machine import cpu_model  # bench/, on the path when this script runs

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc, quantiles
from din_export.schema import Schema, write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--lengths", default="20,100,500")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--back-to-back", default="1,3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    malloc = pin_malloc()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    schema = Schema.from_dict(manifest["schema"])
    with tempfile.TemporaryDirectory() as tmp:
        default_dir = Path(shutil.copytree(args.model_dir, Path(tmp) / "default"))
        manifest.pop("model", None)
        (default_dir / "manifest.json").write_text(json.dumps(manifest))
        scorers = {"width": Scorer.load(args.model_dir, threads=args.threads),
                   "default": Scorer.load(default_dir, threads=args.threads)}
        width = scorers["width"].manifest.attention_width
        report = {"cpu": cpu_model(), "model_dir": str(args.model_dir), "threads": args.threads,
                  "batch": args.batch, "rounds": args.rounds, "malloc": malloc, "attention_width": width,
                  "positions_per_run": {"width": positions_per_run(width), "default": positions_per_run(None)},
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "load_before": os.getloadavg(), "results": {}}
        print(f"{report['cpu']}, {args.threads} thread(s), attention width {width}: "
              f"{report['positions_per_run']['width']} positions per run against "
              f"{report['positions_per_run']['default']}")
        for seq in (int(x) for x in args.lengths.split(",")):
            arrays = workload_arrays(schema, args.batch, seq, seed=seq)
            for k in (int(x) for x in args.back_to_back.split(",")):
                times = alternate({n: (lambda s=s, a=arrays: s.score_arrays(a)) for n, s in scorers.items()},
                                  args.rounds, back_to_back=k)
                p50 = {n: quantiles(t)["p50_ms"] for n, t in times.items()}
                row = {**p50, "width_vs_default": p50["default"] / p50["width"]}
                report["results"][f"L={seq} back_to_back={k}"] = row
                print(f"B={args.batch} L={seq}, {k} in a row: width {p50['width']:.3f} ms, default "
                      f"{p50['default']:.3f} ms: {row['width_vs_default']:.2f}x", flush=True)
    report["load_after"] = os.getloadavg()
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
