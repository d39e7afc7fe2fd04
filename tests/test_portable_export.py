"""`din-export export` writes portable.onnx and `verify` proves it on raw requests against torch and
Scorer.score, for every variant; an int64-id vocabulary; each kind of portable failure has its error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from din_runtime import Scorer
from export_helpers import MAX_LEN, exported, exported_int64_ids, one_torch_thread, run_dir

from din_export.checkpoints import load_run
from din_export.portable import PORTABLE_FILE, build_portable, portable_entry
from din_export.portable_check import expected_oov, raw_feeds
from din_export.schema import Schema
from din_export.verify import PortableGraphError, PortableScorerError, verify_model_dir

TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "int8": 5e-2}


def manifest_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8"])
def test_export_writes_a_portable_graph_verified_on_raw_requests(name: str) -> None:
    model_dir = exported(name)
    manifest = manifest_of(model_dir)
    entry = manifest["portable"]
    assert entry["sha256"] == hashlib.sha256((model_dir / PORTABLE_FILE).read_bytes()).hexdigest()
    report = manifest["parity"]["portable"]
    cases = {c["case"]: c for c in report["cases"]}
    assert {c["rows"] for c in report["cases"]} >= {1, 257}
    assert "batch 1, history 0" in cases and f"batch 1, history {2 * MAX_LEN + 3}" in cases
    assert report["oov_ids"] > 0 and all(c["oov_equal"] for c in report["cases"])
    # the same arrays into the same model as Scorer.score; int8 within its quantisation error, as the Scorer
    # runs large batches in slices, each quantised with its own activation scale
    assert report["max_abs_diff_prob"] <= (1e-6 if name != "int8" else TOLERANCE["int8"])
    assert 0 < report["max_abs_diff_prob_ref"] <= TOLERANCE[name]
    assert manifest["variant"]["max_abs_diff_prob_portable"] == report["max_abs_diff_prob_ref"]


def test_no_portable_graph_when_asked(tmp_path: Path) -> None:
    from din_export.export import export_run

    with one_torch_thread():
        manifest = export_run(run_dir(), tmp_path / "m", candidates=False, portable=False)
    assert "portable" not in manifest and not (tmp_path / "m" / PORTABLE_FILE).exists()
    assert Scorer.load(tmp_path / "m").manifest.portable_file is None


def test_int64_vocabulary_takes_integer_ids() -> None:
    model_dir = exported_int64_ids()
    manifest = manifest_of(model_dir)
    dtypes = {e["name"]: e["dtype"] for e in manifest["portable"]["inputs"]}
    assert dtypes["item_id"] == dtypes["hist_item_id"] == "int64"
    assert dtypes["cate_id"] == dtypes["user_id"] == "string"
    assert manifest["parity"]["portable"]["max_abs_diff_prob"] == 0.0
    scorer = Scorer.load(model_dir)
    ids = list(scorer.manifest.vocabs["item_id"])
    cates = list(scorer.manifest.vocabs["cate_id"])
    base = {"user_id": list(scorer.manifest.vocabs["user_id"])[0], "cate_id": cates[0], "age": 40.0}
    rows = [
        {**base, "item_id": int(ids[0]), "hist_item_id": [ids[1], int(ids[2])], "hist_cate_id": cates[:2]},
        {**base, "item_id": "0" + ids[0], "hist_item_id": ["x", 5, ids[3]], "hist_cate_id": cates[:3]},
        {**base, "item_id": ids[4], "hist_item_id": [], "hist_cate_id": []},
    ]
    feeds = raw_feeds(manifest["portable"], rows)
    assert feeds["item_id"].dtype == np.int64 and feeds["hist_cate_id"].dtype == object
    session = ort.InferenceSession(str(model_dir / PORTABLE_FILE), providers=["CPUExecutionProvider"])
    prob, oov = session.run(["prob", "oov"], feeds)
    np.testing.assert_array_equal(prob, scorer.score(rows))
    assert oov.tolist() == expected_oov(scorer, rows).tolist() == [0, 3, 0]


def broken_copy(tmp_path: Path, data: bytes) -> Path:
    """A copy of the fp32 model directory whose portable.onnx is `data`, its manifest hash updated."""
    copy = Path(shutil.copytree(exported("fp32"), tmp_path / "m"))
    (copy / PORTABLE_FILE).write_bytes(data)
    manifest = manifest_of(copy)
    manifest["portable"]["sha256"] = hashlib.sha256(data).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def verify(model_dir: Path) -> None:
    model, schema, config = load_run(run_dir())
    with one_torch_thread(), torch.no_grad():
        verify_model_dir(model_dir, model, schema, config["data_dir"], valid_rows=64)


def test_verify_refuses_a_graph_with_another_vocabulary(tmp_path: Path) -> None:
    source = exported("fp32")
    manifest = manifest_of(source)
    vocabs = {v: json.loads((source / rel).read_text()) for v, rel in manifest["vocab_files"].items()}
    vocabs["item_id"] = vocabs["item_id"][::-1]  # every known item on another embedding row
    data, _ = build_portable((source / "model.onnx").read_bytes(), Schema.from_dict(manifest["schema"]), vocabs)
    with pytest.raises(PortableScorerError, match="to Scorer.score exceeds"):
        verify(broken_copy(tmp_path, data))


def test_verify_refuses_a_changed_file_and_a_newer_ir_version(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(exported("fp32"), tmp_path / "hash"))
    (copy / PORTABLE_FILE).write_bytes((copy / PORTABLE_FILE).read_bytes() + b"\0")
    with pytest.raises(PortableGraphError, match="SHA-256"):
        verify(copy)
    graph = onnx.load(exported("fp32") / PORTABLE_FILE)
    graph.ir_version = 10
    with pytest.raises(PortableGraphError, match="IR version 10"):
        verify(broken_copy(tmp_path / "ir", graph.SerializeToString()))


def test_entry_is_recomputed_the_same() -> None:
    """The manifest entry is a function of model.onnx and the vocabularies: rebuilding gives the same bytes."""
    source = exported("fp32")
    manifest = manifest_of(source)
    vocabs = {v: json.loads((source / rel).read_text()) for v, rel in manifest["vocab_files"].items()}
    data, entry = build_portable((source / "model.onnx").read_bytes(), Schema.from_dict(manifest["schema"]), vocabs)
    assert data == (source / PORTABLE_FILE).read_bytes()
    assert portable_entry(data, entry) == manifest["portable"]
