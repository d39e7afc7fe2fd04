"""Scorer: the optional short-history graph (manifest "short_history"), picked by the batch's history width.

The short graph here is the fixture graph built with other weights (seed 9), so a score that matches the
seed-9 reference can only have come from it, and one that matches the default weights from model.onnx.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from din_runtime import IntegrityError, ManifestError, Scorer
from din_runtime.cli import main as score_main
from din_runtime.spark import _worker_model as spark_worker_model
from runtime_fixtures import build_graph, build_model_dir, graph_with_renamed_input, reference_prob, request

SHORT_SEED = 9
MAX_WIDTH = 2


def add_short_graph(model_dir: Path, data: bytes | None = None, **entry_changes: object) -> Path:
    data = build_graph(seed=SHORT_SEED).SerializeToString() if data is None else data
    (model_dir / "short.onnx").write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["short_history"] = {"model_file": "short.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                                 "max_width": MAX_WIDTH, **entry_changes}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


@pytest.fixture(scope="module")
def with_short(tmp_path_factory) -> Path:
    return add_short_graph(build_model_dir(tmp_path_factory.mktemp("short") / "m"))


@pytest.mark.parametrize("batch", [1, 5, 700])  # 700 rows at width 3-4: more than one run (rows_per_run)
def test_batches_up_to_max_width_run_the_short_graph(with_short, batch):
    scorer = Scorer.load(with_short, threads=1)
    assert scorer.manifest.short_file == "short.onnx" and scorer.manifest.short_max_width == MAX_WIDTH
    for hist, seed in ((0, SHORT_SEED), (1, SHORT_SEED), (MAX_WIDTH, SHORT_SEED), (MAX_WIDTH + 1, 7), (4, 7)):
        rows = [request(i, hist=min(hist, 1) if i % 2 else hist) for i in range(batch)]  # ragged
        arrays = scorer.encode(rows).arrays
        assert arrays["hist_item_id"].shape[1] == max(hist, 1)
        got = scorer.score(rows)
        np.testing.assert_allclose(got, reference_prob(arrays, seed=seed), rtol=1e-5, atol=1e-6)
        other = reference_prob(arrays, seed=7 + SHORT_SEED - seed)
        assert np.abs(got - other).max() > 1e-3, "the two graphs must score differently for the test to tell"


def test_the_width_is_the_arrays_not_the_rows(with_short):
    # score_arrays: a batch padded wider than max_width goes to model.onnx even if every row is short
    scorer = Scorer.load(with_short, threads=1)
    arrays = scorer.encode([request(i, hist=1) for i in range(4)]).arrays
    wide = {k: np.pad(v, ((0, 0), (0, 3))) if k.startswith("hist_") and k != "hist_len" else v
            for k, v in arrays.items()}
    np.testing.assert_allclose(scorer.score_arrays(wide), reference_prob(wide, seed=7), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorer.score_arrays(arrays), reference_prob(arrays, seed=SHORT_SEED),
                               rtol=1e-5, atol=1e-6)


def test_explain_follows_the_same_choice(tmp_path):
    model_dir = build_model_dir(tmp_path / "m", with_attention=True)
    add_short_graph(model_dir, build_graph(with_attention=True, seed=SHORT_SEED).SerializeToString())
    scorer = Scorer.load(model_dir, threads=1)
    rows = [request(0, hist=2), request(1, hist=1)]
    weights = scorer.explain(rows)
    assert [len(w) for w in weights] == [2, 1]
    arrays = scorer.encode(rows).arrays
    feeds = {k: v.astype(np.float32) if k == "dense" else v for k, v in arrays.items()}
    graphs = {f: ort.InferenceSession(str(model_dir / f)).run(["attention"], feeds)[0]
              for f in ("short.onnx", "model.onnx")}
    assert np.abs(graphs["short.onnx"] - graphs["model.onnx"]).max() > 1e-3  # the two can be told apart
    for i, n in enumerate(arrays["hist_len"]):
        np.testing.assert_allclose(weights[i], graphs["short.onnx"][i, :n], rtol=1e-6)


def test_without_a_short_graph_every_batch_runs_model_onnx(tmp_path):
    scorer = Scorer.load(build_model_dir(tmp_path / "m"), threads=1)
    assert scorer.manifest.short_file is None
    arrays = scorer.encode([request(i, hist=1) for i in range(3)]).arrays
    np.testing.assert_allclose(scorer.score_arrays(arrays), reference_prob(arrays), rtol=1e-5, atol=1e-6)
    empty = {k: v[:, :0] if k.startswith("hist_") and k != "hist_len" else v for k, v in arrays.items()}
    empty["hist_len"] = np.zeros(3, dtype=np.int64)
    np.testing.assert_allclose(scorer.score_arrays(empty), reference_prob(empty), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [None, 2])
def test_with_more_than_one_thread_it_is_not_loaded(with_short, tmp_path, threads):
    model_dir = Path(shutil.copytree(with_short, tmp_path / "m"))
    (model_dir / "short.onnx").write_bytes(b"damaged")  # never read
    scorer = Scorer.load(model_dir, threads=threads)
    arrays = scorer.encode([request(i, hist=1) for i in range(3)]).arrays
    np.testing.assert_allclose(scorer.score_arrays(arrays), reference_prob(arrays), rtol=1e-5, atol=1e-6)


def test_load_can_leave_it_out(with_short, tmp_path):
    model_dir = Path(shutil.copytree(with_short, tmp_path / "m"))
    (model_dir / "short.onnx").write_bytes(b"damaged")  # never read
    scorer = Scorer.load(model_dir, threads=1, short_history=False)
    arrays = scorer.encode([request(i, hist=1) for i in range(3)]).arrays
    np.testing.assert_allclose(scorer.score_arrays(arrays), reference_prob(arrays), rtol=1e-5, atol=1e-6)


def test_its_hash_is_checked_at_load(with_short, tmp_path):
    model_dir = Path(shutil.copytree(with_short, tmp_path / "m"))
    data = bytearray((model_dir / "short.onnx").read_bytes())
    data[-1] ^= 1
    (model_dir / "short.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"short\.onnx has SHA-256 .* changed or damaged"):
        Scorer.load(model_dir, threads=1)


def test_a_short_graph_with_another_interface_is_refused(tmp_path):
    # the attention output too: the Scorer feeds both graphs alike and asks either for any output
    data = build_graph(with_attention=True, seed=SHORT_SEED).SerializeToString()
    model_dir = add_short_graph(build_model_dir(tmp_path / "m"), data)
    with pytest.raises(IntegrityError, match=r"short\.onnx takes .* the two must have one interface"):
        Scorer.load(model_dir, threads=1)


def test_a_short_graph_with_other_inputs_is_refused(tmp_path):
    model = graph_with_renamed_input(seed=SHORT_SEED)
    model_dir = add_short_graph(build_model_dir(tmp_path / "m"), model.SerializeToString())
    with pytest.raises(IntegrityError, match=r"short\.onnx inputs \['renamed'"):
        Scorer.load(model_dir, threads=1)


@pytest.mark.parametrize(("change", "message"), [
    ({"model_file": "../model.onnx"}, "relative path inside"),
    ({"model_file": "missing.onnx"}, "does not exist"),
    ({"sha256": "abc"}, "64 hex digits"),
    ({"max_width": 0}, "max_width must be a positive integer"),
    ({"max_width": "30"}, "max_width must be a positive integer"),
    ({"max_width": True}, "max_width must be a positive integer"),
])
def test_manifest_short_history_entry_is_validated(tmp_path, change, message):
    model_dir = add_short_graph(build_model_dir(tmp_path / "m"), **change)
    with pytest.raises(ManifestError, match=message):
        Scorer.load(model_dir, threads=1)


@pytest.mark.parametrize("flag", [[], ["--no-short-graph"]])
def test_din_score_with_one_thread_uses_it_unless_told_not_to(with_short, tmp_path, flag):
    rows = [request(i, hist=1) for i in range(4)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(score_main, [str(with_short), str(source), "--output", str(out), "--threads", "1",
                                             *flag])
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line)["score"] for line in out.read_text().splitlines()])
    arrays = Scorer.load(with_short).encode(rows).arrays
    np.testing.assert_allclose(got, reference_prob(arrays, seed=7 if flag else SHORT_SEED), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("short_history", [True, False])
def test_spark_workers_pass_short_history_to_the_scorer(with_short, short_history):
    scorer = spark_worker_model(str(with_short), "cpu", 1, short_history).scorer
    arrays = scorer.encode([request(i, hist=1) for i in range(4)]).arrays
    np.testing.assert_allclose(scorer.score_arrays(arrays),
                               reference_prob(arrays, seed=SHORT_SEED if short_history else 7), rtol=1e-5, atol=1e-6)
