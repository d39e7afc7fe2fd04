"""Scoring a dataset's splits with a trained torch model: click probabilities, and AUC, GAUC and logloss
(the figures training selects on and `din-export evaluate` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from din_runtime.metrics import auc, gauc, logloss

from din_export.checkpoints import load_run
from din_export.data import Batches, DataError, Split, load_schema, load_split
from din_export.model import DIN
from din_export.schema import Schema


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


def format_metrics(metrics: dict) -> str:
    """One line: AUC, GAUC and logloss to 4 places ("n/a" where undefined)."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return f"AUC {num(metrics['auc'])}  GAUC {num(metrics['gauc'])}  logloss {num(metrics['logloss'])}"


def check_same_inputs(run_schema: Schema, data_schema: Schema, data_dir: Path) -> None:
    """The run's embedding tables and inputs must match DATA_DIR's (history length may differ)."""
    a, b = run_schema.to_dict(), data_schema.to_dict()
    for key in ("sparse", "dense", "behaviour", "vocab_sizes"):
        if a[key] != b[key]:
            raise DataError(f"{data_dir}: schema {key} differs from the run's ({b[key]} vs {a[key]}); "
                            f"evaluate on the dataset the run was trained on")


def evaluate_run(run_dir: Path, data_dir: Path, splits: tuple[str, ...] = ("valid", "test"),
                 batch_size: int = 4096) -> dict[str, Any]:
    """Metrics of each of DATA_DIR's `splits` under RUN_DIR's best model, with the two paths."""
    model, run_schema, _ = load_run(run_dir)
    schema = load_schema(data_dir)
    check_same_inputs(run_schema, schema, data_dir)
    result: dict[str, Any] = {"run": str(run_dir), "data_dir": str(data_dir)}
    for split in splits:
        result[split] = evaluate_split(model, load_split(data_dir, split, schema), schema, batch_size)
    return result
