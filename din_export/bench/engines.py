"""Every engine on the same trained weights (torch eager, our rewrite, torch.compile, the ONNX variants,
DeepCTR-Torch) and the engine workloads: B=1 latency, batch throughput, fp32 against fp16."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from din_runtime.manifest import load_manifest
from din_runtime.scorer import rows_per_run

from din_export.bench import torch_compile
from din_export.bench.data import workload_arrays
from din_export.bench.flops import cpu_peak, model_flops_per_row
from din_export.bench.peers import copy_weights_into_deepctr, deepctr_din, deepctr_inputs, deepctr_matrix
from din_export.bench.plan import Plan
from din_export.bench.timing import alternate, quantiles
from din_export.model import DIN
from din_export.schema import Schema

CHUNKED = "onnx-opt/chunked"
ENGINES = ("torch", "torch-rewritten", "onnx-plain", "onnx-opt", CHUNKED, "onnx-int8", "deepctr")
# CHUNKED: the optimised export run on slices of the batch of din_runtime's `rows_per_run(L, width)` rows, as the
# Scorer runs it on CPU (the Dice passes over B x L x H values then stay in cache), without its checks, and on
# the graph the Scorer picks: short.onnx (at 1 thread) for histories up to the manifest's short_history max_width.

PRECISION_ENGINES = ("torch", "torch-fp16", "onnx-opt", "onnx-fp16")  # the fp32/fp16 workload's engines


Thunk = Callable[[], object]


class Engines:
    """Every engine on the trained run's weights; `thunks(arrays)` -> one callable per engine."""

    def __init__(self, model: DIN, schema: Schema, dirs: dict[str, Path], threads: int, device: str,
                 compile_modes: tuple[str, ...] = (), compile_backend: str = "inductor") -> None:

        from din_export.optimize import inference_module

        self.schema, self.threads, self.device = schema, threads, device
        self.torch_models = {"torch": model.to(device).eval(), "torch-rewritten": inference_module(model).to(device)}
        self.compiled = torch_compile.compiled_engines(self.torch_models["torch"], compile_modes, compile_backend)
        self.sessions = {name: onnx_session(d, threads, device) for name, d in dirs.items()}
        manifest = load_manifest(dirs["onnx-opt"]) if "onnx-opt" in dirs else None
        # the Scorer's run budget follows the unit's width (din_runtime.scorer.positions_per_run)
        self.attention_width = None if manifest is None else manifest.attention_width
        # (session, max_width) of the optimised export's short-history graph, or (None, -1); as the Scorer
        # picks it: on CPU with one thread
        picks_short = manifest is not None and manifest.short_file is not None and device == "cpu" and threads == 1
        self.short = (None, -1) if not picks_short else (
            onnx_session(dirs["onnx-opt"], threads, device, manifest.short_file), manifest.short_max_width)
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
                width = arrays[self.schema.histories[0]].shape[1]
                n, step = len(arrays["hist_len"]), rows_per_run(width, self.attention_width)
                chunks = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]
                picked = self.short[0] if width <= self.short[1] else session
                out[CHUNKED] = lambda s=picked, cs=chunks: [s.run(["prob"], c) for c in cs]
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


def onnx_session(model_dir: Path, threads: int, device: str, file: str = "model.onnx") -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession((model_dir / file).read_bytes(), options, providers=providers)


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
    return {"latency_b1": cold, "latency_b1_warm": warm, f"throughput_b{plan.batch}": throughput,
            "max_abs_diff_prob_vs_torch": agreement, "compile": torch_compile.report(engines.compiled),
            "flops_per_row": {str(seq): model_flops_per_row(engines.torch_models["torch"], seq)
                              for seq in plan.lengths},
            "peak": cpu_peak(engines.threads) if engines.device == "cpu" else None}
