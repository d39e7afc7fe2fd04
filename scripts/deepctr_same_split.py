"""DeepCTR-Torch 0.3.0's DIN trained on a dataset directory made by `din-export prepare`: the same rows,
the same splits, selected on validation GAUC like `din-export train`, scored once on test.

    python scripts/deepctr_same_split.py DATA_DIR [--epochs 12] [--patience 2] [--lr 1e-3] [--batch-size 128]
                                         [--embed-dim 32] [--json OUT.json]

The model is din_export.bench.peers' DeepCTR DIN (our widths: attention 80-40 with Dice, MLP 200-80 with
PReLU, since DeepCTR's Dice asserts on 2-D inputs; unnormalised attention) on our encoded arrays, with
DeepCTR's own `fit` (Adam, its default 1e-6 L2 on embeddings). One torch thread; torch and numpy are
seeded, so a rerun gives the same figures.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from din_export.bench.peers import DeepCTRRun
from din_export.bench.plan import make_plan
from din_export.data import load_schema, load_split
from din_export.evaluate import split_metrics
from din_export.model import ModelConfig


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--patience", default=2, show_default=True, type=click.IntRange(min=0),
              help="Stop after this many epochs without a better validation GAUC (0: never).")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--embed-dim", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the result here.")
def main(data_dir: Path, epochs: int, patience: int, lr: float, batch_size: int, embed_dim: int,
         json_out: Path | None) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    schema = load_schema(data_dir)
    splits = {s: load_split(data_dir, s, schema) for s in ("train", "valid", "test")}
    plan = replace(make_plan(False, (1,), "cpu", epochs), train_batch=batch_size, lr=lr)
    run = DeepCTRRun(schema, ModelConfig(embed_dim=embed_dim), splits, plan)
    history = []
    for epoch in range(1, epochs + 1):
        run.epoch()
        valid = split_metrics(splits["valid"]["label"], run.predict("valid"), splits["valid"]["group"])
        history.append(valid["gauc"])
        click.echo(f"epoch {epoch}: valid gauc {valid['gauc']:.4f} auc {valid['auc']:.4f} "
                   f"({run.seconds[-1]:.0f} s)")
        if patience and epoch - run.best[1] >= patience:
            break
    result = {"data_dir": str(data_dir), "lr": lr, "batch_size": batch_size, "embed_dim": embed_dim,
              "valid_gauc_history": history, **run.result()}
    result.pop("epoch_seconds")
    click.echo(f"best epoch {result['best_epoch']} of {len(history)}: valid gauc {result['valid_gauc']:.4f}; "
               f"test gauc {result['test']['gauc']:.4f} auc {result['test']['auc']:.4f} "
               f"logloss {result['test']['logloss']:.4f}")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
