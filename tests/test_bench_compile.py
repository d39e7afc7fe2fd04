"""torch.compile in `din-export bench`, its candidate-ranking workload, FLOPs per row and the CPU's peak.

The plumbing runs with torch.compile's "eager" backend (dynamo only, seconds); inductor itself is what
`din-export bench` runs (minutes of compiling on a small machine), reported in docs/bench.md.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import torch
from test_bench import tiny_schema, tiny_taobao

from din_export.bench import flops
from din_export.bench import torch_compile as bench_compile
from din_export.bench.engines import CHUNKED, ENGINES
from din_export.bench.plan import Plan, make_plan
from din_export.bench.report import best_torch, format_table
from din_export.bench.run import run_bench
from din_export.cli.bench import parse_compile, parse_lengths
from din_export.model import DIN, ModelConfig


def tiny_model(**cfg: object) -> DIN:
    torch.manual_seed(0)
    return DIN(tiny_schema(), ModelConfig(embed_dim=4, attention_hidden=(6, 3), mlp_hidden=(5,), **cfg)).eval()


def test_flops_per_row_count_every_linear_and_the_pooling() -> None:
    model = tiny_model()
    dim = 4 * 2  # embed_dim x behaviour fields
    mlp_in = model.mlp.linears[0].in_features
    mlp = mlp_in * 5 + 5 * 1
    unit = 4 * dim * 6 + 6 * 3 + 3 * 1  # [q, k, q - k, q * k] -> 6 -> 3 -> 1 at every position
    for seq in (1, 7, 100):
        assert flops.model_flops_per_row(model, seq) == 2 * mlp + seq * (2 * unit + 2 * dim + dim)
    base = tiny_model(model="base")
    assert flops.model_flops_per_row(base, 10) == 2 * (base.mlp.linears[0].in_features * 5 + 5) + 10 * dim


@pytest.mark.parametrize("info, lscpu_mhz, per_cycle, ghz", [
    ({"vendor_id": "AuthenticAMD", "cpu family": "25", "flags": "fma avx2 avx512f", "cpu MHz": "2600.0"}, None,
     32, 2.6),
    ({"vendor_id": "AuthenticAMD", "cpu family": "26", "flags": "fma avx2 avx512f", "cpu MHz": "2600.0"}, None,
     64, 2.6),
    ({"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "fma avx2 avx512f", "cpu MHz": "2000.0"}, 3500.0,
     64, 3.5),
    ({"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "sse4_2 fma avx avx2", "cpu MHz": "3000.0"}, None,
     32, 3.0),
    ({"vendor_id": "GenuineIntel", "cpu family": "6", "flags": "sse sse2", "cpu MHz": "3000.0"}, None, 16, 3.0),
])
def test_cpu_peak_from_the_flags_and_clock(monkeypatch, info, lscpu_mhz, per_cycle, ghz) -> None:
    monkeypatch.setattr(flops, "_cpuinfo", lambda: info)
    monkeypatch.setattr(flops, "_lscpu_max_mhz", lambda: lscpu_mhz)
    peak = flops.cpu_peak(2)
    assert peak["fp32_flops_per_cycle"] == per_cycle
    assert peak["flops_per_s"] == pytest.approx(2 * ghz * 1e9 * per_cycle)
    assert peak["mhz_source"] == ("lscpu CPU max MHz" if lscpu_mhz else "/proc/cpuinfo cpu MHz")
    assert f"{per_cycle} FLOPs/cycle" in peak["formula"]


def test_cpu_peak_is_none_without_cpuinfo(monkeypatch) -> None:
    monkeypatch.setattr(flops, "_cpuinfo", lambda: {})
    assert flops.cpu_peak(1) is None


def test_compiled_engine_compiles_once_per_shape_and_reports_a_failure() -> None:
    model = tiny_model()
    compiled = bench_compile.compiled_engines(model, ("default",), backend="eager")["torch-compile"]
    from din_export.bench.data import workload_arrays

    for batch, seq in ((1, 3), (4, 3), (1, 3)):
        x = {k: torch.from_numpy(v) for k, v in workload_arrays(tiny_schema(), batch, seq).items()}
        assert compiled.ready(x, lambda: None)
        with torch.inference_mode():
            torch.testing.assert_close(compiled.module(x), model(x))
    assert list(compiled.first_call_s) == ["B=1 L=3", "B=4 L=3"]

    class Broken(torch.nn.Module):
        def forward(self, x: dict) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")

    broken = bench_compile.Compiled(Broken(), "default", backend="eager")
    assert not broken.ready(x, lambda: None) and "no C++ compiler" in broken.error
    assert not broken.ready(x, lambda: None)  # tried once, then left out
    assert bench_compile.report({"b": broken})["b"]["first_call_s"] == {}


def test_best_torch_is_the_fastest_torch_engine_only() -> None:
    rates = {"torch": {"rows_per_s": 10.0}, "torch-rewritten": {"rows_per_s": 20.0},
             "torch-compile": {"rows_per_s": 30.0}, "onnx-opt": {"rows_per_s": 99.0}}
    assert best_torch(rates, "rows_per_s", max) == ("torch-compile", 30.0)
    latency = {"torch": {"p50_ms": 1.0}, "torch-compile-max-autotune-no-cudagraphs": {"p50_ms": 0.5},
               "onnx-opt": {"p50_ms": 0.1}}
    assert best_torch(latency, "p50_ms", min) == ("torch-compile-max-autotune-no-cudagraphs", 0.5)


def test_options_compile_and_lengths() -> None:
    assert make_plan(False, (1,), "cpu", None).compile_modes == ("default",)
    assert make_plan(True, (1,), "cpu", None).compile_modes == ()
    assert make_plan(False, (1,), "cpu", None, parse_compile("none")).compile_modes == ()
    assert parse_compile("default,max-autotune-no-cudagraphs") == ("default", "max-autotune-no-cudagraphs")
    assert make_plan(True, (1,), "cpu", None, lengths=parse_lengths("20,500,20")).lengths == (20, 500)
    with pytest.raises(click.BadParameter, match="expected 'none' or modes"):
        parse_compile("reduce-overhead")
    with pytest.raises(click.BadParameter, match="positive integers"):
        parse_lengths("20,0")


@pytest.mark.slow
def test_smoke_run_with_torch_compile_and_candidate_ranking(tmp_path: Path) -> None:
    plan = Plan(quick=True, threads=(1,), device="cpu", epochs=1, train_rows=300, lengths=(3, 9), batch=8,
                latency_rounds=3, throughput_rounds=2, candidates=10, candidate_rounds=2, load_rounds=2,
                rss_rows=(), train_batch=64, load_model_mb=None, compile_modes=("default",),
                compile_backend="eager", candidate_shapes=((5, 4), (7, 60)))
    work = tmp_path / "work"
    work.mkdir()
    record = run_bench(plan, tiny_taobao(tmp_path), work, echo=lambda m: None)

    one = record["engines"]["1"]
    for seq in ("3", "9"):
        assert set(one["throughput_b8"][seq]) == set(ENGINES) | {"torch-compile"}
        assert set(one["latency_b1"][seq]) == set(ENGINES) - {CHUNKED} | {"torch-compile"}
        assert one["max_abs_diff_prob_vs_torch"][seq]["torch-compile"] <= 1e-6
        assert one["flops_per_row"][seq] > 0
    assert set(one["compile"]["torch-compile"]["first_call_s"]) >= {"B=1 L=3", "B=8 L=3", "B=1 L=9", "B=8 L=9"}
    assert one["peak"]["flops_per_s"] > 0
    ranking = record["candidate_ranking"]["shapes"]
    assert list(ranking) == ["N=5 L=4", "N=7 L=60"]  # 60 > the data's max_len: the long-history copy keeps it
    for r in ranking.values():
        assert set(r["p50_ms"]) == {"score_candidates", "torch", "torch-compile"}
        assert max(r["max_abs_diff_prob_vs_score_candidates"].values()) <= 1e-5
    names = [t["target"] for t in record["targets"]]
    assert any("L=9 1 thread: the Scorer's chunked ONNX vs the best torch engine" in n for n in names)
    table = format_table(record, plan)
    assert "x best torch" in table and "% of peak" in table and "torch-compile first call per shape" in table
    assert "score_candidates vs torch-compile" in table
