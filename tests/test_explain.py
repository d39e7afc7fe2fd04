"""`din-export explain`: the weights are the model's own for the request as din-score encodes it; the
table, the picture, line selection and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from din_runtime.features import Features
from train_fixtures import MAX_LEN, make_dataset

from din_export.checkpoints import load_run
from din_export.cli import main
from din_export.data import DataError, load_split
from din_export.explain import BAR_WIDTH, Explanation, explain_request, format_table
from din_export.model import ModelConfig
from din_export.train import TrainConfig, train

SMALL = ModelConfig(embed_dim=4, attention_hidden=(8,), mlp_hidden=(8,))
FAST = TrainConfig(batch_size=64, epochs=2, patience=0, threads=1, lr=0.01, device="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "din"
    train(data_dir, out, SMALL, FAST, quiet=True)
    return out


@pytest.fixture(scope="module")
def requests(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "test_requests.jsonl").read_text().splitlines()]


def explain(run_dir: Path, data_dir: Path, row: dict) -> Explanation:
    model, schema, _ = load_run(run_dir)
    return explain_request(model, Features.of_dataset(data_dir, schema), row)


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["explain", *args], input=input)


def first_with_history(requests: list[dict], at_least: int = 3) -> int:
    return next(i for i, r in enumerate(requests) if len(r["hist_item_id"]) >= at_least)


# --- The weights -------------------------------------------------------------------------------------


def test_weights_and_score_are_the_models_on_the_encoded_row(run_dir: Path, data_dir: Path,
                                                               requests: list[dict]) -> None:
    """Request line i is npz row i of the test split: the weights must be the model's on that row."""
    model, schema, _ = load_run(run_dir)
    arrays = load_split(data_dir, "test", schema)
    lengths = [len(r["hist_item_id"]) for r in requests]
    picks = [lengths.index(n) for n in sorted(set(lengths))]  # one row of every history length, 0 included
    for i in picks:
        e = explain(run_dir, data_dir, requests[i])
        x = {k: torch.from_numpy(v[i:i + 1]) for k, v in arrays.items() if k not in ("label", "group")}
        with torch.no_grad():
            logits, weights = model(x, return_attention=True)
        n = int(arrays["hist_len"][i])
        assert len(e.weights) == n == lengths[i]
        np.testing.assert_allclose(e.weights, weights[0, :n].numpy(), rtol=1e-6, atol=1e-7)
        assert e.prob == pytest.approx(float(torch.sigmoid(logits)[0]), abs=1e-7)
        assert e.history["hist_item_id"] == requests[i]["hist_item_id"]
        assert e.target == {"item_id": requests[i]["item_id"], "cate_id": requests[i]["cate_id"]}
        assert e.dropped == 0


def test_trained_weights_depend_on_the_items(run_dir: Path, data_dir: Path, requests: list[dict]) -> None:
    e = explain(run_dir, data_dir, requests[first_with_history(requests, MAX_LEN - 2)])
    assert np.ptp(e.weights) > 0


def test_long_history_keeps_the_most_recent_max_len(run_dir: Path, data_dir: Path, requests: list[dict]) -> None:
    row = requests[first_with_history(requests)]
    items = [f"i{k % 60}" for k in range(2 * MAX_LEN + 3)]
    cates = [f"c{k % 60 % 6}" for k in range(2 * MAX_LEN + 3)]
    long = {**row, "hist_item_id": items, "hist_cate_id": cates}
    recent = {**row, "hist_item_id": items[-MAX_LEN:], "hist_cate_id": cates[-MAX_LEN:]}
    e, r = explain(run_dir, data_dir, long), explain(run_dir, data_dir, recent)
    assert e.dropped == MAX_LEN + 3 and r.dropped == 0
    assert e.history == r.history and e.history["hist_item_id"] == items[-MAX_LEN:]
    np.testing.assert_array_equal(e.weights, r.weights)
    assert "the 11 older ones are beyond max_len" in format_table(e)


def test_unseen_items_and_matches_with_the_target(run_dir: Path, data_dir: Path, requests: list[dict]) -> None:
    row = {**requests[0], "item_id": "i7", "cate_id": "c1",
           "hist_item_id": ["i7", "never-seen", "i3", 13], "hist_cate_id": ["c1", "c1", "c3", "c1"]}
    e = explain(run_dir, data_dir, row)
    assert e.unseen.tolist() == [False, True, False, True]  # 13 is looked up as "13", not a known id
    assert e.matches["hist_item_id"].tolist() == [True, False, False, False]
    assert e.matches["hist_cate_id"].tolist() == [True, True, False, True]
    assert e.history["hist_item_id"] == ["i7", "never-seen", "i3", "13"]


def test_an_unseen_target_matches_nothing(run_dir: Path, data_dir: Path, requests: list[dict]) -> None:
    row = {**requests[0], "item_id": "new", "hist_item_id": ["other-new", "i3"], "hist_cate_id": ["c1", "c3"]}
    assert not explain(run_dir, data_dir, row).matches["hist_item_id"].any()


def test_base_model_has_no_attention_to_explain(data_dir: Path, requests: list[dict], tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(data_dir, base, ModelConfig(model="base", embed_dim=4, mlp_hidden=(8,)),
          TrainConfig(batch_size=256, epochs=1, threads=1, device="cpu"), quiet=True)
    with pytest.raises(DataError, match="base model"):
        explain(base, data_dir, requests[0])
    result = cli(str(base), json.dumps(requests[0]))
    assert result.exit_code == 1 and "base model" in result.output


# --- The table ---------------------------------------------------------------------------------------


def explanation(weights: list[float], matches: list[bool], unseen: list[bool]) -> Explanation:
    n = len(weights)
    return Explanation(
        prob=0.25, attention_norm="none", target={"item_id": "i9", "cate_id": "c2"},
        history={"hist_item_id": [f"i{k}" for k in range(n)], "hist_cate_id": ["c2" if m else "c5" for m in matches]},
        weights=np.array(weights), unseen=np.array(unseen),
        matches={"hist_item_id": np.zeros(n, bool), "hist_cate_id": np.array(matches)}, dropped=0)


def test_table_rows_bars_and_markers() -> None:
    e = explanation([0.5, -0.25, 0.0], [True, False, True], [False, True, False])
    lines = format_table(e).splitlines()
    assert lines[0].startswith("target item_id=i9  cate_id=c2  p(click) 0.2500")
    body = lines[2:5]
    assert body[0].split()[:4] == ["1", "i0", "c2*", "0.5000"] and body[0].endswith("#" * BAR_WIDTH)
    assert body[1].split()[:5] == ["2", "i1", "(unseen)", "c5", "-0.2500"]
    assert body[1].endswith(" " + "-" * (BAR_WIDTH // 2))
    assert body[2].split() == ["3", "i2", "c2*", "0.0000"]
    assert "3 history items" in lines[5] and "sum of weights 0.2500" in lines[5]


def test_table_of_an_empty_history() -> None:
    text = format_table(explanation([], [], []))
    assert text.splitlines()[1] == "empty history: the attention-pooled interest vector is zero"


# --- The command -------------------------------------------------------------------------------------


def test_cli_file_line_and_picture(run_dir: Path, data_dir: Path, requests: list[dict], tmp_path: Path) -> None:
    i = first_with_history(requests)
    png = tmp_path / "pics" / "attention.png"
    result = cli(str(run_dir), str(data_dir / "test_requests.jsonl"), "--line", str(i + 1), "--out", str(png))
    assert result.exit_code == 0, result.output
    e = explain(run_dir, data_dir, requests[i])
    lines = result.output.splitlines()
    assert len(lines) == len(e.weights) + 4  # target, header, items, footer, "wrote"
    for k, (item, weight) in enumerate(zip(e.history["hist_item_id"], e.weights, strict=True)):
        assert lines[2 + k].split()[1].rstrip("*") == item
        assert f"{weight:.4f}" in lines[2 + k]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_defaults_to_the_first_request_and_reads_stdin(run_dir: Path, data_dir: Path,
                                                           requests: list[dict]) -> None:
    text = (data_dir / "test_requests.jsonl").read_text()
    by_file = cli(str(run_dir), str(data_dir / "test_requests.jsonl"))
    by_line = cli(str(run_dir), str(data_dir / "test_requests.jsonl"), "--line", "1")
    by_stdin = cli(str(run_dir), "-", input=text)
    inline = cli(str(run_dir), json.dumps(requests[0]))
    assert by_file.exit_code == by_line.exit_code == by_stdin.exit_code == inline.exit_code == 0
    assert by_file.output == by_line.output == by_stdin.output == inline.output


def test_cli_line_counts_blank_lines(run_dir: Path, requests: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests[1]) + "\n\n" + json.dumps(requests[2]) + "\n")
    assert cli(str(run_dir), str(path), "--line", "3").output == cli(str(run_dir), json.dumps(requests[2])).output
    blank = cli(str(run_dir), str(path), "--line", "2")
    assert blank.exit_code == 1 and "no request on line 2" in blank.output


@pytest.mark.parametrize("row_change, field", [({"hist_cate_id": None}, "hist_cate_id"),
                                               ({"age": "old"}, "age"),
                                               ({"hist_item_id": ["i1", "i2"], "hist_cate_id": ["c1"]}, None)])
def test_cli_bad_field_names_line_and_field(run_dir: Path, requests: list[dict], tmp_path: Path,
                                            row_change: dict, field: str | None) -> None:
    row = {**requests[0], **row_change}
    row = {k: v for k, v in row.items() if v is not None}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests[0]) + "\n" + json.dumps(row) + "\n")
    png = tmp_path / "a.png"
    result = cli(str(run_dir), str(path), "--line", "2", "--out", str(png))
    assert result.exit_code == 1
    assert f"{path} line 2" in result.output and "Traceback" not in result.output
    if field:
        assert repr(field) in result.output
    assert not png.exists() and not list(tmp_path.glob(".*.tmp"))


def test_cli_refuses_bad_requests(run_dir: Path, requests: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests[0]) + "\n{not json\n[1, 2]\n")
    malformed = cli(str(run_dir), str(path), "--line", "2")
    assert malformed.exit_code == 1 and "line 2" in malformed.output and "malformed JSON" in malformed.output
    array = cli(str(run_dir), str(path), "--line", "3")
    assert array.exit_code == 1 and "line 3" in array.output and "expected a JSON object" in array.output
    past_end = cli(str(run_dir), str(path), "--line", "9")
    assert past_end.exit_code == 1 and "no request on line 9" in past_end.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli(str(run_dir), str(empty)).exit_code == 1
    inline_line = cli(str(run_dir), json.dumps(requests[0]), "--line", "1")
    assert inline_line.exit_code == 2 and "--line" in inline_line.output
    assert cli(str(run_dir), "{not json").exit_code == 2
    assert cli(str(run_dir), "[1]").exit_code == 2
    missing = cli(str(run_dir), str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == 2 and "neither a JSON object nor a file" in missing.output


def test_cli_empty_history(run_dir: Path, requests: list[dict], tmp_path: Path) -> None:
    row = json.dumps({**requests[0], "hist_item_id": [], "hist_cate_id": []})
    shown = cli(str(run_dir), row)
    assert shown.exit_code == 0 and "empty history" in shown.output
    png = tmp_path / "a.png"
    drawn = cli(str(run_dir), row, "--out", str(png))
    assert drawn.exit_code == 1 and "empty history" in drawn.output
    assert not png.exists()


def test_cli_not_a_run(tmp_path: Path, requests: list[dict]) -> None:
    result = cli(str(tmp_path), json.dumps(requests[0]))
    assert result.exit_code == 1 and "config.json is missing" in result.output
