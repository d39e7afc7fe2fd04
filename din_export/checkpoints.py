"""The run directory's weights and resume state: one safetensors file holds model, optimizer and best
weights with the progress record in its metadata (no pickle), and `load_run` reads a finished run back."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from din_export.model import DIN, ModelConfig
from din_export.schema import Schema, write_bytes_atomic, write_json_atomic


def cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
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
    tensors = {f"model.{k}": v for k, v in cpu_copy(model.state_dict()).items()}
    tensors.update(optimizer_tensors(opt))
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    record = json.dumps(progress)
    write_bytes_atomic(run_dir / "state" / "last.safetensors", save(cpu_copy(tensors), metadata={"progress": record}))
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
