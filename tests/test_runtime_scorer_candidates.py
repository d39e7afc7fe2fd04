"""Scorer: the optional candidate graph (manifest "candidates") and the chunked runs on CPU.

The fixture graph broadcasts, so it serves as its own candidate graph: fed one user's history (1, L) and
C candidates it returns the C scores. The candidate file is built with other weights (seed 8), so a score
that matches the seed-8 reference can only have come from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from din_runtime import DinRuntimeError, InputError, IntegrityError, ManifestError, Scorer
from din_runtime import scorer as scorer_module
from din_runtime.scorer import (
    MAX_POSITIONS_PER_RUN,
    MIN_POSITIONS_PER_RUN,
    POSITIONS_PER_RUN,
    positions_per_run,
    rows_per_run,
)
from runtime_fixtures import VOCABS, build_graph, build_model_dir, graph_with_renamed_input, reference_prob, request

CANDIDATE_SEED = 8
USER = {"user_id": "u3", "gender": "F", "age": 41, "price": 2.0}
HISTORY = {"hist_item_id": ["101", "999", "103"], "hist_cate_id": ["Drama", "Comedy", "Action"]}


def add_candidate_graph(model_dir: Path, data: bytes | None = None, **entry_changes: object) -> Path:
    data = build_graph(seed=CANDIDATE_SEED).SerializeToString() if data is None else data
    (model_dir / "candidates.onnx").write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["candidates"] = {"model_file": "candidates.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                              "inputs": manifest["inputs"], "outputs": manifest["outputs"], **entry_changes}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


@pytest.fixture(scope="module")
def with_candidates(tmp_path_factory) -> Path:
    return add_candidate_graph(build_model_dir(tmp_path_factory.mktemp("cand") / "m"))


def candidates(n: int) -> list[dict]:
    return [{"item_id": VOCABS["item_id"][k % 20], "cate_id": VOCABS["cate_id"][k % 4]} for k in range(n)]


def test_score_candidates_runs_the_candidate_graph(with_candidates):
    scorer = Scorer.load(with_candidates)
    assert scorer.manifest.candidate_file == "candidates.onnx"
    cands = candidates(30)
    cands[4]["price"] = 9.5  # a per-candidate override of a user field
    got = scorer.score_candidates(USER, HISTORY, cands)
    arrays = scorer.encode([{**USER, **HISTORY, **c} for c in cands]).arrays
    np.testing.assert_allclose(got, reference_prob(arrays, seed=CANDIDATE_SEED), rtol=1e-5, atol=1e-6)
    assert np.abs(got - scorer.score([{**USER, **HISTORY, **c} for c in cands])).max() > 1e-3
    assert scorer.score_candidates(USER, HISTORY, []).shape == (0,)


def test_without_a_candidate_graph_the_main_graph_scores_candidates(tmp_path):
    scorer = Scorer.load(build_model_dir(tmp_path / "m"))
    assert scorer.manifest.candidate_file is None
    cands = candidates(12)
    rows = [{**USER, **HISTORY, **c} for c in cands]
    np.testing.assert_allclose(scorer.score_candidates(USER, HISTORY, cands), scorer.score(rows), rtol=1e-6)


def test_candidate_graph_is_read_on_first_use_and_its_hash_checked_then(with_candidates, tmp_path):
    model_dir = Path(shutil.copytree(with_candidates, tmp_path / "m"))
    data = bytearray((model_dir / "candidates.onnx").read_bytes())
    data[-1] ^= 1
    (model_dir / "candidates.onnx").write_bytes(bytes(data))
    scorer = Scorer.load(model_dir)  # the main graph loads and scores: candidates.onnx is not read yet
    assert scorer.score([request(0)]).shape == (1,)
    with pytest.raises(IntegrityError, match=r"candidates\.onnx has SHA-256 .* changed or damaged"):
        scorer.score_candidates(USER, HISTORY, candidates(2))


def test_candidate_graph_with_other_inputs_is_refused_when_used(tmp_path):
    model = graph_with_renamed_input(seed=CANDIDATE_SEED)
    model_dir = add_candidate_graph(build_model_dir(tmp_path / "m"), model.SerializeToString())
    with pytest.raises(IntegrityError, match=r"candidates\.onnx has inputs \['renamed'"):
        Scorer.load(model_dir).score_candidates(USER, HISTORY, candidates(2))


@pytest.mark.parametrize(("change", "message"), [
    ({"model_file": "../model.onnx"}, "relative path inside"),
    ({"model_file": "missing.onnx"}, "does not exist"),
    ({"sha256": "abc"}, "64 hex digits"),
    ({"inputs": [{"name": "item_id"}]}, "candidates inputs"),
    ({"outputs": [{"name": "logit"}]}, "no 'prob'"),
])
def test_manifest_candidates_entry_is_validated(tmp_path, change, message):
    model_dir = add_candidate_graph(build_model_dir(tmp_path / "m"), **change)
    with pytest.raises(ManifestError, match=message):
        Scorer.load(model_dir)


def test_manifest_candidates_must_be_an_object(tmp_path):
    model_dir = build_model_dir(tmp_path / "m")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["candidates"] = "candidates.onnx"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'candidates' must be an object"):
        Scorer.load(model_dir)


def test_candidate_errors_name_the_row_and_field(with_candidates):
    scorer = Scorer.load(with_candidates)
    with pytest.raises(InputError, match="missing") as e:
        scorer.score_candidates(USER, HISTORY, [*candidates(3), {"item_id": "101"}])
    assert (e.value.row, e.value.field) == (3, "cate_id")


def test_rows_per_run_keeps_positions_per_run_bounded():
    assert rows_per_run(0) == rows_per_run(1) == POSITIONS_PER_RUN
    assert rows_per_run(100) == POSITIONS_PER_RUN // 100
    assert rows_per_run(10 * POSITIONS_PER_RUN) == 1
    for width in (1, 7, 50, 100, 500, 5000):
        for unit in (None, 1, 8, 32, 80, 200, 10_000):
            assert rows_per_run(width, unit) * width <= max(positions_per_run(unit), width)


def test_a_narrower_unit_gets_longer_runs():
    # the paper's 80-wide unit: the reference budget; the edge preset's 32: 2.5x; clamped both ways
    assert positions_per_run(None) == positions_per_run(80) == POSITIONS_PER_RUN
    assert positions_per_run(32) == POSITIONS_PER_RUN * 80 // 32 == 5120
    assert positions_per_run(200) == POSITIONS_PER_RUN * 80 // 200
    assert positions_per_run(1) == MAX_POSITIONS_PER_RUN and positions_per_run(10_000) == MIN_POSITIONS_PER_RUN
    assert rows_per_run(100, 32) == 51 and rows_per_run(100, 80) == 20


def test_the_scorer_runs_batches_by_its_units_width(tmp_path):
    # the fixture's graph is the same whatever the manifest says of the unit: only the run sizes change
    batch = [request(i, hist=4) for i in range(1200)]  # width 4: 3 runs of 512 rows at 80 wide, 1 at 16
    counts = {}
    for hidden in ([80, 40], [16, 8]):
        model_dir = build_model_dir(tmp_path / str(hidden[0]))
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest["model"] = {"name": "din", "attention_hidden": hidden}
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
        scorer = Scorer.load(model_dir)
        width = scorer.encode(batch).arrays["hist_item_id"].shape[1]
        calls = []
        session = scorer._session
        scorer._session = SimpleNamespace(run=lambda out, feeds, s=session, c=calls: c.append(1) or s.run(out, feeds))
        np.testing.assert_allclose(scorer.score(batch), reference_prob(scorer.encode(batch).arrays),
                                   rtol=1e-5, atol=1e-6)
        counts[hidden[0]] = len(calls)
        assert len(calls) == -(-len(batch) // rows_per_run(width, hidden[0]))
    assert counts[80] > counts[16] >= 1


def test_chunked_runs_give_the_scores_of_one_run(with_candidates, monkeypatch):
    scorer = Scorer.load(with_candidates)
    batch = [request(i, hist=i % 5) for i in range(23)]
    arrays = scorer.encode(batch).arrays
    whole = scorer.score(batch)
    cands = candidates(23)
    whole_candidates = scorer.score_candidates(USER, HISTORY, cands)
    width = arrays["hist_item_id"].shape[1]
    monkeypatch.setattr(scorer_module, "POSITIONS_PER_RUN", 2 * width)  # 2 rows per run: 12 runs
    assert rows_per_run(width) == 2
    np.testing.assert_allclose(scorer.score(batch), whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scorer.score(batch), reference_prob(arrays), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorer.score_candidates(USER, HISTORY, cands), whole_candidates, rtol=1e-6, atol=1e-7)


def test_chunked_attention_keeps_every_row(tmp_path, monkeypatch):
    scorer = Scorer.load(build_model_dir(tmp_path / "m", with_attention=True))
    batch = [request(i, hist=i % 5) for i in range(9)]
    whole = scorer.explain(batch)
    monkeypatch.setattr(scorer_module, "POSITIONS_PER_RUN", 1)
    for a, b in zip(scorer.explain(batch), whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_candidate_session_is_created_once_under_threads(with_candidates, monkeypatch):
    scorer = Scorer.load(with_candidates)
    reads = []
    read_verified = scorer_module._read_verified

    def counting_read(path: Path, sha256: str) -> bytes:
        reads.append(path)
        # Hold the first reader inside the creation, so that the other threads arrive while it is under way.
        time.sleep(0.1)
        return read_verified(path, sha256)

    monkeypatch.setattr(scorer_module, "_read_verified", counting_read)
    cands = candidates(17)
    threads = 8
    barrier = threading.Barrier(threads)

    def score(_: int) -> np.ndarray:
        barrier.wait(timeout=30)  # start together, so every thread meets the session still missing
        return scorer.score_candidates(USER, HISTORY, cands)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(score, range(threads)))
    assert len(reads) == 1, reads
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_a_candidate_graph_returning_the_wrong_shape_is_an_integrity_error(tmp_path):
    model = build_graph(seed=CANDIDATE_SEED)
    # prob of shape (1,) whatever the number of candidates: not a candidate graph
    model.graph.node.append(onnx.helper.make_node("ReduceMean", ["prob"], ["prob_one"], keepdims=1))
    model.graph.output[1].name = "prob_one"
    for node in model.graph.node:
        node.output[:] = ["prob_raw" if o == "prob" else o for o in node.output]
        node.input[:] = ["prob_raw" if i == "prob" else i for i in node.input]
    model.graph.node[-1].output[:] = ["prob"]
    model.graph.output[1].name = "prob"
    model_dir = add_candidate_graph(build_model_dir(tmp_path / "m"), model.SerializeToString())
    with pytest.raises(DinRuntimeError, match=r"candidates\.onnx returned 'prob' of shape \(1,\) for 5 candidates"):
        Scorer.load(model_dir).score_candidates(USER, HISTORY, candidates(5))
