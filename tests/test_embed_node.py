"""examples/node/score.mjs (onnxruntime-node, portable.onnx, no Python) prints what din-score prints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from embed_fixtures import DEMO, NODE_DIR, ROOT, node, npm_package, probe_rows, write_jsonl

SCORE = NODE_DIR / "score.mjs"
EXAMPLES = ROOT / "examples" / "requests.jsonl"


@pytest.fixture(scope="module")
def node_bin() -> str:
    path = node()
    npm_package(NODE_DIR, "onnxruntime-node")
    return path


def run_node(node_bin: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([node_bin, str(SCORE), *map(str, args)], capture_output=True, text=True, timeout=120)


def run_din_score(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "din_runtime", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def compare(node_out: str, python_out: str, id_field: str | None) -> tuple[float, int]:
    """(max |score diff|, identical lines) of two outputs that must hold the same rows, keys and ids."""
    ours, theirs = node_out.splitlines(), python_out.splitlines()
    assert len(ours) == len(theirs) > 0
    diffs = []
    for a, b in zip(ours, theirs, strict=True):
        ja, jb = json.loads(a), json.loads(b)
        assert list(ja) == list(jb) == ([id_field] if id_field else []) + ["score"], (a, b)
        if id_field:
            assert ja[id_field] == jb[id_field], (a, b)
        diffs.append(abs(np.float32(ja["score"]) - np.float32(jb["score"])))
    return float(max(diffs)), sum(a == b for a, b in zip(ours, theirs, strict=True))


def test_the_examples_score_as_in_din_score(node_bin):
    ours = run_node(node_bin, DEMO, EXAMPLES, "--id-field", "request_id")
    theirs = run_din_score(DEMO, EXAMPLES, "--id-field", "request_id")
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    worst, same = compare(ours.stdout, theirs.stdout, "request_id")
    print(f"examples/requests.jsonl: Node vs din-score max |diff| {worst:.3g}, {same}/8 lines identical")
    assert worst <= 1e-6
    assert "8 rows scored" in ours.stderr


@pytest.mark.parametrize("batch_size", ["1024", "7"])
def test_unseen_ids_empty_and_long_histories_score_as_in_din_score(node_bin, tmp_path, batch_size):
    rows = probe_rows()
    assert any(not r["hist_item_id"] for r in rows) and any(len(r["hist_item_id"]) > 50 for r in rows)
    requests = write_jsonl(tmp_path / "probe.jsonl", rows)
    ours = run_node(node_bin, DEMO, requests, "--id-field", "request_id", "--batch-size", batch_size)
    theirs = run_din_score(DEMO, requests, "--id-field", "request_id", "--batch-size", batch_size)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    worst, same = compare(ours.stdout, theirs.stdout, "request_id")
    print(f"{len(rows)} probe rows, batch {batch_size}: Node vs din-score max |diff| {worst:.3g}, "
          f"{same}/{len(rows)} lines identical")
    assert worst <= 1e-6
    # The unseen ids the graph counted are the ones din_runtime counted.
    oov = {k: int(v) for k, v in (p.split() for p in theirs.stderr.split("OOV ids: ")[1].strip().split(", "))}
    assert f"OOV ids: {sum(oov.values())} in " in ours.stderr, (ours.stderr, theirs.stderr)


def test_without_an_id_field_and_from_stdin(node_bin):
    text = EXAMPLES.read_text()
    ours = subprocess.run([node_bin, str(SCORE), str(DEMO), "-"], input=text, capture_output=True, text=True,
                          timeout=120)
    theirs = subprocess.run([sys.executable, "-m", "din_runtime", str(DEMO), "-"], input=text, capture_output=True,
                            text=True, timeout=120)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    worst, _ = compare(ours.stdout, theirs.stdout, None)
    assert worst <= 1e-6


GOOD = json.loads(EXAMPLES.read_text().splitlines()[2])
LONG = {**GOOD, "hist_item_id": [str(i) for i in range(1, 61)], "hist_cate_id": ["c1"] * 60}
BAD_ROWS = [
    ({k: v for k, v in GOOD.items() if k != "price"}, "price"),
    ({**GOOD, "item_id": None}, "item_id"),
    ({**GOOD, "gender": 1.5}, "gender"),
    ({**GOOD, "cate_id": ["c1"]}, "cate_id"),
    ({**GOOD, "hist_item_id": "305|441"}, "hist_item_id"),
    ({**GOOD, "hist_cate_id": GOOD["hist_cate_id"][:-1]}, "hist_cate_id"),
    ({**LONG, "hist_item_id": LONG["hist_item_id"][:-1] + [True]}, "hist_item_id"),
    ({**GOOD, "price": "12.5"}, "price"),
    ({**GOOD, "age": 1e39}, "age"),
    ({**GOOD, "item_id": 2**60}, "item_id"),
]


@pytest.mark.parametrize(("row", "field"), BAD_ROWS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_ROWS)])
def test_a_bad_row_stops_both_at_its_line_and_field(node_bin, tmp_path, row, field):
    requests = write_jsonl(tmp_path / "bad.jsonl", [GOOD, LONG, row, GOOD])
    ours = run_node(node_bin, DEMO, requests)
    assert ours.returncode == 1, ours.stdout
    assert f"Error: {requests}: line 3, field '{field}': " in ours.stderr, ours.stderr
    assert len(ours.stderr.splitlines()) == 1, "one line, no stack trace"
    if field == "item_id" and row["item_id"] == 2**60:
        # JavaScript reads JSON numbers as doubles: a bigger integer is refused there, read exactly in Python.
        assert "send this id as a string" in ours.stderr
        return
    theirs = run_din_score(DEMO, requests)
    assert theirs.returncode == 1 and f"line 3, field '{field}'" in theirs.stderr, theirs.stderr


@pytest.mark.parametrize(("text", "reason"), [
    ('{"item_id": \n', "line 1: malformed JSON"),
    ("[1, 2]\n", "line 1 starts with '['"),
    ("\n  \n", "the input is empty"),
    ("\"a string\"\n", "line 1: expected a JSON object, got a string"),
])
def test_a_file_that_is_not_json_lines_is_named(node_bin, tmp_path, text, reason):
    requests = tmp_path / "in.jsonl"
    requests.write_text(text)
    done = run_node(node_bin, DEMO, requests)
    assert done.returncode == 1 and f"Error: {requests}: {reason}" in done.stderr, done.stderr


def test_older_bad_items_are_never_read(node_bin, tmp_path):
    row = {**LONG, "hist_item_id": [None] + LONG["hist_item_id"][1:], "request_id": "old-null"}
    requests = write_jsonl(tmp_path / "old.jsonl", [row])
    ours = run_node(node_bin, DEMO, requests, "--id-field", "request_id")
    theirs = run_din_score(DEMO, requests, "--id-field", "request_id")
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    assert compare(ours.stdout, theirs.stdout, "request_id")[0] <= 1e-6


def test_a_missing_id_field_is_a_bad_row(node_bin):
    done = run_node(node_bin, DEMO, EXAMPLES, "--id-field", "nope")
    assert done.returncode == 1 and "line 1, field 'nope': missing (named by --id-field)" in done.stderr


def test_the_model_must_match_its_manifest(node_bin, tmp_path):
    model = tmp_path / "demo"
    shutil.copytree(DEMO, model)
    portable = model / json.loads((model / "manifest.json").read_text())["portable"]["file"]
    portable.write_bytes(portable.read_bytes() + b"\0")
    done = run_node(node_bin, model, EXAMPLES)
    assert done.returncode == 1 and "differs from the manifest's" in done.stderr and done.stdout == ""

    manifest = json.loads((model / "manifest.json").read_text())
    del manifest["portable"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    done = run_node(node_bin, model, EXAMPLES)
    assert done.returncode == 1 and 'no "portable" entry' in done.stderr


def test_usage_errors_exit_2(node_bin):
    assert run_node(node_bin, DEMO).returncode == 2
    assert run_node(node_bin, DEMO, EXAMPLES, "--batch-size", "0").returncode == 2
    assert run_node(node_bin, DEMO, EXAMPLES, "--frobnicate").returncode == 2


def test_float32_text_is_numpys(node_bin, tmp_path):
    """float32Repr prints what din-score prints (numpy's str of a float32) for values of every magnitude."""
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.random(20000, dtype=np.float32),
        (rng.standard_normal(20000) * 10.0 ** rng.integers(-45, 39, 20000)).astype(np.float32),
        rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([0, -0.0, 1, 0.5, 1e-4, 9.999e-5, 1e16, 9.999999e15, 1e-45, 3.4028235e38, 2**-126, 16777216,
                  0.1, 1 / 3, 2.0**24 + 2], dtype=np.float32),
    ])
    values = values[np.isfinite(values)]
    (tmp_path / "in.json").write_text(json.dumps([float(v) for v in values]))
    script = (f"import {{ float32Repr }} from {json.dumps((NODE_DIR / 'din_portable.mjs').as_uri())};\n"
              "import { readFileSync } from 'node:fs';\n"
              "const xs = JSON.parse(readFileSync(process.argv[1], 'utf-8'));\n"
              "process.stdout.write(xs.map((x) => float32Repr(Math.fround(x))).join('\\n'));\n")
    done = subprocess.run([node_bin, "--input-type=module", "-e", script, str(tmp_path / "in.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ours = done.stdout.split("\n")
    expected = [str(v) for v in values]
    wrong = [(e, o) for e, o in zip(expected, ours, strict=True) if e != o]
    assert not wrong, f"{len(wrong)} of {len(values)} differ, e.g. {wrong[:5]}"


def test_the_node_example_reads_no_vocabulary(node_bin, tmp_path):
    """manifest.json and portable.onnx are all it needs: without vocab/ and model.onnx it still scores."""
    model = tmp_path / "bare"
    model.mkdir()
    manifest = json.loads((DEMO / "manifest.json").read_text())
    for name in ("manifest.json", manifest["portable"]["file"]):
        shutil.copy(DEMO / name, model / name)
    done = run_node(node_bin, model, EXAMPLES, "--id-field", "request_id")
    assert done.returncode == 0, done.stderr
    theirs = run_din_score(DEMO, EXAMPLES, "--id-field", "request_id")
    assert compare(done.stdout, theirs.stdout, "request_id")[0] <= 1e-6

