"""Tiny trained runs for the export, verify and Triton tests: a dataset dir and a run dir as in docs/design.md.

The model is trained a few steps on random data so Dice and BatchNorm running statistics are not their
initial values (an export that ignored them would still match an untrained model).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from din_export.model import DIN, ModelConfig
from din_export.schema import Behaviour, DenseField, Schema, SparseField

VOCAB_SIZES = {"user_id": 13, "item_id": 41, "cate_id": 9}
MAX_LEN = 6
VALID_ROWS = 400


def tiny_schema(dense: bool = True) -> Schema:
    return Schema(
        max_len=MAX_LEN,
        behaviour=(Behaviour("item_id", "hist_item_id", "item_id"), Behaviour("cate_id", "hist_cate_id", "cate_id")),
        vocab_sizes=dict(VOCAB_SIZES),
        sparse=(SparseField("user_id", "user_id"),),
        dense=(DenseField("age", mean=33.0, std=11.0),) if dense else (),
        source="synthetic", protocol="test",
    )


def random_rows(schema: Schema, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows = {s.name: rng.integers(0, schema.vocab_sizes[s.vocab], n) for s in schema.sparse}
    for b in schema.behaviour:
        rows[b.target] = rng.integers(2, schema.vocab_sizes[b.vocab], n)
    hist_len = rng.integers(0, schema.max_len + 1, n)
    real = np.arange(schema.max_len)[None, :] < hist_len[:, None]
    for b in schema.behaviour:
        rows[b.history] = np.where(real, rng.integers(2, schema.vocab_sizes[b.vocab], (n, schema.max_len)), 0)
    rows["hist_len"] = hist_len
    if schema.dense:
        rows["dense"] = rng.normal(33.0, 11.0, (n, len(schema.dense))).astype(np.float32)
    return {k: v.astype(np.int64) if v.dtype.kind == "i" else v for k, v in rows.items()}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: torch's spinning intra-op threads cost 10-30x, so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_torch_thread()
def trained_model(schema: Schema, cfg: ModelConfig, steps: int = 30, seed: int = 0) -> DIN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DIN(schema, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    # a large BN/Dice momentum moves the running statistics well away from (0, 1) in a few steps
    for m in model.modules():
        if hasattr(m, "momentum"):
            m.momentum = 0.5
    model.train()
    for _ in range(steps):
        batch = {k: torch.from_numpy(v) for k, v in random_rows(schema, 64, rng).items()}
        # a noisy rule, so predicted probabilities stay away from 0 and 1 and AUC is informative
        label = torch.bernoulli(0.2 + 0.5 * (batch["item_id"] % 3 == 0).float())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_run(root: Path, attention_norm: str = "softmax", dense: bool = True, model: str = "din",
             cfg: ModelConfig | None = None) -> Path:
    """root/data (dataset dir) and root/run (run dir) for a tiny trained model (`cfg`, default the tiny
    config below); returns the run dir."""
    schema = tiny_schema(dense)
    cfg = cfg or ModelConfig(model=model, embed_dim=4, attention_hidden=(8, 4), mlp_hidden=(12, 6),
                             attention_norm=attention_norm)
    net = trained_model(schema, cfg)
    data, run = root / "data", root / "run"
    (data / "vocab").mkdir(parents=True)
    run.mkdir()
    (data / "schema.json").write_text(json.dumps(schema.to_dict()))
    for vocab, size in schema.vocab_sizes.items():
        (data / "vocab" / f"{vocab}.json").write_text(json.dumps([f"{vocab}-{i}" for i in range(size - 2)]))
    rng = np.random.default_rng(1)
    valid = random_rows(schema, VALID_ROWS, rng)
    with torch.no_grad():
        prob = torch.sigmoid(net({k: torch.from_numpy(v) for k, v in valid.items()})).numpy()
    valid["label"] = (rng.random(VALID_ROWS) < prob).astype(np.float32)
    valid["group"] = valid["user_id"].copy()
    np.savez(data / "valid.npz", **valid)
    config = {"model": cfg.to_dict(), "train": {}, "schema": schema.to_dict(), "data_dir": str(data)}
    (run / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "model.safetensors"))
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 1, "test": {"auc": 0.5}}))
    return run


_ROOT = Path(tempfile.mkdtemp(prefix="din-export-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def run_dir(attention_norm: str = "softmax") -> Path:
    """One tiny trained run per attention mode, shared by the test modules of a session."""
    return make_run(_ROOT / f"run-{attention_norm}", attention_norm=attention_norm)


@functools.cache
def exported(name: str) -> Path:
    """Model directories exported once per session from `run_dir()`; see EXPORTS."""
    from din_export.export import export_run

    out = _ROOT / "models" / name
    with one_torch_thread():
            export_run(run_dir(), out, triton_repo=_ROOT / "triton" if name == "fp32" else None, **EXPORTS[name])
    return out


def measured_on_validation(model_dir: Path) -> tuple[float, float]:
    """(max |prob diff|, AUC change) of `model_dir` against the torch model on the validation rows verify
    reads, computed here without verify's code: the runtime on all rows at once, a rank-sum AUC."""
    from din_runtime import Scorer

    from din_export.checkpoints import load_run
    from din_export.data import load_split

    model, schema, config = load_run(run_dir())
    valid = {k: v[:VALID_ROWS] for k, v in load_split(Path(config["data_dir"]), "valid", schema).items()}
    x = {k: valid[k] for k in schema.input_names()}
    ours = Scorer.load(model_dir).score_arrays(x).astype(np.float64)
    with torch.no_grad():
        ref = torch.sigmoid(model({k: torch.from_numpy(v) for k, v in x.items()})).double().numpy()

    def auc(scores: np.ndarray) -> float:
        ranks = np.empty(len(scores))
        order = np.argsort(scores, kind="stable")
        ranks[order] = np.arange(1, len(scores) + 1)
        for value in np.unique(scores):  # ties share their mean rank
            ranks[scores == value] = ranks[scores == value].mean()
        pos = valid["label"] == 1
        return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())

    return float(np.abs(ours - ref).max()), auc(ours) - auc(ref)


# fp32: the optimized graph traced at (2, 5) with attention and a Triton copy; plain: the same without the
# inference rewrite; fp16 / int8: the variants.
EXPORTS: dict[str, dict] = {
    "fp32": {"example": (2, 5), "with_attention": True, "short_history": True},
    "plain": {"example": (2, 5), "optimize": False},
    "fp16": {"precision": "fp16", "with_attention": True},
    "int8": {"quantize": "int8"},
}


def triton_repo() -> Path:
    exported("fp32")
    return _ROOT / "triton"


@functools.cache
def exported_int64_ids() -> Path:
    """A run whose item_id vocabulary is all decimal integers (so portable.onnx takes item ids as int64 and
    category ids as strings), exported with its portable graph served in a Triton repository."""
    from din_export.export import export_run

    root = _ROOT / "int64-ids"
    run = make_run(root)
    size = VOCAB_SIZES["item_id"] - 2
    (root / "data" / "vocab" / "item_id.json").write_text(json.dumps([str(1000 + 7 * i) for i in range(size)]))
    with one_torch_thread():
        export_run(run, root / "model", candidates=False, triton_repo=root / "triton", triton_portable=True)
    return root / "model"


def triton_portable_repo() -> Path:
    return exported_int64_ids().parent / "triton"
