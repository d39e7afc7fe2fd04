"""Which form of the attention's first layer is fastest, in ONNX Runtime on CPU and in training (docs/bench.md).

    python bench/first_layer.py [--threads 1] [--lengths 20,50,100,500] [--out bench/results/first_layer.json]
    python bench/first_layer.py --run RUN_DIR --scorer-runs [--lengths 10,20,30,50,100,500] [--out OUT]
    python bench/first_layer.py --train [--lengths 20,50,200] [--out bench/results/first_layer_train.json]

The same trained-like DIN (paper dimensions: D = 64, H = 80; or a trained run's model with --run) is
exported four ways, differing only in how the activation unit's first layer W [q, k, q - k, q * k] + b
is computed at each history position:
  model     the plain model as model.py computes it, nothing folded;
  per-row   c(q) + k A(q)^T with A(q) = (Wk - Wd) + Wp diag(q), one (D x H) matrix per row
            (model.factored_first_layer: the optimised graph);
  plain     c(q) + k (Wk - Wd)^T + (q * k) Wp^T, two GEMMs of width D;
  stacked   c(q) + [k, q * k] [Wk - Wd; Wp]^T, one GEMM of width 2D (optimize.stacked_first_layer:
            the short-history graph).
Everything else is the optimised module. Timed in alternating rounds at B = 256 (one run each), or with
--scorer-runs at B = 1 and B = 256 cut into the Scorer's runs (din_runtime.scorer.rows_per_run).

--train times training steps instead (forward, backward, Adam; B = 256, 1 thread, torch), the same
initial weights in three copies of the model, differing only in the activation unit's first layer:
  concat    the paper's form, first([q, k, q - k, q * k]) (model.reference_first_layer);
  stacked   model.stacked_first_layer, c(q) + [k, q * k] [Wk - Wd; Wp]^T per position (model.py's form);
  per-row   model.factored_first_layer, c(q) + k A(q)^T (the optimised graph's form).
Each round runs every form over the same batches, the order rotating; samples/s are medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from din_runtime.scorer import rows_per_run
from machine import cpu_model
from torch import Tensor

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc
from din_export.checkpoints import load_run
from din_export.model import DIN, ActivationUnit, ModelConfig, factor_first_layer, factored_first_layer
from din_export.optimize import FactoredActivationUnit, ShortHistoryUnit, inference_module
from din_export.schema import Behaviour, DenseField, Schema, SparseField, write_json_atomic


class PlainUnit(FactoredActivationUnit):
    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        c = query @ self.query_weight_t + self.bias
        hidden = keys @ self.key_weight_t + (query.unsqueeze(1) * keys) @ self.product_weight_t + c.unsqueeze(1)
        return self.tail(hidden.flatten(0, 1)).reshape(keys.shape[:2])


class ConcatTrainUnit(ActivationUnit):
    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        return self.forward_reference(query, keys, mask)


class PerRowTrainUnit(ActivationUnit):
    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        first = factored_first_layer(query, keys, factor_first_layer(self.mlp.first, self.dim))
        return self.mlp.after_first(first, mask).squeeze(-1)


TRAIN_FORMS = {"concat": ConcatTrainUnit, "stacked": ActivationUnit, "per-row": PerRowTrainUnit}


def train_speed(s: Schema, lengths: tuple[int, ...], rounds: int, steps: int) -> dict:
    """Training samples/s of each first-layer form (module docstring), per history length."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    initial = DIN(s, ModelConfig())
    results = {}
    for seq in lengths:
        batches = []
        for i in range(steps):
            arrays = workload_arrays(s, 256, seq, seed=seq * 1000 + i)
            arrays["hist_len"] = np.random.default_rng(i).integers(1, seq + 1, 256)  # ragged, as in training
            batches.append({k: torch.from_numpy(v) for k, v in arrays.items()})
        labels = [torch.from_numpy(np.random.default_rng(i).integers(0, 2, 256)).float() for i in range(steps)]
        runs = {}
        for name, cls in TRAIN_FORMS.items():
            model = DIN(s, ModelConfig())
            model.load_state_dict(initial.state_dict())
            model.attention.unit.__class__ = cls  # same parameters and MLP; only the first layer's form differs
            runs[name] = train_steps(model.train(), torch.optim.Adam(model.parameters(), lr=1e-3), batches, labels)
        times = alternate(runs, rounds, warmup=1)
        rates = {k: 256 * steps / statistics.median(v) for k, v in times.items()}
        results[seq] = {k: {"samples_per_s": r, "x_stacked": r / rates["stacked"], "x_concat": r / rates["concat"]}
                        for k, r in rates.items()}
        print(f"train B=256 L={seq:<4}" + "".join(f"  {k} {r:8.0f} samples/s (x{r / rates['stacked']:.2f} stacked, "
                                                    f"x{r / rates['concat']:.2f} concat)" for k, r in rates.items()),
              flush=True)
    return results


def train_steps(model: DIN, opt: torch.optim.Optimizer, batches: list[dict[str, Tensor]],
                labels: list[Tensor]) -> Callable[[], None]:
    def run() -> None:
        for x, y in zip(batches, labels, strict=True):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run


def schema() -> Schema:
    return Schema(max_len=50, behaviour=(Behaviour("item_id", "hist_item_id", "item_id"),
                                         Behaviour("cate_id", "hist_cate_id", "cate_id")),
                  vocab_sizes={"user_id": 1000, "item_id": 50_000, "cate_id": 3000},
                  sparse=(SparseField("user_id", "user_id"),), dense=(DenseField("age", 30.0, 10.0),))


def model_with_statistics(s: Schema) -> DIN:
    """Random weights with non-trivial Dice/BatchNorm statistics (what a trained model has)."""
    torch.manual_seed(0)
    model = DIN(s, ModelConfig())
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var"):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def to_onnx(module: torch.nn.Module, s: Schema) -> bytes:
    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *inputs: Tensor) -> Tensor:
            return self.module(dict(zip(s.input_names(), inputs, strict=True)))

    names = s.input_names()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = tuple({0: batch, 1: seq} if n in s.histories else {0: batch} for n in names)
    example = workload_arrays(s, 4, 6)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Positional().eval(), tuple(torch.from_numpy(example[n]) for n in names),
                                    dynamo=True, dynamic_shapes=(dynamic,), input_names=names, output_names=["logit"],
                                    external_data=False, verbose=False)
    return program.model_proto.SerializeToString()


def onnx_speed(model: DIN, s: Schema, lengths: tuple[int, ...], batches: tuple[int, ...], rounds: int,
               threads: int, scorer_runs: bool) -> dict:
    """ms per batch of each exported form (module docstring), per batch size and history length. With
    scorer_runs the batch is cut into runs of din_runtime.scorer.rows_per_run(L, w) rows, w the unit's widest
    layer, as the Scorer runs it."""
    graphs = {"model": to_onnx(model, s)}
    for name, cls in (("per-row", FactoredActivationUnit), ("plain", PlainUnit), ("stacked", ShortHistoryUnit)):
        module = inference_module(model)
        module.unit.__class__ = cls  # same buffers and tail; only forward differs
        graphs[name] = to_onnx(module, s)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(v, options, providers=["CPUExecutionProvider"]) for k, v in graphs.items()}
    results: dict = {}
    for batch in batches:
        for seq in lengths:
            feeds = workload_arrays(s, batch, seq, seed=seq + batch)
            step = rows_per_run(seq, max(model.cfg.attention_hidden, default=1)) if scorer_runs else batch
            runs = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, batch, step)]
            reference = sessions["model"].run(None, feeds)[0]
            thunks = {k: (lambda v=v, r=runs: [v.run(None, f) for f in r]) for k, v in sessions.items()}
            times = alternate(thunks, rounds * (20 if batch == 1 else 1))  # B=1 calls are short and noisier
            medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            results[f"B={batch} L={seq}"] = {
                k: {"median_ms": m, "x_model": medians["model"] / m, "x_per_row": medians["per-row"] / m,
                    "max_abs_diff_logit": float(np.abs(sessions[k].run(None, feeds)[0] - reference).max())}
                for k, m in medians.items()}
            print(f"B={batch} L={seq:<4} ({step} rows a run)" + "".join(
                f"  {k} {m:7.3f} ms (x{medians['model'] / m:.2f} model, x{medians['per-row'] / m:.2f} per-row)"
                for k, m in medians.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/first_layer.json, with --train first_layer_train.json")
    parser.add_argument("--train", action="store_true", help="time training steps of the torch forms instead")
    parser.add_argument("--lengths", default=None, help="history lengths (default 20,50,100,500; --train 20,50,200)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per form and round, for --train")
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained run directory: its model and schema instead of the random-weight model")
    parser.add_argument("--scorer-runs", action="store_true",
                        help="B=1 and B=256 cut into the Scorer's runs, instead of B=256 in one run")
    args = parser.parse_args()
    malloc = pin_malloc()
    record = {"command": "python " + " ".join(sys.argv), "threads": 1 if args.train else args.threads,
              "malloc": malloc, "cpu": cpu_model(), "load_average_start": os.getloadavg()}
    if args.run is not None:
        model, s, _ = load_run(args.run)
        model.eval()
    else:
        s = schema()
        model = model_with_statistics(s)
    if args.train:
        out = args.out or Path("bench/results/first_layer_train.json")
        lengths = tuple(int(v) for v in (args.lengths or "20,50,200").split(","))
        results = train_speed(s, lengths, args.rounds, args.steps)
    else:
        out = args.out or Path("bench/results/first_layer.json")
        lengths = tuple(int(v) for v in (args.lengths or "20,50,100,500").split(","))
        results = onnx_speed(model, s, lengths, (1, 256) if args.scorer_runs else (256,), args.rounds, args.threads,
                             args.scorer_runs)
    write_json_atomic(out, {**record, "load_average_end": os.getloadavg(), "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
