"""The bench's targets and its report: Markdown tables and the chart, from the JSON record alone."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from din_export.bench import torch_compile
from din_export.bench.engines import CHUNKED, PRECISION_ENGINES
from din_export.bench.plan import Plan

TORCH_ENGINES = ("torch", "torch-rewritten")  # and the torch.compile engines: "best torch" is the best of them


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
    names = [e for e in by_engine if e in TORCH_ENGINES or e.startswith(torch_compile.COMPILED)]
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
                      f"clock from {peak['mhz_source']} (din_export/bench/flops.py).", ""]
        lines += compile_lines(result.get("compile", {}))
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
        lines += compile_lines(ranking["compile"])
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


def compile_lines(compiled: dict[str, Any]) -> list[str]:
    """Each torch.compile engine's first-call seconds per shape (its compile time), or its error."""
    lines = []
    for name, c in compiled.items():
        shapes = ", ".join(f"{k} {v:.1f} s" for k, v in c["first_call_s"].items())
        lines += [f"{name} first call per shape (compiling): {shapes or '-'}"
                  + (f"; failed: {c['error'][:200]}" if c["error"] else ""), ""]
    return lines


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
