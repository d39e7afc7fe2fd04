"""Which form of the attention's first layer is fastest in ONNX Runtime on CPU (docs/bench.md).

    python bench/first_layer.py [--threads 1] [--out bench/results/first_layer.json]

The same trained-like DIN (paper dimensions: D = 64, H = 80) is exported four ways, differing only in
how the activation unit's first layer W [q, k, q - k, q * k] + b is computed at each history position:
  model     the plain model as model.py computes it (the baseline; since 2dc693d its training form
            [k, q * k] [Wk - Wd; Wp]^T, before that the 4D-wide concat), nothing folded;
  per-row   c(q) + k A(q)^T with A(q) = (Wk - Wd) + Wp diag(q), one (D x H) matrix per row (optimize.py);
  plain     c(q) + k (Wk - Wd)^T + (q * k) Wp^T, two GEMMs of width D;
  stacked   c(q) + [k, q * k] [Wk - Wd; Wp]^T, one GEMM of width 2D.
Everything else is the optimised module. Timed in alternating rounds at B = 256 and several L.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc
from din_export.model import DIN, ModelConfig
from din_export.optimize import FactoredActivationUnit, inference_module
from din_export.schema import Behaviour, DenseField, Schema, SparseField, write_json_atomic


class PlainUnit(FactoredActivationUnit):
    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        c = query @ self.query_weight_t + self.bias
        hidden = keys @ self.key_weight_t + (query.unsqueeze(1) * keys) @ self.product_weight_t + c.unsqueeze(1)
        return self.tail(hidden.flatten(0, 1)).reshape(keys.shape[:2])


class StackedUnit(FactoredActivationUnit):
    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        c = query @ self.query_weight_t + self.bias
        weight = torch.cat([self.key_weight_t, self.product_weight_t], dim=0)
        hidden = torch.cat([keys, query.unsqueeze(1) * keys], dim=-1) @ weight + c.unsqueeze(1)
        return self.tail(hidden.flatten(0, 1)).reshape(keys.shape[:2])


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/first_layer.json"))
    args = parser.parse_args()
    malloc = pin_malloc()
    s = schema()
    model = model_with_statistics(s)
    graphs = {"model": to_onnx(model, s)}
    for name, cls in (("per-row", FactoredActivationUnit), ("plain", PlainUnit), ("stacked", StackedUnit)):
        module = inference_module(model)
        module.unit.__class__ = cls  # same buffers and tail; only forward differs
        graphs[name] = to_onnx(module, s)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(v, options, providers=["CPUExecutionProvider"]) for k, v in graphs.items()}
    results = {}
    for seq in (20, 50, 100, 500):
        feeds = workload_arrays(s, 256, seq, seed=seq)
        reference = sessions["model"].run(None, feeds)[0]
        times = alternate({k: (lambda v=v, f=feeds: v.run(None, f)) for k, v in sessions.items()}, args.rounds)
        medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        results[seq] = {k: {"median_ms": m, "x_model": medians["model"] / m,
                            "max_abs_diff_logit": float(np.abs(sessions[k].run(None, feeds)[0] - reference).max())}
                        for k, m in medians.items()}
        print(f"B=256 L={seq:<4}" + "".join(f"  {k} {m:7.2f} ms (x{medians['model'] / m:.2f})"
                                           for k, m in medians.items()))
    write_json_atomic(args.out, {"command": f"python bench/first_layer.py --threads {args.threads} --rounds "
                                            f"{args.rounds}", "threads": args.threads, "malloc": malloc,
                                 "batch": 256, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
