"""Training samples/s: the padded layout vs the compact layout, in one process, alternated (results/scale.md).

    python bench/train_layout.py DATA_DIR [--old-ref 4565d1c] [--compact-ref REF] [--rows N] [--rounds 8]
                                 [--steps 100] [--gathers 500] [--threads 1]

DATA_DIR is a compact dataset (`din-export prepare`). "old" is the padded layout as the toolkit at
--old-ref batched it: its `Batches` class, read from git and run unchanged, over whole-split tensors
with every history padded to max_len in memory (what its `load_split` gave from `train.npz`). "new"
is this checkout's `Batches` over the memory-mapped compact split, gathering histories per batch;
--compact-ref REF adds the compact layout's `Split` and `Batches` of git ref REF over the same mapped
files (an earlier gather against this one). All see the same rows: the first --rows rows of the
train split (default all; the old layout holds rows x max_len x 8 bytes per history in memory).

Each round times every layout in turn (the order rotated and reversed from round to round):
--gathers batches of `Batches.epoch` alone (the data side), then --steps training steps of
`train --config edge` (batch, forward, loss, backward, Adam). The layouts train copies of one
initialised model on the same batches, so their losses must be bitwise equal, which is checked.
Prints each round's wall and process-CPU milliseconds, then the medians of the per-round ratios to
"old" as JSON lines; one process, so the load the machine is under falls on all layouts alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from din_export.config import load_preset
from din_export.data import Batches, Split, load_schema, load_splits
from din_export.model import DIN
from din_export.train import make_optimizer

REPO = Path(__file__).resolve().parents[1]


def data_module_at(ref: str) -> types.ModuleType:
    """din_export/data.py at git ref REF, executed as it was."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:din_export/data.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"old_data_{ref}")
    sys.modules[module.__name__] = module  # dataclasses and annotations look their module up
    exec(compile(source, f"{ref}:din_export/data.py", "exec"), module.__dict__)
    return module


def padded_arrays(split: Split, rows: int, max_len: int, chunk: int = 1 << 18) -> dict[str, np.ndarray]:
    """The first `rows` rows as the npz layout held them: histories padded to max_len, int64 ids."""
    first = split.take(np.arange(min(chunk, rows)), width=max_len)
    out = {k: np.empty((rows, *v.shape[1:]), dtype=v.dtype) for k, v in first.items()}
    for s in range(0, rows, chunk):
        part = first if s == 0 else split.take(np.arange(s, min(s + chunk, rows)), width=max_len)
        for k, v in part.items():
            out[k][s:s + len(v)] = v
    return out


def gather_seconds(batches: object, n: int, start: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of N batches."""
    it = epoch_from(batches, start)
    began, cpu = time.perf_counter(), time.process_time()
    for i, _ in enumerate(it):
        if i + 1 == n:
            break
    return time.perf_counter() - began, time.process_time() - cpu


def epoch_from(batches: object, start: int) -> Iterator[dict[str, torch.Tensor]]:
    """Epoch 0's batches after number `start`, which is gathered (untimed) to draw the shuffle first:
    training draws it once per epoch, a round here would draw it once per few hundred batches."""
    it = batches.epoch(0, start=start)
    next(it)
    return it


def train_seconds(batches: object, model: DIN, opt: torch.optim.Optimizer, n: int,
                  start: int) -> tuple[float, float, list]:
    """(wall, process CPU) seconds of N training steps, and their losses."""
    losses = []
    it = epoch_from(batches, start)
    began, cpu = time.perf_counter(), time.process_time()
    for batch in it:
        labels = batch.pop("label")
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if len(losses) == n:
            break
    return time.perf_counter() - began, time.process_time() - cpu, [float(x) for x in losses]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--old-ref", default="4565d1c", help="git ref of the padded layout's data.py")
    ap.add_argument("--compact-ref", help="also time the compact layout's Split and Batches of this git ref")
    ap.add_argument("--rows", type=int, default=0, help="first N train rows (0: all)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="training steps per layout per round")
    ap.add_argument("--gathers", type=int, default=500, help="batches gathered alone per layout per round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model_cfg, cfg, _ = load_preset("edge")
    schema = load_schema(args.data_dir)
    split = load_splits(args.data_dir, ("train",), schema)["train"]
    rows = args.rows or split.n
    if rows < split.n:
        split = Split(schema, {k: v[:rows] for k, v in split.columns.items()}, split.events, split.where)
    batches = dict(shuffle=True, seed=cfg.seed)
    layouts = {"old": data_module_at(args.old_ref).Batches(padded_arrays(split, rows, schema.max_len), schema,
                                                           cfg.batch_size, **batches)}
    if args.compact_ref:
        then = data_module_at(args.compact_ref)
        layouts[args.compact_ref] = then.Batches(then.Split(schema, split.columns, split.events, split.where),
                                                 schema, cfg.batch_size, **batches)
    layouts["new"] = Batches(split, schema, cfg.batch_size, **batches)
    torch.manual_seed(cfg.seed)
    model = DIN(schema, model_cfg)
    models = {name: copy.deepcopy(model) for name in layouts}
    opts = {name: make_optimizer(m, cfg) for name, m in models.items()}
    need = args.rounds * max(args.steps, args.gathers) + 1
    if need > len(layouts["new"]):
        raise SystemExit(f"{args.rounds} rounds of {max(args.steps, args.gathers)} batches need {need} batches; "
                         f"the split has {len(layouts['new'])}")
    print(json.dumps({"cpu": cpu_model(), "load": load(), "rows": rows, "max_len": schema.max_len,
                      "batch_size": cfg.batch_size, "threads": args.threads, "layouts": list(layouts),
                      "old_ref": args.old_ref}), flush=True)

    names = list(layouts)
    ratios: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        figures: dict[str, dict[str, float]] = {}
        losses = {}
        for name in order:
            g, g_cpu = gather_seconds(layouts[name], args.gathers, r * args.gathers)
            t, t_cpu, losses[name] = train_seconds(layouts[name], models[name], opts[name], args.steps,
                                                   r * args.steps)
            figures[name] = {"gather_ms": 1e3 * g / args.gathers, "gather_cpu_ms": 1e3 * g_cpu / args.gathers,
                             "step_ms": 1e3 * t / args.steps, "step_cpu_ms": 1e3 * t_cpu / args.steps,
                             "samples_per_s": args.steps * cfg.batch_size / t}
        if any(losses[name] != losses["old"] for name in names):
            raise SystemExit(f"round {r}: the layouts' losses differ: the batches are not the same")
        for name in names[1:]:
            for key in ("gather_ms", "gather_cpu_ms", "step_ms", "step_cpu_ms"):
                ratios.setdefault(f"{name}/old {key}", []).append(figures[name][key] / figures["old"][key])
        print(json.dumps({"round": r, "order": order, "load": load(),
                          **{f"{k} {n}": round(v, 3) for n, f in figures.items() for k, v in f.items()}}),
              flush=True)
    print(json.dumps({"load": load(), "medians over rounds (below 1: faster than old)":
                      {k: round(statistics.median(v), 3) for k, v in ratios.items()}}))
    print(json.dumps({"per round": {k: [round(x, 3) for x in v] for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
