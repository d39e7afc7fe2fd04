"""Training speed and quality: ours against DeepCTR-Torch's DIN on the same splits, epochs alternating."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from din_export.bench.peers import DeepCTRRun
from din_export.bench.plan import Plan
from din_export.model import ModelConfig
from din_export.train import TrainConfig, train

TRAIN_THREADS = 1  # see compare_training


def compare_training(data_dir: Path, run_dir: Path, plan: Plan) -> dict[str, Any]:
    """Ours (`din_export.train.train`) and DeepCTR-Torch's DIN, epochs alternating, same everything else.

    Both train on TRAIN_THREADS torch threads: with more, a core taken by another process stalls every
    parallel region of OpenMP's spinning threads, and epochs of either model slowed 10x at random here.
    """
    from din_export.data import load_schema, load_split
    schema = load_schema(data_dir)
    splits = {s: load_split(data_dir, s, schema) for s in ("train", "valid", "test")}
    cfg = ModelConfig()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    theirs = DeepCTRRun(schema, cfg, splits, plan)
    train_cfg = TrainConfig(lr=plan.lr, batch_size=plan.train_batch, patience=0, seed=0, threads=TRAIN_THREADS,
                            device="cuda" if plan.device == "cuda" else "cpu")
    for epoch in range(1, plan.epochs + 1):
        train(data_dir, run_dir, cfg, replace(train_cfg, epochs=epoch), resume=True, quiet=True)
        theirs.epoch()
    torch.set_num_threads(default_threads)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = [h["seconds"] for h in metrics["history"]]
    rows = len(splits["train"]["label"])
    ours = {"best_epoch": metrics["best_epoch"], "valid_gauc": metrics["valid"]["gauc"], "test": metrics["test"],
            "epoch_seconds": seconds, "samples_per_s": rows * len(seconds) / sum(seconds)}
    deepctr = theirs.result()
    return {"train_rows": rows, "epochs": plan.epochs, "batch_size": plan.train_batch, "lr": plan.lr,
            "threads": TRAIN_THREADS, "model": cfg.to_dict(), "ours": ours, "deepctr": deepctr,
            "speedup": ours["samples_per_s"] / deepctr["samples_per_s"]}
