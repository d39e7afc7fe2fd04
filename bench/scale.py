"""Scale: prepare and train on synthetic shoppers of N million events (results/scale.md).

    python bench/scale.py WORK_DIR --events 10 [--old REF] [--train epoch|STEPS] [--threads 1]
    python bench/scale.py WORK_DIR --events 10 --phases DATA_DIR   # resident memory per prepare phase

Generates WORK_DIR/events-<N>m.parquet with `python -m din_export.synthetic` (25,000 shoppers per
million events, 100k items, 200 categories, 20-60 events each; kept for the next run), then for this
checkout ("new") and, with --old REF, the toolkit at git ref REF exported to WORK_DIR ("old"):
`din-export prepare --source synthetic`, and `din-export train --config edge` for one epoch
(--train epoch) or, where an epoch is too long, STEPS steps of the same training step through
`python bench/scale.py --steps-only` (batches, model and optimizer as `train` builds them).
Every command runs under `/usr/bin/time -v`; wall time, CPU time (user + sys), peak RSS, dataset
directory size and samples/s are printed and saved to WORK_DIR/scale-<N>m.json. Layouts run one after
the other, not alternated: the figures are single runs, on a machine that may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USERS_PER_MILLION = 25_000


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `cmd` under /usr/bin/time -v; its wall seconds and peak RSS (GB), the output kept in `log`."""
    with open(log, "w") as out:
        # not run from the checkout: `python -m` puts the working directory first on sys.path, and the
        # checkout's din_export would shadow the old tree's
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}, cwd=log.parent)
    text = log.read_text()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(p) * 60**i for i, p in enumerate(reversed(wall.split(":"))))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", text).group(1)) for kind in ("User", "System"))
    return {"wall_s": round(seconds, 1), "cpu_s": round(cpu, 1), "peak_rss_gb": round(rss_kb / 2**20, 2),
            "command": " ".join(cmd)}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def old_tree(work: Path, ref: str) -> Path:
    """The toolkit at `ref`, importable as din_export and din_runtime from the returned folder."""
    src, path = work / f"old-src-{ref}", work / f"old-path-{ref}"
    if not src.is_dir():
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        path.mkdir()
        (path / "din_export").symlink_to(src / "din_export")
        (path / "din_runtime").symlink_to(src / "runtime")
        (path / "models").symlink_to(src / "models")  # the presets, found beside the package
    return path


def steps_only(data_dir: Path, steps: int, threads: int) -> None:
    """STEPS training steps of `train --config edge` on DATA_DIR (all splits loaded and checked, as
    `train` does); prints samples/s of the steps as JSON. Runs under the old toolkit too."""
    import numpy as np
    import torch
    from torch import nn

    from din_export.config import load_preset
    from din_export.data import Batches, load_schema, load_split
    from din_export.model import DIN
    from din_export.train import make_optimizer

    torch.set_num_threads(threads)
    model_cfg, cfg, _ = load_preset("edge")
    schema = load_schema(data_dir)
    # load_split and Batches as both layouts' toolkits have them, so --old runs this too
    splits = {s: load_split(data_dir, s, schema) for s in ("train", "valid", "test")}
    torch.manual_seed(cfg.seed)
    model = DIN(schema, model_cfg)
    opt = make_optimizer(model, cfg)
    batches = Batches(splits["train"], schema, cfg.batch_size, shuffle=True, seed=cfg.seed)
    rows, done, start = 0, 0, time.perf_counter()
    for batch in batches.epoch(0):
        labels = batch.pop("label")
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows, done = rows + len(labels), done + 1
        if done == steps:
            break
    seconds = time.perf_counter() - start
    assert np.isfinite(float(loss.detach()))
    print(json.dumps({"steps": done, "rows": rows, "seconds": round(seconds, 2),
                      "samples_per_s": round(rows / seconds, 1), "batch_size": cfg.batch_size,
                      "train_rows": len(splits["train"]["label"])}))


def _vm(field: str) -> float:
    """A field of /proc/self/status in GB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    line = next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith(field))
    return int(line.split()[1]) / 1e6


def phases(events: Path, out: Path) -> None:
    """`din-export prepare --source synthetic EVENTS --out OUT` in this process, printing the resident
    memory before, at the peak of and after each phase: reading, and prepare's own steps. The kernel's
    peak mark is reset (/proc/self/clear_refs) as each phase ends, so a phase's peak is the highest
    since the previous phase ended (the first _build_vocab's covers the sample loop before it)."""
    import functools

    from din_export import prepare as prep
    from din_export import synthetic

    def traced(module: object, name: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def run(*args: object, **kwargs: object) -> object:
            before, start = _vm("VmRSS"), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                print(f"{name}: before {before:.2f} GB, peak {_vm('VmHWM'):.2f} GB, after {_vm('VmRSS'):.2f} GB, "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
                Path("/proc/self/clear_refs").write_text("5")

        setattr(module, name, run)

    traced(synthetic, "load")
    for name in ("_sorted_table", "_assign_user_splits", "_write_events", "_stats"):
        traced(prep, name)
    traced(prep, "_build_vocab")
    events_table = synthetic.load(events)
    prep.prepare(events_table, out, force=True, release_events=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--events", type=int, default=10, help="millions of events")
    ap.add_argument("--old", help="git ref of the toolkit to compare with (its prepare and train)")
    ap.add_argument("--train", default="epoch", help="'epoch' (one epoch of train) or a number of steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-prepare", action="store_true", help="reuse the dataset directories of a former run")
    ap.add_argument("--steps-only", type=Path, metavar="DATA_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--phases", type=Path, metavar="DATA_DIR",
                    help="prepare WORK_DIR/events-<N>m.parquet into DATA_DIR in this process and print the "
                         "resident memory of each phase (Linux)")
    args = ap.parse_args()
    if args.phases:
        phases(args.work / f"events-{args.events}m.parquet", args.phases)
        return
    if args.steps_only:
        steps_only(args.steps_only, int(args.train), args.threads)
        return

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    n = args.events
    events = work / f"events-{n}m.parquet"
    record: dict = {"events_millions": n, "cpu": cpu(), "load_before": os.getloadavg()}
    if not events.exists():
        record["generate"] = timed([py, "-m", "din_export.synthetic", str(events), "--users",
                                    str(n * USERS_PER_MILLION), "--items", "100000", "--categories", "200"],
                                   work / f"generate-{n}m.log")
    layouts = {"new": None}
    if args.old:
        layouts = {"old": {"PYTHONPATH": str(old_tree(work, args.old))}, **layouts}
    for name, env in layouts.items():
        data, run = work / f"{name}-{n}m", work / f"{name}-{n}m-run"
        if not args.skip_prepare:
            record[f"{name}_prepare"] = timed([py, "-m", "din_export", "prepare", "--source", "synthetic", str(events),
                                               "--out", str(data), "--force"], work / f"{name}-prepare-{n}m.log", env)
        record[f"{name}_prepare_dir_gb"] = round(dir_bytes(data) / 1e9, 2)
        subprocess.run(["rm", "-rf", str(run)], check=True)
        if args.train == "epoch":
            result = timed([py, "-m", "din_export", "train", str(data), "--out", str(run), "--config", "edge",
                            "--epochs", "1", "--threads", str(args.threads), "--quiet"],
                           work / f"{name}-train-{n}m.log", env)
            metrics = json.loads((run / "metrics.json").read_text())
            rows = metrics["rows"]["train"] if "rows" in metrics else None
            seconds = metrics["history"][0]["seconds"]
            result.update(epoch_s=seconds, train_rows=rows, samples_per_s=round(rows / seconds, 1) if rows else None)
        else:
            result = timed([py, str(Path(__file__).resolve()), str(work), "--steps-only", str(data), "--train",
                            args.train, "--threads", str(args.threads)], work / f"{name}-steps-{n}m.log", env)
            result.update(json.loads(next(line for line in (work / f"{name}-steps-{n}m.log").read_text().splitlines()
                                          if line.startswith("{"))))
        record[f"{name}_train"] = result
        record["load_after"] = os.getloadavg()
        (work / f"scale-{n}m.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    return "unknown"


if __name__ == "__main__":
    main()
