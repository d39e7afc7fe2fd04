"""`din-export verify`: the grid and validation report, and each named failure on a broken model directory."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from din_runtime import Scorer
from export_helpers import MAX_LEN, VALID_ROWS, exported, make_run, measured_on_validation, one_torch_thread, run_dir
from onnx import helper, numpy_helper

from din_export.checkpoints import load_run
from din_export.cli import main
from din_export.export import MODEL_FILE, SHORT_FILE, GraphWrapper, graph_spec
from din_export.verify import (
    GRID_BATCHES,
    DynamicAxisError,
    ExportedModel,
    ShapeError,
    ToleranceError,
    VerifyError,
    format_report,
    grid_seqs,
    random_inputs,
    verify_model_dir,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def verify(model_dir: Path, **kwargs) -> dict:
    model, schema, config = load_run(run_dir())
    return verify_model_dir(model_dir, model, schema, config["data_dir"], **kwargs)


def copy_with_graph(tmp_path: Path, graph: onnx.ModelProto, source: str = "fp32") -> Path:
    """A copy of an exported directory holding `graph`, with the manifest's hash updated to match it
    (so the runtime loads it: what must catch the change is the comparison with torch)."""
    model_dir = tmp_path / "model"
    shutil.copytree(exported(source), model_dir)
    data = graph.SerializeToString()
    (model_dir / MODEL_FILE).write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


def graph_of(name: str = "fp32") -> onnx.ModelProto:
    return onnx.load(exported(name) / MODEL_FILE)


def test_report_covers_the_grid_and_the_validation_split() -> None:
    report = verify(exported("fp32"))
    assert report["passed"]
    shapes = [(r["batch"], r["seq"]) for r in report["shapes"]]
    assert shapes == list(itertools.product(GRID_BATCHES, (0, 1, 7, MAX_LEN, 2 * MAX_LEN)))
    assert grid_seqs(7) == [0, 1, 7, 14]  # max_len 7 is not measured twice
    assert all(r["prob"] <= 1e-5 and "attention" in r for r in report["shapes"])
    v = report["validation"]
    assert v["rows"] == VALID_ROWS and v["prob"] <= 1e-5 and abs(v["auc_change"]) < 1e-4
    assert report["max_abs_diff"]["prob"] == max(r["prob"] for r in report["shapes"] + [v])
    table = format_report(report)
    assert table.splitlines()[1].split() == ["batch", "seq", "prob", "logit", "attention"]
    assert "   257    12 " in table and table.endswith("PASSED")
    short = report["short_history"]
    assert [(r["batch"], r["seq"]) for r in short["shapes"]] == shapes and short["validation"]["rows"] == VALID_ROWS
    assert all(r["prob"] <= 1e-5 and r["logit_rel"] <= 1e-5 and "attention" in r for r in short["shapes"])
    assert "short-history graph: 20 shapes and the validation split" in table
    json.dumps(report)  # the report goes into manifest.json as is


def test_random_inputs_are_valid_ragged_and_include_an_all_padded_row() -> None:
    _, schema, _ = load_run(run_dir())
    manifest = json.loads((exported("fp32") / "manifest.json").read_text())
    x = random_inputs(manifest["inputs"], schema, 64, 9, np.random.default_rng(0))
    assert x["hist_len"][0] == 0 and len(set(x["hist_len"].tolist())) > 3 and x["hist_len"].max() <= 9
    assert x["hist_item_id"].shape == (64, 9) and x["dense"].shape == (64, 1) and x["dense"].dtype == np.float32
    assert 0 <= x["hist_item_id"].min() and x["hist_item_id"].max() < schema.vocab_sizes["item_id"]
    one = random_inputs(manifest["inputs"], schema, 1, 9, np.random.default_rng(0))
    assert one["hist_len"].tolist() == [9]  # a single row uses its whole history


def test_a_changed_weight_raises_tolerance_error(tmp_path: Path) -> None:
    graph = graph_of()
    last_gemm = [n for n in graph.graph.node if n.op_type == "Gemm"][-1]
    weight = next(i for i in graph.graph.initializer if i.name == last_gemm.input[1])
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    with pytest.raises(ToleranceError, match=r"at batch 1, seq \d+: max abs diff prob") as caught:
        verify(copy_with_graph(tmp_path, graph))
    assert caught.value.report["passed"] is False and len(caught.value.report["shapes"]) == 20


@pytest.mark.parametrize("changed", [SHORT_FILE, MODEL_FILE])
def test_each_graph_of_the_pair_is_judged_at_every_width(tmp_path: Path, changed: str) -> None:
    # each graph is judged on its own rows, through a Scorer that runs it: a change to either fails, and
    # the error names the graph
    model_dir = tmp_path / "model"
    shutil.copytree(exported("fp32"), model_dir)
    graph = onnx.load(model_dir / changed)
    last_gemm = [n for n in graph.graph.node if n.op_type == "Gemm"][-1]
    weight = next(i for i in graph.graph.initializer if i.name == last_gemm.input[1])
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    data = graph.SerializeToString()
    (model_dir / changed).write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["short_history"] if changed == SHORT_FILE else manifest
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    where = "short-history graph at batch 1" if changed == SHORT_FILE else "at batch 1"
    with pytest.raises(ToleranceError, match=rf"^ToleranceError: {where}, seq \d+: max abs diff"):
        verify(model_dir)


def test_a_short_graph_the_runtime_refuses_fails_verification(tmp_path: Path) -> None:
    # model.onnx has the attention output; a short graph without it passes every comparison it takes part
    # in, but a one-thread Scorer refuses the directory, so verification must too
    model_dir = tmp_path / "model"
    shutil.copytree(exported("fp32"), model_dir)
    graph = onnx.load(model_dir / SHORT_FILE)
    attention = next(o for o in graph.graph.output if o.name == "attention")
    graph.graph.output.remove(attention)
    data = graph.SerializeToString()
    (model_dir / SHORT_FILE).write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["short_history"]["sha256"] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=r"short-history graph: .*the two must have one interface"):
        verify(model_dir)


def test_a_nan_output_fails_and_the_report_stays_strict_json(tmp_path: Path) -> None:
    graph = graph_of()
    last_gemm = [n for n in graph.graph.node if n.op_type == "Gemm"][-1]
    bias = next(i for i in graph.graph.initializer if i.name == last_gemm.input[2])
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, np.nan, np.float32), bias.name))
    with pytest.raises(ToleranceError, match="prob nan") as caught:
        verify(copy_with_graph(tmp_path, graph))
    report = caught.value.report
    assert report["shapes"][0]["prob"] is None
    json.dumps(report, allow_nan=False)
    assert "       nan" in format_report(report)


def test_probabilities_come_from_the_runtime_scorer(monkeypatch) -> None:
    real = Scorer.score_arrays
    monkeypatch.setattr(Scorer, "score_arrays", lambda self, arrays: real(self, arrays) + 1e-4)
    with pytest.raises(ToleranceError, match="prob 0.0001"):
        verify(exported("fp32"))


def test_a_changed_file_without_a_new_hash_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(exported("fp32"), model_dir)
    with open(model_dir / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(VerifyError, match="SHA-256"):
        verify(model_dir)


def frozen_graph() -> onnx.ModelProto:
    """The run exported the way it goes wrong: no dynamic shapes, so (3, 7) is traced into the graph."""
    model, schema, _ = load_run(run_dir())
    spec = graph_spec(schema, with_attention=True)
    args = spec.example(schema, {"batch": 3, "seq": 7})
    with torch.no_grad():
        program = torch.onnx.export(GraphWrapper(model, spec).eval(), args, dynamo=True, input_names=spec.input_names,
                                    output_names=spec.output_names, opset_version=18, external_data=False)
    return program.model_proto


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecation notices
def test_a_frozen_dim_raises_dynamic_axis_error(tmp_path: Path, monkeypatch) -> None:
    model_dir = copy_with_graph(tmp_path, frozen_graph())
    with pytest.raises(DynamicAxisError, match=r"input 'user_id' axis 0 \(batch\) is fixed to 3"):
        verify(model_dir)
    # without the static check, running it at another size is what fails
    monkeypatch.setattr(ExportedModel, "check_dims", lambda self: None)
    with pytest.raises(DynamicAxisError, match=r"fails at batch 1, seq 0"):
        verify(model_dir)


def test_a_wrong_output_shape_raises_shape_error(tmp_path: Path) -> None:
    graph = graph_of()
    producer = next(n for n in graph.graph.node if "prob" in n.output)
    producer.output[list(producer.output).index("prob")] = "prob_flat"
    graph.graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_one"))
    graph.graph.node.append(helper.make_node("Unsqueeze", ["prob_flat", "axis_one"], ["prob"]))
    out = next(o for o in graph.graph.output if o.name == "prob")
    out.type.tensor_type.shape.dim.add().dim_value = 1
    with pytest.raises(ShapeError, match=r"output 'prob' has shape \(1, 1\) at batch 1, seq 0; expected \(1,\)"):
        verify(copy_with_graph(tmp_path, graph))


def test_a_model_dir_from_another_schema_is_refused(tmp_path: Path) -> None:
    other = make_run(tmp_path, dense=False)
    model, schema, config = load_run(other)
    with pytest.raises(VerifyError, match="different schema"):
        verify_model_dir(exported("fp32"), model, schema, config["data_dir"])


def test_tolerance_override_and_variant_defaults() -> None:
    fp16 = verify(exported("fp16"))
    assert fp16["tolerance"]["prob"] == 1e-3
    # what verify reports for the validation split is what the runtime really does there (a verify that
    # under-reported would let a worse graph through), and the reported maximum covers it
    diff, auc_change = measured_on_validation(exported("fp16"))
    assert diff > 1e-6  # fp16 does round
    assert fp16["validation"]["prob"] == pytest.approx(diff, rel=1e-3, abs=1e-9)
    assert fp16["validation"]["auc_change"] == pytest.approx(auc_change, abs=1e-9)
    # the summary covers the judged rows (fp16: histories up to max_len), the validation split among them
    judged = [r for r in fp16["shapes"] + [fp16["validation"]] if r["judged"]]
    assert fp16["validation"]["judged"] and any(not r["judged"] for r in fp16["shapes"])
    assert diff <= fp16["max_abs_diff"]["prob"] == max(r["prob"] for r in judged)
    with pytest.raises(ToleranceError):
        verify(exported("fp16"), tolerance=1e-6)
    int8 = verify(exported("int8"))
    assert int8["tolerance"] == {"prob": 5e-2, "logit_rel": None, "auc_drop": 2e-3, "judged_max_seq": MAX_LEN}


def test_cli_passes_and_writes_the_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(exported("fp32")), str(run_dir()),
                                       "--report", str(tmp_path / "parity.json")])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is True


def test_cli_fails_with_the_table_and_a_named_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(exported("fp32")), str(run_dir()), "--tolerance", "1e-12",
                                       "--report", str(tmp_path / "parity.json")])
    assert result.exit_code == 1
    assert "Error: ToleranceError:" in result.output and "Traceback" not in result.output
    assert "   257    12 " in result.output
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False
