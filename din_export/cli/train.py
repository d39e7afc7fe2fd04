"""`din-export train`: resolves the configuration (defaults < preset < --set < flags) and runs
`din_export.train.train`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from din_export.cli.common import CONTEXT_SETTINGS, library_errors
from din_export.config import resolve_configs
from din_export.data import DataError
from din_export.model import ATTENTION_NORMS, MODELS
from din_export.train import DEVICES, RunError, train


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
        with library_errors():
            model_cfg, train_cfg = resolve_configs(
                preset, saved, {"model": model, "attention_norm": attention_norm},
                {"epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size, "threads": threads,
                 "mba_lambda": mba_lambda, "patience": patience, "device": device,
                 "checkpoint_steps": checkpoint_steps},
                sets)
    except (ValueError, TypeError) as e:  # a preset or a config field that cannot work
        raise click.UsageError(str(e)) from e
    try:
        train(data_dir, run_dir, model_cfg, train_cfg, resume=resume, quiet=quiet)
    except (DataError, RunError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
