"""The synthetic shoppers generator: determinism, sizes, the story it promises, files and the CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from din_export.cli.synthetic import main
from din_export.sources import SourceError
from din_export.synthetic import (
    DENSE,
    SPARSE,
    SyntheticConfig,
    generate,
    generate_blocks,
    load,
    write_events,
)

SMALL = SyntheticConfig(users=60, items=50, categories=6, min_events=5, max_events=12)


@pytest.fixture(scope="module")
def default_events() -> pd.DataFrame:
    return generate(SyntheticConfig(), seed=0)


def test_deterministic_under_seed() -> None:
    a, b, c = generate(SMALL, seed=3), generate(SMALL, seed=3), generate(SMALL, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_sizes_and_columns() -> None:
    ev = generate(SMALL, seed=1)
    assert list(ev.columns) == ["user", "item", "category", "timestamp", "label", "gender", "age", "price"]
    per_user = ev.groupby("user").size()
    assert len(per_user) == SMALL.users
    assert per_user.between(SMALL.min_events, SMALL.max_events).all()
    assert ev["item"].between(1, SMALL.items).all() and ev["category"].nunique() <= SMALL.categories
    # an item has one category and one price; a user one gender and one age
    assert (ev.groupby("item")[["category", "price"]].nunique() == 1).all().all()
    assert (ev.groupby("user")[["gender", "age"]].nunique() == 1).all().all()
    assert set(ev["label"].unique()) <= {0, 1} and set(ev["gender"]) <= {"F", "M"}
    assert (ev.groupby("user")["timestamp"].diff().dropna() > 0).all()  # strictly increasing per user


def test_users_have_few_interests(default_events: pd.DataFrame) -> None:
    # with 2-3 interests and 70% of impressions drawn from them, the top 3 categories of a user
    # cover far more of their impressions than 3 of 20 categories would at random (15%)
    share = default_events.groupby("user")["category"].agg(lambda c: c.value_counts().iloc[:3].sum() / len(c))
    assert share.mean() > 0.6


def test_clicks_follow_recent_matching_clicks(default_events: pd.DataFrame) -> None:
    """The label depends on the target's relation to the history: recompute 'how many of the last
    `memory` clicks share the target's category' from the table and compare click rates."""
    memory = SyntheticConfig().memory
    matches = []
    for _, g in default_events.groupby("user", sort=False):
        recent: list[str] = []
        for cat, y in zip(g["category"], g["label"], strict=True):
            matches.append(sum(c == cat for c in recent[-memory:]))
            if y:
                recent.append(cat)
    ordered = pd.concat([g for _, g in default_events.groupby("user", sort=False)])
    rate = ordered.assign(m=np.minimum(matches, 3)).groupby("m")["label"].mean()
    assert rate.is_monotonic_increasing and rate[3] - rate[0] > 0.4
    assert 0.2 < default_events["label"].mean() < 0.6


@pytest.mark.parametrize("name", ["ev.csv", "ev.parquet"])
def test_write_and_load(tmp_path: Path, name: str) -> None:
    frame = generate(SMALL, seed=2)
    write_events(frame, tmp_path / name)
    ev = load(tmp_path / name)
    assert ev.source == "synthetic" and ev.explicit and ev.sparse == SPARSE and ev.dense == DENSE
    assert len(ev.frame) == len(frame)
    assert ev.frame["item"].astype(str).tolist() == frame["item"].astype(str).tolist()
    np.testing.assert_allclose(ev.frame["price"], frame["price"])
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600


def test_load_default_and_errors(tmp_path: Path) -> None:
    ev = load(None, seed=0)
    assert len(ev.frame) == len(generate(SyntheticConfig(), seed=0))
    with pytest.raises(SourceError, match="is a directory"):
        load(tmp_path)
    pd.DataFrame({"user": [1], "item": [2], "category": ["c"], "timestamp": [3], "gender": ["F"], "age": [30],
                  "price": [1.0]}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(SourceError, match="no label column"):
        load(tmp_path / "nolabel.csv")
    with pytest.raises(ValueError, match="max_events"):
        SyntheticConfig(min_events=10, max_events=5)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    res = CliRunner().invoke(main, [str(out), "--users", "30", "--items", "20", "--categories", "4", "--seed", "9"])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(out)["user"].nunique() == 30
    res = CliRunner().invoke(main, [str(tmp_path / "s.json")])
    assert res.exit_code == 1 and ".csv or .parquet" in res.output
    res = CliRunner().invoke(main, [str(out), "--items", "3", "--categories", "5"])
    assert res.exit_code == 1 and "one item per category" in res.output


def test_blocks_of_users_stream_and_up_to_one_block_the_table_is_unchanged(tmp_path: Path) -> None:
    # the md5 of this table's CSV as the generator wrote it before it streamed (one block of all users)
    table = generate(SyntheticConfig(users=300), seed=5)
    assert hashlib.md5(table.to_csv(index=False).encode()).hexdigest() == "7cc65a86340718b4b4e87577da4a08dd"
    blocks = list(generate_blocks(SMALL, seed=2, block_users=25))
    assert [b["user"].nunique() for b in blocks] == [25, 25, 10]
    assert [sorted(b["user"].unique()) for b in blocks] == [list(range(1, 26)), list(range(26, 51)),
                                                             list(range(51, 61))]
    assert all(b["timestamp"].is_monotonic_increasing for b in blocks)
    counts = write_events(iter(blocks), tmp_path / "ev.parquet")
    assert counts == {"rows": sum(map(len, blocks)), "users": 60, "clicks": sum(int(b["label"].sum()) for b in blocks)}
    back = pd.read_parquet(tmp_path / "ev.parquet")
    pd.testing.assert_frame_equal(back, pd.concat(blocks, ignore_index=True), check_dtype=False)
    counts_csv = write_events(iter(blocks), tmp_path / "ev.csv")
    assert counts_csv == counts and len(pd.read_csv(tmp_path / "ev.csv")) == counts["rows"]
