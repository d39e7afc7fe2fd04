"""Training: fit DIN or the base model (`din-export train`), select it on validation GAUC.

A run directory (docs/design.md "Run directory") holds the best-on-validation weights, the metrics and
the resume state. Every file is written to a temporary name and renamed, so a reader or a resumed run
sees the old file or the new one, never half of one.

Determinism: the model is initialised from `seed`; batch order is a permutation drawn from (seed,
epoch); dropout's torch generator is re-seeded from (seed, epoch, step, rank) before every step. No
random state lives only in memory, so a run resumed from any checkpoint replays the same arithmetic
as an uninterrupted one and ends with the same weights and metrics (same threads, same device).

Multi-process: under `torchrun`, each global batch is split across the processes (gloo on CPU, nccl on
GPU) and DistributedDataParallel averages gradients. Dice and the input BatchNorm use each process's
own shard statistics (no SyncBatchNorm), and the mini-batch aware regulariser sees each shard as a
mini-batch. Rank 0 evaluates, decides early stopping for all, and alone writes files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from din_runtime.fs import write_bytes_atomic, write_json_atomic
from din_runtime.metrics import gauc
from safetensors.torch import save
from torch import Tensor, nn

from din_export.checkpoints import (
    cpu_copy,
    load_optimizer_tensors,
    load_state,
    remove_stale_temporaries,
    save_state,
)
from din_export.checkpoints import load_run as load_run  # public here too: din_export.train.load_run
from din_export.data import Batches, DataError, Split, load_frequencies, load_schema, load_splits
from din_export.errors import DinExportError
from din_export.evaluate import evaluate_split
from din_export.evaluate import format_metrics as _fmt  # the name train()'s log lines use
from din_export.model import DIN, MBARegularizer, ModelConfig
from din_export.schema import Schema

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_decay: float = 1.0  # lr of epoch e (from 0) = lr * lr_decay**e, the paper's exponential decay
    batch_size: int = 128
    eval_batch_size: int = 4096
    epochs: int = 10
    patience: int = 2  # stop after this many epochs without a better validation GAUC; 0 never stops
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    weight_decay: float = 0.0
    mba_lambda: float = 0.0  # paper Eq. 6-7 on the embedding tables (the paper used 0.01)
    checkpoint_steps: int = 0  # also save the resume state every this many steps; 0: at epoch ends only
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]"),
            (self.batch_size >= 2, "batch_size must be >= 2 (Dice and BatchNorm need a batch variance)"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.mba_lambda >= 0, "mba_lambda must be >= 0"),
            (self.checkpoint_steps >= 0, "checkpoint_steps must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"train config: {message}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"train config: unknown keys {sorted(unknown)}")
        return cls(**d)


# --- Processes and devices ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def processes(cfg: TrainConfig) -> Iterator[Dist]:
    """One process, or the process group torchrun describes in the environment, destroyed on the way out
    if this call created it: a gloo group left to the interpreter's exit can abort the process after
    training finished ("terminate called without an active exception", pytorch/pytorch#190489)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist(device=torch.device("cuda" if cuda else "cpu"))
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owned = not torch.distributed.is_initialized()
    if owned:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Dist(rank=torch.distributed.get_rank(), world=world, device=device)
    finally:
        if owned:
            torch.distributed.destroy_process_group()


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# --- Training ----------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Log:
    """Messages from rank 0 only, to stderr; a tqdm bar over the steps when stderr is a terminal."""

    def __init__(self, dist: Dist, quiet: bool = False) -> None:
        self.on = dist.main and not quiet
        self.tty = self.on and sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if self.on:
            print(message, file=sys.stderr, flush=True)

    def steps(self, iterable: Any, total: int, epoch: int) -> Any:
        if not self.tty:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=f"epoch {epoch}", unit="batch", leave=False)


def plot_curve(history: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    left.plot(epochs, [h["valid"]["logloss"] for h in history], "o-", label="valid logloss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h["valid"]["gauc"] for h in history], "o-", label="valid GAUC")
    right.plot(epochs, [h["valid"]["auc"] for h in history], "o-", label="valid AUC")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


class RunError(DinExportError, ValueError):
    """A run directory that cannot be written or resumed as asked."""


RESUMABLE_CHANGES = {"epochs", "patience", "threads", "checkpoint_steps", "eval_batch_size", "device"}


def check_resume(run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, schema: Schema) -> None:
    """A resumed run must be the same experiment: only how long and where it runs may change."""
    saved = json.loads((run_dir / "config.json").read_text())
    if saved["schema"] != schema.to_dict():
        raise RunError(f"{run_dir} was trained on a dataset with another schema ({saved['data_dir']})")
    if saved["model"] != json.loads(json.dumps(model_cfg.to_dict())):
        raise RunError(f"{run_dir} was trained with model config {saved['model']}; resume it with the same one")
    changed = sorted(k for k, v in cfg.to_dict().items() if saved["train"].get(k) != v and k not in RESUMABLE_CHANGES)
    if changed:
        raise RunError(f"{run_dir}: cannot resume with a different {', '.join(changed)} "
                       f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")


def patience_spent(progress: dict, cfg: TrainConfig) -> bool:
    return bool(cfg.patience) and progress["epoch"] - progress["best_epoch"] >= cfg.patience


def metrics_record(model_cfg: ModelConfig, cfg: TrainConfig, progress: dict, test: dict | None, dist: Dist,
                   sizes: dict[str, int]) -> dict:
    history = progress["history"]
    best = progress["best_epoch"]
    return {
        "model": model_cfg.model,
        "selected_on": "valid gauc",
        "best_epoch": best,
        "valid": history[best - 1]["valid"] if best else None,
        "test": test,
        "epochs_run": len(history),
        "stopped_early": patience_spent(progress, cfg) and progress["epoch"] < cfg.epochs,
        "rows": sizes,
        "processes": dist.world,
        "history": history,  # train_loss: mean batch loss of rank 0's shards
    }


def train(data_dir: str | Path, run_dir: str | Path, model_cfg: ModelConfig, cfg: TrainConfig,
          resume: bool = False, quiet: bool = False) -> dict:
    """Train into `run_dir`; return metrics.json's record (rank 0) or {} (other ranks).

    resume=True continues from state/ if there is one and starts afresh otherwise, so one command can
    be rerun until it finishes.
    """
    with processes(cfg) as dist:
        return _train(Path(data_dir).resolve(), Path(run_dir), model_cfg, cfg, resume, quiet, dist)


def _train(data_dir: Path, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool, quiet: bool,
           dist: Dist) -> dict:
    log = Log(dist, quiet)
    schema = load_schema(data_dir)
    state_file = run_dir / "state" / "last.safetensors"
    if resume and state_file.is_file():
        check_resume(run_dir, model_cfg, cfg, schema)
    elif not resume and ((run_dir / "config.json").exists() or (run_dir / "state").exists()):
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    splits = load_splits(data_dir, ("train", "valid", "test"), schema)
    sizes = {s: a.n for s, a in splits.items()}
    valid = splits["valid"]
    if np.isnan(gauc(valid["label"], np.zeros(sizes["valid"]), valid["group"])):
        raise DataError(f"{valid.where}: no user has both a click and a non-click, so validation "
                        f"GAUC (the model selection metric) is undefined")

    torch.manual_seed(cfg.seed)
    model = DIN(schema, model_cfg).to(dist.device)
    regularizer = (MBARegularizer(model, load_frequencies(data_dir, schema), cfg.mba_lambda).to(dist.device)
                   if cfg.mba_lambda > 0 else None)
    opt = make_optimizer(model, cfg)
    progress = {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "best_epoch": 0, "best_gauc": None,
                "history": [], "seed": cfg.seed,
                "rng": "numpy default_rng([seed, epoch]) shuffles; torch seeded from (seed, epoch, step, rank)"}
    best: dict[str, Tensor] | None = None
    if resume and state_file.is_file():
        progress, model_tensors, optim_tensors, best = load_state(run_dir)
        model.load_state_dict(model_tensors)
        load_optimizer_tensors(opt, optim_tensors)
        log(f"resuming {run_dir} at epoch {progress['epoch'] + 1}, step {progress['step']}")
    if dist.main:
        remove_stale_temporaries(run_dir)
        write_json_atomic(run_dir / "config.json", {"model": model_cfg.to_dict(), "train": cfg.to_dict(),
                                                    "schema": schema.to_dict(), "data_dir": str(data_dir)})
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    batches = Batches(splits["train"], schema, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=dist.rank,
                      world=dist.world, device=dist.device)
    log(f"training {model_cfg.model} on {sizes['train']} rows ({len(batches)} batches of {cfg.batch_size}"
        f"{f' over {dist.world} processes' if dist.world > 1 else ''}), validating on {sizes['valid']}")

    stop = patience_spent(progress, cfg)
    while progress["epoch"] < cfg.epochs and not stop:
        epoch = progress["epoch"]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** epoch
        started = time.perf_counter()
        net.train()
        steps = batches.epoch(epoch, start=progress["step"])
        for batch in log.steps(steps, len(batches) - progress["step"], epoch + 1):
            torch.manual_seed(step_seed(cfg.seed, epoch, progress["step"], dist.rank))
            labels = batch.pop("label")
            loss = nn.functional.binary_cross_entropy_with_logits(net(batch), labels)
            total = loss + regularizer(batch) if regularizer is not None else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise RunError(f"training diverged: loss is {value} at epoch {epoch + 1}, step "
                               f"{progress['step'] + 1}; lower --lr")
            progress["loss_sum"] += value
            progress["loss_count"] += 1
            progress["step"] += 1
            if (cfg.checkpoint_steps and progress["step"] % cfg.checkpoint_steps == 0 and dist.main
                    and progress["step"] < len(batches)):
                save_state(run_dir, model, opt, best, progress)

        if dist.main:
            best = end_epoch(run_dir, model, opt, best, progress, splits["valid"], schema, model_cfg, cfg, dist,
                             sizes, time.perf_counter() - started, log)
        else:
            progress.update(epoch=epoch + 1, step=0)
        stop = patience_spent(progress, cfg) if dist.main else False
        if dist.world > 1:
            flag = torch.tensor([float(stop)], device=dist.device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
    if stop and progress["epoch"] < cfg.epochs:
        log(f"stopped early: no better validation GAUC for {cfg.patience} epochs")

    record: dict = {}
    if dist.main:
        model.load_state_dict(best)
        test = evaluate_split(model, splits["test"], schema, cfg.eval_batch_size, dist.device)
        record = metrics_record(model_cfg, cfg, progress, test, dist, sizes)
        write_json_atomic(run_dir / "metrics.json", record)
        log(f"best epoch {progress['best_epoch']} (valid GAUC {progress['best_gauc']:.4f}): test {_fmt(test)}"
            f"  -> {run_dir}")
    if dist.world > 1:
        torch.distributed.barrier()
    return record


def end_epoch(run_dir: Path, model: DIN, opt: torch.optim.Optimizer, best: dict[str, Tensor] | None,
              progress: dict, valid_arrays: Split, schema: Schema, model_cfg: ModelConfig,
              cfg: TrainConfig, dist: Dist, sizes: dict[str, int], seconds: float, log: Log) -> dict[str, Tensor]:
    """Validate, keep the best weights, write the epoch's files (rank 0). Returns the best weights."""
    epoch = progress["epoch"]
    valid = evaluate_split(model, valid_arrays, schema, cfg.eval_batch_size, dist.device)
    progress["history"].append({
        "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
        "train_loss": progress["loss_sum"] / max(progress["loss_count"], 1),
        "valid": valid, "seconds": round(seconds, 3)})
    improved = progress["best_gauc"] is None or valid["gauc"] > progress["best_gauc"]
    if improved:
        progress["best_gauc"], progress["best_epoch"] = valid["gauc"], epoch + 1
        best = cpu_copy(model.state_dict())
        write_bytes_atomic(run_dir / "model.safetensors", save(best))
    progress.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
    save_state(run_dir, model, opt, best, progress)
    write_json_atomic(run_dir / "metrics.json", metrics_record(model_cfg, cfg, progress, None, dist, sizes))
    write_bytes_atomic(run_dir / "curve.png", plot_curve(progress["history"]))
    h = progress["history"][-1]
    log(f"epoch {epoch + 1}: train loss {h['train_loss']:.4f}  valid {_fmt(valid)}  ({seconds:.1f}s)"
        f"{'  *best' if improved else ''}")
    return best
