"""torch.compile as a bench engine: what a torch user gets with one line, and its compile time.

`torch.compile(model)` with inductor on the trained model as model.py defines it (not our rewrite:
that is the exported graph's advantage, not the user's). Shapes change between workloads, so torch
recompiles: B=1 is specialised, other sizes become dynamic after the first change (torch's "automatic
dynamic"). Each shape's first call is timed on its own and reported as that shape's compile time
(zero-ish where an earlier compile already covers it); inductor's on-disk cache can shorten a rerun's.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from din_export.bench.timing import alternate
from din_export.model import DIN
from din_export.schema import write_json_atomic

COMPILED = "torch-compile"
MODES = ("default", "max-autotune-no-cudagraphs")


def engine_name(mode: str) -> str:
    return COMPILED if mode == "default" else f"{COMPILED}-{mode}"


class Compiled:
    """torch.compile(model, mode) and the seconds of its first call at each shape (None: it failed)."""

    def __init__(self, model: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
        self.mode, self.backend = mode, backend
        self.module = torch.compile(model, mode=None if mode == "default" else mode, backend=backend)
        self.first_call_s: dict[str, float] = {}
        self.error: str | None = None

    def ready(self, x: dict[str, torch.Tensor], sync: Callable[[], None]) -> bool:
        """Compile for x's shape (timed) unless done; False, with `error` set, if compiling failed (no C++
        compiler, an inductor bug): the bench then reports the error instead of the engine."""
        if self.error is not None:
            return False
        hist = next(v for k, v in x.items() if k.startswith("hist_") and v.dim() == 2)
        shape = f"B={hist.shape[0]} L={hist.shape[1]}"
        if shape in self.first_call_s:
            return True
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                self.module(x)
            sync()
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds; all mean "no compiled engine"
            self.error = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
            return False
        self.first_call_s[shape] = time.perf_counter() - start
        return True


def compiled_engines(model: DIN, modes: tuple[str, ...], backend: str = "inductor") -> dict[str, Compiled]:
    """One Compiled per mode. backend: inductor (what users run); tests use "eager" to check the plumbing."""
    # every (B=1 or not) x (first or later length) may recompile: room for all of them and both workloads
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    return {engine_name(mode): Compiled(model, mode, backend) for mode in modes}


def report(compiled: dict[str, Compiled]) -> dict[str, Any]:
    return {name: {"mode": c.mode, "backend": c.backend, "first_call_s": c.first_call_s, "error": c.error}
            for name, c in compiled.items()}


def expanded_batch(arrays: dict[str, np.ndarray], histories: tuple[str, ...], n: int) -> dict[str, np.ndarray]:
    """One user's arrays (histories and hist_len of batch 1) repeated for n candidates: the batch a torch
    model without a candidate graph scores."""
    shared = (*histories, "hist_len")
    return {k: np.repeat(v, n, axis=0) if k in shared else v for k, v in arrays.items()}


# --- Candidate ranking: score_candidates against torch.compile of the expanded batch -------------------


def with_max_len(model_dir: Path, out: Path, max_len: int) -> Path:
    """A copy of `model_dir` whose encoder keeps `max_len` history items: the graphs take any length, the
    manifest's max_len only cuts histories, and the workload's histories are longer than the training's."""
    shutil.copytree(model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema"]["max_len"] = max(max_len, manifest["schema"]["max_len"])
    write_json_atomic(out / "manifest.json", manifest)
    return out


def candidate_request(scorer: Any, n: int, seq: int, seed: int) -> tuple[dict, dict, list[dict]]:
    """One user (known ids, a history of `seq` items) and `n` candidate items, as raw ids."""
    m = scorer.manifest
    rng = np.random.default_rng(seed)
    known = {v: list(ids) for v, ids in m.vocabs.items()}

    def pick(vocab: str, size: int | None = None) -> Any:
        ids = known[vocab]
        return ids[rng.integers(len(ids))] if size is None else [ids[i] for i in rng.integers(len(ids), size=size)]

    user = {s.name: pick(s.vocab) for s in m.sparse}
    user.update({d: float(rng.normal()) for d in m.dense})
    history = {b.history: pick(b.vocab, seq) for b in m.behaviour}
    candidates = [{b.target: pick(b.vocab) for b in m.behaviour} for _ in range(n)]
    return user, history, candidates


def candidate_ranking_workload(model: DIN, model_dir: Path, plan: Any, work: Path) -> dict[str, Any]:
    """1 user x N candidates at each (N, L) of plan.candidate_shapes, one thread: Scorer.score_candidates
    (raw ids in, the candidate graph) against torch eager and torch.compile of the candidate-expanded batch
    (the user's row repeated N times, arrays already encoded: torch is not charged for encoding)."""
    from din_runtime import Scorer

    longest = max(seq for _, seq in plan.candidate_shapes)
    scorer = Scorer.load(with_max_len(model_dir, work / "long-history", longest), threads=1)
    compiled = compiled_engines(model, plan.compile_modes, plan.compile_backend)
    result: dict[str, Any] = {"threads": 1, "shapes": {}}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n, seq in plan.candidate_shapes:
            user, history, candidates = candidate_request(scorer, n, seq, seed=n + seq)
            rows = [{**user, **history, **c} for c in candidates]
            arrays = scorer.encode(rows).arrays
            x = {k: torch.from_numpy(v) for k, v in arrays.items()}
            probs = scorer.score_candidates(user, history, candidates)
            thunks: dict[str, Callable[[], object]] = {
                "score_candidates": lambda u=user, h=history, c=candidates: scorer.score_candidates(u, h, c)}
            with torch.inference_mode():
                diffs = {"torch": float(np.abs(torch.sigmoid(model(x)).numpy() - probs).max())}
                thunks["torch"] = lambda x=x: model(x)
                for name, c in compiled.items():
                    if c.ready(x, lambda: None):
                        diffs[name] = float(np.abs(torch.sigmoid(c.module(x)).numpy() - probs).max())
                        thunks[name] = lambda m=c.module, x=x: m(x)
                times = alternate(thunks, plan.candidate_rounds)
            p50 = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
            result["shapes"][f"N={n} L={seq}"] = {
                "candidates": n, "history_len": seq, "p50_ms": p50, "max_abs_diff_prob_vs_score_candidates": diffs,
                "speedup_vs": {name: p50[name] / p50["score_candidates"] for name in p50 if name != "score_candidates"}}
    finally:
        torch.set_num_threads(default_threads)
    result["compile"] = report(compiled)
    return result
