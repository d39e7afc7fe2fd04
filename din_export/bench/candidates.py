"""1 user x N candidates through the Scorer: score_candidates (with and without the candidate graph)
against the same rows scored in one call and row by row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from din_export.bench.plan import Plan
from din_export.bench.timing import alternate, quantiles
from din_export.errors import DinExportError
from din_export.schema import Schema, write_json_atomic


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
        raise DinExportError(f"{model_dir} has no candidate graph: the export did not write one")
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
        raise DinExportError(f"score_candidates and score differ by {max_diff:.2g} on the same rows")
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
