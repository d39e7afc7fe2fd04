"""`din-export bench`: torch, the ONNX variants and DeepCTR-Torch on the same weights, measured fairly.

    prepare MovieLens-100K and Taobao -> train ours and DeepCTR-Torch's DIN (alternating epochs)
      -> export the Taobao run: plain, optimised, optimised int8 -> engines on the same weights
      -> latency, throughput, candidates, load, size, din-score memory -> table, JSON, PNG

Fairness (docs/din-reference.md, "Benchmarking fairly"): every engine runs in this one process, warmed
up, in alternating rounds (the order rotates each round), and the figures are medians and ratios of
medians; malloc's mmap and trim thresholds are pinned for this process and for din-score's. The
machine's load average is recorded at the start and the end: on a shared machine it moves everything.
docs/bench.md holds the results and the exact commands.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from din_runtime.scorer import rows_per_run

import din_export
from din_export import bench_compile
from din_export.cli import CONTEXT_SETTINGS
from din_export.model import DIN, Dice, ModelConfig
from din_export.schema import Schema, write_bytes_atomic, write_json_atomic

SPEED_DATASET = "taobao"  # its run is the model every speed workload uses (item vocabulary ~52k)
# glibc reads these at start-up; the bench also applies them to itself with mallopt (below). The mmap
# threshold is glibc's maximum on 64-bit, so large tensors come from the heap, not fresh page faults.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_": 1024 * 1024 * 1024}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, glibc malloc.h
CHUNKED = "onnx-opt/chunked"
ENGINES = ("torch", "torch-rewritten", "onnx-plain", "onnx-opt", CHUNKED, "onnx-int8", "deepctr")
# CHUNKED: the optimised session run on slices of the batch of din_runtime's `rows_per_run(L)` rows, as the
# Scorer runs it on CPU (the Dice passes over B x L x H values then stay in cache), without its checks.
TRAIN_THREADS = 1  # see compare_training
EXPORTS = {"onnx-plain": {"optimize": False}, "onnx-opt": {"optimize": True},
           "onnx-int8": {"optimize": True, "quantize": "int8"}, "onnx-fp16": {"optimize": True, "precision": "fp16"}}
PRECISION_ENGINES = ("torch", "torch-fp16", "onnx-opt", "onnx-fp16")  # the fp32/fp16 workload's engines
TORCH_ENGINES = ("torch", "torch-rewritten")  # and the torch.compile engines: "best torch" is the best of them


@dataclass(frozen=True)
class Plan:
    """What one bench run measures; `quick` shrinks rounds and data so it finishes in about a minute."""

    quick: bool
    threads: tuple[int, ...]
    device: str
    epochs: int
    train_rows: int | None  # rows of each training split used (None: all)
    lengths: tuple[int, ...] = (20, 100, 500)
    batch: int = 256
    latency_rounds: int = 300
    throughput_rounds: int = 10
    candidates: int = 100
    candidate_rounds: int = 50
    load_rounds: int = 10
    rss_rows: tuple[int, ...] = (100_000, 1_000_000)
    load_model_mb: float | None = 10.0  # also time Scorer.load on the optimised model padded to this size
    train_batch: int = 256
    lr: float = 1e-3
    # fp32 against fp16 (torch and ONNX) at these batch sizes, history precision_seq; by default on a GPU only
    precision_batches: tuple[int, ...] = ()
    precision_seq: int = 100
    precision_rounds: int = 20
    # torch.compile modes benched as engines (bench_compile); none unless asked: compiling takes minutes
    compile_modes: tuple[str, ...] = ()
    compile_backend: str = "inductor"
    # (candidates N, history L) of the candidate-ranking workload against torch.compile (bench_compile)
    candidate_shapes: tuple[tuple[int, int], ...] = ()


def make_plan(quick: bool, threads: tuple[int, ...], device: str, epochs: int | None,
              compile_modes: tuple[str, ...] | None = None, lengths: tuple[int, ...] | None = None) -> Plan:
    """compile_modes None: torch.compile's default mode in the full bench, none in --quick."""
    gpu = device == "cuda"
    if quick:
        plan = Plan(quick=True, threads=threads, device=device, epochs=epochs or 1, train_rows=1000,
                    lengths=(20, 100), latency_rounds=30, throughput_rounds=3, candidate_rounds=5, load_rounds=3,
                    rss_rows=(5_000, 20_000), load_model_mb=None, precision_batches=(1, 256) if gpu else (),
                    precision_rounds=5, compile_modes=compile_modes or (), candidate_shapes=((100, 50),))
    else:
        plan = Plan(quick=False, threads=threads, device=device, epochs=epochs or 2, train_rows=None,
                    precision_batches=(1, 256, 1024, 4096) if gpu else (),
                    compile_modes=("default",) if compile_modes is None else compile_modes,
                    candidate_shapes=((100, 50), (100, 200), (1000, 50), (1000, 200)))
    return replace(plan, lengths=lengths) if lengths else plan


# --- Fair timing -------------------------------------------------------------------------------------


def pin_malloc() -> dict[str, Any]:
    """Pin malloc's thresholds for this process (mallopt) and for the processes it starts (environment)."""
    os.environ.update({k: str(v) for k, v in MALLOC_SETTINGS.items()})
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"])
                       and libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_SETTINGS["MALLOC_MMAP_THRESHOLD_"]))
    except (OSError, AttributeError):  # not glibc: the environment variables are all we can set
        applied = False
    return {**MALLOC_SETTINGS, "applied_with_mallopt": applied}


def alternate(thunks: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
              back_to_back: int = 1) -> dict[str, list[float]]:
    """Seconds of each call: every thunk warmed up, then `rounds` rounds, the order rotating each round.

    back_to_back = 1: each call follows another engine's, so it finds the caches as that engine left
    them (a server doing other work between requests). back_to_back = k > 1: each engine is called k
    times in a row per round and only the k - 1 repeats are timed (warm caches, a tight loop).
    """
    for thunk in thunks.values():
        for _ in range(warmup):
            thunk()
    names = list(thunks)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for i in range(back_to_back):
                start = time.perf_counter()
                thunks[name]()
                if back_to_back == 1 or i > 0:
                    times[name].append(time.perf_counter() - start)
    return times


def quantiles(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds)
    return {"p50_ms": float(np.median(a) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3), "n": len(a)}


# --- Data --------------------------------------------------------------------------------------------


def prepare_dataset(source: str, path: Path, out: Path, train_rows: int | None) -> Path:
    """`din-export prepare` of one source into `out`; with train_rows, a seeded subset of the train split."""
    from din_export.prepare import load_source, prepare

    with contextlib.redirect_stdout(io.StringIO()):
        prepare(load_source(source, path), out, max_len=50, seed=0)
    if train_rows is not None:
        from din_export.data import keep_rows, load_split

        n = load_split(out, "train").n
        if n > train_rows:
            keep_rows(out, "train", np.sort(np.random.default_rng(0).choice(n, train_rows, replace=False)))
    return out


def workload_arrays(schema: Schema, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs with every row's history `seq` long (known ids only, so no row is cheaper)."""
    rng = np.random.default_rng(seed)
    arrays = {s.name: rng.integers(2, schema.vocab_sizes[s.vocab], batch) for s in schema.sparse}
    for b in schema.behaviour:
        arrays[b.target] = rng.integers(2, schema.vocab_sizes[b.vocab], batch)
    for b in schema.behaviour:
        arrays[b.history] = rng.integers(2, schema.vocab_sizes[b.vocab], (batch, seq))
    arrays["hist_len"] = np.full(batch, seq, dtype=np.int64)
    if schema.dense:
        mean = np.array([d.mean for d in schema.dense])
        std = np.array([d.std or 1.0 for d in schema.dense])
        arrays["dense"] = (mean + std * rng.standard_normal((batch, len(schema.dense)))).astype(np.float32)
    return arrays


# --- DeepCTR-Torch's DIN -----------------------------------------------------------------------------


def import_deepctr() -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import deepctr_torch.inputs
            import deepctr_torch.models
    except ImportError as e:
        raise click.ClickException("the bench compares with DeepCTR-Torch: pip install 'din-toolkit[bench]'") from e
    return deepctr_torch


def deepctr_din(schema: Schema, cfg: ModelConfig, seq: int, device: str) -> torch.nn.Module:
    """DeepCTR-Torch's DIN with our dimensions: embed_dim per table, the same activation unit widths, the
    same MLP widths, attention normalised iff ours uses softmax. Its MLP cannot use Dice on 2-D inputs
    (Dice(dim=3) asserts), so it uses PReLU there, the function Dice generalises. `seq` fixes the
    column layout of its one float input matrix, so build one per history length measured."""
    dc = import_deepctr()
    Sparse, VarLen, Dense = dc.inputs.SparseFeat, dc.inputs.VarLenSparseFeat, dc.inputs.DenseFeat
    e = cfg.embed_dim
    columns = [Sparse(s.name, schema.vocab_sizes[s.vocab], e, embedding_name=s.vocab) for s in schema.sparse]
    columns += [Sparse(b.target, schema.vocab_sizes[b.vocab], e, embedding_name=b.vocab) for b in schema.behaviour]
    columns += [Dense(d.name, 1) for d in schema.dense]
    columns += [VarLen(Sparse(f"hist_{b.target}", schema.vocab_sizes[b.vocab], e, embedding_name=b.vocab),
                       maxlen=seq, length_name="seq_length") for b in schema.behaviour]
    torch.manual_seed(0)
    return dc.models.DIN(columns, list(schema.targets), att_hidden_size=cfg.attention_hidden,
                         att_activation="Dice", att_weight_normalization=cfg.attention_norm == "softmax",
                         dnn_hidden_units=cfg.mlp_hidden, dnn_activation="prelu", device=device)


def deepctr_inputs(arrays: dict[str, np.ndarray], schema: Schema) -> dict[str, np.ndarray]:
    """Our encoded arrays under DeepCTR's names; dense standardised as our graph does internally."""
    x = {s.name: arrays[s.name] for s in schema.sparse}
    x.update({b.target: arrays[b.target] for b in schema.behaviour})
    x.update({f"hist_{b.target}": arrays[b.history] for b in schema.behaviour})
    x["seq_length"] = arrays["hist_len"]
    for i, d in enumerate(schema.dense):
        x[d.name] = ((arrays["dense"][:, i] - d.mean) / (d.std or 1.0)).astype(np.float32)
    return x


def deepctr_matrix(model: torch.nn.Module, x: dict[str, np.ndarray]) -> torch.Tensor:
    """DeepCTR's single float32 input matrix, columns in its feature_index order."""
    cols = [np.asarray(x[name], dtype=np.float32).reshape(len(x["seq_length"]), -1) for name in model.feature_index]
    return torch.from_numpy(np.concatenate(cols, axis=1))


def copy_weights_into_deepctr(ours: DIN, theirs: torch.nn.Module) -> dict[str, list[str]]:
    """Our weights wherever the two architectures coincide; says which parts kept their random weights."""
    copied, random_kept = [], []
    with torch.no_grad():
        for vocab, table in ours.embeddings.tables.items():
            theirs.embedding_dict[vocab].weight.copy_(table.weight)
        copied.append("embeddings")
        if ours.attention is not None:
            mlp, unit = ours.attention.unit.mlp, theirs.attention.local_att
            for src, dst in zip(mlp.linears, unit.dnn.linears, strict=True):
                dst.load_state_dict(src.state_dict())
            unit.dense.load_state_dict(mlp.out.state_dict())
            for src, dst in zip(mlp.activations, unit.dnn.activation_layers, strict=True):
                if isinstance(src, Dice):  # DeepCTR's Dice: a BatchNorm (affine 1, 0) and alpha (H, 1)
                    if src.mode != "paper":
                        raise ValueError("DeepCTR-Torch's Dice is the paper's: the bench needs dice_mode 'paper'")
                    dst.bn.running_mean.copy_(src.running_mean)
                    dst.bn.running_var.copy_(src.running_var)
                    dst.alpha.copy_(src.alpha.view_as(dst.alpha))
            copied.append("activation unit (Linears and Dice statistics)")
        for src, dst in zip(ours.mlp.linears[1:], theirs.dnn.linears[1:], strict=True):
            dst.load_state_dict(src.state_dict())
        theirs.dnn_linear.weight.copy_(ours.mlp.out.weight)
        theirs.out.bias.copy_(ours.mlp.out.bias)
        copied.append("MLP layers after the first, output layer")
    random_kept.append(f"MLP first layer ({theirs.dnn.linears[0].in_features} inputs vs our "
                       f"{ours.mlp.linears[0].in_features}: no sum-pooled history, no input BatchNorm)")
    random_kept.append("MLP activations (PReLU, one shared slope, vs our Dice)")
    return {"copied": copied, "random": random_kept}


class DeepCTRRun:
    """DeepCTR-Torch's DIN trained with its own `fit`, one epoch per call, selected on validation GAUC
    like ours, on the same splits, batch size, optimiser and learning rate."""

    def __init__(self, schema: Schema, cfg: ModelConfig, splits: dict[str, dict[str, np.ndarray]], plan: Plan) -> None:
        self.schema, self.plan = schema, plan
        self.model = deepctr_din(schema, cfg, schema.max_len, "cuda:0" if plan.device == "cuda" else "cpu")
        self.model.compile(torch.optim.Adam(self.model.parameters(), lr=plan.lr), "binary_crossentropy")
        self.splits = splits
        self.x = {s: deepctr_inputs(a, schema) for s, a in splits.items()}
        self.seconds: list[float] = []
        self.best: tuple[float, int, dict] | None = None

    def epoch(self) -> None:
        from din_export.evaluate import split_metrics

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a summary line
            self.model.fit(self.x["train"], self.splits["train"]["label"], batch_size=self.plan.train_batch,
                           epochs=1, verbose=0, shuffle=True)
        self.seconds.append(time.perf_counter() - start)
        valid = split_metrics(self.splits["valid"]["label"], self.predict("valid"), self.splits["valid"]["group"])
        if self.best is None or (valid["gauc"] or 0.0) > self.best[0]:
            self.best = (valid["gauc"] or 0.0, len(self.seconds), copy.deepcopy(self.model.state_dict()))

    def predict(self, split: str) -> np.ndarray:
        return self.model.predict(self.x[split], batch_size=4096).reshape(-1)

    def result(self) -> dict[str, Any]:
        from din_export.evaluate import split_metrics

        assert self.best is not None, "call epoch() first"
        self.model.load_state_dict(self.best[2])
        test = split_metrics(self.splits["test"]["label"], self.predict("test"), self.splits["test"]["group"])
        rows = len(self.splits["train"]["label"])
        return {"best_epoch": self.best[1], "valid_gauc": self.best[0], "test": test,
                "epoch_seconds": self.seconds, "samples_per_s": rows * len(self.seconds) / sum(self.seconds)}


# --- Training and quality ----------------------------------------------------------------------------


def compare_training(data_dir: Path, run_dir: Path, plan: Plan) -> dict[str, Any]:
    """Ours (`din_export.train.train`) and DeepCTR-Torch's DIN, epochs alternating, same everything else.

    Both train on TRAIN_THREADS torch threads: with more, a core taken by another process stalls every
    parallel region of OpenMP's spinning threads, and epochs of either model slowed 10x at random here.
    """
    from din_export.data import load_schema, load_split
    from din_export.train import TrainConfig, train

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


# --- Export, size, load ------------------------------------------------------------------------------


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


# --- Engines on the same weights ---------------------------------------------------------------------


Thunk = Callable[[], object]


class Engines:
    """Every engine on the trained run's weights; `thunks(arrays)` -> one callable per engine."""

    def __init__(self, model: DIN, schema: Schema, dirs: dict[str, Path], threads: int, device: str,
                 compile_modes: tuple[str, ...] = (), compile_backend: str = "inductor") -> None:

        from din_export.optimize import inference_module

        self.schema, self.threads, self.device = schema, threads, device
        self.torch_models = {"torch": model.to(device).eval(), "torch-rewritten": inference_module(model).to(device)}
        self.compiled = bench_compile.compiled_engines(self.torch_models["torch"], compile_modes, compile_backend)
        self.sessions = {name: onnx_session(d, threads, device) for name, d in dirs.items()}
        self.deepctr_state = None
        self.deepctr_weights: dict[str, list[str]] = {}
        self.deepctr_models: dict[int, torch.nn.Module] = {}

    def deepctr(self, seq: int) -> torch.nn.Module:
        if seq not in self.deepctr_models:
            model = deepctr_din(self.schema, self.torch_models["torch"].cfg, seq, self.torch_device)
            if self.deepctr_state is None:
                self.deepctr_weights = copy_weights_into_deepctr(self.torch_models["torch"], model)
                self.deepctr_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(self.deepctr_state)
            self.deepctr_models[seq] = model.eval()
        return self.deepctr_models[seq]

    @property
    def torch_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else "cpu"

    def thunks(self, arrays: dict[str, np.ndarray]) -> dict[str, Thunk]:
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        x = {k: torch.from_numpy(v).to(self.torch_device) for k, v in arrays.items()}
        out: dict[str, Thunk] = {}
        for name, m in self.torch_models.items():
            out[name] = lambda m=m: _torch_call(m, x, sync)
        for name, compiled in self.compiled.items():
            if compiled.ready(x, sync):  # compiles (timed) at a new shape, outside the timed rounds
                out[name] = lambda m=compiled.module: _torch_call(m, x, sync)
        for name, session in self.sessions.items():
            feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
            out[name] = onnx_call(session, arrays, self.device)
            if name == "onnx-opt":
                n, step = len(arrays["hist_len"]), rows_per_run(arrays[self.schema.histories[0]].shape[1])
                chunks = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]
                out[CHUNKED] = lambda s=session, cs=chunks: [s.run(["prob"], c) for c in cs]
        model = self.deepctr(arrays[self.schema.histories[0]].shape[1])
        matrix = deepctr_matrix(model, deepctr_inputs(arrays, self.schema)).to(self.torch_device)
        out["deepctr"] = lambda: _torch_call(model, matrix, sync)
        return out

    def agreement(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Max |prob - torch prob| per engine of ours on one batch (DeepCTR's is another model)."""
        x = {k: torch.from_numpy(v).to(self.torch_device) for k, v in arrays.items()}
        with torch.inference_mode():
            ref = torch.sigmoid(self.torch_models["torch"](x)).cpu().numpy()
            diffs = {"torch-rewritten": torch.sigmoid(self.torch_models["torch-rewritten"](x)).cpu().numpy()}
            for name, compiled in self.compiled.items():
                if compiled.ready(x, lambda: None):
                    diffs[name] = torch.sigmoid(compiled.module(x)).cpu().numpy()
        for name, session in self.sessions.items():
            diffs[name] = session.run(["prob"], {i.name: arrays[i.name] for i in session.get_inputs()})[0]
        return {k: float(np.abs(v - ref).max()) for k, v in diffs.items()}


def _torch_call(model: torch.nn.Module, x: object, sync: Callable[[], None]) -> None:
    with torch.inference_mode():
        model(x)
    sync()


def onnx_session(model_dir: Path, threads: int, device: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession((model_dir / "model.onnx").read_bytes(), options, providers=providers)


def onnx_call(session: Any, arrays: dict[str, np.ndarray], device: str) -> Thunk:
    """One `prob` run of `session` on `arrays`. On a GPU the inputs are copied to the device once and the
    output stays there (I/O binding), as torch's inputs are moved once: both then time the model, not the
    host-device copies."""
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    if device != "cuda":
        return lambda: session.run(["prob"], feeds)
    import onnxruntime as ort

    binding = session.io_binding()
    on_device = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
    for name, value in on_device.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output("prob", "cuda")

    def call(_inputs: tuple[Any, ...] = tuple(on_device.values())) -> None:  # the device inputs live as long
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def precision_workload(model: DIN, schema: Schema, dirs: dict[str, Path], plan: Plan, threads: int) -> dict[str, Any]:
    """fp32 against fp16 at each batch of `plan.precision_batches`, history `plan.precision_seq`: torch eager
    (the model, and a `.half()` copy fed fp16 dense values) and the optimised export (fp32, and
    `--precision fp16`), alternating. Per engine and batch: p50 ms, rows/s, max |prob - torch fp32 prob|."""
    device = plan.device
    torch_device = "cuda:0" if device == "cuda" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    models = {"torch": model.to(torch_device).eval(), "torch-fp16": copy.deepcopy(model).half().to(torch_device)}
    sessions = {name: onnx_session(dirs[name], threads, device) for name in ("onnx-opt", "onnx-fp16")}
    result: dict[str, Any] = {"seq": plan.precision_seq, "device": device, "batches": {}}
    for batch in plan.precision_batches:
        arrays = workload_arrays(schema, batch, plan.precision_seq, seed=batch)
        x = {k: torch.from_numpy(v).to(torch_device) for k, v in arrays.items()}
        inputs = {"torch": x, "torch-fp16": {k: v.half() if v.is_floating_point() else v for k, v in x.items()}}
        thunks: dict[str, Thunk] = {name: (lambda m=m, i=inputs[name]: _torch_call(m, i, sync))
                                    for name, m in models.items()}
        thunks.update({name: onnx_call(s, arrays, device) for name, s in sessions.items()})
        with torch.inference_mode():
            probs = {name: torch.sigmoid(m(inputs[name]).float()).cpu().numpy() for name, m in models.items()}
        probs.update({name: s.run(["prob"], {i.name: arrays[i.name] for i in s.get_inputs()})[0]
                      for name, s in sessions.items()})
        times = alternate(thunks, plan.precision_rounds, warmup=3)
        result["batches"][str(batch)] = {
            name: {**quantiles(times[name]), "rows_per_s": batch / float(np.median(times[name])),
                   "max_abs_diff_prob": float(np.abs(probs[name] - probs["torch"]).max())}
            for name in PRECISION_ENGINES}
    return result


def engine_workloads(engines: Engines, plan: Plan) -> dict[str, Any]:
    """B=1 latency (cold and warm, see `alternate`) and B=`plan.batch` throughput at each history length,
    all engines alternating. The chunked engine is left out at B=1, where it is onnx-opt itself."""
    schema = engines.schema
    cold, warm, throughput, agreement = {}, {}, {}, {}
    for seq in plan.lengths:
        thunks = engines.thunks(workload_arrays(schema, 1, seq, seed=seq))
        del thunks[CHUNKED]
        key = str(seq)  # JSON object keys are strings; the record uses them from the start
        cold[key] = {k: quantiles(t) for k, t in alternate(thunks, plan.latency_rounds, warmup=5).items()}
        times = alternate(thunks, max(plan.latency_rounds // 10, 2), warmup=1, back_to_back=11)
        warm[key] = {k: quantiles(t) for k, t in times.items()}
        arrays = workload_arrays(schema, plan.batch, seq, seed=seq + 1)
        agreement[key] = engines.agreement(arrays)
        times = alternate(engines.thunks(arrays), plan.throughput_rounds)
        throughput[key] = {name: {"median_ms": float(np.median(t) * 1e3),
                                  "rows_per_s": plan.batch / float(np.median(t))} for name, t in times.items()}
    from din_export.flops import cpu_peak, model_flops_per_row

    return {"latency_b1": cold, "latency_b1_warm": warm, f"throughput_b{plan.batch}": throughput,
            "max_abs_diff_prob_vs_torch": agreement, "compile": bench_compile.report(engines.compiled),
            "flops_per_row": {str(seq): model_flops_per_row(engines.torch_models["torch"], seq)
                              for seq in plan.lengths},
            "peak": cpu_peak(engines.threads) if engines.device == "cpu" else None}


# --- The runtime: candidates and din-score ----------------------------------------------------------


def read_requests(data_dir: Path) -> list[dict]:
    with open(data_dir / "test_requests.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def without_candidate_graph(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose manifest declares no candidate graph, as older exports had none."""
    import shutil

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("candidates.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("candidates", None)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def candidate_workload(model_dir: Path, requests: list[dict], schema: Schema, plan: Plan,
                       threads: int, work: Path) -> dict[str, Any]:
    """One user x N candidates: Scorer.score_candidates (with the model's candidate graph, and without one:
    the user's row repeated through the main graph) vs the same N rows in one score() call vs N calls."""
    from din_runtime import Scorer

    scorer = Scorer.load(model_dir, threads=threads)
    if scorer.manifest.candidate_file is None:
        raise click.ClickException(f"{model_dir} has no candidate graph: the export did not write one")
    main_only = Scorer.load(without_candidate_graph(model_dir, work / "no-candidate-graph"), threads=threads)
    user_row = max(requests, key=lambda r: len(r[schema.histories[0]]))
    user = {f: user_row[f] for f in [s.name for s in schema.sparse] + list(schema.dense_names)}
    history = {h: user_row[h] for h in schema.histories}
    seen, candidates = set(), []
    for r in requests:
        key = tuple(r[t] for t in schema.targets)
        if key not in seen:
            seen.add(key)
            candidates.append({t: r[t] for t in schema.targets})
        if len(candidates) == plan.candidates:
            break
    rows = [{**user, **history, **c} for c in candidates]
    together = scorer.score_candidates(user, history, candidates)
    max_diff = float(np.abs(together - scorer.score(rows)).max())
    if max_diff > 1e-5:  # both graphs are fp32 and verified to 1e-5 against torch
        raise click.ClickException(f"score_candidates and score differ by {max_diff:.2g} on the same rows")
    thunks = {"score_candidates": lambda: scorer.score_candidates(user, history, candidates),
              "score_candidates_main_graph": lambda: main_only.score_candidates(user, history, candidates),
              "score_rows": lambda: scorer.score(rows),
              "score_row_by_row": lambda: [scorer.score([r]) for r in rows]}
    times = {name: quantiles(t) for name, t in alternate(thunks, plan.candidate_rounds).items()}
    fastest = times["score_candidates"]["p50_ms"]
    return {"candidates": len(candidates), "history_len": min(len(history[schema.histories[0]]), schema.max_len),
            "threads": threads, "max_abs_diff_vs_rows": max_diff, **times,
            "speedup_vs_rows": times["score_rows"]["p50_ms"] / fastest,
            "speedup_vs_main_graph": times["score_candidates_main_graph"]["p50_ms"] / fastest,
            "speedup_vs_row_by_row": times["score_row_by_row"]["p50_ms"] / fastest}


def peak_rss(command: list[str], log: Path, poll_s: float = 0.02) -> tuple[float | None, float]:
    """Run `command`; -> (peak resident set in MB, or None without /proc; seconds). Reads the child's own
    high-water mark (/proc/PID/status VmHWM, reset by exec), since rusage's ru_maxrss would include this
    process's RSS, inherited at fork."""
    peak_kb = 0
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            time.sleep(poll_s)
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise click.ClickException(f"{' '.join(command[3:5])} failed: {log.read_text(errors='replace')[-2000:]}")
    return (peak_kb / 1024 if peak_kb else None), seconds


def din_score_memory(model_dir: Path, data_dir: Path, rows: tuple[int, ...], work: Path) -> list[dict[str, Any]]:
    """Peak RSS and speed of `din-score` (a child process) on JSONL files of test requests, cycled to size."""
    with open(data_dir / "test_requests.jsonl", "rb") as f:
        lines = f.read().splitlines(keepends=True)
    results = []
    for n in rows:
        source = work / f"requests-{n}.jsonl"
        with open(source, "wb") as f:
            for start in range(0, n, len(lines)):
                f.writelines(lines[:min(len(lines), n - start)])
        command = [sys.executable, "-c", "from din_runtime.cli import main; main()", str(model_dir), str(source),
                   "-o", str(work / "scores.jsonl")]
        peak_mb, seconds = peak_rss(command, work / "din-score.log")
        source.unlink()
        results.append({"rows": n, "peak_rss_mb": peak_mb, "seconds": seconds, "rows_per_s": n / seconds})
    return results


# --- Targets, table, chart ---------------------------------------------------------------------------


def targets(record: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value (ratios from this one run)."""
    out = []

    def add(name: str, goal: str, value: float | None, met: bool | None) -> None:
        out.append({"target": name, "goal": goal, "value": value, "met": met})

    one = record["engines"].get("1")
    for seq in plan.lengths if one is not None else ():
        # against the fastest torch engine at this shape (eager, our rewrite in eager, torch.compile)
        thr = one[f"throughput_b{plan.batch}"][str(seq)]
        best, rate = best_torch(thr, "rows_per_s", max)
        ratio = thr[CHUNKED]["rows_per_s"] / rate
        add(f"B={plan.batch} L={seq} 1 thread: the Scorer's chunked ONNX vs the best torch engine ({best})", ">= 1x",
            ratio, ratio >= 1)
        for key, label in (("latency_b1", "cold"), ("latency_b1_warm", "warm")):
            lat = one[key][str(seq)]
            best, p50 = best_torch(lat, "p50_ms", min)
            ratio = lat["onnx-opt"]["p50_ms"] / p50
            add(f"B=1 L={seq} 1 thread ({label}): optimised ONNX p50 / best torch p50 ({best})", "<= 1", ratio,
                ratio <= 1)
    if one is not None and 100 in plan.lengths:
        thr = one[f"throughput_b{plan.batch}"]["100"]
        ratio = thr["onnx-int8"]["rows_per_s"] / thr["onnx-opt"]["rows_per_s"]
        add(f"B={plan.batch} L=100 1 thread: int8 vs fp32 optimised ONNX", ">= 1.3x", ratio, ratio >= 1.3)
    models = record["models"]
    auc_gap = abs(models["onnx-int8"]["valid_auc"] - models["onnx-opt"]["valid_auc"])
    add("int8 validation AUC vs fp32", "within 0.002", auc_gap, auc_gap <= 0.002)
    cand = record["candidates"]
    add(f"1 user x {cand['candidates']} candidates vs {cand['candidates']} rows (one call)", ">= 2x",
        cand["speedup_vs_rows"], cand["speedup_vs_rows"] >= 2)
    for name, t in record["training"].items():
        add(f"training samples/s ours vs DeepCTR-Torch ({name})", ">= 1.5x", t["speedup"], t["speedup"] >= 1.5)
        ours, theirs = t["ours"]["test"]["auc"], t["deepctr"]["test"]["auc"]
        add(f"test AUC ours - DeepCTR-Torch ({name})", ">= 0", ours - theirs, ours >= theirs)
    for name, size in record["load_model_bytes"].items():
        if name.startswith("onnx-opt"):
            load = record["load_ms"][name]["p50_ms"]
            add(f"Scorer.load p50 ({name}, model dir {size / 1e6:.1f} MB)", "< 50 ms (10 MB model)", load, load < 50)
    rss = record.get("din_score_rss")
    if rss and all(r["peak_rss_mb"] for r in rss):
        growth = rss[-1]["peak_rss_mb"] / rss[0]["peak_rss_mb"]
        add(f"din-score peak RSS {rss[-1]['rows']:,} rows / {rss[0]['rows']:,} rows", "flat (~1.0)", growth,
            growth < 1.1)
    return out


def best_torch(by_engine: dict[str, dict[str, float]], key: str,
               pick: Callable[..., Any]) -> tuple[str, float]:
    """(engine, value) of the best torch engine (TORCH_ENGINES and torch.compile's) by `key`."""
    names = [e for e in by_engine if e in TORCH_ENGINES or e.startswith(bench_compile.COMPILED)]
    best = pick(names, key=lambda e: by_engine[e][key])
    return best, by_engine[best][key]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def format_table(record: dict[str, Any], plan: Plan) -> str:
    """The results as Markdown tables (printed, and written beside the JSON for docs/bench.md)."""
    env = record["environment"]
    lines = [f"{env['cpu']}, {env['cpu_count']} cores; load average {_loads(env['load_average_start'])} at the "
             f"start, {_loads(env.get('load_average_end'))} at the end; malloc "
             + ", ".join(f"{k}={v}" for k, v in env["malloc"].items()), ""]
    code = env.get("code")
    if code:
        lines[-1:-1] = [f"Code: commit {code['head'][:10]}{' with uncommitted changes' if code['uncommitted'] else ''};"
                        f" the torch baseline is model.py as of {code['model_py']}."]
    for threads, result in record["engines"].items():
        thr_all = result[f"throughput_b{plan.batch}"]
        engines = list(thr_all[str(plan.lengths[0])])
        rows = []
        for seq in plan.lengths:
            for label, key, q in (("p50", "latency_b1", "p50_ms"), ("p99", "latency_b1", "p99_ms"),
                                  ("warm p50", "latency_b1_warm", "p50_ms")):
                lat = result[key][str(seq)]
                rows.append([f"B=1 L={seq} {label} ms", *(f"{lat[e][q]:.3f}" if e in lat else "-" for e in engines)])
            lat = result["latency_b1"][str(seq)]
            best = best_torch(lat, "p50_ms", min)[1]
            rows.append(["  p50 / best torch p50", *(f"{lat[e]['p50_ms'] / best:.2f}" if e in lat else "-"
                                                     for e in engines)])
        peak = result.get("peak")
        for seq in plan.lengths:
            thr = thr_all[str(seq)]
            best = best_torch(thr, "rows_per_s", max)[1]
            rows.append([f"B={plan.batch} L={seq} rows/s", *(f"{thr[e]['rows_per_s']:,.0f}" if e in thr else "-"
                                                             for e in engines)])
            rows.append(["  x torch", *(f"{thr[e]['rows_per_s'] / thr['torch']['rows_per_s']:.2f}" if e in thr else "-"
                                        for e in engines)])
            rows.append(["  x best torch", *(f"{thr[e]['rows_per_s'] / best:.2f}" if e in thr else "-"
                                             for e in engines)])
            if peak and "flops_per_row" in result:
                flops = result["flops_per_row"][str(seq)]
                rows.append([f"  % of peak ({flops / 1e6:.2f} MFLOP/row)",
                             *(f"{100 * thr[e]['rows_per_s'] * flops / peak['flops_per_s']:.1f}" if e in thr else "-"
                               for e in engines)])
        lines += md_table([f"{threads} thread(s)", *engines], rows)
        if peak:
            lines += [f"Peak fp32 at {threads} thread(s): {peak['flops_per_s'] / 1e9:.0f} GFLOP/s = {peak['formula']}, "
                      f"clock from {peak['mhz_source']} (din_export/flops.py).", ""]
        for name, c in result.get("compile", {}).items():
            shapes = ", ".join(f"{k} {v:.1f} s" for k, v in c["first_call_s"].items())
            lines += [f"{name} first call per shape (compiling): {shapes or '-'}"
                      + (f"; failed: {c['error'][:200]}" if c["error"] else ""), ""]
    rows = []
    for name, size in record["load_model_bytes"].items():
        m = record["models"].get(name)
        rows.append([name, f"{m['export_seconds']:.1f}" if m else "-", f"{m['model_bytes'] / 1e6:.2f}" if m else "-",
                     f"{m.get('candidate_bytes', 0) / 1e6:.2f}" if m else "-",
                     f"{size / 1e6:.2f}", f"{record['load_ms'][name]['p50_ms']:.1f}",
                     f"{m['valid_auc']:.4f}" if m else "-", f"{m['max_abs_diff_prob']:.1e}" if m else "-"])
    lines += md_table(["model", "export s", "model.onnx MB", "candidates.onnx MB", "MB read by load",
                       "Scorer.load p50 ms", "valid AUC", "max abs prob diff (verify)"], rows)
    c = record["candidates"]
    lines += md_table([f"1 user x {c['candidates']} candidates, L={c['history_len']}, {c['threads']} thread",
                       "p50 ms", "score_candidates is faster by"],
                      [["score_candidates", f"{c['score_candidates']['p50_ms']:.2f}", "-"],
                       ["score_candidates without the candidate graph",
                        f"{c['score_candidates_main_graph']['p50_ms']:.2f}", f"{c['speedup_vs_main_graph']:.2f}x"],
                       [f"score({c['candidates']} rows), one call", f"{c['score_rows']['p50_ms']:.2f}",
                        f"{c['speedup_vs_rows']:.2f}x"],
                       [f"score([row]) x {c['candidates']}", f"{c['score_row_by_row']['p50_ms']:.2f}",
                        f"{c['speedup_vs_row_by_row']:.2f}x"]])
    rows = []
    for name, t in record["training"].items():
        for who in ("ours", "deepctr"):
            r = t[who]
            rows.append([name, who, f"{r['samples_per_s']:,.0f}", " / ".join(f"{x:.0f}" for x in r["epoch_seconds"]),
                         str(r["best_epoch"]), _metrics(r["test"])])
    threads = next(iter(record["training"].values()), {}).get("threads", "?")
    lines += md_table(["data", "model", f"train samples/s ({threads} thread)", "epoch s", "best epoch",
                       "test AUC / GAUC / logloss"], rows)
    ranking = record.get("candidate_ranking")
    if ranking:
        engines = list(next(iter(ranking["shapes"].values()))["p50_ms"])
        rows = [[shape, *(f"{r['p50_ms'][e]:.2f}" if e in r["p50_ms"] else "-" for e in engines),
                 *(f"{r['speedup_vs'][e]:.2f}x" if e in r["speedup_vs"] else "-" for e in engines[1:])]
                for shape, r in ranking["shapes"].items()]
        lines += md_table(["1 user x N candidates, 1 thread", *(f"{e} p50 ms" for e in engines),
                           *(f"score_candidates vs {e}" for e in engines[1:])], rows)
        for name, c in ranking["compile"].items():
            shapes = ", ".join(f"{k} {v:.1f} s" for k, v in c["first_call_s"].items())
            lines += [f"{name} first call per shape (compiling): {shapes or '-'}"
                      + (f"; failed: {c['error'][:200]}" if c["error"] else ""), ""]
    if record.get("din_score_rss"):
        lines += md_table(["din-score rows", "peak RSS MB", "rows/s"],
                          [[f"{r['rows']:,}", f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "n/a",
                            f"{r['rows_per_s']:,.0f}"]
                           for r in record["din_score_rss"]])
    if record.get("precision"):
        prec = record["precision"]
        rows = []
        for batch, by_engine in prec["batches"].items():
            base = by_engine["torch"]["rows_per_s"]
            cells = [by_engine[e] for e in PRECISION_ENGINES]
            rows.append([f"B={batch}", *(f"{c['p50_ms']:.3f} ms, {c['rows_per_s']:,.0f}/s, "
                                         f"{c['rows_per_s'] / base:.2f}x, diff {c['max_abs_diff_prob']:.0e}"
                                         for c in cells)])
        lines += md_table([f"{prec['device']}, L={prec['seq']}: p50, rows/s, x torch, max abs prob diff",
                           *PRECISION_ENGINES], rows)
    lines += md_table(["target", "goal", "measured", ""],
                      [[t["target"], t["goal"], f"{t['value']:.4g}", "met" if t["met"] else "**missed**"]
                       for t in record["targets"]])
    return "\n".join(lines)


def _loads(loads: list[float] | None) -> str:
    return "n/a" if loads is None else "/".join(f"{x:.1f}" for x in loads)


def _metrics(m: dict[str, Any]) -> str:
    return " / ".join("n/a" if m[k] is None else f"{m[k]:.4f}" for k in ("auc", "gauc", "logloss"))


def chart(record: dict[str, Any], plan: Plan) -> bytes:
    """Throughput and B=1 latency per engine against history length, one row of panels per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["engines"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for row, (threads, result) in enumerate(runs.items()):
        thr, lat = result[f"throughput_b{plan.batch}"], result["latency_b1"]
        keys = [str(s) for s in plan.lengths]
        for i, engine in enumerate(thr[keys[0]]):
            style = {"marker": "o", "color": f"C{i}", "label": engine}  # one colour per engine in every panel
            # nan where an engine is missing at a length (a torch.compile that failed there)
            axes[row][0].plot(plan.lengths, [thr[k].get(engine, {}).get("rows_per_s", np.nan) for k in keys], **style)
            if engine in lat[keys[0]]:
                axes[row][1].plot(plan.lengths, [lat[k].get(engine, {}).get("p50_ms", np.nan) for k in keys], **style)
        axes[row][0].set(title=f"B={plan.batch} throughput, {threads} thread(s)", xlabel="history length",
                         ylabel="rows/s", yscale="log", xscale="log")
        axes[row][1].set(title=f"B=1 latency p50 (cold), {threads} thread(s)", xlabel="history length", ylabel="ms",
                         yscale="log", xscale="log")
        for ax in axes[row]:
            ax.set_xticks(plan.lengths, [str(n) for n in plan.lengths])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"din-export bench{' --quick' if plan.quick else ''} ({record['environment']['cpu']})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# --- The run -----------------------------------------------------------------------------------------


def environment(malloc: dict[str, Any], plan: Plan) -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    dc = import_deepctr()
    return {"cpu": cpu, "code": code_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "deepctr_torch": dc.__version__, "numpy": np.__version__, "din_toolkit": din_export.__version__,
            "malloc": malloc, "load_average_start": os.getloadavg(), "device": plan.device}


def code_version() -> dict[str, Any] | None:
    """The commit the bench ran from, the last commit of model.py (the torch baseline is whatever model.py
    holds) and whether the package or runtime had uncommitted changes; None unless the imported din_export
    is a tracked file of a git checkout (an installed wheel inside some other repository is not)."""
    import din_runtime

    package = Path(din_export.__file__).resolve().parent
    model_py = package / "model.py"
    runtime = Path(din_runtime.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", str(model_py))
        return {"head": git("rev-parse", "HEAD"),
                "model_py": git("log", "-1", "--format=%h %s", "--", str(model_py)),
                "uncommitted": bool(git("status", "--porcelain", "--", str(package), str(runtime)))}
    except (OSError, subprocess.CalledProcessError):
        return None


def run_bench(plan: Plan, sources: dict[str, Path], work: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """Everything the bench measures, as one JSON-ready record."""
    from din_export.train import load_run

    malloc = pin_malloc()
    record: dict[str, Any] = {"plan": asdict(plan), "environment": environment(malloc, plan), "phase_seconds": {}}

    @contextlib.contextmanager
    def phase(name: str, message: str) -> Iterator[None]:
        echo(message)
        start = time.perf_counter()
        yield
        record["phase_seconds"][name] = round(time.perf_counter() - start, 2)

    data = {}
    with phase("prepare", f"preparing {', '.join(sources)} ..."):
        for name, path in sources.items():
            data[name] = prepare_dataset(name, path, work / f"data-{name}", plan.train_rows)
    record["training"] = {}
    for name, data_dir in data.items():
        with phase(f"train_{name}", f"training ours and DeepCTR-Torch on {name}, {plan.epochs} epoch(s) ..."):
            record["training"][name] = compare_training(data_dir, work / f"run-{name}", plan)
    run_dir = work / f"run-{SPEED_DATASET}"
    variants = ("onnx-plain", "onnx-opt", "onnx-int8", *(("onnx-fp16",) if plan.precision_batches else ()))
    with phase("export", f"exporting {', '.join(variants)}, each verified ..."):
        dirs, record["models"] = export_variants(run_dir, work / "models", variants)
    if plan.load_model_mb:
        with phase("padded_export", f"exporting the optimised model padded to {plan.load_model_mb:g} MB ..."):
            from din_export.export import export_run

            padded = f"onnx-opt-{plan.load_model_mb:g}MB"
            dirs_for_load = {**dirs, padded: work / "models" / padded}
            export_run(padded_run(run_dir, work, plan.load_model_mb * 1e6), dirs_for_load[padded], candidates=False,
                       portable=False)
    else:
        dirs_for_load = dirs
    with phase("load", "Scorer.load ..."):
        record["load_ms"] = load_times(dirs_for_load, plan.load_rounds)
        # what Scorer.load reads: all but the candidate graph, which is read at the first score_candidates,
        # and the portable graph, which the Scorer never reads
        record["load_model_bytes"] = {k: sum(p.stat().st_size for p in d.rglob("*")
                                             if p.is_file() and p.name not in ("candidates.onnx", "portable.onnx"))
                                      for k, d in dirs_for_load.items()}
    model, schema, _ = load_run(run_dir)
    record["engines"] = {}
    default_threads = torch.get_num_threads()
    for threads in plan.threads:
        with phase(f"engines_{threads}", f"engines at {threads} thread(s) ..."):
            torch.set_num_threads(threads)
            engines = Engines(model, schema, {k: dirs[k] for k in ("onnx-plain", "onnx-opt", "onnx-int8")},
                              threads, plan.device, plan.compile_modes, plan.compile_backend)
            record["engines"][str(threads)] = engine_workloads(engines, plan)
            record["deepctr_weights"] = engines.deepctr_weights
    torch.set_num_threads(default_threads)
    if plan.precision_batches:
        with phase("precision", f"fp32 and fp16 on {plan.device}, B up to {max(plan.precision_batches)} ..."):
            record["precision"] = precision_workload(model, schema, dirs, plan, max(plan.threads))
    with phase("candidates", "1 user x candidates through the Scorer ..."):
        requests = read_requests(data[SPEED_DATASET])
        record["candidates"] = candidate_workload(dirs["onnx-opt"], requests, schema, plan, threads=1, work=work)
    if plan.candidate_shapes:
        shapes = ", ".join(f"N={n} L={seq}" for n, seq in plan.candidate_shapes)
        with phase("candidate_ranking", f"score_candidates vs torch (eager, compiled) at {shapes} ..."):
            record["candidate_ranking"] = bench_compile.candidate_workload(model, dirs["onnx-opt"], plan, work,
                                                                           alternate)
    if plan.rss_rows:
        with phase("din_score", f"din-score peak RSS on {', '.join(f'{n:,}' for n in plan.rss_rows)} rows ..."):
            record["din_score_rss"] = din_score_memory(dirs["onnx-opt"], data[SPEED_DATASET], plan.rss_rows, work)
    record["environment"]["load_average_end"] = os.getloadavg()
    record["targets"] = targets(record, plan)
    return record


def parse_threads(text: str) -> tuple[int, ...]:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(available)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a positive integer or 'all'", param_hint="--threads")
    return tuple(dict.fromkeys(out))


def parse_compile(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if modes == ("none",):
        return ()
    bad = [m for m in modes if m not in bench_compile.MODES]
    if bad or not modes:
        raise click.BadParameter(f"{', '.join(bad) or repr(text)}: expected 'none' or modes among "
                                 f"{', '.join(bench_compile.MODES)}", param_hint="--compile")
    return modes


def parse_lengths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise click.BadParameter(f"{text!r}: expected positive integers, comma separated", param_hint="--lengths")
    return tuple(dict.fromkeys(int(p) for p in parts))


def check_device(device: str) -> None:
    if device != "cuda":
        return
    import onnxruntime

    if not torch.cuda.is_available():
        raise click.ClickException("--device cuda: torch sees no CUDA device")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise click.ClickException("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                   "(pip uninstall -y onnxruntime && pip install 'din-toolkit[gpu]')")


@click.command("bench", context_settings=CONTEXT_SETTINGS)
@click.option("--quick", is_flag=True, help="Small data, few rounds, one epoch: about a minute, for a smoke check.")
@click.option("--threads", "threads_text", default="1,all", show_default=True,
              help="Comma-separated thread counts for the engine workloads ('all': every core available).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: torch and onnxruntime on the GPU (needs torch with CUDA and the gpu extra).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs for both models (default 2, --quick 1).")
@click.option("--compile", "compile_text", default=None,
              help="torch.compile modes benched as engines, comma separated (default, max-autotune-no-cudagraphs) "
                   "or 'none' [default: 'default'; --quick: none].")
@click.option("--lengths", "lengths_text", default=None,
              help="History lengths of the engine workloads, comma separated [default: 20,100,500; --quick: 20,100].")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"),
              show_default=True, help="Directory for bench[-quick].json, .md and .png.")
@click.option("--movielens", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="MovieLens-100K's ml-100k directory (u.data, u.item, u.user). Required.")
@click.option("--taobao", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The Taobao UserBehavior CSV (a head of it will do). Required.")
def bench_command(quick: bool, threads_text: str, device: str, epochs: int | None, compile_text: str | None,
                  lengths_text: str | None, out: Path, movielens: Path | None, taobao: Path | None) -> None:
    """Benchmark torch (eager and torch.compile), the ONNX variants and DeepCTR-Torch's DIN on the same weights;
    train both on MovieLens-100K and Taobao for quality and training speed. Prints a table, writes JSON and
    a chart."""
    plan = make_plan(quick, parse_threads(threads_text), device, epochs, parse_compile(compile_text),
                     parse_lengths(lengths_text))
    # No default location: an installed package has no checkout beside it to look in.
    missing = [option for option, path in (("--movielens DIR", movielens), ("--taobao FILE", taobao)) if path is None]
    if missing:
        raise click.UsageError(f"missing {' and '.join(missing)}: the bench trains on MovieLens-100K (the ml-100k "
                               "directory) and Taobao UserBehavior (the CSV); docs/bench.md says where to get them")
    check_device(device)
    sources = {"movielens": movielens, "taobao": taobao}
    with tempfile.TemporaryDirectory(prefix="din-bench-") as tmp:
        record = run_bench(plan, sources, Path(tmp), lambda m: click.echo(m, err=True))
    record["command"] = (f"din-export bench{' --quick' if quick else ''} --threads {threads_text} --device {device}"
                         f"{f' --epochs {epochs}' if epochs else ''}"
                         f"{f' --compile {compile_text}' if compile_text else ''}"
                         f"{f' --lengths {lengths_text}' if lengths_text else ''} --out {out} --movielens {movielens} "
                         f"--taobao {taobao}")
    stem = "bench-quick" if quick else "bench"
    write_json_atomic(out / f"{stem}.json", record)
    write_bytes_atomic(out / f"{stem}.png", chart(record, plan))
    table = format_table(record, plan)
    write_bytes_atomic(out / f"{stem}.md", f"`{record['command']}`\n\n{table}".encode())
    click.echo(table)
    click.echo(f"\nwrote {out / f'{stem}.json'}, .md and .png")
