"""Where an exported model's time goes: onnxruntime's per-node profile, grouped (docs/bench.md).

    python bench/profile_graph.py MODEL_DIR [MODEL_DIR ...] [--batch 256] [--seq 100] [--threads 1]
                                  [--out bench/results/profile.json]

Each node's kernel time is summed over the runs and grouped by what it computes: the attention's
per-position work (tensors with B x L rows), the per-row work (B rows) and the rest, then by op type
and output shape, so the cost of each rewrite's target shows directly.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort

from din_export.bench.data import workload_arrays
from din_export.bench.timing import pin_malloc
from din_export.schema import Schema, write_json_atomic


def node_times(model: Path, feeds: dict, threads: int, runs: int, warmup: int = 2) -> dict[str, dict]:
    """Node name -> {"op", "shape" (its first output's), "us" (mean kernel microseconds per run)} of
    `model` (a model.onnx) on `feeds`, over `runs` runs after `warmup` runs (those allocate the arena
    and fill the caches)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(model.read_bytes(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + warmup):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    start = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")[warmup - 1] if warmup else 0
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > start:
            shape = (e["args"].get("output_type_shape") or [{}])[0]
            dims = next(iter(shape.values()), [])
            n = nodes.setdefault(e["name"][:-len("_kernel_time")], {"op": e["args"]["op_name"], "shape": dims,
                                                                      "us": 0.0})
            n["us"] += e["dur"] / runs
    return nodes


def profile(model_dir: Path, batch: int, seq: int, threads: int, runs: int) -> dict:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    schema = Schema.from_dict(manifest["schema"])
    nodes = node_times(model_dir / "model.onnx", workload_arrays(schema, batch, seq), threads, runs)
    positions = batch * seq

    def scope(dims: list[int]) -> str:
        rows = dims[0] * (dims[1] if len(dims) > 2 else 1) if dims else 0
        if positions > batch and (rows == positions or (len(dims) >= 2 and dims[0] * dims[1] == positions)):
            return "per position (B x L)"
        return "per row (B)" if dims and dims[0] == batch else "other"

    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for n in nodes.values():
        groups[scope(n["shape"])][f"{n['op']} {n['shape']}"] += n["us"]
    total = sum(n["us"] for n in nodes.values())
    return {"model_dir": str(model_dir), "optimized": manifest.get("optimized"), "quantize": manifest.get("quantize"),
            "batch": batch, "seq": seq, "threads": threads, "total_ms": total / 1e3,
            "groups": {g: {"ms": sum(c.values()) / 1e3, "share": sum(c.values()) / total,
                           "top": {k: round(v / 1e3, 3) for k, v in c.most_common(12)}} for g, c in groups.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile.json"))
    args = parser.parse_args()
    malloc = pin_malloc()
    results = [profile(d, args.batch, args.seq, args.threads, args.runs) for d in args.model_dirs]
    for r in results:
        print(f"{r['model_dir']} (optimized={r['optimized']}, quantize={r['quantize']}): {r['total_ms']:.2f} ms "
              f"in kernels, B={r['batch']} L={r['seq']}, {r['threads']} thread(s)")
        for name, g in sorted(r["groups"].items(), key=lambda kv: -kv[1]["ms"]):
            print(f"  {name}: {g['ms']:.2f} ms ({g['share']:.0%})")
            for op, ms in g["top"].items():
                print(f"      {ms:7.3f} ms  {op}")
    write_json_atomic(args.out, {"malloc": malloc, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
