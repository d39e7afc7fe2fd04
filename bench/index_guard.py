"""What guarding the stacked embedding table's ids costs in ONNX Runtime on CPU (docs/export.md, "Index guard").

    python bench/index_guard.py [--threads 1] [--rounds 200] [--out bench/results/index_guard.json]

The optimised graph stacks every embedding table into one (optimize.CombinedEmbeddings), so an id
outside its vocabulary would read another table's row. Two ways to prevent it, against the unguarded
stack as it was, on the same weights, the rest of the optimised module unchanged:
  unguarded     ids + offset into the stacked table (optimize.py's earlier form; unsafe);
  guarded       each field's ids outside [0, size) replaced by the OOV index, then + offset;
  guarded-once  the same on the stacked history ids at once, against vectors of sizes and offsets;
  separate      the tables kept apart: one Gather per field and a Concat of the lookups, as the plain
                model (an out-of-range id is then onnxruntime's error, as in the plain graph); what
                optimize.py does now.
Timed in alternating rounds at L = 100: B = 1, B = 256 in one run, and B = 256 in runs of din_runtime's
`rows_per_run(100, width)` rows (how the Scorer runs it on CPU), for the edge and paper presets' dimensions.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnxruntime as ort
import torch
from din_runtime.scorer import rows_per_run
from first_layer import schema, to_onnx  # bench/first_layer.py: its schema (item vocabulary 50k) and export
from torch import Tensor, nn

from din_export.bench.data import workload_arrays
from din_export.bench.timing import alternate, pin_malloc
from din_export.model import DIN, ModelConfig
from din_export.optimize import inference_module
from din_export.schema import OOV_INDEX, write_json_atomic

CONFIGS = {  # the presets' model dimensions (din_export/presets/{edge,paper}.json)
    "edge": ModelConfig(embed_dim=8, attention_hidden=(32, 16), attention_activation="prelu",
                        mlp_hidden=(64, 32), mlp_activation="prelu"),
    "paper": ModelConfig(embed_dim=32, attention_hidden=(80, 40), mlp_hidden=(200, 80)),
}


class Unguarded(nn.Module):
    """The stacked table as optimize.py had it: every table in one (each padded to 8 rows, the item's first),
    ids + offset; the histories one GatherND, the per-row fields one Gather each."""

    def __init__(self, model: DIN) -> None:
        super().__init__()
        emb = model.embeddings
        parts, self.offsets, self.sizes, rows = [], {}, {}, 0
        for vocab in dict.fromkeys([v for _, _, v in emb.behaviour] + list(emb.tables)):
            weight = emb.tables[vocab].weight.detach()
            padded = -(-weight.shape[0] // 8) * 8
            parts.append(torch.cat([weight, weight.new_zeros(padded - weight.shape[0], weight.shape[1])]))
            self.offsets[vocab], self.sizes[vocab] = rows, weight.shape[0]
            rows += padded
        self.register_buffer("table", torch.cat(parts))
        self.sparse = list(emb.sparse)
        self.targets = [(t, v) for t, _, v in emb.behaviour]
        self.histories = [(h, v) for _, h, v in emb.behaviour]

    def ids(self, x: dict[str, Tensor], name: str, vocab: str) -> Tensor:
        return x[name] + self.offsets[vocab] if self.offsets[vocab] else x[name]

    def per_row(self, x: dict[str, Tensor], fields: list[tuple[str, str]]) -> Tensor:
        return torch.cat([nn.functional.embedding(self.ids(x, name, vocab), self.table) for name, vocab in fields],
                         dim=-1)

    def forward(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        query = self.per_row(x, self.targets)
        profile = self.per_row(x, self.sparse) if self.sparse else query[:, :0]
        stacked = torch.stack([self.ids(x, name, vocab) for name, vocab in self.histories], dim=-1)
        return profile, query, self.table[stacked].flatten(-2)


class Guarded(Unguarded):
    """Each field's ids outside [0, size) replaced by the OOV index before the offset."""

    def ids(self, x: dict[str, Tensor], name: str, vocab: str) -> Tensor:
        ids = x[name]
        ids = torch.where((ids >= 0) & (ids < self.sizes[vocab]), ids, OOV_INDEX)
        return ids + self.offsets[vocab] if self.offsets[vocab] else ids


class GuardedOnce(Unguarded):
    """The histories' ids guarded once, stacked, against a (n,) vector of sizes, then offset by a (n,) vector."""

    def forward(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        query = self.per_row(x, self.targets)
        profile = self.per_row(x, self.sparse) if self.sparse else query[:, :0]
        sizes = torch.tensor([self.sizes[v] for _, v in self.histories])
        offsets = torch.tensor([self.offsets[v] for _, v in self.histories])
        stacked = torch.stack([x[name] for name, _ in self.histories], dim=-1)
        stacked = torch.where((stacked >= 0) & (stacked < sizes), stacked, OOV_INDEX) + offsets
        return profile, query, self.table[stacked].flatten(-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default="bench/results/index_guard.json")
    args = parser.parse_args()
    malloc = pin_malloc()
    s = schema()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    results: dict[str, dict] = {}
    for config_name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = DIN(s, cfg).eval()
        graphs = {}
        for name, stacked in (("unguarded", Unguarded), ("guarded", Guarded), ("guarded-once", GuardedOnce),
                              ("separate", None)):
            module = inference_module(model)  # SeparateEmbeddings: optimize.py's form
            if stacked is not None:
                module.embeddings = stacked(model)
            graphs[name] = to_onnx(module, s)
        sessions = {k: ort.InferenceSession(v, options, providers=["CPUExecutionProvider"]) for k, v in graphs.items()}
        step = rows_per_run(100, max(cfg.attention_hidden, default=1))
        for batch, chunked in ((1, False), (256, False), (256, True)):
            feeds = workload_arrays(s, batch, 100, seed=batch)
            runs = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, batch, step)] if chunked else [feeds]
            rounds = args.rounds if batch == 1 else max(args.rounds // 10, 5)
            thunks = {k: (lambda v=v, r=runs: [v.run(None, f) for f in r]) for k, v in sessions.items()}
            times = alternate(thunks, rounds)
            medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            label = f"{config_name} B={batch} L=100" + (f" in runs of {step}" if chunked else "")
            results[label] = {k: {"median_ms": m, "x_unguarded": m / medians["unguarded"]} for k, m in medians.items()}
            print(f"{label:<32}" + "".join(f"  {k} {m:8.3f} ms (x{m / medians['unguarded']:.3f})"
                                           for k, m in medians.items()), flush=True)
        reference = sessions["unguarded"].run(None, workload_arrays(s, 7, 100))[0]
        for name in ("guarded", "guarded-once", "separate"):
            assert np.array_equal(sessions[name].run(None, workload_arrays(s, 7, 100))[0], reference), name
    write_json_atomic(args.out, {"command": f"python bench/index_guard.py --threads {args.threads} "
                                            f"--rounds {args.rounds}",
                                 "threads": args.threads, "malloc": malloc, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
