"""Training, evaluation and prediction: run directory, metrics, exact resume, presets, bad data, predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from din_runtime.metrics import gauc
from safetensors.torch import load_file
from train_fixtures import make_dataset

from din_export.checkpoints import load_run
from din_export.cli import main
from din_export.config import load_preset, preset_names, resolve_configs
from din_export.data import Batches, DataError, load_schema, load_split
from din_export.evaluate import predict_proba
from din_export.model import DIN, ModelConfig
from din_export.train import RunError, TrainConfig, processes, train

SMALL = ModelConfig(embed_dim=4, attention_hidden=(8,), mlp_hidden=(16, 8))
FAST = TrainConfig(batch_size=64, epochs=5, patience=0, threads=1, lr=0.01)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "run"
    return out, train(data_dir, out, SMALL, FAST, quiet=True)


def history_metrics(record: dict) -> list:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]


# --- The run directory -------------------------------------------------------------------------------


def test_run_directory_and_metrics(run: tuple[Path, dict]) -> None:
    out, record = run
    for name in ("config.json", "model.safetensors", "metrics.json", "curve.png", "state/last.safetensors",
                 "state/last.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == record
    assert 1 <= record["best_epoch"] <= 5 and record["epochs_run"] == 5
    for split in ("valid", "test"):
        assert set(record[split]) == {"auc", "gauc", "logloss", "rows"}
    assert record["valid"] == record["history"][record["best_epoch"] - 1]["valid"]
    assert record["valid"]["gauc"] == max(h["valid"]["gauc"] for h in record["history"])
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[-1] < losses[0]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert set(config) == {"model", "train", "schema", "data_dir"}
    assert config["train"]["batch_size"] == FAST.batch_size


def test_learns_the_synthetic_signal(run: tuple[Path, dict]) -> None:
    # Clicks follow the user's liked categories, so a trained model ranks far above chance.
    assert run[1]["test"]["auc"] > 0.6


def test_metrics_are_din_runtime_metrics_of_the_best_model(run: tuple[Path, dict], data_dir: Path) -> None:
    out, record = run
    model, schema, _ = load_run(out)
    assert not model.training
    test = load_split(data_dir, "test", schema)
    probs = predict_proba(model, test, schema, batch_size=97)
    assert record["test"]["gauc"] == pytest.approx(gauc(test["label"], probs, test["group"]), abs=1e-12)
    # GAUC is grouped by the `group` array: grouping by item instead gives another number.
    assert record["test"]["gauc"] != pytest.approx(gauc(test["label"], probs, test["item_id"]), abs=1e-6)


def test_checkpoints_are_safetensors_not_pickle(run: tuple[Path, dict]) -> None:
    out, _ = run
    model, _, _ = load_run(out)
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(model.state_dict())
    assert any(k.endswith("running_mean") for k in weights)  # Dice buffers travel with the weights
    state = load_file(out / "state" / "last.safetensors")
    assert any(k.startswith("optim.") and k.endswith("exp_avg_sq") for k in state)
    assert {k.removeprefix("best.") for k in state if k.startswith("best.")} == set(weights)
    for path in out.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:4]
            assert head[:1] != b"\x80" and head != b"PK\x03\x04", f"{path} looks like a pickle or torch.save zip"


# --- Determinism and resume --------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(run: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    again = train(data_dir, tmp_path / "again", SMALL, FAST, quiet=True)
    assert history_metrics(again) == history_metrics(run[1])
    other = train(data_dir, tmp_path / "other", SMALL, TrainConfig(**{**FAST.to_dict(), "seed": 1}), quiet=True)
    assert history_metrics(other) != history_metrics(run[1])


def test_resume_two_then_four_equals_straight_four(data_dir: Path, tmp_path: Path) -> None:
    cfg4 = TrainConfig(**{**FAST.to_dict(), "epochs": 4})
    straight = train(data_dir, tmp_path / "straight", SMALL, cfg4, quiet=True)
    first = train(data_dir, tmp_path / "resumed", SMALL, TrainConfig(**{**FAST.to_dict(), "epochs": 2}), quiet=True)
    assert first["epochs_run"] == 2
    resumed = train(data_dir, tmp_path / "resumed", SMALL, cfg4, resume=True, quiet=True)
    assert resumed["test"] == straight["test"]
    assert history_metrics(resumed) == history_metrics(straight)
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_resume_refuses_another_experiment_and_fresh_run_refuses_existing_dir(run: tuple[Path, dict],
                                                                               data_dir: Path) -> None:
    out, _ = run
    with pytest.raises(RunError, match="already holds a run"):
        train(data_dir, out, SMALL, FAST, quiet=True)
    with pytest.raises(RunError, match="lr"):
        train(data_dir, out, SMALL, TrainConfig(**{**FAST.to_dict(), "lr": 0.1}), resume=True, quiet=True)
    with pytest.raises(RunError, match="model config"):
        train(data_dir, out, ModelConfig(embed_dim=5), FAST, resume=True, quiet=True)


def _cli_train(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from din_export.cli import main; main()", "train", str(data_dir), "--out",
           str(out), "--threads", "1", "--batch-size", "16", "--lr", "0.003", "--epochs", "3", "--patience", "0",
           "--set", "model.embed_dim=4", "--set", "model.attention_hidden=[8]", "--set", "model.mlp_hidden=[16, 8]",
           "--checkpoint-steps", "5", "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "data", n_train=480, n_valid=100, n_test=100)
    cfg = TrainConfig(batch_size=16, lr=3e-3, epochs=3, patience=0, threads=1, checkpoint_steps=5)
    straight = train(data_dir, tmp_path / "straight", SMALL, cfg, quiet=True)

    out = tmp_path / "killed"
    proc = _cli_train(data_dir, out)
    progress = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            progress = json.loads((out / "state" / "last.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            progress = None
        if progress and progress["epoch"] >= 1 and progress["step"] > 0:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()[1].decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progress["epoch"] < 3
    for path in out.rglob("*"):  # whatever was on disk at the kill is whole (temporaries aside)
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(path)

    resumed = _cli_train(data_dir, out, "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()
    record = json.loads((out / "metrics.json").read_text())
    assert record["test"] == straight["test"]
    assert history_metrics(record) == history_metrics(straight)
    assert not list(out.rglob("*.tmp"))


# --- Batches ------------------------------------------------------------------------------------------


def test_batches_cover_every_row_trim_padding_and_repeat_per_seed_epoch(data_dir: Path) -> None:
    schema = load_schema(data_dir)
    arrays = load_split(data_dir, "train", schema)
    batches = Batches(arrays, schema, 50, shuffle=True, seed=3)
    seen = []
    for b in batches.epoch(0):
        assert b["hist_item_id"].shape[1] == int(b["hist_len"].max())
        assert b["hist_item_id"].dtype == torch.int64 and b["label"].dtype == torch.float32
        seen.append(b["item_id"])
    order = batches.order(0)
    assert torch.equal(torch.cat(seen), torch.from_numpy(arrays["item_id"][order]))
    assert sorted(order) == list(range(len(arrays["label"])))
    assert np.array_equal(order, Batches(arrays, schema, 50, shuffle=True, seed=3).order(0))
    assert not np.array_equal(order, batches.order(1))
    assert not np.array_equal(order, Batches(arrays, schema, 50, shuffle=True, seed=4).order(0))


def test_batches_shard_each_global_batch_across_processes(data_dir: Path) -> None:
    schema = load_schema(data_dir)
    arrays = load_split(data_dir, "train", schema)
    whole = [b["item_id"] for b in Batches(arrays, schema, 64, shuffle=True).epoch(2)]
    shards = [[b["item_id"] for b in Batches(arrays, schema, 64, shuffle=True, rank=r, world=2).epoch(2)]
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]]), batch)


def test_a_last_batch_of_one_row_joins_the_one_before(data_dir: Path) -> None:
    schema = load_schema(data_dir)
    arrays = {k: v[:129] for k, v in load_split(data_dir, "train", schema).items()}
    sizes = [len(b["label"]) for b in Batches(arrays, schema, 64, shuffle=True).epoch(0)]
    assert sizes == [64, 65]


# --- Presets and configuration -----------------------------------------------------------------------


def test_presets_load_and_build(data_dir: Path) -> None:
    assert {"paper", "official", "edge"} <= set(preset_names())
    schema = load_schema(data_dir)
    configs = {name: load_preset(name) for name in ("paper", "official", "edge")}
    assert configs["paper"][0].attention_norm == "none" and configs["paper"][0].mlp_activation == "dice"
    assert configs["paper"][0].attention_hidden == (80, 40) and configs["paper"][0].mlp_hidden == (200, 80)
    assert configs["official"][0].attention_norm == "softmax"
    assert configs["official"][0].attention_activation == "sigmoid"
    assert configs["edge"][0].embed_dim <= 16 and configs["edge"][0].mlp_activation == "prelu"
    for model_cfg, train_cfg, description in configs.values():
        assert description and isinstance(train_cfg, TrainConfig)
        batch = next(Batches(load_split(data_dir, "valid", schema), schema, 8, shuffle=False).epoch())
        assert DIN(schema, model_cfg).eval()(batch).shape == (8,)


def test_preset_by_path_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"description": "x", "model": {"embed_dim": 6}, "train": {"lr": 0.5}}))
    model_cfg, train_cfg = resolve_configs(str(path), None, {"model": "base", "attention_norm": None},
                                           {"epochs": 7, "lr": None}, ("model.dropout=0.25", "train.seed=9"))
    assert (model_cfg.embed_dim, model_cfg.model, model_cfg.dropout) == (6, "base", 0.25)
    assert (train_cfg.lr, train_cfg.epochs, train_cfg.seed) == (0.5, 7, 9)
    # named flags win over --set, which wins over the preset
    _, train_cfg = resolve_configs("edge", None, {}, {"lr": 0.1}, ("train.lr=0.2",))
    assert train_cfg.lr == 0.1
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("nope")
    path.write_text(json.dumps({"model": {"embed_dimm": 6}}))
    with pytest.raises(ValueError, match="embed_dimm"):
        load_preset(str(path))


def test_cli_train_with_preset_and_flags(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(data_dir), "--out", str(out), "--config", "edge", "--epochs",
                                       "1", "--threads", "1", "--attention-norm", "softmax", "--model", "din",
                                       "--mba-lambda", "0.01", "--set", "model.embed_dim=4", "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    edge_model, edge_train, _ = load_preset("edge")
    assert config["model"]["attention_norm"] == "softmax" and config["model"]["embed_dim"] == 4
    assert config["model"]["mlp_hidden"] == list(edge_model.mlp_hidden)
    assert config["train"]["epochs"] == 1 and config["train"]["mba_lambda"] == 0.01
    assert config["train"]["lr"] == edge_train.lr
    bad = CliRunner().invoke(main, ["train", str(data_dir), "--out", str(tmp_path / "x"), "--set", "nonsense"])
    assert bad.exit_code == 2 and "--set" in bad.output


# --- Bad data ----------------------------------------------------------------------------------------


def _broken(data_dir: Path, tmp_path: Path, split: str, change: dict) -> Path:
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in data_dir.iterdir():
        (bad / p.name).symlink_to(p)
    # the split is rewritten in the older npz layout, which load_split still reads and checks alike
    (bad / split).unlink()
    arrays = dict(load_split(data_dir, split))
    for key, fn in change.items():
        for k in arrays if key == "*" else [key]:
            arrays[k] = fn(arrays.get(k))
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(bad / f"{split}.npz", **arrays)
    return bad


def _with(index: int, value: float) -> object:
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a.flat[index] = value
        return a
    return change


@pytest.mark.parametrize(("split", "change", "message"), [
    ("train", {"label": _with(5, 0.5)}, r"train.npz row 5: 'label' is 0.5, expected 0 or 1"),
    ("valid", {"*": lambda a: a[:0]}, "the valid split is empty"),
    ("train", {"clicks": lambda a: np.zeros(1200)}, r"unknown columns \['clicks'\]"),
    ("test", {"hist_len": lambda a: None}, r"missing columns \['hist_len'\]"),
    ("train", {"item_id": _with(7, 999)}, "row 7: 'item_id' = 999 is outside vocabulary 'item_id'"),
    ("train", {"hist_cate_id": _with(3 * 8 + 2, -1)}, "row 3: 'hist_cate_id' = -1 is outside"),
    ("train", {"hist_len": _with(4, 9)}, "row 4: 'hist_len' = 9 is outside 0..8"),
    ("train", {"dense": _with(2, np.nan)}, "row 2: 'dense' is not finite"),
    ("train", {"user_id": lambda a: a.astype(np.float32)}, "'user_id' has dtype float32, expected int64"),
])
def test_bad_data_is_named_by_split_row_and_field(data_dir: Path, tmp_path: Path, split: str, change: dict,
                                                 message: str) -> None:
    bad = _broken(data_dir, tmp_path, split, change)
    with pytest.raises(DataError, match=message):
        load_split(bad, split)
    result = CliRunner().invoke(main, ["train", str(bad), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error:" in result.output and split in result.output
    assert not (tmp_path / "run").exists()  # nothing written for a dataset that fails its checks


def test_object_arrays_are_refused_without_pickle(data_dir: Path, tmp_path: Path) -> None:
    bad = _broken(data_dir, tmp_path, "train", {"label": lambda a: a.astype(object)})
    with pytest.raises(DataError, match="without pickle"):
        load_split(bad, "train")


def test_a_validation_split_without_both_labels_is_refused(data_dir: Path, tmp_path: Path) -> None:
    bad = _broken(data_dir, tmp_path, "valid", {"label": lambda a: np.ones_like(a)})
    with pytest.raises(DataError, match="GAUC"):
        train(bad, tmp_path / "run", SMALL, FAST, quiet=True)


# --- evaluate and predict ----------------------------------------------------------------------------


def test_evaluate_reports_the_runs_test_metrics(run: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    out, record = run
    result = CliRunner().invoke(main, ["evaluate", str(out), str(data_dir), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["test"] == pytest.approx(record["test"])
    assert report["valid"] == pytest.approx(record["valid"])
    table = CliRunner().invoke(main, ["evaluate", str(out), str(data_dir), "--split", "test",
                                      "--json", str(tmp_path / "m.json")])
    assert table.exit_code == 0 and table.output.startswith("test ") and "GAUC" in table.output
    assert json.loads((tmp_path / "m.json").read_text())["test"] == report["test"]


def test_predict_writes_din_score_format_with_the_torch_scores(run: tuple[Path, dict], data_dir: Path,
                                                               tmp_path: Path) -> None:
    out, _ = run
    target = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(main, ["predict", str(out), str(data_dir / "test_requests.jsonl"), "-o",
                                       str(target), "--id-field", "request_id", "--batch-size", "77"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [list(line) for line in lines[:2]] == [["request_id", "score"]] * 2
    assert [line["request_id"] for line in lines] == [f"req-{i}" for i in range(len(lines))]
    model, schema, _ = load_run(out)
    expected = predict_proba(model, load_split(data_dir, "test", schema), schema, batch_size=4096)
    np.testing.assert_allclose([line["score"] for line in lines], expected, rtol=1e-5, atol=1e-6)

    plain = CliRunner().invoke(main, ["predict", str(out), str(data_dir / "test_requests.jsonl"), "-o", "-"])
    assert plain.exit_code == 0 and json.loads(plain.output.splitlines()[0]).keys() == {"score"}


def test_predict_stops_at_a_bad_request_and_writes_nothing(run: tuple[Path, dict], data_dir: Path,
                                                           tmp_path: Path) -> None:
    rows = (data_dir / "test_requests.jsonl").read_text().splitlines()
    broken = json.loads(rows[3])
    broken["hist_cate_id"] = broken["hist_cate_id"] + ["c1"]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(rows[:3] + [json.dumps(broken)] + rows[4:]) + "\n")
    target = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(main, ["predict", str(run[0]), str(requests), "-o", str(target)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "line 4" in result.output and "hist_cate_id" in result.output
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))


_INIT_PROCESS_GROUP = torch.distributed.init_process_group


def _one_rank_gloo_group(*_: object, **__: object) -> None:
    # a real gloo group of one rank, so that processes() can run its multi-process path in one process
    _INIT_PROCESS_GROUP("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)


def test_processes_destroys_the_group_it_created(monkeypatch):
    # a gloo group left to the interpreter's exit can abort the process after training (seen under torchrun)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "init_process_group", _one_rank_gloo_group)
    with processes(TrainConfig(threads=1, device="cpu")) as dist:
        assert torch.distributed.is_initialized() and dist.world == 2 and dist.rank == 0
    assert not torch.distributed.is_initialized()


def test_processes_leaves_a_callers_group_alone(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    _one_rank_gloo_group()
    try:
        with processes(TrainConfig(threads=1, device="cpu")):
            pass
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()
