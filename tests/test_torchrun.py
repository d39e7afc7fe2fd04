"""`torchrun --nproc_per_node 2 --no-python din-export train ...`: two CPU processes (gloo) write one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from train_fixtures import make_dataset

from din_export.checkpoints import load_run
from din_export.data import load_split
from din_export.evaluate import predict_proba


@pytest.mark.slow
def test_two_process_cpu_run_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data", n_train=600, n_valid=150, n_test=150)
    out = tmp_path / "run"
    din_export = Path(sys.executable).with_name("din-export")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           str(din_export), "train", str(data_dir), "--out", str(out), "--epochs", "2", "--threads", "1",
           "--batch-size", "64", "--set", "model.embed_dim=4", "--set", "model.mlp_hidden=[16, 8]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 2 processes" in done.stderr

    record = json.loads((out / "metrics.json").read_text())
    assert record["processes"] == 2 and record["epochs_run"] == 2
    assert set(record["test"]) == {"auc", "gauc", "logloss", "rows"}
    model, schema, _ = load_run(out)
    assert set(load_file(out / "model.safetensors")) == set(model.state_dict())
    assert not any(k.startswith("module.") for k in model.state_dict())  # saved unwrapped from DDP
    probs = predict_proba(model, load_split(data_dir, "test", schema), schema, batch_size=64)
    assert probs.shape == (150,) and np.isfinite(probs).all()
    assert len(set(np.round(probs, 6))) > 1
    assert (out / "state" / "last.safetensors").is_file()
