"""The traced example sizes: no false "frozen axis" alarm when a model size equals one of them, real frozen
axes still caught, and the sizes settable (`--example-batch`, `--example-seq`) with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from export_helpers import make_run, one_torch_thread, run_dir
from onnx import numpy_helper

from din_export import export as export_module
from din_export.cli import main
from din_export.export import EXAMPLE_BATCH, EXAMPLE_SEQS, GraphCheckError, export_run
from din_export.model import ModelConfig

# Two behaviours: embed_dim 2 makes D = 4 = the default example batch; a hidden width of 5 = its seq.
SMALL = {
    "embed_dim=2": ModelConfig(embed_dim=2, attention_hidden=(8, 4), mlp_hidden=(12, 6), attention_norm="softmax"),
    "attention_hidden=[5]": ModelConfig(embed_dim=4, attention_hidden=(5,), mlp_hidden=(12, 6)),
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize("name", list(SMALL))
def test_a_model_size_equal_to_the_example_is_no_frozen_axis(tmp_path: Path, name: str) -> None:
    """The optimised graph (and its candidate graph): the plain graph holds no such constants."""
    run = make_run(tmp_path / "r", cfg=SMALL[name])
    manifest = export_run(run, tmp_path / "m")  # verified at every grid size
    assert manifest["parity"]["passed"]
    traced = (manifest["example_sizes"]["batch"], manifest["example_sizes"]["seq"])
    # traced at sizes that no small constant of the graph holds (retraced if the default clashed)
    constants = export_module._small_ints(onnx.load(tmp_path / "m" / "model.onnx"))
    assert not constants & set(traced)
    if name == "attention_hidden=[5]":  # the factored unit reshapes to width 5: a clash
        assert 5 in constants and traced != (EXAMPLE_BATCH, EXAMPLE_SEQS[0])


def test_the_cli_exports_a_small_config_at_the_sizes_asked(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", cfg=SMALL["embed_dim=2"])
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "m"), "--example-batch", "7",
                                       "--example-seq", "9", "--no-candidate-graph"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["example_sizes"] == {"batch": 7, "seq": 9}


@pytest.mark.parametrize(("args", "message"), [
    (["--example-batch", "1"], "must be >= 2"),
    (["--example-batch", "5", "--example-seq", "5"], "must differ"),
    (["--example-seq", "6"], "is max_len or 2 max_len"),
    (["--example-seq", "12"], "is max_len or 2 max_len"),
])
def test_bad_example_sizes_are_refused_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    """(run_dir()'s max_len is 6.)"""
    result = CliRunner().invoke(main, ["export", str(run_dir()), "-o", str(tmp_path / "m"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_a_real_frozen_axis_is_still_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracer that freezes the batch writes the size it traced at into a shape: at the first sizes and
    again at the retraced ones. The check must fail on it, whatever sizes the export picks."""
    real = export_module.to_onnx
    traced: list[tuple[int, int]] = []

    def freezing(module, schema, spec, opset, example):  # noqa: ANN001, ANN202
        graph = real(module, schema, spec, opset, example)
        traced.append(example)
        frozen = numpy_helper.from_array(np.array([example[0], -1], dtype=np.int64), "frozen_shape")
        graph.graph.initializer.append(frozen)
        return graph

    monkeypatch.setattr(export_module, "to_onnx", freezing)
    with pytest.raises(GraphCheckError, match="frozen_shape.*traced example size.*a dynamic axis was frozen"):
        export_run(run_dir(), tmp_path / "m")
    assert len(traced) == 2 and traced[0] != traced[1]  # retraced once, and caught there
    assert not (tmp_path / "m").exists()
