"""The compact dataset layout: histories stored once and gathered per batch, same batches as the padded npz.

The padded reference here is built row by row in plain Python from the compact files, independently
of `Split.take`'s vectorised gather; test_prepare checks the padded histories against the raw events.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import din_export.prepare as prepare_module
from din_export.cli import main
from din_export.data import Batches, DataError, keep_rows, load_split, load_splits
from din_export.prepare import prepare
from din_export.schema import PAD_INDEX, Schema
from din_export.synthetic import SyntheticConfig, generate, to_events

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def synthetic_events() -> object:
    return to_events(generate(SyntheticConfig(users=300, items=200, categories=12), seed=1))


@pytest.fixture(scope="module")
def compact_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_events: object) -> Path:
    out = tmp_path_factory.mktemp("compact") / "ds"
    prepare(synthetic_events, out, max_len=12, seed=2)
    return out


def padded_by_loop(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    """The npz arrays of a compact split, one row at a time."""
    schema = Schema.load(data_dir)
    cols = {p.stem: np.load(p) for p in (data_dir / split).glob("*.npy")}
    events = {h: np.load(data_dir / "events" / f"{h}.npy") for h in schema.histories}
    n = len(cols["label"])
    out = {k: v.astype(np.float32 if k in ("label", "dense") else np.int64) for k, v in cols.items()
           if k != "hist_end"}
    for h in schema.histories:
        padded = np.full((n, schema.max_len), PAD_INDEX, dtype=np.int64)
        for i in range(n):
            length, end = int(cols["hist_len"][i]), int(cols["hist_end"][i])
            padded[i, :length] = events[h][end - length:end]
        out[h] = padded
    return out


def npz_copy(data_dir: Path, dest: Path) -> Path:
    """The same dataset in the older layout: <split>.npz with padded histories."""
    dest.mkdir()
    for name in ("schema.json", "vocab", "freq"):
        src = data_dir / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dest / name)
    for s in SPLITS:
        np.savez(dest / f"{s}.npz", **padded_by_loop(data_dir, s))
    return dest


def test_the_layout_stores_each_history_once(compact_dir: Path) -> None:
    schema = Schema.load(compact_dir)
    assert not list(compact_dir.glob("*.npz"))
    events = {p.stem: np.load(p, mmap_mode="r") for p in (compact_dir / "events").glob("*.npy")}
    assert set(events) == set(schema.histories)
    stats = json.loads((compact_dir / "stats.json").read_text())
    # the synthetic table is explicit: the histories are the clicks, one event each
    assert len(events["hist_item_id"]) == len(events["hist_cate_id"]) < stats["events"]["events_used"]
    assert all(a.dtype == np.int32 for a in events.values())
    for s in SPLITS:
        files = {p.stem: np.load(p, mmap_mode="r") for p in (compact_dir / s).glob("*.npy")}
        assert set(files) == {"item_id", "cate_id", "gender", "hist_len", "hist_end", "label", "group", "dense"}
        assert all(a.shape[0] == stats["samples"][s] for a in files.values())
        assert files["item_id"].dtype == np.int32 and files["label"].dtype == np.int8
        assert files["hist_len"].max() <= schema.max_len


def test_batches_equal_the_padded_layouts_batch_for_batch(compact_dir: Path, tmp_path: Path) -> None:
    old = npz_copy(compact_dir, tmp_path / "npz")
    schema = Schema.load(compact_dir)
    new_splits, old_splits = load_splits(compact_dir, SPLITS, schema), load_splits(old, SPLITS, schema)
    assert all(new_splits[s].compact and not old_splits[s].compact for s in SPLITS)
    for s in SPLITS:
        for key in new_splits[s]:
            np.testing.assert_array_equal(new_splits[s][key], old_splits[s][key])
            assert new_splits[s][key].dtype == old_splits[s][key].dtype
    for kwargs in ({"shuffle": True, "seed": 5}, {"shuffle": True, "seed": 5, "rank": 1, "world": 2},
                   {"shuffle": False}):
        for epoch in (0, 3):
            new = list(Batches(new_splits["train"], schema, 97, **kwargs).epoch(epoch))
            ref = list(Batches(old_splits["train"], schema, 97, **kwargs).epoch(epoch))
            assert len(new) == len(ref) > 1
            for a, b in zip(new, ref, strict=True):
                assert a.keys() == b.keys()
                for k in a:
                    assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_the_dataset_size_does_not_grow_with_max_len(synthetic_events: object, tmp_path: Path) -> None:
    def array_bytes(max_len: int) -> int:
        """Every file but the JSON ones (requests, stats and schema hold max_len or histories as text)."""
        out = tmp_path / f"L{max_len}"
        prepare(synthetic_events, out, max_len=max_len, seed=0)
        return sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and ".json" not in p.name)

    assert array_bytes(5) == array_bytes(400) > 0


def test_columns_are_memory_mapped(compact_dir: Path) -> None:
    split = load_split(compact_dir, "test")
    assert isinstance(split.columns["label"], np.memmap)
    assert all(isinstance(a, np.memmap) for a in split.events.values())
    rows = split.take(np.array([3, 0, 3]))
    assert rows["hist_item_id"].shape == (3, int(rows["hist_len"].max()))
    np.testing.assert_array_equal(rows["hist_item_id"][0], rows["hist_item_id"][2])


def test_an_older_npz_dataset_still_trains(compact_dir: Path, tmp_path: Path) -> None:
    old = npz_copy(compact_dir, tmp_path / "npz")
    run = CliRunner().invoke(main, ["train", str(old), "--out", str(tmp_path / "run"), "--config", "edge",
                                    "--epochs", "1", "--quiet"])
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["rows"] > 0


def _broken_copy(compact_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(compact_dir, bad)
    return bad


@pytest.mark.parametrize(("path", "change", "message"), [
    ("train/item_id.npy", lambda a: _set(a, 7, 10**6), r"train/item_id.npy row 7: 'item_id' = 1000000 is outside"),
    ("train/label.npy", lambda a: _set(a, 4, 3), r"train/label.npy row 4: 'label' is 3, expected 0 or 1"),
    ("test/hist_end.npy", lambda a: _set(a, 2, 10**8), r"test/hist_end.npy row 2: history window .* is outside"),
    ("valid/hist_len.npy", lambda a: _set(a, 1, 99), r"valid/hist_len.npy row 1: 'hist_len' = 99 is outside 0..12"),
    ("events/hist_cate_id.npy", lambda a: _set(a, 5, -3), r"hist_cate_id.npy row 5: 'hist_cate_id' = -3 is outside"),
    ("train/dense.npy", lambda a: a[:-1], r"'dense' has shape"),
    ("train/clicks.npy", lambda a: np.zeros(3), r"unknown columns \['clicks'\]"),
    ("valid/group.npy", None, r"valid/group.npy: missing"),
])
def test_bad_compact_data_is_named_by_file_row_and_field(compact_dir: Path, tmp_path: Path, path: str,
                                                        change: object, message: str) -> None:
    bad = _broken_copy(compact_dir, tmp_path)
    target = bad / path
    if change is None:
        target.unlink()
    else:
        np.save(target, change(np.load(target) if target.exists() else None))
    with pytest.raises(DataError, match=message):
        load_splits(bad)


def _set(a: np.ndarray, i: int, value: int) -> np.ndarray:
    a = a.copy()
    a[i] = value
    return a


def test_keep_rows_keeps_the_windows(compact_dir: Path, tmp_path: Path) -> None:
    cut = _broken_copy(compact_dir, tmp_path)
    rows = np.array([1, 4, 9, 30])
    keep_rows(cut, "train", rows)
    whole, part = load_split(compact_dir, "train"), load_split(cut, "train")
    for key, value in part.take(np.arange(4)).items():
        np.testing.assert_array_equal(value, whole.take(rows)[key])


def test_requests_are_capped_unless_asked_for_all(synthetic_events: object, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "REQUESTS_CAP", 50)
    capped = prepare(synthetic_events, tmp_path / "capped", max_len=12, seed=2)
    full = prepare(synthetic_events, tmp_path / "full", max_len=12, seed=2, all_requests=True)
    for s in ("valid", "test"):
        lines = (tmp_path / "capped" / f"{s}_requests.jsonl").read_text().splitlines()
        all_lines = (tmp_path / "full" / f"{s}_requests.jsonl").read_text().splitlines()
        assert len(lines) == capped["requests"][s]["written"] == 50
        assert len(all_lines) == full["requests"][s]["written"] == full["samples"][s] > 50
        assert lines == all_lines[:50]
    summary = prepare_module._summary(tmp_path / "capped", capped)
    assert "capped at the first 50 samples of valid, test; --all-requests writes every sample" in summary
    assert "(every sample)" in prepare_module._summary(tmp_path / "full", full)


def test_released_events_give_the_same_dataset(compact_dir: Path, tmp_path: Path) -> None:
    events = to_events(generate(SyntheticConfig(users=300, items=200, categories=12), seed=1))
    prepare(events, tmp_path / "released", max_len=12, seed=2, release_events=True)
    assert list(events.frame.columns) == []  # the CLI's way: the table is not held twice
    for p in sorted(compact_dir.rglob("*")):
        if p.is_file():
            assert (tmp_path / "released" / p.relative_to(compact_dir)).read_bytes() == p.read_bytes(), p
