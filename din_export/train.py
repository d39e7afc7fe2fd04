"""`din-export train | evaluate | predict`: fit DIN or the base model, select it on validation GAUC.

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

import io
import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from din_runtime.encode import encode_rows
from din_runtime.errors import DinRuntimeError, InputError
from din_runtime.features import Features
from din_runtime.io import OUTPUT_FORMATS, AtomicText, Record, ScoreWriter, format_of, read_jsonl
from din_runtime.metrics import auc, gauc, logloss
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

import din_export
from din_export.cli import CONTEXT_SETTINGS
from din_export.data import Batches, DataError, Split, load_frequencies, load_schema, load_split, load_splits
from din_export.model import ATTENTION_NORMS, DIN, MODELS, MBARegularizer, ModelConfig
from din_export.schema import Schema, write_bytes_atomic, write_json_atomic

# Package data (pyproject.toml): the presets travel in the wheel, wherever it is installed.
PRESETS_DIR = Path(din_export.__file__).parent / "presets"
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


# --- Presets -----------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str) -> tuple[ModelConfig, TrainConfig, str]:
    """A preset name (din_export/presets/<name>.json), or a path to such a file -> (model config, train
    config, description)."""
    path = Path(name_or_path)
    if not path.is_file():
        if "/" in name_or_path or name_or_path.endswith(".json"):
            raise ValueError(f"preset file {name_or_path} does not exist")
        path = PRESETS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            if not preset_names():
                raise ValueError(f"unknown preset {name_or_path!r}: this din_export has no presets in "
                                 f"{PRESETS_DIR} (an install without its package data); pass a preset's path")
            raise ValueError(f"unknown preset {name_or_path!r}; choose from {preset_names()} or pass a path")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"preset {path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) - {"description", "model", "train"}:
        raise ValueError(f"preset {path}: expected an object with keys description, model, train")
    return ModelConfig.from_dict(doc.get("model", {})), TrainConfig.from_dict(doc.get("train", {})), \
        str(doc.get("description", ""))


# --- Processes and devices ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_processes(cfg: TrainConfig) -> Dist:
    """One process, or the process group torchrun describes in the environment."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=world, device=device)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# --- Scoring and metrics -----------------------------------------------------------------------------


@torch.no_grad()
def predict_proba(model: DIN, arrays: Split | dict[str, np.ndarray], schema: Schema, batch_size: int,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Click probabilities of every row of a split, in row order (model in eval mode)."""
    was_training = model.training
    model.eval()
    batches = Batches(arrays, schema, batch_size, shuffle=False, device=device)
    probs = np.concatenate([torch.sigmoid(model(b)).float().cpu().numpy() for b in batches.epoch()])
    model.train(was_training)
    return probs


def split_metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, float | None]:
    """AUC, GAUC (din_runtime.metrics), logloss; None where undefined (one class only), since JSON has no NaN."""
    values = {"auc": auc(labels, probs), "gauc": gauc(labels, probs, groups), "logloss": logloss(labels, probs)}
    return {**{k: None if np.isnan(v) else v for k, v in values.items()}, "rows": len(labels)}


def evaluate_split(model: DIN, arrays: Split | dict[str, np.ndarray], schema: Schema, batch_size: int,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    probs = predict_proba(model, arrays, schema, batch_size, device)
    return split_metrics(arrays["label"], probs, arrays["group"])


# --- Run directory: checkpoints ----------------------------------------------------------------------


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Optimizer state as flat named tensors ("optim.<param index>.<name>"), so no pickle is needed."""
    out = {}
    for index, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"optim.{index}.{name}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    sd = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def save_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, best: dict[str, Tensor] | None,
               progress: dict) -> None:
    """state/last.safetensors holds the tensors and, in its metadata, the progress record: one rename
    commits both. state/last.json is the same record for people and tools."""
    tensors = {f"model.{k}": v for k, v in _cpu(model.state_dict()).items()}
    tensors.update(optimizer_tensors(opt))
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    record = json.dumps(progress)
    write_bytes_atomic(run_dir / "state" / "last.safetensors", save(_cpu(tensors), metadata={"progress": record}))
    write_json_atomic(run_dir / "state" / "last.json", progress)


def load_state(run_dir: Path) -> tuple[dict, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor] | None]:
    """-> (progress, model tensors, optimizer tensors, best tensors or None)."""
    path = run_dir / "state" / "last.safetensors"
    with safe_open(path, framework="pt") as f:
        progress = json.loads(f.metadata()["progress"])
        groups: dict[str, dict[str, Tensor]] = {"model": {}, "optim": {}, "best": {}}
        for key in f.keys():
            head, rest = key.split(".", 1)
            groups[head][key if head == "optim" else rest] = f.get_tensor(key)
    return progress, groups["model"], groups["optim"], groups["best"] or None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writes that a killed process never renamed."""
    for d in (run_dir, run_dir / "state"):
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def load_run(run_dir: str | Path) -> tuple[DIN, Schema, dict]:
    """A trained run -> (model in eval mode on the CPU with the best-on-validation weights, schema, config)."""
    run_dir = Path(run_dir)
    config_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (config_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished training run: {p.name} is missing "
                                    f"(train one with `din-export train DATA_DIR --out {run_dir}`)")
    config = json.loads(config_path.read_text())
    schema = Schema.from_dict(config["schema"])
    model = DIN(schema, ModelConfig.from_dict(config["model"]))
    model.load_state_dict(load_file(weights))
    return model.eval(), schema, config


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
            click.echo(message, err=True)

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


class RunError(ValueError):
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


def _fmt(metrics: dict) -> str:
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return f"AUC {num(metrics['auc'])}  GAUC {num(metrics['gauc'])}  logloss {num(metrics['logloss'])}"


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
    data_dir, run_dir = Path(data_dir).resolve(), Path(run_dir)
    dist = setup_processes(cfg)
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
        best = _cpu(model.state_dict())
        write_bytes_atomic(run_dir / "model.safetensors", save(best))
    progress.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
    save_state(run_dir, model, opt, best, progress)
    write_json_atomic(run_dir / "metrics.json", metrics_record(model_cfg, cfg, progress, None, dist, sizes))
    write_bytes_atomic(run_dir / "curve.png", plot_curve(progress["history"]))
    h = progress["history"][-1]
    log(f"epoch {epoch + 1}: train loss {h['train_loss']:.4f}  valid {_fmt(valid)}  ({seconds:.1f}s)"
        f"{'  *best' if improved else ''}")
    return best


# --- Commands ----------------------------------------------------------------------------------------


def parse_sets(sets: tuple[str, ...]) -> tuple[dict, dict]:
    """`--set model.embed_dim=16 --set train.weight_decay=1e-6` -> (model overrides, train overrides)."""
    out: dict[str, dict] = {"model": {}, "train": {}}
    for item in sets:
        key, eq, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in out:
            raise click.UsageError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            out[section][name] = json.loads(text)
        except json.JSONDecodeError:
            out[section][name] = text
    return out["model"], out["train"]


def resolve_configs(preset: str | None, saved: dict | None, model_flags: dict, train_flags: dict,
                    sets: tuple[str, ...]) -> tuple[ModelConfig, TrainConfig]:
    """Defaults < preset (or, resuming without one, the run's saved config) < --set < named flags."""
    if preset:
        model_cfg, train_cfg, _ = load_preset(preset)
        model_d, train_d = model_cfg.to_dict(), train_cfg.to_dict()
    elif saved:
        model_d, train_d = dict(saved["model"]), dict(saved["train"])
    else:
        model_d, train_d = ModelConfig().to_dict(), TrainConfig().to_dict()
    set_model, set_train = parse_sets(sets)
    model_d.update(set_model)
    train_d.update(set_train)
    model_d.update({k: v for k, v in model_flags.items() if v is not None})
    train_d.update({k: v for k, v in train_flags.items() if v is not None})
    return ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)


@click.command("train", context_settings=CONTEXT_SETTINGS)
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to write (model.safetensors, metrics.json, config.json, curve.png, state/).")
@click.option("--model", type=click.Choice(MODELS), help="din, or the paper's base model (sum pooling).")
@click.option("--config", "preset", metavar="PRESET",
              help="A preset name (paper, official, edge: din_export/presets/) or the path of a preset JSON.")
@click.option("--epochs", type=click.IntRange(min=1), help="Most epochs to run (early stopping may end sooner).")
@click.option("--seed", type=int, help="Seed of initialisation, shuffling and dropout (a run is repeatable).")
@click.option("--lr", type=float, help="Learning rate (the preset's, else 1e-3).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Training rows per step, over all processes.")
@click.option("--threads", type=click.IntRange(min=0), help="torch intra-op threads (0: torch's default).")
@click.option("--attention-norm", type=click.Choice(ATTENTION_NORMS),
              help="none: the paper's unnormalised weights; softmax: the official code.")
@click.option("--mba-lambda", type=float, help="Mini-batch aware L2 on the embeddings (paper: 0.01).")
@click.option("--patience", type=click.IntRange(min=0),
              help="Epochs without a better validation GAUC before stopping (0: never).")
@click.option("--device", type=click.Choice(DEVICES), help="auto: cuda when torch sees a GPU, else cpu.")
@click.option("--checkpoint-steps", type=click.IntRange(min=1), help="Also save the resume state every N steps.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Any other model or train field, e.g. --set model.embed_dim=16 --set train.weight_decay=1e-6.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (or start it).")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def train_command(data_dir: Path, run_dir: Path, model: str | None, preset: str | None, epochs: int | None,
                  seed: int | None, lr: float | None, batch_size: int | None, threads: int | None,
                  attention_norm: str | None, mba_lambda: float | None, patience: int | None, device: str | None,
                  checkpoint_steps: int | None, sets: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Train DIN (or the base model) on DATA_DIR, selecting the epoch on validation GAUC.

    \b
    Multi-process (CPU: gloo, GPU: nccl), each global batch split across the processes:
      torchrun --standalone --nproc_per_node 2 --no-python din-export train DATA_DIR --out RUN
    """
    saved = None
    if resume and (run_dir / "config.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text())
    try:
        model_cfg, train_cfg = resolve_configs(
            preset, saved, {"model": model, "attention_norm": attention_norm},
            {"epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size, "threads": threads,
             "mba_lambda": mba_lambda, "patience": patience, "device": device, "checkpoint_steps": checkpoint_steps},
            sets)
    except (ValueError, TypeError) as e:
        raise click.UsageError(str(e)) from e
    try:
        train(data_dir, run_dir, model_cfg, train_cfg, resume=resume, quiet=quiet)
    except (DataError, RunError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def check_same_inputs(run_schema: Schema, data_schema: Schema, data_dir: Path) -> None:
    """The run's embedding tables and inputs must match DATA_DIR's (history length may differ)."""
    a, b = run_schema.to_dict(), data_schema.to_dict()
    for key in ("sparse", "dense", "behaviour", "vocab_sizes"):
        if a[key] != b[key]:
            raise DataError(f"{data_dir}: schema {key} differs from the run's ({b[key]} vs {a[key]}); "
                            f"evaluate on the dataset the run was trained on")


@click.command("evaluate", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", "split_names", type=click.Choice(["valid", "test"]), multiple=True,
              help="Splits to score (default: valid and test).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Rows per forward pass; memory grows with it.")
@click.option("--metrics-out", "--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Also write the metrics as JSON to this file ('-': stdout instead of the table).")
def evaluate_command(run_dir: Path, data_dir: Path, split_names: tuple[str, ...], batch_size: int,
                     json_out: Path | None) -> None:
    """Score DATA_DIR's validation and test splits with RUN_DIR's best model: AUC, GAUC, logloss."""
    try:
        model, run_schema, _ = load_run(run_dir)
        schema = load_schema(data_dir)
        check_same_inputs(run_schema, schema, data_dir)
        result: dict[str, Any] = {"run": str(run_dir), "data_dir": str(data_dir)}
        for split in split_names or ("valid", "test"):
            result[split] = evaluate_split(model, load_split(data_dir, split, schema), schema, batch_size)
    except (DataError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    if json_out is not None and str(json_out) == "-":
        click.echo(json.dumps(result, indent=2))
        return
    for split in split_names or ("valid", "test"):
        click.echo(f"{split:5s}  {_fmt(result[split])}  ({result[split]['rows']} rows)")
    if json_out is not None:
        write_json_atomic(json_out, result)


@click.command("predict", context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-o", "--out", "--output", "output", required=True,
              help="Scores file (.jsonl or .csv; - is stdout), as din-score writes.")
@click.option("--output-format", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True,
              help="Output format; auto goes by extension (stdout: jsonl), as in din-score.")
@click.option("--id-field", help="Request field copied to each output row beside its score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Requests encoded and scored per forward pass.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset directory whose vocabularies encode the requests (default: the run's).")
def predict_command(run_dir: Path, requests: str, output: str, output_format: str, id_field: str | None,
                    batch_size: int, data_dir: Path | None) -> None:
    """Score the raw requests of REQUESTS (JSONL, docs/design.md "Request format") with RUN_DIR's torch model.

    Same encoder and output format as `din-score`, so its output can be compared line by line with it.
    """
    try:
        model, schema, config = load_run(run_dir)
        features = Features.of_dataset(Path(data_dir or config["data_dir"]), schema)
        out_fmt = format_of(output, output_format, OUTPUT_FORMATS, "jsonl", "--output-format")
        with ExitStack() as stack:
            stream = sys.stdin.buffer if requests == "-" else stack.enter_context(open(requests, "rb"))
            writer = ScoreWriter(stack.enter_context(AtomicText(output)), out_fmt, id_field)
            records = read_jsonl(stream)
            while batch := list(islice(records, batch_size)):
                writer.write(*score_records(model, features, batch, id_field))
    except (DataError, FileNotFoundError, DinRuntimeError) as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"{e.filename or 'I/O'}: {e.strerror or e}") from e


@torch.no_grad()
def score_records(model: DIN, features: Features, batch: list[Record],
                  id_field: str | None) -> tuple[list | None, np.ndarray]:
    """(ids or None, float32 probabilities) of one batch of request records; a bad row raises with its line."""
    for r in batch:
        if r.error is not None:
            raise DinRuntimeError(f"line {r.line}: {r.error}")
        if id_field and id_field not in r.row:
            raise DinRuntimeError(f"line {r.line}, field {id_field!r}: missing (named by --id-field)")
    try:
        encoded = encode_rows(features, [r.row for r in batch])
    except InputError as e:
        field = f", field {e.field!r}" if e.field else ""
        raise DinRuntimeError(f"line {batch[e.row].line}{field}: {e.reason}") from e
    probs = torch.sigmoid(model({k: torch.from_numpy(v) for k, v in encoded.arrays.items()})).numpy()
    return ([r.row[id_field] for r in batch] if id_field else None), probs
