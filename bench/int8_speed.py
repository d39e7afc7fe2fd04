"""int8 against fp32 for exported model directories of one run: throughput at B=256 and latency at B=1,
whole batches and through the Scorer, and where the time goes (onnxruntime's per-node profile).

    python bench/int8_speed.py FP32_DIR INT8_DIR [MORE_DIRS...] [--seq 100] [--threads 1] [--rounds 40]
                               [--run-positions 512,1024,2048,4096,8192] [--profile-runs 30]
                               [--json bench/results/int8/NAME.json]

Every directory is fed the same inputs (every history `--seq` long, known ids:
din_export.bench.data.workload_arrays) and timed in alternating rounds (din_export.bench.timing.alternate:
the engines take turns, so a busy machine slows all of them alike); p50 per directory, each as a ratio to
the first directory's, which is the reference (the fp32 export). Three measurements:

- whole batch: each model.onnx in a bare onnxruntime session (CPU, `--threads` intra-op threads), the
  batch in one run, at B=256 and B=1;
- Scorer: `din_runtime.Scorer.load(dir, threads=...).score_arrays(arrays)`, the path a user takes, which
  on CPU splits a batch into runs of `rows_per_run(seq, width)` rows (runtime/scorer.py), at
  B=256 and B=1;
- run sizes: each directory's session on the B=256 batch sliced by hand into runs of
  max(1, P // seq) rows for each P in `--run-positions`, each as a ratio to the reference's Scorer (so a
  run size that helps int8 only shows apart from one that helps every export).

Then each directory's kernel time by kind of node (`--profile-runs` runs after 3 warm-up runs,
onnxruntime's `enable_profiling`) at B=256 and at the Scorer's run size, and for each later directory
the share of the reference's kernel time spent in the nodes that directory runs as integer kernels
(matched by node name in the first directory without integer nodes that has them all: int8 quantises
the same graph its fp32 export is) with the bound it puts on the speed-up (Amdahl: those nodes taking no
time at all). `--json` writes every figure, the CPU and the load averages before and after.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
from din_runtime import Scorer
from din_runtime.scorer import positions_per_run, rows_per_run
from profile_graph import node_times  # bench/, on the path when this script runs

from din_export.bench.data import workload_arrays
from din_export.bench.engines import onnx_session
from din_export.bench.timing import alternate, pin_malloc
from din_export.schema import Schema, write_json_atomic

KINDS = {
    "matrix product": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"},
    "int8 matrix product": {"QGemm", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"},
    "quantise / dequantise": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
    "elementwise": {"Add", "Sub", "Mul", "Div", "Sigmoid", "Where", "Softmax", "PRelu", "Relu", "Cast", "Less",
                    "Greater", "Max"},
    "gather": {"Gather", "GatherND"},
}
INTEGER = KINDS["int8 matrix product"]
BATCH = 256

Arrays = dict[str, np.ndarray]


def kind(op: str) -> str:
    return next((k for k, ops in KINDS.items() if op in ops), "other")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def export_facts(model_dir: Path) -> dict:
    """The export's size, variant and verification figures (its manifest's "parity" report; None where an
    older manifest has none)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    variant = manifest.get("parity", {}).get("variant", {})
    return {"model_onnx_bytes": (model_dir / "model.onnx").stat().st_size, "quantize": manifest.get("quantize"),
            "optimized": manifest.get("optimized"), "max_abs_diff_prob": variant.get("max_abs_diff_prob"),
            "auc_change": variant.get("auc_change")}


def timed(thunks: dict[str, Callable[[], object]], rounds: int, ref: str) -> dict[str, dict[str, float]]:
    """p50 ms of each thunk (alternating rounds) and its speed as a ratio to `ref`'s p50."""
    times = alternate(thunks, rounds, warmup=3)
    p50 = {name: float(np.median(t)) for name, t in times.items()}
    return {name: {"p50_ms": p * 1e3, "vs_ref": p50[ref] / p} for name, p in p50.items()}


def in_runs(session: object, arrays: Arrays, rows: int) -> Callable[[], object]:
    """One call scoring `arrays` in runs of `rows` rows, the slices made once (as views) beforehand."""
    n = len(arrays["hist_len"])
    parts = [{k: v[start:start + rows] for k, v in arrays.items()} for start in range(0, n, rows)]
    return lambda: [session.run(["prob"], part) for part in parts]  # type: ignore[attr-defined]


def line(label: str, cells: dict[str, dict[str, float]]) -> str:
    return f"{label}: " + ", ".join(f"{name} {c['p50_ms']:.3f} ms ({c['vs_ref']:.2f}x)" for name, c in cells.items())


def profile(dirs: list[Path], arrays: Arrays, threads: int, runs: int) -> dict:
    """Per directory: kernel ms and shares by kind of node; per later directory: its integer nodes' share of
    the reference's kernel time and the Amdahl bound that puts on its speed-up."""
    # onnxruntime names a node it fused with its activation "fused <name>" (fp32's Gemm + Sigmoid, which
    # int8's QGemm does not fuse): matched by the original name, so such a share includes the activation
    nodes = {d.name: {n.removeprefix("fused "): (v["op"], v["us"] * 1e-3) for n, v in
                      node_times(d / "model.onnx", arrays, threads, runs, warmup=3).items()} for d in dirs}
    out: dict = {"kernels": {}, "bounds": {}}
    for name, times in nodes.items():
        total = sum(t for _, t in times.values())
        by_kind: collections.Counter = collections.Counter()
        for op, t in times.values():
            by_kind[kind(op)] += t
        out["kernels"][name] = {"ms": total, "shares": {k: t / total for k, t in by_kind.most_common()}}
    names = list(nodes)
    for name in names:
        integer = {n for n, (op, _) in nodes[name].items() if op in INTEGER}
        ref = next((r for r in names if integer and integer <= nodes[r].keys()
                    and not any(op in INTEGER for op, _ in nodes[r].values())), None)
        if ref is None:
            continue
        share = sum(t for n, (_, t) in nodes[ref].items() if n in integer) / sum(t for _, t in nodes[ref].values())
        out["bounds"][name] = {"ref": ref, "integer_nodes": len(integer), "share_of_ref": share,
                               "bound": 1 / (1 - share)}
    return out


def print_profile(label: str, prof: dict) -> None:
    for name, k in prof["kernels"].items():
        shares = ", ".join(f"{kind} {s:.0%}" for kind, s in k["shares"].items())
        print(f"profile {label} {name}: kernels {k['ms']:.2f} ms: {shares}")
    for name, b in prof["bounds"].items():
        print(f"  {name}: its {b['integer_nodes']} integer nodes take {b['share_of_ref']:.0%} of {b['ref']}'s kernel "
              f"time: speed-up bound 1 / (1 - {b['share_of_ref']:.2f}) = {b['bound']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--run-positions", default="512,1024,2048,4096,8192",
                        help="comma-separated positions per run for the run-size sweep ('' for none)")
    parser.add_argument("--profile-runs", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    pin_malloc()
    names = [d.name for d in args.dirs]
    if len(set(names)) != len(names):
        parser.error(f"the directories' names must differ (they label the figures): {names}")
    ref = names[0]
    schema = Schema.from_dict(json.loads((args.dirs[0] / "manifest.json").read_text())["schema"])
    sessions = {d.name: onnx_session(d, args.threads, "cpu") for d in args.dirs}
    scorers = {d.name: Scorer.load(d, threads=args.threads) for d in args.dirs}
    attention_width = scorers[ref].manifest.attention_width
    scorer_rows = rows_per_run(args.seq, attention_width)
    report: dict = {
        "cpu": cpu_name(), "threads": args.threads, "seq": args.seq, "rounds": args.rounds,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_before": os.getloadavg(), "positions_per_run": positions_per_run(attention_width),
        "scorer_rows_per_run": scorer_rows,
        "dirs": {d.name: export_facts(d) for d in args.dirs},
    }
    print(f"{report['cpu']}, {args.threads} thread(s), history {args.seq}, load average "
          f"{' '.join(f'{x:.2f}' for x in report['load_before'])}; the Scorer runs {scorer_rows} rows at a time "
          f"({positions_per_run(attention_width)} positions per run)")
    for name, facts in report["dirs"].items():
        diff, auc = facts["max_abs_diff_prob"], facts["auc_change"]
        diff_text = "n/a" if diff is None else f"{diff:.2e}"
        auc_text = "n/a" if auc is None else f"{auc:+.2e}"
        print(f"{name}: model.onnx {facts['model_onnx_bytes'] / 1e3:.1f} KB, quantize {facts['quantize']}, optimized "
              f"{facts['optimized']}; verification: worst judged prob diff {diff_text}, valid AUC change {auc_text}")

    report["whole_batch"], report["scorer"] = {}, {}
    for batch, rounds in ((BATCH, args.rounds), (1, 10 * args.rounds)):
        arrays = workload_arrays(schema, batch, args.seq, seed=batch)
        cells = timed({name: (lambda s=s, a=arrays: s.run(["prob"], a)) for name, s in sessions.items()}, rounds, ref)
        report["whole_batch"][f"B={batch}"] = cells
        print(line(f"whole batch B={batch} L={args.seq}, {rounds} rounds", cells), flush=True)
        cells = timed({name: (lambda s=s, a=arrays: s.score_arrays(a)) for name, s in scorers.items()}, rounds, ref)
        report["scorer"][f"B={batch}"] = cells
        print(line(f"Scorer B={batch} L={args.seq}, {rounds} rounds", cells), flush=True)

    arrays = workload_arrays(schema, BATCH, args.seq, seed=BATCH)
    positions = [int(p) for p in args.run_positions.split(",") if p]
    if positions:
        thunks: dict[str, Callable[[], object]] = {f"{ref} Scorer": lambda: scorers[ref].score_arrays(arrays)}
        for p in positions:
            for name, s in sessions.items():
                thunks[f"{name} {p}"] = in_runs(s, arrays, max(1, p // args.seq))
        cells = timed(thunks, args.rounds, f"{ref} Scorer")
        report["run_sizes"] = cells
        print(f"run sizes at B={BATCH} L={args.seq} (positions per run; ratio to {ref}'s Scorer), "
              f"{args.rounds} rounds:")
        for p in positions:
            row = ", ".join(f"{name} {cells[f'{name} {p}']['p50_ms']:.3f} ms ({cells[f'{name} {p}']['vs_ref']:.2f}x)"
                            for name in names)
            same = ", ".join(f"{name} {cells[f'{ref} {p}']['p50_ms'] / cells[f'{name} {p}']['p50_ms']:.2f}x"
                             for name in names[1:])
            print(f"  {p} ({max(1, p // args.seq)} rows): {row}; vs {ref} at this size: {same}")

    if args.profile_runs:
        report["profile"] = {}
        for batch in (BATCH, scorer_rows):
            label = f"B={batch} L={args.seq}"
            report["profile"][label] = profile(args.dirs, workload_arrays(schema, batch, args.seq, seed=BATCH),
                                               args.threads, args.profile_runs * max(1, BATCH // batch))
            print_profile(label, report["profile"][label])
    report["load_after"] = os.getloadavg()
    print(f"load average after {' '.join(f'{x:.2f}' for x in report['load_after'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
