"""The exported variants the bench measures: export time, size, parity, and Scorer.load time (also on a
model padded to a stated size)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from din_export.bench.timing import alternate, quantiles
from din_export.model import ModelConfig
from din_export.schema import Schema, write_json_atomic

EXPORTS = {"onnx-plain": {"optimize": False}, "onnx-opt": {"optimize": True},
           "onnx-int8": {"optimize": True, "quantize": "int8"}, "onnx-fp16": {"optimize": True, "precision": "fp16"}}


def export_variants(run_dir: Path, out: Path, names: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Each variant of `names` through `din-export export` (trace, checks, verification); its time, size, parity."""
    from din_export.export import export_run

    dirs, report = {}, {}
    for name in names:
        options = EXPORTS[name]
        dirs[name] = out / name
        start = time.perf_counter()
        manifest = export_run(run_dir, dirs[name], **options)
        seconds = time.perf_counter() - start
        variant = manifest["parity"]["variant"]
        candidates = dirs[name] / "candidates.onnx"
        report[name] = {"export_seconds": seconds, "model_bytes": (dirs[name] / "model.onnx").stat().st_size,
                        "candidate_bytes": candidates.stat().st_size if candidates.exists() else 0,
                        "dir_bytes": sum(p.stat().st_size for p in dirs[name].rglob("*") if p.is_file()),
                        "max_abs_diff_prob": variant["max_abs_diff_prob"], "valid_rows": variant["valid_rows"],
                        "valid_auc": variant["valid_auc"], "valid_auc_torch_fp32": variant["valid_auc_torch_fp32"]}
    return dirs, report


def padded_run(run_dir: Path, work: Path, target_bytes: float) -> Path:
    """A copy of the run (and of its dataset's schema, vocabularies and validation split) whose item table
    has extra random rows, so its optimised export weighs about `target_bytes`: Scorer.load's cost
    grows with the model and the vocabularies, and the target is stated for a 10 MB model."""
    import shutil

    from safetensors.torch import load_file, save_file

    from din_export.data import load_split
    from din_export.verify import resolve_data_dir

    config = json.loads((run_dir / "config.json").read_text())
    schema = Schema.from_dict(config["schema"])
    data_dir = resolve_data_dir(run_dir, config)
    cfg = ModelConfig.from_dict(config["model"])
    vocab = schema.behaviour[0].vocab
    state = load_file(run_dir / "model.safetensors")
    extra = max(0, int((target_bytes - sum(t.numel() * 4 for t in state.values())) / (cfg.embed_dim * 4)))
    new_data, new_run = work / "padded-data", work / "padded-run"
    shutil.copytree(data_dir / "vocab", new_data / "vocab")
    np.savez(new_data / "valid.npz", **dict(load_split(data_dir, "valid", schema)))
    ids = json.loads((data_dir / "vocab" / f"{vocab}.json").read_text()) + [f"bench-pad-{i}" for i in range(extra)]
    write_json_atomic(new_data / "vocab" / f"{vocab}.json", ids)
    padded = Schema.from_dict({**schema.to_dict(), "vocab_sizes": {**schema.vocab_sizes, vocab: len(ids) + 2}})
    padded.save(new_data / "schema.json")
    key = f"embeddings.tables.{vocab}.weight"
    state[key] = torch.cat([state[key], torch.randn(extra, cfg.embed_dim, generator=torch.Generator().manual_seed(0))
                            * 0.05])
    new_run.mkdir()
    save_file(state, new_run / "model.safetensors")
    write_json_atomic(new_run / "config.json", {**config, "schema": padded.to_dict(), "data_dir": str(new_data)})
    return new_run


def load_times(dirs: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    from din_runtime import Scorer

    thunks = {name: (lambda d=d: Scorer.load(d)) for name, d in dirs.items()}
    return {name: quantiles(t) for name, t in alternate(thunks, rounds, warmup=1).items()}
