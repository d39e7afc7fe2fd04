"""din-score: formats, stdin/stdout, atomic output, stop and skip modes, label metrics, file errors."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from din_runtime import Scorer, auc, gauc, logloss
from din_runtime.cli import main
from runtime_fixtures import build_model_dir, request

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def scorer(model_dir) -> Scorer:
    return Scorer.load(model_dir)


def requests(n: int = 30) -> list[dict]:
    return [request(i, hist=i % 7, rid=f"r{i}") for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], sep: str = "|") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: sep.join(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


def run(*args: object, input: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def read_scores(path: Path) -> tuple[list, np.ndarray]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r.get("rid") for r in lines], np.array([r["score"] for r in lines], dtype=np.float32)


def test_jsonl_to_jsonl_in_order_with_ids(model_dir, scorer, tmp_path):
    rows = requests()
    out = tmp_path / "scores.jsonl"
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--id-field", "rid",
                 "--batch-size", 7)
    assert result.exit_code == 0, result.output
    ids, scores = read_scores(out)
    assert ids == [r["rid"] for r in rows]
    np.testing.assert_array_equal(scores, scorer.score(rows))
    assert "30 rows read, 30 scored, 0 rejected" in result.stderr


def test_csv_in_csv_out_with_list_separator(model_dir, scorer, tmp_path):
    rows = requests(12)
    out = tmp_path / "scores.csv"
    result = run(model_dir, write_csv(tmp_path / "in.csv", rows, sep=";"), "-o", out, "--list-sep", ";",
                 "--id-field", "rid")
    assert result.exit_code == 0, result.output
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert [t["rid"] for t in table] == [r["rid"] for r in rows]
    np.testing.assert_array_equal(np.array([t["score"] for t in table], dtype=np.float32), scorer.score(rows))


def test_csv_output_writes_non_string_ids_as_json(model_dir, tmp_path):
    ids = ["plain, \"quoted\"", 7, 1e16, True, None, ["a", "b"], {"k": 1}, "true"]
    rows = [request(i, rid=rid) for i, rid in enumerate(ids)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    result = run(model_dir, inp, "-o", tmp_path / "s.csv", "--id-field", "rid")
    assert result.exit_code == 0, result.output
    with (tmp_path / "s.csv").open(newline="") as f:
        cells = [t["rid"] for t in csv.DictReader(f)]
    assert cells == ['plain, "quoted"', "7", "1e+16", "true", "null", '["a", "b"]', '{"k": 1}', "true"]
    # the same text as the JSONL output carries
    result = run(model_dir, inp, "-o", tmp_path / "s.jsonl", "--id-field", "rid")
    assert result.exit_code == 0, result.output
    jsonl = [json.loads(line)["rid"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [c if isinstance(i, str) else json.loads(c) for i, c in zip(ids, cells, strict=True)] == jsonl == ids


def test_csv_empty_history_cell_is_an_empty_list(model_dir, scorer, tmp_path):
    rows = [request(0, hist=0), request(1, hist=2)]
    result = run(model_dir, write_csv(tmp_path / "in.csv", rows), "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_scores(tmp_path / "s.jsonl")[1], scorer.score(rows))


def test_parquet_input(model_dir, scorer, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = requests(20)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=6)
    result = run(model_dir, tmp_path / "in.parquet", "-o", tmp_path / "s.jsonl", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_scores(tmp_path / "s.jsonl")[1], scorer.score(rows))


def parquet_and_jsonl(tmp_path: Path, rows: list[dict]) -> tuple[Path, Path]:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=7)
    return tmp_path / "in.parquet", write_jsonl(tmp_path / "in.jsonl", rows)


def same_runs(model_dir: Path, tmp_path: Path, parquet: Path, jsonl: Path, *options: object) -> list:
    """din-score on the Parquet and on the JSONL of the same rows: the same output, summary and errors."""
    results = []
    for name, src in (("p", parquet), ("j", jsonl)):
        extra = [a if a != "ERRORS" else tmp_path / f"{name}-errors.jsonl" for a in options]
        results.append(run(model_dir, src, "-o", tmp_path / f"{name}.jsonl", "--batch-size", 4, *extra))
    (p, j) = results
    assert (p.exit_code, j.exit_code) == (0, 0), p.output + j.output
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "j.jsonl").read_bytes()
    assert p.output.split(" in ")[0] == j.output.split(" in ")[0]  # rows read, scored, rejected
    assert p.output.split("OOV ids: ")[1] == j.output.split("OOV ids: ")[1]  # OOV counts and metrics
    if (tmp_path / "p-errors.jsonl").exists():  # Parquet's row numbers are these JSONL lines
        assert (tmp_path / "p-errors.jsonl").read_text() == (tmp_path / "j-errors.jsonl").read_text()
    return results


def test_parquet_batches_score_on_their_columns(model_dir, tmp_path, monkeypatch):
    # clean batches never become Python rows (din_runtime.arrow), and score as the JSONL of the same rows,
    # unseen ids counted alike
    rows = [{**r, "label": i % 2} for i, r in enumerate(requests(30))]
    for i in (3, 17):
        rows[i] = {**rows[i], "item_id": f"unseen-{i}", "hist_cate_id": ["nope", *rows[i]["hist_cate_id"][1:]]}
    parquet, jsonl = parquet_and_jsonl(tmp_path, rows)
    import din_runtime.cli as cli

    def no_rows(*_: object) -> None:
        raise AssertionError("a clean Parquet batch took the row path")

    monkeypatch.setattr(cli, "parquet_records", no_rows)
    result, _ = same_runs(model_dir, tmp_path, parquet, jsonl, "--id-field", "rid", "--label-field", "label")
    assert "30 rows read, 30 scored, 0 rejected" in result.output and "GAUC" in result.output
    assert "item_id 2" in result.output and "hist_cate_id 2" in result.output


@pytest.mark.parametrize("change", [{"item_id": None}, {"hist_cate_id": ["c1"]}, {"price": None}, {"rid": None},
                                    {"label": 2}, {"age": 2**53 + 1}],
                         ids=["null-id", "ragged-history", "null-dense", "null-rid", "bad-label", "big-int-dense"])
def test_parquet_batches_needing_row_checks_take_the_row_path(model_dir, tmp_path, change):
    rows = [{**r, "label": i % 2} for i, r in enumerate(requests(30))]
    rows[13] = {**rows[13], **change}
    parquet, jsonl = parquet_and_jsonl(tmp_path, rows)
    options = ("--id-field", "rid", "--label-field", "label")
    same_runs(model_dir, tmp_path, parquet, jsonl, *options, "--on-error", "skip", "--errors", "ERRORS")
    stopped = run(model_dir, parquet, "-o", tmp_path / "stop.jsonl", "--batch-size", 4, *options)
    if (tmp_path / "p-errors.jsonl").read_text():
        field = next(iter(change))
        assert stopped.exit_code == 1 and f"row 14, field {field!r}" in stopped.output
    else:  # a null request id is copied out as null, as from JSONL; a big integer is a number
        assert stopped.exit_code == 0, stopped.output


def test_parquet_decimal_dense_is_a_number_on_both_paths(model_dir, scorer, tmp_path):
    pa = pytest.importorskip("pyarrow")
    rows = requests(12)
    rows[9] = {**rows[9], "item_id": None}  # this batch takes the row path, the others the columns
    fields = [pa.field(k, pa.decimal128(12, 4) if k == "price" else pa.infer_type([r[k] for r in rows]))
              for k in rows[0]]
    from decimal import Decimal

    import pyarrow.parquet as pq

    typed = [{**r, "price": Decimal(str(r["price"]))} for r in rows]
    pq.write_table(pa.Table.from_pylist(typed, schema=pa.schema(fields)), tmp_path / "in.parquet")
    result = run(model_dir, tmp_path / "in.parquet", "-o", tmp_path / "s.jsonl", "--batch-size", 4,
                 "--on-error", "skip", "--errors", tmp_path / "e.jsonl")
    assert result.exit_code == 0, result.output
    assert "12 rows read, 11 scored, 1 rejected" in result.output
    assert [json.loads(x)["field"] for x in (tmp_path / "e.jsonl").read_text().splitlines()] == ["item_id"]
    good = rows[:9] + rows[10:]
    np.testing.assert_allclose(read_scores(tmp_path / "s.jsonl")[1], scorer.score(good), rtol=0, atol=1e-6)


def test_parquet_nan_request_id_is_rejected_by_the_row_path(model_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{**r, "rid": float(i)} for i, r in enumerate(requests(12))]
    rows[6]["rid"] = float("nan")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    result = run(model_dir, tmp_path / "in.parquet", "--id-field", "rid", "--batch-size", 4)
    assert result.exit_code == 1 and "row 7, field 'rid'" in result.output and "NaN" in result.output


def test_parquet_without_pyarrow_says_how_to_install(model_dir, tmp_path, monkeypatch):
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = run(model_dir, tmp_path / "in.parquet")
    assert result.exit_code == 1
    assert "din-toolkit[parquet]" in result.output


def test_stdin_to_stdout(model_dir, scorer):
    rows = requests(5)
    result = run(model_dir, "-", input="".join(json.dumps(r) + "\n" for r in rows).encode())
    assert result.exit_code == 0, result.output
    scores = [json.loads(line)["score"] for line in result.stdout.splitlines()]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), scorer.score(rows))


def test_csv_from_stdin_needs_format(model_dir, scorer, tmp_path):
    rows = requests(4)
    data = write_csv(tmp_path / "in.csv", rows).read_bytes()
    result = run(model_dir, "-", "--format", "csv", "--output-format", "csv", input=data)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "score"
    np.testing.assert_array_equal(np.array(lines[1:], dtype=np.float32), scorer.score(rows))


def test_failing_run_leaves_no_output(model_dir, tmp_path):
    rows = requests(10)
    rows[6]["age"] = "old"
    out = tmp_path / "out" / "s.jsonl"
    out.parent.mkdir()
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--batch-size", 4)
    assert result.exit_code == 1
    assert "line 7, field 'age'" in result.output
    assert "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []


def test_output_in_a_missing_directory(model_dir, tmp_path):
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", requests(2)), "-o", tmp_path / "no" / "s.jsonl")
    assert result.exit_code == 1 and f"{tmp_path / 'no' / 's.jsonl'}: No such file" in result.output


def test_failing_run_keeps_the_previous_output(model_dir, tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text("previous\n")
    rows = requests(3)
    del rows[2]["gender"]
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "-o", out)
    assert result.exit_code == 1 and "line 3, field 'gender': missing" in result.output
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "s.jsonl"]


def test_stop_mode_reports_the_earliest_problem(model_dir, tmp_path):
    lines = [json.dumps(r) for r in requests(6)]
    lines[4] = "{not json"
    rows3 = requests(6)[2]
    rows3["item_id"] = True
    lines[2] = json.dumps(rows3)
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    result = run(model_dir, tmp_path / "in.jsonl")
    assert result.exit_code == 1
    assert "line 3, field 'item_id'" in result.output


@pytest.mark.parametrize("early, late", [
    ({"hist_cate_id": [None, "Drama", "Comedy"]}, {"hist_item_id": [None, "101", "102"]}),
    ({"hist_cate_id": ["Drama", "Drama", 3.5]}, {"hist_item_id": "x"}),
    ({"hist_cate_id": [None, "Drama", "Comedy"]}, {"hist_cate_id": ["Drama"]}),
])
def test_stop_mode_reports_the_earliest_row_across_history_fields(model_dir, tmp_path, early, late):
    rows = [request(0, **early), request(1, **late), request(2)]
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows))
    assert result.exit_code == 1 and "line 1, field 'hist_cate_id'" in result.output, result.output


def test_stop_mode_names_the_input_file(model_dir, tmp_path):
    rows = requests(3)
    del rows[1]["price"]
    src = write_jsonl(tmp_path / "requests.jsonl", rows)
    result = run(model_dir, src, "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {src}: line 2, field 'price': missing"), result.stderr
    result = run(model_dir, "-", input=src.read_bytes())
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: <stdin>: line 2, field 'price': missing"), result.stderr
    # problems with the whole input too, in either mode
    src.write_bytes(b"\n")
    for mode in [(), ("--on-error", "skip", "--errors", tmp_path / "e.jsonl")]:
        result = run(model_dir, src, "-o", tmp_path / "s.jsonl", *mode)
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: {src}: the input is empty"), result.stderr
    # the errors file of skip mode keeps its reason alone: its line names the place, the run names the file
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(model_dir, src, "-o", tmp_path / "s.jsonl", "--on-error", "skip", "--errors", tmp_path / "e.jsonl")
    assert result.exit_code == 0, result.output
    (entry,) = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert (entry["line"], entry["field"], entry["error"]) == (2, "price", "missing")


def test_skip_mode_accounts_for_every_row(model_dir, scorer, tmp_path):
    rows = requests(25)
    lines = [json.dumps(r) for r in rows]
    bad = {3: "{broken", 9: json.dumps({**rows[9], "age": float("nan")}), 10: "[1, 2]",
           17: json.dumps({k: v for k, v in rows[17].items() if k != "cate_id"}),
           18: json.dumps({**rows[18], "hist_cate_id": ["Drama"]})}
    for i, text in bad.items():
        lines[i] = text
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out, errors = tmp_path / "s.jsonl", tmp_path / "errors.jsonl"
    result = run(model_dir, tmp_path / "in.jsonl", "-o", out, "--on-error", "skip", "--errors", errors,
                 "--id-field", "rid", "--batch-size", 8)
    assert result.exit_code == 0, result.output
    assert "25 rows read, 20 scored, 5 rejected" in result.stderr
    rejected = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [r["line"] for r in rejected] == [i + 1 for i in sorted(bad)]
    assert [r["raw"] for r in rejected] == [bad[i] for i in sorted(bad)]
    assert rejected[1]["field"] == "age" and "not finite" in rejected[1]["error"]
    assert rejected[3]["field"] == "cate_id" and rejected[4]["field"] == "hist_cate_id"
    ids, scores = read_scores(out)
    kept = [r for i, r in enumerate(rows) if i not in bad]
    assert ids == [r["rid"] for r in kept]
    np.testing.assert_array_equal(scores, scorer.score(kept))


def test_skip_needs_an_errors_file(model_dir, tmp_path):
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", requests(2)), "--on-error", "skip")
    assert result.exit_code == 2 and "--errors" in result.output


def test_label_metrics(model_dir, scorer, tmp_path):
    rows = [request(i, hist=i % 5, label=int(i % 4 < 2), user_id=f"u{1 + i % 3}") for i in range(60)]
    metrics = tmp_path / "metrics.json"
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "s.jsonl",
                 "--label-field", "label", "--metrics-out", metrics)
    assert result.exit_code == 0, result.output
    probs = scorer.score(rows).astype(np.float64)
    labels = [r["label"] for r in rows]
    report = json.loads(metrics.read_text())
    assert report["rows"] == 60 and report["positives"] == sum(labels)
    assert report["gauc"] is not None
    assert report["auc"] == pytest.approx(auc(labels, probs))
    assert report["gauc"] == pytest.approx(gauc(labels, probs, [r["user_id"] for r in rows]))
    assert report["logloss"] == pytest.approx(logloss(labels, probs))
    assert f"AUC {report['auc']:.4f}" in result.stderr


def test_bad_label_is_a_row_error(model_dir, tmp_path):
    rows = requests(3)
    rows[1]["label"] = 2
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "--label-field", "label")
    assert result.exit_code == 1 and "line 2, field 'label'" in result.output


def test_oov_counts_in_summary(model_dir, tmp_path):
    rows = requests(3)
    rows[0]["item_id"] = "never-seen"
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 0 and "OOV ids: item_id 1" in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b'{"a": 1}\n\x00\x01\x02binary', "line 2 .*binary"),
    (b'{"user_id": "u1"}\n{"user_id": "caf\xe9"}\n', "line 2 is not UTF-8"),
    (b'{"user_id": "u1", "gender": "M"', "line 1: malformed JSON.*truncated"),
    (b'42\n', "line 1: expected a JSON object"),
    (b'\n[1, 2]\n', r"line 2 starts with '\[': this looks like a JSON array.* jq -c '\.\[\]'"),
])
def test_jsonl_file_errors(model_dir, tmp_path, content, message):
    (tmp_path / "in.jsonl").write_bytes(content)
    result = run(model_dir, tmp_path / "in.jsonl", "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"user_id,gender\n", "header but no rows"),
    (b"user_id,user_id\nu1,u2\n", "twice"),
    (b"user_id,gender\nu1,M,extra\n", "line 2: has 3 fields"),
    (b'user_id,age\nu1,"unterminated\n', "line 2: malformed CSV"),
])
def test_csv_file_errors(model_dir, tmp_path, content, message):
    (tmp_path / "in.csv").write_bytes(content)
    result = run(model_dir, tmp_path / "in.csv")
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output


def test_csv_non_number_dense(model_dir, tmp_path):
    rows = requests(3)
    rows[2]["age"] = "forty"
    result = run(model_dir, write_csv(tmp_path / "in.csv", rows))
    assert result.exit_code == 1 and "line 4, field 'age'" in result.output


def test_model_dir_errors_are_clean(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(request(0)) + "\n")
    result = run(tmp_path / "missing", tmp_path / "in.jsonl")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unknown_extension_needs_a_format(model_dir, tmp_path):
    (tmp_path / "in.txt").write_text(json.dumps(request(0)) + "\n")
    result = run(model_dir, tmp_path / "in.txt")
    assert result.exit_code == 1 and "--format" in result.output
    assert run(model_dir, tmp_path / "in.txt", "--format", "jsonl").exit_code == 0
    result = run(model_dir, tmp_path / "in.txt", "--format", "jsonl", "-o", tmp_path / "scores.out")
    assert result.exit_code == 1 and "--output-format" in result.output


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_device_without_provider(model_dir, tmp_path):
    result = run(model_dir, write_jsonl(tmp_path / "in.jsonl", requests(1)), "--device", "cuda")
    assert result.exit_code == 1 and "din-toolkit[gpu]" in result.output


def test_console_script_end_to_end(model_dir, scorer, tmp_path):
    rows = requests(5)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    done = subprocess.run([sys.executable, "-m", "din_runtime", str(model_dir), str(src), "--threads", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    scores = [json.loads(line)["score"] for line in io.StringIO(done.stdout)]
    np.testing.assert_array_equal(np.array(scores, dtype=np.float32), scorer.score(rows))
    bad = subprocess.run([sys.executable, "-m", "din_runtime", str(tmp_path / "nope"), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "does not exist" in bad.stderr


def test_parquet_text_that_is_not_utf8_names_its_row_and_field(model_dir, scorer, tmp_path):
    # a Parquet writer may store any bytes in a string column: the row path names them, the column path
    # must not look them up as unseen ids
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = requests(10)
    table = pa.Table.from_pylist(rows)
    for name, bad_row in (("item_id", 6), ("rid", 2)):
        values = [r[name].encode() for r in rows]
        values[bad_row] = b"\xff\xfe"
        strings = pa.Array.from_buffers(pa.string(), len(values), pa.array(values, type=pa.binary()).buffers())
        column = table.schema.get_field_index(name)
        pq.write_table(table.set_column(column, name, strings), tmp_path / f"{name}.parquet")
        stopped = run(model_dir, tmp_path / f"{name}.parquet", "--id-field", "rid", "--batch-size", 4)
        assert stopped.exit_code == 1 and f"row {bad_row + 1}, field {name!r}" in stopped.output, stopped.output
        assert "not UTF-8" in stopped.output
        skipped = run(model_dir, tmp_path / f"{name}.parquet", "--id-field", "rid", "--batch-size", 4, "-o",
                      tmp_path / "s.jsonl", "--on-error", "skip", "--errors", tmp_path / "e.jsonl")
        assert skipped.exit_code == 0 and "10 rows read, 9 scored, 1 rejected" in skipped.output
        ids, scores = read_scores(tmp_path / "s.jsonl")
        good = rows[:bad_row] + rows[bad_row + 1:]
        assert ids == [r["rid"] for r in good]
        np.testing.assert_allclose(scores, scorer.score(good), rtol=0, atol=1e-6)
