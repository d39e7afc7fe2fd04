"""Synthetic shoppers: a small events table on which attention over the history pays off.

The story (docs/data.md has the long form):
- `items` items, each in one of `categories` categories, with a price and an appeal.
- Each user has 2 or 3 interest categories, a gender and an age.
- A user sees a stream of impressions; each shows an item from one of the user's interests
  (`interest_share` of them) or from any category.
- Whether the user clicks depends mostly on the impression's relation to what the user clicked
  recently: the more of the last `memory` clicks share the item's category, the likelier the click.
  The item's appeal and price and a small gender x category taste add to it.
So the label hangs on which parts of the history match the target, the relation DIN's attention
computes and sum pooling blurs. Explicit labels: prepare uses the explicit (user split) protocol,
with clicks (label 1) as history. Everything is drawn from one seeded numpy Generator.

`python -m din_export.synthetic OUT.csv|OUT.parquet [--users N ...]` writes the table, one block of
users at a time (constant memory: 100M events are a few minutes and a few hundred MB);
`din-export prepare --source synthetic [OUT]` prepares it (or the default table when OUT is omitted).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from din_runtime.fs import AtomicFile

from din_export.sources import Events, SourceError, events_from_frame, read_events

SPARSE = ("gender",)
DENSE = ("age", "price")
START_TIME = 1_700_000_000  # 2023-11-14, only so the timestamps look like epoch seconds
# Users are generated (and written) this many at a time: memory is one block's events, whatever the total.
BLOCK_USERS = 100_000
PARQUET_ROW_GROUP = 1_000_000  # rows per Parquet row group, so that readers can stream the file


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 2000
    items: int = 1000
    categories: int = 20
    min_events: int = 20  # impressions per user, uniform in [min_events, max_events]
    max_events: int = 60
    interest_share: float = 0.7  # share of impressions drawn from the user's own interests
    memory: int = 10  # how many recent clicks the user weighs a new impression against
    base_logit: float = -2.0
    match_weight: float = 1.5  # added per recent click in the impression's category, up to 3 of them
    price_weight: float = 0.5  # per standard deviation of log price (dearer: less likely)
    taste_weight: float = 0.5  # gender x category taste

    def __post_init__(self) -> None:
        if min(self.users, self.items, self.categories, self.min_events, self.memory) < 1:
            raise ValueError(f"synthetic sizes must be >= 1: {self}")
        if self.categories < 3 or self.items < self.categories:
            raise ValueError("synthetic data needs at least 3 categories and one item per category")
        if self.max_events < self.min_events:
            raise ValueError("max_events must be >= min_events")
        if not 0 <= self.interest_share <= 1:
            raise ValueError("interest_share must be in [0, 1]")


@dataclass(frozen=True)
class _Catalogue:
    item_cat: np.ndarray
    cat_items: np.ndarray  # items grouped by category
    cat_count: np.ndarray
    cat_first: np.ndarray
    price: np.ndarray
    price_z: np.ndarray
    appeal: np.ndarray
    taste: np.ndarray  # +1: women like the category more, -1: men


def _catalogue(c: SyntheticConfig, rng: np.random.Generator) -> _Catalogue:
    # every category gets one item, the rest are spread at random
    item_cat = np.concatenate([np.arange(c.categories), rng.integers(0, c.categories, c.items - c.categories)])
    rng.shuffle(item_cat)
    cat_count = np.bincount(item_cat, minlength=c.categories)
    log_price = rng.normal(3.0, 0.3, c.categories)[item_cat] + rng.normal(0, 0.5, c.items)
    return _Catalogue(
        item_cat=item_cat, cat_items=np.argsort(item_cat, kind="stable"), cat_count=cat_count,
        cat_first=np.concatenate([[0], np.cumsum(cat_count)[:-1]]), price=np.round(np.exp(log_price), 2),
        price_z=(log_price - log_price.mean()) / log_price.std(), appeal=rng.normal(0, 0.5, c.items),
        taste=rng.choice([-1.0, 1.0], c.categories))


def _users_block(c: SyntheticConfig, k: _Catalogue, rng: np.random.Generator, first: int, n: int) -> pd.DataFrame:
    """The events of users first+1 .. first+n, sorted by (timestamp, user)."""
    n_int = rng.integers(2, 4, n)
    interests = np.stack([rng.permutation(c.categories)[:3] for _ in range(n)])
    female = rng.random(n) < 0.5
    age = rng.integers(18, 71, n)
    length = rng.integers(c.min_events, c.max_events + 1, n)
    clock = START_TIME + rng.integers(0, 30 * 86400, n)

    recent = np.full((n, c.memory), -1)  # categories of the last clicks, newest last
    rows = []
    for t in range(c.max_events):
        u = np.flatnonzero(length > t)
        own = rng.random(len(u)) < c.interest_share
        cat = np.where(own, interests[u, (rng.random(len(u)) * n_int[u]).astype(int)],
                       rng.integers(0, c.categories, len(u)))
        item = k.cat_items[k.cat_first[cat] + (rng.random(len(u)) * k.cat_count[cat]).astype(int)]
        match = np.minimum((recent[u] == cat[:, None]).sum(1), 3)
        logit = (c.base_logit + c.match_weight * match + k.appeal[item] - c.price_weight * k.price_z[item]
                 + c.taste_weight * k.taste[cat] * np.where(female[u], 1, -1))
        click = rng.random(len(u)) < 1 / (1 + np.exp(-logit))
        clicked = u[click]
        recent[clicked] = np.concatenate([recent[clicked, 1:], cat[click, None]], axis=1)
        clock[u] += rng.integers(1, 3600, len(u))
        rows.append(pd.DataFrame({"user": u + 1, "item": item + 1, "category": cat, "timestamp": clock[u],
                                  "label": click.astype(np.int8)}))
    ev = pd.concat(rows, ignore_index=True)
    ev = ev.sort_values(["timestamp", "user"], kind="stable", ignore_index=True)
    local = ev["user"].to_numpy() - 1
    ev["user"] += first
    ev["category"] = np.array([f"c{i}" for i in range(c.categories)], dtype=object)[ev["category"].to_numpy()]
    ev["gender"] = np.where(female[local], "F", "M").astype(object)
    ev["age"] = age[local]
    ev["price"] = k.price[ev["item"].to_numpy() - 1]
    return ev


def generate_blocks(config: SyntheticConfig | None = None, seed: int = 0,
                    block_users: int = BLOCK_USERS) -> Iterator[pd.DataFrame]:
    """The events table in blocks of `block_users` users, each sorted by (timestamp, user).

    One seeded Generator draws the catalogue, then each block's users and their impressions in turn, so
    memory stays at one block whatever the number of users, and a table of up to `block_users` users is
    the same one `generate` has always made for that seed."""
    c = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(c, rng)
    for first in range(0, c.users, block_users):
        yield _users_block(c, catalogue, rng, first, min(block_users, c.users - first))


def generate(config: SyntheticConfig | None = None, seed: int = 0) -> pd.DataFrame:
    """The events table: user, item, category, timestamp, label, gender, age, price; in time order
    within each block of BLOCK_USERS users (all of it in time order up to that many)."""
    return pd.concat(list(generate_blocks(config, seed)), ignore_index=True)


def to_events(frame: pd.DataFrame) -> Events:
    events = events_from_frame(frame, SPARSE, DENSE, source="synthetic")
    events.notes.update({"category": "generated", "label": "generated click"})
    return events


def load(path: str | Path | None, seed: int = 0) -> Events:
    """The events of a file written by `write_events`, or the default table when `path` is None."""
    if path is None:
        return to_events(generate(SyntheticConfig(), seed))
    path = Path(path)
    if path.is_dir():
        raise SourceError(f"{path} is a directory: pass the events file written by "
                          "`python -m din_export.synthetic`")
    events = read_events(path, SPARSE, DENSE, source="synthetic")
    if not events.explicit:
        raise SourceError(f"{path}: no label column; not a synthetic events file")
    return events


def write_events(frame: pd.DataFrame | Iterable[pd.DataFrame], path: str | Path) -> dict[str, int]:
    """CSV or Parquet (by suffix), from one table or an iterable of blocks written as they come, to a
    temporary file renamed at the end. Returns the rows, distinct users and clicks written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{path}: use a .csv or .parquet file name")
    blocks = [frame] if isinstance(frame, pd.DataFrame) else frame
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"rows": 0, "users": 0, "clicks": 0}
    with AtomicFile(path, "wb") as out:
        writer = None
        try:
            for i, block in enumerate(blocks):
                if suffix == ".csv":
                    block.to_csv(out.file, index=False, header=i == 0, mode="wb")
                else:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    table = pa.Table.from_pandas(block, preserve_index=False,
                                                 schema=writer.schema if writer else None)
                    writer = writer or pq.ParquetWriter(out.file, table.schema)
                    writer.write_table(table, row_group_size=PARQUET_ROW_GROUP)
                counts["rows"] += len(block)
                counts["users"] += block["user"].nunique()  # blocks hold disjoint users
                counts["clicks"] += int(block["label"].sum()) if "label" in block else 0
        finally:
            # the Parquet footer goes into the file before AtomicFile renames it (the writer leaves the
            # file object open)
            if writer is not None:
                writer.close()
        if not counts["rows"]:
            raise ValueError(f"{path}: no events to write")
    return counts


if __name__ == "__main__":  # `python -m din_export.synthetic`: the command lives with the other commands
    from din_export.cli.synthetic import main

    main()
