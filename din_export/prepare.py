"""`din-export prepare`: an events table -> a dataset directory (docs/design.md, protocols in docs/data.md).

Two protocols, both deterministic under the seed:
- implicit (every event a positive; Taobao, Amazon, events without label): the official Amazon
  build_dataset rule. Per user, the positives in (timestamp, file row) order give one sample per
  position i >= 1 (history = items[:i], target = items[i], label 1) plus one negative (an item the
  user never touched, label 0, same history); the last position is test, the one before validation.
- explicit (MovieLens, events with label): users split at random into train/valid/test; every event
  at position i >= 1 is a sample whose history is the user's clicks strictly before it.

Output is the compact dataset directory (docs/design.md): every history sequence stored once in
events/, every sample a row of its split's memory-mapped columns pointing into it (window end and
length). Samples are built one block of users at a time in raw-code space; the vocabularies (train
split only) then map those codes to indices in place. Counting history cells for the vocabularies
and OOV figures goes through window coverage, so cost is O(events + samples), whatever max_len is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from din_runtime.fs import publish_dir, temp_dir_beside

from din_export.errors import DinExportError, OptionError
from din_export.schema import (
    OOV_INDEX,
    PAD_INDEX,
    Behaviour,
    DenseField,
    Schema,
    SparseField,
    write_json_atomic,
)
from din_export.sources import (
    TAOBAO_BEHAVIOURS,
    Events,
    read_amazon,
    read_events,
    read_movielens,
    read_taobao,
)

IMPLICIT = "implicit-leave-last-out"
EXPLICIT = "explicit-user-split"
SPLITS = ("train", "valid", "test")
HISTORIES = ("clicks", "all")  # explicit protocol: which of the user's earlier events form the history
MIN_POSITIVES = 3  # implicit: one train-or-history item, one validation target, one test target
# A block of users is the users whose samples would hold about BLOCK_CELLS padded history cells (the
# implicit negatives are drawn block by block, so this also fixes the random stream), and columns are
# remapped REMAP_CELLS rows at a time.
BLOCK_CELLS = 4_000_000
REMAP_CELLS = 4_000_000
REQUESTS_CAP = 100_000  # valid/test requests written by default (--all-requests: every sample)
ITEM, CATE, USER = "item_id", "cate_id", "user_id"
HIST_ITEM, HIST_CATE = "hist_item_id", "hist_cate_id"


class PrepareError(DinExportError, ValueError):
    """The events cannot make a dataset (too few users, a full user, an output dir in the way)."""


@dataclass
class _Table:
    """Events sorted by (user, timestamp, file row); ids as int codes into `names`."""

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray | None
    sparse: dict[str, np.ndarray]
    dense: np.ndarray  # (n, n_dense) float32
    starts: np.ndarray  # user block i is rows starts[i]:starts[i+1]
    cate_of_item: np.ndarray  # item code -> category code (of the item's first row in the file)
    names: dict[str, np.ndarray]  # vocabulary name -> raw id string of each code

    @property
    def n_users(self) -> int:
        return len(self.starts) - 1

    def take(self, keep: np.ndarray) -> _Table:
        kept_per_user = np.add.reduceat(keep.astype(np.int64), self.starts[:-1]) if len(keep) else []
        starts = np.concatenate([[0], np.cumsum(kept_per_user)]).astype(np.int64)
        nonempty = np.diff(starts) > 0
        starts = np.concatenate([[0], starts[1:][nonempty]]).astype(np.int64)
        return _Table(
            user=self.user[keep], item=self.item[keep],
            label=None if self.label is None else self.label[keep],
            sparse={k: v[keep] for k, v in self.sparse.items()}, dense=self.dense[keep],
            starts=starts, cate_of_item=self.cate_of_item, names=self.names,
        )


def _codes(cat: object, dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """(codes, raw ids) with the ids in string order, so that the user split and the negatives do not
    depend on how a reader happened to order its categories (ints read as ints or as text)."""
    names = np.asarray(cat.categories, dtype=object)
    order = np.argsort(names.astype(str), kind="stable")
    rank = np.empty(len(order), dtype=dtype)
    rank[order] = np.arange(len(order), dtype=dtype)
    return rank[np.asarray(cat.codes)], names[order]


def _small_int(n: int) -> type:
    """The narrowest signed integer type that holds 0..n-1 (a sparse feature has few values)."""
    return next(t for t in (np.int8, np.int16, np.int32, np.int64) if n <= np.iinfo(t).max)


def _first_values(keys: np.ndarray, values: np.ndarray, n_keys: int) -> np.ndarray:
    """values[i] at the first row i of each key (-1 for keys that never occur), a slice at a time so
    that no sort of the whole column is needed."""
    out = np.full(n_keys, -1, dtype=np.int32)
    for a in range(0, len(keys), REMAP_CELLS):
        k = keys[a:a + REMAP_CELLS]
        first_keys, first_rows = np.unique(k, return_index=True)
        new = out[first_keys] < 0
        out[first_keys[new]] = values[a:a + REMAP_CELLS][first_rows[new]]
    return out


def _time_order(user: np.ndarray, ts: object, n_users: int) -> np.ndarray:
    """The row order by (user, timestamp, file row), int32 where the rows allow.

    Where the users times the time span fit in int64 (epoch seconds do, with room to spare), one
    stable sort of the key user * span + (ts - min): half the work of lexsort's two sorts, and the
    timestamps are dropped once the key holds them. Otherwise lexsort (also stable)."""
    ts = np.asarray(ts, dtype=np.int64)
    lo, hi = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
    span = hi - lo + 1
    if n_users * span < 2**63:
        key = ts - lo
        del ts
        for a in range(0, len(key), REMAP_CELLS):
            key[a:a + REMAP_CELLS] += user[a:a + REMAP_CELLS].astype(np.int64) * span
        order = np.argsort(key, kind="stable")
        del key
    else:
        order = np.lexsort((ts, user))
        del ts
    return order.astype(np.int32) if len(order) < 2**31 else order


def _permuted(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """values[order], a slice of `order` at a time: numpy would turn a whole int32 index into an
    intp copy (8 bytes a row) for one fancy-indexing call."""
    out = np.empty((len(order), *values.shape[1:]), dtype=values.dtype)
    for a in range(0, len(order), REMAP_CELLS):
        out[a:a + REMAP_CELLS] = values[order[a:a + REMAP_CELLS]]
    return out


def _sorted_table(events: Events, stats: dict, release: bool) -> _Table:
    """release: drop each column of `events.frame` once it is converted, so that the table is not
    held twice at its largest (the CLI's choice; a library caller may reuse its events)."""
    f = events.frame
    if len(f) == 0:
        raise PrepareError("no events left to prepare")

    def column(name: str) -> object:
        values = f[name].array
        if release:
            del f[name]
        return values

    user, user_names = _codes(column("user"))
    item, item_names = _codes(column("item"))
    cate, cate_names = _codes(column("category"))
    # an item's category is the one on its first row in the file; other rows are counted, not trusted.
    # Done before the sort, so that the category column is gone while the sort runs.
    cate_of_item = _first_values(item, cate, len(item_names))
    stats["category_conflicts"] = sum(int((cate[a:a + REMAP_CELLS] != cate_of_item[item[a:a + REMAP_CELLS]]).sum())
                                      for a in range(0, len(item), REMAP_CELLS))
    del cate
    order = _time_order(user, column("timestamp"), len(user_names))
    sparse, names = {}, {USER: user_names, ITEM: item_names, CATE: cate_names}
    for name in events.sparse:
        values = column(name)
        codes, names[name] = _codes(values, _small_int(len(values.categories)))
        del values
        sparse[name] = _permuted(codes, order)
        del codes
    # float32, as the dataset stores them: one rounding from the source's values either way
    dense = np.empty((len(order), len(events.dense)), dtype=np.float32)
    for j, name in enumerate(events.dense):
        dense[:, j] = _permuted(np.asarray(column(name), dtype=np.float32), order)
    label = _permuted(np.asarray(column("label"), dtype=np.int8), order) if events.explicit else None
    user = _permuted(user, order)
    item = _permuted(item, order)
    del order
    starts = np.concatenate([[0], np.flatnonzero(np.diff(user)) + 1, [len(user)]]).astype(np.int64)
    return _Table(user=user, item=item, label=label, sparse=sparse, dense=dense, starts=starts,
                  cate_of_item=cate_of_item, names=names)


def _implicit_filter(table: _Table, stats: dict) -> _Table:
    """Keep each user's first event per item, then users with at least MIN_POSITIVES of them."""
    key = table.user.astype(np.int64) * len(table.names[ITEM]) + table.item
    _, first = np.unique(key, return_index=True)  # rows are time-sorted: this is the earliest
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    stats["duplicate_events_dropped"] = int(len(key) - len(first))
    table = table.take(keep)
    counts = np.diff(table.starts)
    short = counts < MIN_POSITIVES
    stats["users_dropped_too_few_positives"] = int(short.sum())
    stats["events_of_dropped_users"] = int(counts[short].sum())
    return table.take(np.repeat(~short, counts))


def _assign_user_splits(table: _Table, rng: np.random.Generator, valid_fraction: float,
                        test_fraction: float, stats: dict) -> np.ndarray:
    """Explicit protocol: user block -> split (0 train, 1 valid, 2 test); users with one event -> -1."""
    counts = np.diff(table.starts)
    eligible = np.flatnonzero(counts >= 2)  # a user's first event is never a sample
    stats["users_without_samples"] = int(len(counts) - len(eligible))
    n = len(eligible)
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    if min(n_test, n_valid, n - n_test - n_valid) < 1:
        raise PrepareError(f"{n} users with at least 2 events cannot be split into train/valid/test "
                           f"with fractions valid={valid_fraction}, test={test_fraction}")
    split = np.full(len(counts), -1, dtype=np.int8)
    perm = eligible[rng.permutation(n)]
    split[perm[:n_test]] = 2
    split[perm[n_test:n_test + n_valid]] = 1
    split[perm[n_test + n_valid:]] = 0
    return split


def _split_sizes(table: _Table, user_split: np.ndarray | None) -> dict[str, int]:
    counts = np.diff(table.starts)
    if user_split is None:  # implicit: (n - 3) train positions, one valid, one test; each with a negative
        return {"train": int(2 * (counts - 3).sum()), "valid": 2 * len(counts), "test": 2 * len(counts)}
    return {s: int((counts[user_split == i] - 1).sum()) for i, s in enumerate(SPLITS)}


def _blocks(table: _Table, max_len: int) -> Iterator[tuple[int, int]]:
    """Consecutive user ranges whose samples hold about BLOCK_CELLS history cells each."""
    events = max(1, BLOCK_CELLS // (2 * max_len))  # up to two samples per event (implicit negatives)
    b0 = 0
    while b0 < table.n_users:
        b1 = int(np.searchsorted(table.starts, table.starts[b0] + events, side="right")) - 1
        b1 = min(max(b1, b0 + 1), table.n_users)
        yield b0, b1
        b0 = b1


@dataclass
class _Plan:
    """What a block of users needs to make its samples."""

    table: _Table
    max_len: int
    rng: np.random.Generator
    pools: tuple[np.ndarray, ...] = ()  # implicit: per split, the items its negatives are drawn from
    user_split: np.ndarray | None = None  # explicit: user block -> split
    clicks_before: np.ndarray | None = None  # explicit: clicks in the sorted table before each row


def _implicit_positions(table: _Table) -> np.ndarray:
    """Implicit protocol: the split whose samples show each event (0 train, 1 valid, 2 test; -1 none).

    A user's last event is their test target, the one before their validation target, the rest are
    train targets or train history; a user with exactly MIN_POSITIVES events has no train sample, so
    their first event appears in validation and test histories only."""
    counts = np.diff(table.starts)
    from_end = np.repeat(table.starts[1:], counts) - np.arange(len(table.item))  # 1 for a user's last event
    in_train = np.repeat(counts > MIN_POSITIVES, counts)
    return np.select([from_end == 1, from_end == 2, in_train], [2, 1, 0], -1).astype(np.int8)


def _negative_pools(table: _Table) -> tuple[np.ndarray, ...]:
    """Per split, the distinct items at that split's positions: train negatives come from the items the
    train split shows (its targets and histories), validation/test negatives from the items that are some
    user's validation/test target. A negative thus looks like the positives it is paired with: an item
    that is only ever a held-out target never enters training (as a negative it would teach "this id is
    never clicked"), and a held-out positive is no likelier to be unknown to the vocabulary than its
    negative (docs/data.md)."""
    position = _implicit_positions(table)
    pools = tuple(np.unique(table.item[position == i]).astype(np.int64) for i in range(len(SPLITS)))
    for s, pool in zip(SPLITS, pools, strict=True):
        in_pool = np.zeros(len(table.names[ITEM]), dtype=bool)
        in_pool[pool] = True
        # a user's kept items are distinct, so this counts the pool items they touched
        touched = np.add.reduceat(in_pool[table.item].astype(np.int64), table.starts[:-1])
        full = np.flatnonzero(touched >= len(pool))
        if len(full):
            who = table.names[USER][table.user[table.starts[full[0]]]]
            raise PrepareError(f"user {who!r} touched every one of the {len(pool)} items at {s} positions: "
                               f"no {s} negative can be drawn for them")
    return pools


def _negatives(table: _Table, pool: np.ndarray, rows: np.ndarray, block: tuple[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """One item per row that the row's user never touched, uniform over `pool`."""
    lo, hi = table.starts[block[0]], table.starts[block[1]]
    n_items = len(table.names[ITEM])
    touched = np.sort(table.user[lo:hi].astype(np.int64) * n_items + table.item[lo:hi])
    out = np.empty(len(rows), dtype=np.int64)
    todo = np.arange(len(rows))
    owner = table.user[rows].astype(np.int64) * n_items
    while len(todo):
        out[todo] = pool[rng.integers(0, len(pool), size=len(todo))]
        key = owner[todo] + out[todo]
        hit = touched[np.minimum(np.searchsorted(touched, key), len(touched) - 1)] == key
        todo = todo[hit]
    return out


def _block_samples(plan: _Plan, block: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """The samples of one block of users, per split: source row, target, label, history window."""
    table, max_len = plan.table, plan.max_len
    b0, b1 = block
    counts = np.diff(table.starts[b0:b1 + 1])
    rows = np.arange(table.starts[b0], table.starts[b1])
    owner = np.repeat(np.arange(b0, b1), counts)
    pos = rows - table.starts[owner]
    sample = pos >= 1
    rows, owner, pos = rows[sample], owner[sample], pos[sample]
    if plan.user_split is None:
        n = counts[owner - b0]
        split = np.where(pos == n - 1, 2, np.where(pos == n - 2, 1, 0))
        h_len = np.minimum(pos, max_len)
        h_end = rows
        # each positive is followed by its negative, which shares the history
        negs = np.empty(len(rows), dtype=np.int64)
        for i, pool in enumerate(plan.pools):
            negs[split == i] = _negatives(table, pool, rows[split == i], block, plan.rng)
        rows, split, h_len, h_end = (np.repeat(a, 2) for a in (rows, split, h_len, h_end))
        target = np.empty(len(rows), dtype=np.int64)
        target[0::2], target[1::2] = table.item[rows[0::2]], negs
        label = np.tile(np.array([1, 0], dtype=np.int8), len(negs))
    else:
        split = plan.user_split[owner]
        h_end = plan.clicks_before[rows]  # index into the click list, which is in the same sorted order
        h_len = np.minimum(h_end - plan.clicks_before[table.starts[owner]], max_len)
        target = table.item[rows].astype(np.int64)
        label = table.label[rows]
    return {s: {"row": rows[split == i], "target": target[split == i], "label": label[split == i],
                "h_end": h_end[split == i], "h_len": h_len[split == i]}
            for i, s in enumerate(SPLITS)}


def _sample_columns(table: _Table, smp: dict[str, np.ndarray], with_user: bool) -> dict[str, np.ndarray]:
    """Sample specs -> the split's per-sample columns, ids still codes into `table.names`."""
    rows = smp["row"]
    out = {USER: table.user[rows]} if with_user else {}
    out.update({name: codes[rows] for name, codes in table.sparse.items()})
    out.update({
        ITEM: smp["target"], CATE: table.cate_of_item[smp["target"]], "hist_len": smp["h_len"],
        "hist_end": smp["h_end"], "label": smp["label"], "group": table.user[rows],
    })
    if table.dense.shape[1]:
        out["dense"] = table.dense[rows].astype(np.float32)
    return out


def _window_counts(hist_src: np.ndarray, cate_of_item: np.ndarray, cols: dict[str, np.ndarray],
                   counts: dict[str, np.ndarray]) -> None:
    """Add each history cell of the samples `cols` to the item and category counts, in O(events + samples):
    an event counts once per sample whose window [hist_end - hist_len, hist_end) covers it."""
    end = cols["hist_end"].astype(np.int64)
    start = end - cols["hist_len"]
    if not len(end) or not (end > start).any():
        return
    lo, hi = int(start.min()), int(end.max())
    cover = np.cumsum(np.bincount(start - lo, minlength=hi - lo + 1) - np.bincount(end - lo, minlength=hi - lo + 1))
    items = hist_src[lo:hi]
    weights = cover[:-1].astype(np.float64)  # bincount adds float weights; counts stay far below 2**53
    counts[ITEM] += np.rint(np.bincount(items, weights, minlength=len(counts[ITEM]))).astype(np.int64)
    counts[CATE] += np.rint(np.bincount(cate_of_item[items], weights, minlength=len(counts[CATE]))).astype(np.int64)


def _json_number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _requests(table: _Table, hist_src: np.ndarray, cols: dict[str, np.ndarray],
              dense_names: tuple[str, ...]) -> Iterator[str]:
    """Valid/test samples as raw requests (docs/design.md, Request format), one JSON line each."""
    names = table.names
    group = cols["group"]
    users = {USER: names[USER][group]}  # the group (GAUC) field, a feature or a pass-through
    users.update({name: names[name][cols[name]] for name in table.sparse})
    items, cates = names[ITEM], names[CATE]
    dense = cols.get("dense")
    for i in range(len(cols["label"])):
        n, end = int(cols["hist_len"][i]), int(cols["hist_end"][i])
        hist = hist_src[end - n:end]
        req: dict[str, object] = {k: str(v[i]) for k, v in users.items()}
        for j, name in enumerate(dense_names):
            req[name] = _json_number(dense[i, j])
        req[ITEM] = str(items[cols[ITEM][i]])
        req[CATE] = str(cates[cols[CATE][i]])
        req[HIST_ITEM] = items[hist].tolist()
        req[HIST_CATE] = cates[table.cate_of_item[hist]].tolist()
        req["label"] = int(cols["label"][i])
        yield json.dumps(req, ensure_ascii=False)


class _NpyFile:
    """One .npy file of known shape, written and rewritten through plain file I/O.

    Not a memory map: pages of a mapped file count in the process's resident memory until unmapped,
    so writing a 100M-sample split through memmaps would look (and, under pressure, act) like holding
    it all; the page cache holds the same bytes without that."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.dtype, self.shape = np.dtype(dtype), shape
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.f = open(path, "w+b")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.data = self.f.tell()
        self.f.truncate(self.data + shape[0] * self.row)

    def write(self, start: int, values: np.ndarray) -> None:
        self.f.seek(self.data + start * self.row)
        self.f.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def read(self, start: int, stop: int) -> np.ndarray:
        self.f.seek(self.data + start * self.row)
        count = (stop - start) * (self.row // self.dtype.itemsize)
        return np.fromfile(self.f, dtype=self.dtype, count=count).reshape(-1, *self.shape[1:])

    def close(self) -> None:
        self.f.close()


class _SplitColumns:
    """The .npy files of one split (DATA_DIR/<split>/<column>.npy), filled block by block."""

    def __init__(self, folder: Path, n: int, spec: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        folder.mkdir(parents=True)
        self.n, self.offset = n, 0
        self.files = {k: _NpyFile(folder / f"{k}.npy", dt, (n, *tail)) for k, (dt, tail) in spec.items()}

    def append(self, block: dict[str, np.ndarray]) -> None:
        for k, f in self.files.items():
            f.write(self.offset, block[k])
        self.offset += len(block["label"])

    def remap(self, key: str, lut: np.ndarray) -> int:
        """codes -> indices through `lut` (indexed by code + 1), in place; returns the OOV count."""
        f, oov = self.files[key], 0
        for a in range(0, self.n, REMAP_CELLS):
            chunk = lut[f.read(a, min(a + REMAP_CELLS, self.n)).astype(np.int64) + 1]
            oov += int((chunk == OOV_INDEX).sum())
            f.write(a, chunk)
        return oov

    def windows_with(self, flagged: np.ndarray) -> int:
        """History cells of this split's samples that fall on a flagged event (`flagged`: a running count)."""
        total = 0
        for a in range(0, self.n, REMAP_CELLS):
            b = min(a + REMAP_CELLS, self.n)
            end = self.files["hist_end"].read(a, b).astype(np.int64)
            total += int((flagged[end] - flagged[end - self.files["hist_len"].read(a, b)]).sum())
        return total

    def close(self) -> None:
        assert self.offset == self.n, f"split filled {self.offset} of {self.n} rows"
        for f in self.files.values():
            f.close()
        self.files.clear()


def _write_events(folder: Path, hist_src: np.ndarray, cate_of_item: np.ndarray,
                  luts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DATA_DIR/events/: the history sequences in index space, int32; returns each one's running OOV
    count (length + 1), from which the OOV cells of any window are one subtraction."""
    folder.mkdir()
    files, running = {}, {}
    for key in (HIST_ITEM, HIST_CATE):
        files[key] = _NpyFile(folder / f"{key}.npy", np.dtype(np.int32), (len(hist_src),))
        running[key] = np.zeros(len(hist_src) + 1, dtype=np.int32 if len(hist_src) < 2**31 else np.int64)
    for a in range(0, len(hist_src), REMAP_CELLS):
        items = hist_src[a:a + REMAP_CELLS].astype(np.int64)
        for key, codes, vocab in ((HIST_ITEM, items, ITEM), (HIST_CATE, cate_of_item[items], CATE)):
            idx = luts[vocab][codes + 1]
            files[key].write(a, idx)
            running[key][a + 1:a + 1 + len(idx)] = idx == OOV_INDEX
    for key in files:
        files[key].close()
        np.cumsum(running[key], out=running[key])
    return running


class _Moments:
    """Mean and std of the dense columns over the train samples, accumulated block by block."""

    def __init__(self, d: int) -> None:
        self.n, self.shift, self.s, self.ss = 0, None, np.zeros(d), np.zeros(d)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        x = x.astype(np.float64)
        if self.shift is None:
            self.shift = x[0].copy()  # shifted sums keep the variance exact for large offsets
        x = x - self.shift
        self.n, self.s, self.ss = self.n + len(x), self.s + x.sum(0), self.ss + (x * x).sum(0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean**2, 0.0))
        return mean + self.shift, np.where(std > 0, std, 1.0)  # a constant column is left unscaled


def _vocab_keys(with_user: bool, sparse: tuple[str, ...]) -> dict[str, str]:
    """npz key -> vocabulary name."""
    keys = {USER: USER} if with_user else {}
    keys.update({name: name for name in sparse})
    keys.update({ITEM: ITEM, HIST_ITEM: ITEM, CATE: CATE, HIST_CATE: CATE})
    return keys


def _build_vocab(names: np.ndarray, counts: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids seen in train, most frequent first (ties by id): (vocab, code->index lut, index frequencies)."""
    seen = np.flatnonzero(counts)
    order = seen[np.lexsort((names[seen].astype(str), -counts[seen]))]
    lut = np.full(len(names) + 1, OOV_INDEX, dtype=np.int64)
    lut[0] = PAD_INDEX
    lut[order + 1] = np.arange(2, len(order) + 2)
    freq = np.concatenate([[0, 0], counts[order]]).astype(np.int64)
    return [str(v) for v in names[order]], lut, freq


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PrepareError(f"--out {out} exists and is not empty; pass --force to replace it")


def prepare(events: Events, out: str | Path, *, max_len: int = 50, seed: int = 0,
            valid_fraction: float = 0.1, test_fraction: float = 0.1, history: str = "clicks",
            force: bool = False, all_requests: bool = False, release_events: bool = False) -> dict:
    """Write the dataset directory `out` from `events`; returns the stats also saved in stats.json.

    history (explicit protocol): "clicks", the user's earlier clicks, or "all", every earlier event
    (MovieLens: every movie rated before the target, the paper's wording). Implicit events are all
    positives, so there the two are the same. release_events: drop the columns of `events.frame` as
    they are sorted (the events cannot be prepared again), so that at 100M events the table is never
    held twice."""
    out = Path(out)
    if max_len < 1:
        raise PrepareError(f"max_len must be >= 1, got {max_len}")
    if history not in HISTORIES:
        raise PrepareError(f"history must be one of {HISTORIES}, got {history!r}")
    _check_out(out, force)
    rng = np.random.default_rng(seed)
    protocol = EXPLICIT if events.explicit else IMPLICIT
    ev_stats = {**events.stats, "rows_kept_by_reader": len(events.frame)}
    table = _sorted_table(events, ev_stats, release_events)
    if protocol == IMPLICIT:
        table = _implicit_filter(table, ev_stats)
        if table.n_users == 0:
            raise PrepareError(f"no user has {MIN_POSITIVES} or more distinct positive items")
        plan = _Plan(table, max_len, rng)
    else:
        user_split = _assign_user_splits(table, rng, valid_fraction, test_fraction, ev_stats)
        in_history = table.label if history == "clicks" else np.ones_like(table.label)
        clicks_before = np.concatenate([[0], np.cumsum(in_history, dtype=np.int64)])
        plan = _Plan(table, max_len, rng, user_split=user_split, clicks_before=clicks_before)
    ev_stats["events_used"] = len(table.item)
    sizes = _split_sizes(table, plan.user_split)
    if sizes["train"] == 0:
        raise PrepareError(f"no training sample: every user has exactly {MIN_POSITIVES} distinct items, "
                           "which go to history, validation and test")
    if protocol == IMPLICIT:
        plan.pools = _negative_pools(table)
    with_user = protocol == IMPLICIT  # explicit test users are never in train: user_id would be all OOV
    hist_src = table.item if (table.label is None or history == "all") else table.item[table.label == 1]
    keys = _vocab_keys(with_user, tuple(table.sparse))
    sample_keys = {k: v for k, v in keys.items() if k not in (HIST_ITEM, HIST_CATE)}
    spec = {k: (np.dtype(np.int32), ()) for k in sample_keys}
    spec.update({
        "hist_len": (np.dtype(np.int16 if max_len < 2**15 else np.int32), ()),
        "hist_end": (np.dtype(np.int32 if len(hist_src) < 2**31 else np.int64), ()),
        "label": (np.dtype(np.int8), ()), "group": (np.dtype(np.int32), ()),
    })
    if table.dense.shape[1]:
        spec["dense"] = (np.dtype(np.float32), (table.dense.shape[1],))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        splits = {s: _SplitColumns(tmp / s, sizes[s], spec) for s in SPLITS}
        counts = {v: np.zeros(len(table.names[v]), dtype=np.int64) for v in set(keys.values())}
        moments = _Moments(table.dense.shape[1])
        dense_names = tuple(events.dense)
        cap = None if all_requests else REQUESTS_CAP
        written = {"valid": 0, "test": 0}
        with open(tmp / "valid_requests.jsonl", "w", encoding="utf-8") as fv, \
                open(tmp / "test_requests.jsonl", "w", encoding="utf-8") as ft:
            for block in _blocks(table, max_len):
                for split, smp in _block_samples(plan, block).items():
                    cols = _sample_columns(table, smp, with_user)
                    splits[split].append(cols)
                    if split == "train":
                        for key, vocab in sample_keys.items():
                            counts[vocab] += np.bincount(cols[key], minlength=len(counts[vocab]))
                        _window_counts(hist_src, table.cate_of_item, cols, counts)
                        moments.add(cols.get("dense", np.zeros((0, 0))))
                    elif cap is None or written[split] < cap:
                        take = len(cols["label"]) if cap is None else min(len(cols["label"]), cap - written[split])
                        f = fv if split == "valid" else ft
                        for line in _requests(table, hist_src, {k: v[:take] for k, v in cols.items()},
                                              dense_names):
                            f.write(line + "\n")
                        written[split] += take

        vocab_sizes, oov = {}, {s: {} for s in SPLITS}
        luts = {}
        for vocab in sorted(counts):
            ids, luts[vocab], freq = _build_vocab(table.names[vocab], counts[vocab])
            vocab_sizes[vocab] = len(ids) + 2
            write_json_atomic(tmp / "vocab" / f"{vocab}.json", ids)
            (tmp / "freq").mkdir(exist_ok=True)
            np.save(tmp / "freq" / f"{vocab}.npy", freq)
        del counts
        running_oov = _write_events(tmp / "events", hist_src, table.cate_of_item, luts)
        for s in SPLITS:
            for key, vocab in keys.items():
                oov[s][key] = (splits[s].windows_with(running_oov[key]) if key in running_oov
                               else splits[s].remap(key, luts[vocab]))
            splits[s].close()
        del running_oov

        mean, std = moments.result() if dense_names else ((), ())
        schema = Schema(
            max_len=max_len,
            behaviour=(Behaviour(ITEM, HIST_ITEM, ITEM), Behaviour(CATE, HIST_CATE, CATE)),
            vocab_sizes=vocab_sizes,
            sparse=tuple(SparseField(k, v) for k, v in keys.items() if k not in (ITEM, HIST_ITEM, CATE, HIST_CATE)),
            dense=tuple(DenseField(n, float(m), float(sd)) for n, m, sd in zip(dense_names, mean, std, strict=True)),
            group=USER, source=events.source, protocol=protocol,
            extra={"seed": seed, **({"history": history} if protocol == EXPLICIT else {}), **events.notes},
        )
        schema.save(tmp / "schema.json")
        stats = _stats(events, protocol, seed, max_len, ev_stats, table, plan.user_split, tmp, vocab_sizes, oov)
        stats["requests"] = {s: {"written": written[s], "samples": sizes[s]} for s in ("valid", "test")}
        stats["requests"]["cap"] = cap
        if protocol == EXPLICIT:
            stats["history"] = history
        if plan.pools:
            stats["negative_pool_items"] = {s: len(p) for s, p in zip(SPLITS, plan.pools, strict=True)}
        write_json_atomic(tmp / "stats.json", stats)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _stats(events: Events, protocol: str, seed: int, max_len: int, ev_stats: dict, table: _Table,
           user_split: np.ndarray | None, tmp: Path, vocab_sizes: dict, oov: dict) -> dict:
    samples, positives, users = {}, {}, {}
    for s in SPLITS:
        label = np.load(tmp / s / "label.npy", allow_pickle=False)
        samples[s], positives[s] = len(label), int(label.sum(dtype=np.int64))
        del label
        seen = np.zeros(len(table.names[USER]), dtype=bool)  # O(samples), unlike np.unique's sort
        seen[np.load(tmp / s / "group.npy", allow_pickle=False)] = True
        users[s] = int(seen.sum())
    return {
        "source": events.source, "protocol": protocol, "seed": seed, "max_len": max_len,
        "events": ev_stats,
        "users": {"total": table.n_users if user_split is None else int((user_split >= 0).sum()), **users},
        "samples": samples, "positives": positives,
        "positive_rate": {s: round(positives[s] / samples[s], 4) if samples[s] else None for s in SPLITS},
        "vocab_sizes": vocab_sizes,
        "oov": {s: oov[s] for s in ("valid", "test")},
    }


# ---------------------------------------------------------------------------------------------------
# Sources (the `prepare` command is din_export.cli.prepare)

SOURCES = ("movielens", "taobao", "amazon", "events", "synthetic")


def load_source(source: str, path: Path | None, *, meta: Path | None = None, all_behaviours: bool = False,
                sparse_features: str = "", dense_features: str = "", seed: int = 0) -> Events:
    """The events of `source` at `path` (see `din-export prepare --help`); OptionError for arguments that
    do not go together."""
    if source != "synthetic" and path is None:
        raise OptionError(f"--source {source} needs a PATH")
    if (meta is not None) != (source == "amazon"):
        raise OptionError("--meta FILE is required with --source amazon and used by no other source")
    if all_behaviours and source != "taobao":
        raise OptionError("--all-behaviours only applies to --source taobao")
    if (sparse_features or dense_features) and source != "events":
        raise OptionError("--sparse-features/--dense-features only apply to --source events")
    if source == "movielens":
        return read_movielens(path)
    if source == "taobao":
        return read_taobao(path, TAOBAO_BEHAVIOURS if all_behaviours else ("pv",))
    if source == "amazon":
        return read_amazon(path, meta)
    if source == "events":
        return read_events(path, sparse_features, dense_features)
    from din_export import synthetic

    return synthetic.load(path, seed=seed)


def _summary(out: Path, stats: dict) -> str:
    s, u, r = stats["samples"], stats["users"], stats["positive_rate"]
    ev = stats["events"]
    dropped = {k: v for k, v in ev.items() if v and k not in ("rows_read", "rows_kept_by_reader", "events_used")}
    lines = [
        f"prepared {stats['source']} ({stats['protocol']}, max_len {stats['max_len']}, seed {stats['seed']}) -> {out}",
        f"  events: {ev.get('rows_read', ev['rows_kept_by_reader']):,} read, {ev['events_used']:,} used"
        + (f"; {', '.join(f'{k} {v:,}' for k, v in dropped.items())}" if dropped else ""),
        f"  users: {u['total']:,} (with samples in train {u['train']:,}, valid {u['valid']:,}, test {u['test']:,})",
        "  samples: " + ", ".join(f"{k} {s[k]:,} (positive rate {r[k]})" for k in SPLITS),
        "  vocab sizes: " + ", ".join(f"{k} {v:,}" for k, v in stats["vocab_sizes"].items()),
    ]
    req = stats["requests"]
    capped = [s for s in ("valid", "test") if req[s]["written"] < req[s]["samples"]]
    lines.append("  requests: " + ", ".join(f"{s}_requests.jsonl {req[s]['written']:,}" for s in ("valid", "test"))
                 + (f" (capped at the first {req['cap']:,} samples of {', '.join(capped)}; --all-requests writes "
                    "every sample)" if capped else " (every sample)"))
    return "\n".join(lines)
