"""`din-export bench`: its timing helpers, the DeepCTR-Torch adapter, and a smoke run on tiny real data."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from din_runtime.manifest import load_manifest
from din_runtime.scorer import rows_per_run
from export_helpers import exported, one_torch_thread, run_dir
from onnx import numpy_helper

from din_export.bench.data import workload_arrays
from din_export.bench.engines import CHUNKED, ENGINES, PRECISION_ENGINES, Engines, precision_workload
from din_export.bench.memory import peak_rss
from din_export.bench.peers import copy_weights_into_deepctr, deepctr_din, deepctr_inputs, deepctr_matrix
from din_export.bench.plan import Plan, make_plan
from din_export.bench.report import chart, format_table
from din_export.bench.run import run_bench
from din_export.bench.timing import alternate
from din_export.checkpoints import load_run
from din_export.cli.bench import bench_command, parse_threads
from din_export.model import DIN, ModelConfig, history_mask
from din_export.schema import Behaviour, DenseField, Schema, SparseField

DATA = Path(__file__).parents[2] / "shared" / "data"


def tiny_schema() -> Schema:
    return Schema(
        max_len=6,
        behaviour=(Behaviour("item_id", "hist_item_id", "item_id"), Behaviour("cate_id", "hist_cate_id", "cate_id")),
        vocab_sizes={"user_id": 13, "item_id": 41, "cate_id": 9},
        sparse=(SparseField("user_id", "user_id"),),
        dense=(DenseField("age", mean=33.0, std=11.0),),
    )


def test_alternate_warms_up_and_rotates_the_order() -> None:
    calls: list[str] = []
    thunks = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = alternate(thunks, rounds=3, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_alternate_back_to_back_times_only_the_repeats() -> None:
    calls: list[str] = []
    thunks = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    times = alternate(thunks, rounds=2, warmup=0, back_to_back=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert calls == ["a", "a", "a", "b", "b", "b", "b", "b", "b", "a", "a", "a"]


def test_parse_threads() -> None:
    assert parse_threads("1") == (1,)
    assert parse_threads("1,2,1") == (1, 2)
    assert parse_threads("all")[0] >= 1
    for bad in ("0", "x", "1,-2"):
        with pytest.raises(Exception, match="positive integer"):
            parse_threads(bad)


def test_gpu_plans_add_fp16_up_to_batch_4096() -> None:
    assert make_plan(False, (1,), "cuda", None).precision_batches == (1, 256, 1024, 4096)
    assert max(make_plan(True, (1,), "cuda", None).precision_batches) == 256
    assert make_plan(False, (1,), "cpu", None).precision_batches == ()


def test_precision_workload_times_fp32_and_fp16_on_the_same_weights() -> None:
    """The GPU bench's fp32/fp16 workload, run on the CPU (where no GPU is lent): same rows for every engine,
    fp16 agreeing with fp32 torch to fp16 precision, and a table section from the record."""
    sys.path.insert(0, str(Path(__file__).parent))
    from export_helpers import exported, one_torch_thread, run_dir

    from din_export.checkpoints import load_run

    model, schema, _ = load_run(run_dir())
    plan = Plan(quick=True, threads=(1,), device="cpu", epochs=1, train_rows=None, precision_batches=(1, 9),
                precision_seq=7, precision_rounds=2)
    with one_torch_thread():
        result = precision_workload(model, schema, {"onnx-opt": exported("fp32"), "onnx-fp16": exported("fp16")},
                                    plan, threads=1)
    assert result["seq"] == 7 and list(result["batches"]) == ["1", "9"]
    for by_engine in result["batches"].values():
        assert tuple(by_engine) == PRECISION_ENGINES
        assert by_engine["torch"]["max_abs_diff_prob"] == 0.0
        assert by_engine["onnx-opt"]["max_abs_diff_prob"] <= 1e-5
        assert 0 < by_engine["onnx-fp16"]["max_abs_diff_prob"] <= 1e-3
        assert 0 < by_engine["torch-fp16"]["max_abs_diff_prob"] <= 1e-2
        assert all(e["rows_per_s"] > 0 and e["n"] == 2 for e in by_engine.values())


def test_cli_rejects_bad_options_without_a_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(bench_command, ["--threads", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "positive integer" in result.output
    result = runner.invoke(bench_command, ["--taobao", str(tmp_path / "missing.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output
    # no data location is guessed (an installed package has no checkout around it): both are required
    result = runner.invoke(bench_command, ["--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "missing --movielens DIR and --taobao FILE" in result.output
    result = runner.invoke(bench_command, ["--quick", "--out", str(tmp_path), "--movielens", str(tmp_path)])
    assert result.exit_code == 2 and "missing --taobao FILE:" in result.output
    assert not list(tmp_path.iterdir())


def test_peak_rss_is_the_childs_not_this_processes(tmp_path: Path) -> None:
    ballast = np.ones(300 * 2**20 // 8)  # 300 MB here; a fork would inherit it in ru_maxrss
    small, _ = peak_rss([sys.executable, "-c", "pass"], tmp_path / "log")
    big, _ = peak_rss([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(0.2)"],
                      tmp_path / "log")
    assert ballast.sum() > 0
    assert small < 100 and big > small + 150


def test_deepctr_gets_our_activation_unit_and_runs_on_our_arrays() -> None:
    schema = tiny_schema()
    torch.manual_seed(0)
    ours = DIN(schema, ModelConfig(embed_dim=4, attention_hidden=(6, 5), mlp_hidden=(7, 3)))
    with torch.no_grad():  # non-trivial Dice statistics and slopes, so a missed copy shows
        for m in ours.modules():
            if hasattr(m, "running_var"):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if hasattr(m, "alpha"):
                m.alpha.uniform_(-0.5, 0.5)
    ours.eval()
    seq = 9
    theirs = deepctr_din(schema, ours.cfg, seq, "cpu").eval()
    report = copy_weights_into_deepctr(ours, theirs)
    assert report["copied"] and report["random"]
    arrays = workload_arrays(schema, 5, seq)
    arrays["hist_len"] = np.array([0, 1, 4, 9, 9])
    x = {k: torch.from_numpy(v) for k, v in arrays.items()}
    with torch.no_grad():
        _, query, keys = ours.embeddings(x)
        expected = ours.attention.unit(query, keys, history_mask(x["hist_len"], seq))
        got = theirs.attention.local_att(query.unsqueeze(1), keys).squeeze(-1)
        probs = theirs(deepctr_matrix(theirs, deepctr_inputs(arrays, schema)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert probs.shape == (5, 1) and torch.isfinite(probs).all()


def tiny_taobao(tmp_path: Path) -> dict[str, Path]:
    """The head of the real file: ~60 users, enough for every split, small enough for a smoke run. (Training
    on MovieLens goes through the same code; one source keeps the test short.)"""
    tb = DATA / "taobao-userbehavior-head" / "UserBehavior.csv"
    if not tb.is_file():
        pytest.skip(f"the shared data is not at {DATA}")
    (tmp_path / "tb.csv").write_text("".join(tb.read_text().splitlines(keepends=True)[:5000]))
    return {"taobao": tmp_path / "tb.csv"}


@pytest.mark.slow
def test_smoke_run_measures_every_engine_and_writes_a_report(tmp_path: Path) -> None:
    plan = Plan(quick=True, threads=(1,), device="cpu", epochs=1, train_rows=300, lengths=(3, 100), batch=8,
                latency_rounds=3, throughput_rounds=2, candidates=10, candidate_rounds=2, load_rounds=2,
                rss_rows=(50, 200), train_batch=64, load_model_mb=1.5, precision_batches=(1, 8), precision_seq=5,
                precision_rounds=2)
    work = tmp_path / "work"
    work.mkdir()
    record = run_bench(plan, tiny_taobao(tmp_path), work, echo=lambda m: None)

    for seq in ("3", "100"):
        assert set(record["engines"]["1"]["throughput_b8"][seq]) == set(ENGINES)
        for workload in ("latency_b1", "latency_b1_warm"):
            assert set(record["engines"]["1"][workload][seq]) == set(ENGINES) - {CHUNKED}
        diff = record["engines"]["1"]["max_abs_diff_prob_vs_torch"][seq]
        assert diff["torch-rewritten"] <= 1e-5 and diff["onnx-plain"] <= 1e-5 and diff["onnx-opt"] <= 1e-5
        assert diff["onnx-int8"] <= 5e-2
    t = record["training"]["taobao"]
    assert t["train_rows"] == 300 and t["ours"]["samples_per_s"] > 0 and t["deepctr"]["samples_per_s"] > 0
    assert t["ours"]["test"]["auc"] is not None and t["deepctr"]["test"]["auc"] is not None
    assert set(record["models"]) == {"onnx-plain", "onnx-opt", "onnx-int8", "onnx-fp16"}
    assert set(record["precision"]["batches"]["8"]) == set(PRECISION_ENGINES)
    padded = record["load_model_bytes"]["onnx-opt-1.5MB"]
    assert record["load_model_bytes"]["onnx-opt"] < 1.5e6 < padded < 1.5e6 + 0.5e6  # the vocabulary adds a little
    assert record["load_ms"]["onnx-opt-1.5MB"]["p50_ms"] > 0
    cand = record["candidates"]
    assert cand["candidates"] == 10 and cand["max_abs_diff_vs_rows"] <= 1e-5
    assert cand["score_candidates_main_graph"]["p50_ms"] > 0 and cand["speedup_vs_main_graph"] > 0
    models = record["models"]
    assert models["onnx-opt"]["candidate_bytes"] > 0 and models["onnx-plain"]["candidate_bytes"] == 0
    code = record["environment"]["code"]
    assert len(code["head"]) == 40 and code["model_py"]
    assert [r["rows"] for r in record["din_score_rss"]] == [50, 200]
    assert all(r["peak_rss_mb"] > 10 for r in record["din_score_rss"])
    assert all(np.isfinite(t["value"]) for t in record["targets"])
    assert "| target | goal | measured |" in format_table(record, plan)
    assert "| cpu, L=5: p50, rows/s, x torch, max abs prob diff | torch | torch-fp16 |" in format_table(record, plan)
    assert chart(record, plan).startswith(b"\x89PNG")
    # the JSON alone regenerates the tables
    assert format_table(json.loads(json.dumps(record)), plan) == format_table(record, plan)


def test_the_chunked_engine_runs_the_graph_the_scorer_picks(tmp_path: Path) -> None:
    # short.onnx replaced by model.onnx with one weight shifted, which scores visibly differently: the
    # chunked engine's outputs then say which graph it ran at each width
    model_dir = Path(shutil.copytree(exported("fp32"), tmp_path / "m"))
    graph = onnx.load(model_dir / "model.onnx")
    last_gemm = [n for n in graph.graph.node if n.op_type == "Gemm"][-1]
    weight = next(i for i in graph.graph.initializer if i.name == last_gemm.input[1])
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(graph, model_dir / "short.onnx")
    max_width = json.loads((model_dir / "manifest.json").read_text())["short_history"]["max_width"]
    model, schema, _ = load_run(run_dir())
    with one_torch_thread():
        engines = Engines(model, schema, {"onnx-opt": model_dir}, threads=1, device="cpu")
        sessions = {f: ort.InferenceSession(str(model_dir / f)) for f in ("model.onnx", "short.onnx")}
        for seq, file in ((3, "short.onnx"), (max_width, "short.onnx"), (max_width + 1, "model.onnx")):
            arrays = workload_arrays(schema, 300, seq, seed=seq)
            chunks = engines.thunks(arrays)[CHUNKED]()
            # the Scorer's run size, which follows the unit's width (this tiny unit: long runs)
            assert len(chunks) == -(-300 // rows_per_run(seq, load_manifest(model_dir).attention_width))
            got = np.concatenate([r[0] for r in chunks])
            runs = {f: s.run(["prob"], {i.name: arrays[i.name] for i in s.get_inputs()})[0]
                    for f, s in sessions.items()}
            assert np.abs(runs["short.onnx"] - runs["model.onnx"]).max() > 1e-4  # the two can be told apart
            np.testing.assert_allclose(got, runs[file], rtol=0, atol=1e-6)
