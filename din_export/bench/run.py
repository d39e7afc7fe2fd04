"""One bench run end to end: the environment it ran in, every phase in order, one JSON-ready record."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import din_export
from din_export.bench import torch_compile
from din_export.bench.candidates import candidate_workload
from din_export.bench.data import prepare_dataset, read_requests
from din_export.bench.engines import Engines, engine_workloads, precision_workload
from din_export.bench.exports import export_variants, load_times, padded_run
from din_export.bench.memory import din_score_memory
from din_export.bench.peers import import_deepctr
from din_export.bench.plan import Plan
from din_export.bench.report import targets
from din_export.bench.timing import pin_malloc
from din_export.bench.training import compare_training
from din_export.checkpoints import load_run
from din_export.errors import DinExportError

SPEED_DATASET = "taobao"  # its run is the model every speed workload uses (item vocabulary ~52k)


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
            record["candidate_ranking"] = torch_compile.candidate_ranking_workload(model, dirs["onnx-opt"], plan,
                                                                                   work)
    if plan.rss_rows:
        with phase("din_score", f"din-score peak RSS on {', '.join(f'{n:,}' for n in plan.rss_rows)} rows ..."):
            record["din_score_rss"] = din_score_memory(dirs["onnx-opt"], data[SPEED_DATASET], plan.rss_rows, work)
    record["environment"]["load_average_end"] = os.getloadavg()
    record["targets"] = targets(record, plan)
    return record


def check_device(device: str) -> None:
    if device != "cuda":
        return
    import onnxruntime

    if not torch.cuda.is_available():
        raise DinExportError("--device cuda: torch sees no CUDA device")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise DinExportError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                   "(pip uninstall -y onnxruntime && pip install 'din-toolkit[gpu]')")
