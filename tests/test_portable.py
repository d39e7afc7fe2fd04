"""portable.onnx of the shipped models/demo: a bare onnxruntime session fed from the manifest alone scores
like din-score, counts unseen ids, keeps the last max_len events; its IR version and opsets load in
onnxruntime 1.17 and onnxruntime-web/-node; the manifest entry is validated; the file is what
`din-export portable` builds from model.onnx and the vocabularies."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from din_runtime import IntegrityError, ManifestError, Scorer, load_manifest
from din_runtime.manifest import read_portable

from din_export.portable import PORTABLE_FILE, PortableError, add_portable, is_int64_vocab, oov_sentinel
from din_export.portable_check import expected_oov, raw_feeds

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo"
EXAMPLES = REPO / "examples" / "requests.jsonl"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DEMO / "manifest.json").read_text())


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DEMO / PORTABLE_FILE), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(DEMO)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(["prob", "logit", "oov"], session.run(["prob", "logit", "oov"], feeds), strict=True))


def examples() -> list[dict]:
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()]


def test_bare_session_scores_the_examples_like_din_score(manifest: dict, session: ort.InferenceSession) -> None:
    done = subprocess.run([sys.executable, "-m", "din_runtime", str(DEMO), str(EXAMPLES), "--id-field", "request_id"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    din_score = np.array([json.loads(line)["score"] for line in done.stdout.splitlines()], dtype=np.float32)
    rows = examples()
    out = run(session, raw_feeds(manifest["portable"], rows))
    np.testing.assert_array_equal(out["prob"], din_score)
    np.testing.assert_array_equal(out["oov"], np.zeros(len(rows), dtype=np.int64))
    np.testing.assert_allclose(out["prob"], 1 / (1 + np.exp(-out["logit"].astype(np.float64))), rtol=0, atol=1e-7)
    # one row at a time, and padded far wider than any history: the same scores
    for i, row in enumerate(rows):
        assert run(session, raw_feeds(manifest["portable"], [row], width=200))["prob"][0] == din_score[i]


def test_unseen_ids_empty_and_long_histories(manifest: dict, session: ort.InferenceSession, scorer: Scorer) -> None:
    base = examples()[0]
    max_len = manifest["schema"]["max_len"]
    items, cates = list(scorer.manifest.vocabs["item_id"]), list(scorer.manifest.vocabs["cate_id"])
    long_items = [items[k % len(items)] for k in range(2 * max_len + 7)]
    long_cates = [cates[k % len(cates)] for k in range(2 * max_len + 7)]
    long_items[0] = "never-seen"  # dropped by the max_len cut: not counted
    long_items[-1] = "0" + items[3]  # kept, and no canonical integer: the int64 field gets the sentinel
    long_cates[-2] = "c-unseen"
    rows = [
        {**base, "item_id": 10**9, "cate_id": "zzz", "gender": "X", "hist_item_id": [], "hist_cate_id": []},
        {**base, "hist_item_id": long_items, "hist_cate_id": long_cates},
        {**base, "item_id": int(items[5]), "hist_item_id": [items[1], "007"], "hist_cate_id": [cates[0], cates[1]]},
    ]
    out = run(session, raw_feeds(manifest["portable"], rows))
    np.testing.assert_array_equal(out["prob"], scorer.score(rows))
    assert out["oov"].tolist() == expected_oov(scorer, rows).tolist() == [3, 2, 1]
    assert scorer.encode(rows).arrays["hist_len"].tolist() == [0, max_len, 2]


def test_int64_and_string_fields(manifest: dict) -> None:
    entries = {e["name"]: e for e in manifest["portable"]["inputs"]}
    assert {n: e["dtype"] for n, e in entries.items()} == {
        "gender": "string", "item_id": "int64", "cate_id": "string", "hist_item_id": "int64",
        "hist_cate_id": "string", "hist_len": "int64", "age": "float32", "price": "float32"}
    assert entries["hist_item_id"]["dims"] == ["batch", "width"] and entries["age"]["dims"] == ["batch"]
    ids = json.loads((DEMO / "vocab" / "item_id.json").read_text())
    assert entries["item_id"]["oov_int64_sentinel"] == oov_sentinel(ids) and str(oov_sentinel(ids)) not in ids
    assert [o["name"] for o in manifest["portable"]["outputs"]] == ["prob", "logit", "oov"]


@pytest.mark.parametrize(("ids", "int64"), [
    (["1", "20", "-3", "0"], True),
    (["1", "007"], False), (["1", "+5"], False), (["1", "5 "], False), (["1", "1e3"], False), (["1", "-0"], False),
    (["9223372036854775807", "-9223372036854775808"], True), (["9223372036854775808"], False),
    (["\u0663"], False),  # an Arabic-Indic 3: int() reads it, but it is not the key "3"
    ([], False),
])
def test_int64_only_when_every_key_is_a_canonical_int64(ids: list[str], int64: bool) -> None:
    assert is_int64_vocab(ids) is int64


def test_sentinel_is_never_a_key() -> None:
    assert oov_sentinel(["1", "2"]) == -1
    assert oov_sentinel(["-1", "-2", "5"]) == -3


def test_ir_version_and_opsets_load_everywhere(manifest: dict) -> None:
    model = onnx.load(DEMO / PORTABLE_FILE)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == manifest["portable"]["ir_version"] <= 9
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), ("ai.onnx.ml", 2)}
    assert {n.domain for n in model.graph.node} == {"", "ai.onnx.ml"}
    ops = {n.op_type for n in model.graph.node}
    assert "LabelEncoder" in ops and not ops & {"Loop", "Scan", "If"}
    # one lookup per vocabulary, each vocabulary's keys stored once
    assert sum(n.op_type == "LabelEncoder" for n in model.graph.node) == len(manifest["vocab_files"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["din.graph"] == "portable" and json.loads(meta["din.schema"]) == manifest["schema"]


def test_manifest_lists_it_with_its_hash(manifest: dict) -> None:
    data = (DEMO / PORTABLE_FILE).read_bytes()
    assert manifest["portable"]["sha256"] == hashlib.sha256(data).hexdigest()
    m = load_manifest(DEMO)
    assert m.portable_file == PORTABLE_FILE and read_portable(m) == data


def test_demo_file_is_what_din_export_portable_builds(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(DEMO, tmp_path / "demo"))
    with pytest.raises(PortableError, match="already has portable.onnx"):
        add_portable(copy)
    entry = add_portable(copy, force=True)
    assert (copy / PORTABLE_FILE).read_bytes() == (DEMO / PORTABLE_FILE).read_bytes()
    # the command adds its own check's figures; `export` writes the same entry without them (verify judged it)
    rebuilt, shipped = (json.loads((d / "manifest.json").read_text()) for d in (copy, DEMO))
    rebuilt["portable"].pop("check")
    shipped["portable"].pop("check", None)
    assert rebuilt == shipped
    assert entry["check"]["max_abs_diff_prob"] == 0.0 and entry["check"]["oov_ids"] > 0
    assert {c["rows"] for c in entry["check"]["cases"]} >= {1, 257}


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "demo"))


def edit(model_dir: Path, change) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest["portable"])
    path.write_text(json.dumps(manifest))


def test_a_changed_file_is_refused_when_read(demo_copy: Path) -> None:
    (demo_copy / PORTABLE_FILE).write_bytes((demo_copy / PORTABLE_FILE).read_bytes() + b"\0")
    m = load_manifest(demo_copy)  # the Scorer does not read it, so loading stays cheap
    with pytest.raises(IntegrityError, match="SHA-256"):
        read_portable(m)


def test_old_directories_without_it_stay_valid(demo_copy: Path) -> None:
    path = demo_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["portable"]
    path.write_text(json.dumps(manifest))
    (demo_copy / PORTABLE_FILE).unlink()
    m = load_manifest(demo_copy)
    assert m.portable_file is None
    with pytest.raises(ManifestError, match="din-export portable"):
        read_portable(m)
    Scorer.load(demo_copy).score(examples())


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(sha256="abc"), "64 hex digits"),
    (lambda p: p.update(file="../model.onnx"), "inside the model directory"),
    (lambda p: p.update(file="missing.onnx"), "does not exist"),
    (lambda p: p["inputs"].pop(), "request fields"),
    (lambda p: p["inputs"][0].update(dtype="float32"), "'gender' must be kind 'id'"),
    (lambda p: p["inputs"][1].pop("oov_int64_sentinel"), "oov_int64_sentinel"),
    (lambda p: p["outputs"].pop(), "lack one of"),
    (lambda p: p.update(inputs="x"), "list of objects"),
])
def test_a_malformed_entry_is_refused(demo_copy: Path, change, message: str) -> None:
    edit(demo_copy, change)
    with pytest.raises(ManifestError, match=message):
        load_manifest(demo_copy)


def test_opsets_past_20_would_need_ir_10_and_are_refused(tmp_path: Path) -> None:
    from din_export.portable import build_portable, supports_opset
    from din_export.schema import Schema

    assert supports_opset(16) and supports_opset(18) and supports_opset(20) and not supports_opset(21)
    manifest = json.loads((DEMO / "manifest.json").read_text())
    model = onnx.load(DEMO / "model.onnx")
    model.opset_import[0].version = 21
    vocabs = {v: json.loads((DEMO / rel).read_text()) for v, rel in manifest["vocab_files"].items()}
    with pytest.raises(PortableError, match="IR version 10"):
        build_portable(model.SerializeToString(), Schema.from_dict(manifest["schema"]), vocabs)
