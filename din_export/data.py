"""Dataset directory -> validated, memory-mapped splits -> batches of torch tensors.

A split is checked once when it is loaded (keys, dtypes, shapes, label values, id ranges, history
windows), slice by slice, so a bad row is reported by split, row and field before training starts
rather than as an index error deep in an embedding lookup. A batch gathers its rows' padded histories
from the shared event sequences with index arithmetic (docs/design.md, "Dataset directory"): no
per-row Python, and the cost of a dataset is its events plus its samples, whatever max_len is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from din_export.errors import DinExportError
from din_export.schema import PAD_INDEX, Schema

SPLITS = ("train", "valid", "test")
CHECK_ROWS = 1 << 20  # rows of a memory-mapped column checked at a time


class DataError(DinExportError, ValueError):
    """A dataset directory that does not follow docs/design.md; the message names split, row and field."""


def load_schema(data_dir: str | Path) -> Schema:
    try:
        return Schema.load(Path(data_dir) / "schema.json")
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{data_dir}: cannot read schema.json: {e}") from e


def expected_keys(schema: Schema) -> dict[str, str]:
    """npz key -> kind ("id", "history", "hist_len", "dense", "label", "group")."""
    keys = {s.name: "id" for s in schema.sparse}
    keys.update({t: "id" for t in schema.targets})
    keys.update({h: "history" for h in schema.histories})
    keys["hist_len"] = "hist_len"
    if schema.dense:
        keys["dense"] = "dense"
    keys["label"] = "label"
    keys["group"] = "group"
    return keys


def _first_bad_row(bad: np.ndarray) -> int:
    """Row index of the first True in a (N,) or (N, ...) boolean array."""
    rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    return int(np.flatnonzero(rows)[0])


def _check_column(where: str, key: str, kind: str, a: np.ndarray, row0: int, schema: Schema) -> None:
    """Raise a DataError naming the first bad row of `a` (rows numbered from `row0`)."""
    if kind in ("label", "dense"):
        if a.dtype.kind not in "fiub":
            raise DataError(f"{where}: column {key!r} has dtype {a.dtype}, expected float32")
        finite = np.isfinite(a.astype(np.float32, copy=False))
        if not finite.all():
            row = _first_bad_row(~finite)
            raise DataError(f"{where} row {row0 + row}: {key!r} is not finite ({a[row]})")
        if kind == "label" and not np.isin(a, (0, 1)).all():
            row = _first_bad_row(~np.isin(a, (0, 1)))
            raise DataError(f"{where} row {row0 + row}: 'label' is {a[row]}, expected 0 or 1")
        return
    if a.dtype.kind not in "iu":
        raise DataError(f"{where}: column {key!r} has dtype {a.dtype}, expected int64")
    if kind in ("id", "history"):
        vocab = schema.vocab_by_field[key]
        size = schema.vocab_sizes[vocab]
        bad = (a < 0) | (a >= size)
        if bad.any():
            row = _first_bad_row(bad)
            value = a[row][bad[row]].flat[0] if a.ndim > 1 else a[row]
            raise DataError(f"{where} row {row0 + row}: {key!r} = {value} is outside vocabulary {vocab!r} "
                            f"(indices 0..{size - 1})")
    elif kind == "hist_len":
        bad = (a < 0) | (a > schema.max_len)
        if bad.any():
            row = _first_bad_row(bad)
            raise DataError(f"{where} row {row0 + row}: 'hist_len' = {a[row]} is outside 0..{schema.max_len}")


class Split(Mapping[str, np.ndarray]):
    """One split of a dataset directory, validated, readable a few rows at a time.

    A compact split (docs/design.md) keeps its per-sample columns as memory-mapped .npy files and its
    histories as windows [hist_end - hist_len, hist_end) into the shared event sequences, so `take`
    gathers the padded histories of just the rows asked for. A split read from an older `<split>.npz`
    holds its padded histories in memory and `take` slices them. Either way `take` returns what the
    npz format always held: int64 ids, float32 label and dense, histories left-aligned and padded with
    index 0. As a mapping it yields whole columns (histories padded to max_len); fine for small splits,
    while `take` is the way to read a large one.
    """

    def __init__(self, schema: Schema, columns: dict[str, np.ndarray], events: dict[str, np.ndarray] | None,
                 where: str) -> None:
        self.schema, self.columns, self.events, self.where = schema, columns, events, where
        # Plain ndarray views of the same (mapped) memory for `take`: indexing an np.memmap runs its
        # Python-level __getitem__ and __array_finalize__ on every call, which costs more than
        # gathering a batch's rows.
        self._columns = {k: np.asarray(v) for k, v in columns.items()}
        self._events = None if events is None else {k: np.asarray(v) for k, v in events.items()}
        self.n = len(columns["label"])
        self.keys_ = list(expected_keys(schema))
        self.histories = schema.histories

    @property
    def compact(self) -> bool:
        return self.events is not None

    def __len__(self) -> int:
        return len(self.keys_)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys_:
            raise KeyError(key)
        if key in self.histories:
            return self.take(np.arange(self.n), width=self.schema.max_len)[key]
        return _as_batch_dtype(key, np.array(self.columns[key]))

    def take(self, idx: np.ndarray, width: int | None = None, with_group: bool = True) -> dict[str, np.ndarray]:
        """Rows `idx` as arrays; histories `width` wide (default: the longest hist_len among the rows)."""
        idx = np.asarray(idx, dtype=np.int64)
        cols = self._columns
        # ndarray.take rather than fancy indexing: the same rows, about half the time on a large column
        hist_len = cols["hist_len"].take(idx).astype(np.int64, copy=False)
        if width is None:
            width = int(hist_len.max()) if len(idx) else 0
        out = {}
        for key in self.keys_:
            if key in self.histories or key not in cols or (key == "group" and not with_group):
                continue
            out[key] = hist_len if key == "hist_len" else _as_batch_dtype(key, cols[key].take(idx, axis=0))
        if self._events is None:
            for key in self.histories:
                out[key] = np.asarray(cols[key][idx, :width])
            return out
        # Only the real positions are read: the rows' windows, concatenated, are the events
        # first[r] + (k - offset[r]) for k in 0..sum(lens), where offset[r] is row r's first slot;
        # the padding is written once as the array's initial value. A width under a row's hist_len
        # keeps the first `width` events of its window, as slicing a padded row does.
        lens = np.minimum(hist_len, width)
        first = cols["hist_end"].take(idx).astype(np.int64, copy=False) - hist_len
        flat = np.repeat(first - (np.cumsum(lens) - lens), lens)
        flat += np.arange(len(flat))
        real = np.arange(width) < lens[:, None]
        for key in self.histories:
            padded = np.full(real.shape, PAD_INDEX, dtype=np.int64)
            padded[real] = self._events[key].take(flat)
            out[key] = padded
        return out


def _as_batch_dtype(key: str, a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32, copy=False) if key in ("label", "dense") else a.astype(np.int64, copy=False)


def load_splits(data_dir: str | Path, splits: tuple[str, ...] = SPLITS,
                schema: Schema | None = None) -> dict[str, Split]:
    """Several splits of one dataset directory, its event sequences opened and checked once."""
    data_dir = Path(data_dir)
    schema = schema or load_schema(data_dir)
    events = load_events(data_dir, schema) if (data_dir / "events").is_dir() else None
    return {s: load_split(data_dir, s, schema, events=events) for s in splits}


def has_split(data_dir: str | Path, split: str) -> bool:
    """Whether DATA_DIR holds `split`, in either layout (DATA_DIR/<split>/ or an older <split>.npz)."""
    data_dir = Path(data_dir)
    return (data_dir / split).is_dir() or (data_dir / f"{split}.npz").is_file()


def load_split(data_dir: str | Path, split: str, schema: Schema | None = None, *,
               events: dict[str, np.ndarray] | None = None) -> Split:
    """DATA_DIR/<split>/ (compact, memory-mapped) or an older DATA_DIR/<split>.npz, every row checked.
    `events`: the directory's event sequences when already loaded (`load_events`)."""
    data_dir = Path(data_dir)
    schema = schema or load_schema(data_dir)
    if (data_dir / split).is_dir():
        return _load_compact(data_dir, split, schema, events)
    path = data_dir / f"{split}.npz"
    where = f"{path}"
    if not path.is_file():
        raise DataError(f"{data_dir / split}: missing (expected the {split} split of a `din-export prepare` "
                        "dataset)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise DataError(f"{where}: cannot load without pickle: {e}") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{where}: not a readable npz file: {e}") from e

    keys = expected_keys(schema)
    unknown = sorted(set(raw) - set(keys))
    missing = [k for k in keys if k not in raw]
    if unknown:
        raise DataError(f"{where}: unknown columns {unknown}; the schema expects {list(keys)}")
    if missing:
        raise DataError(f"{where}: missing columns {missing}; the schema expects {list(keys)}")
    n = raw["label"].shape[0] if raw["label"].ndim else -1
    if n == 0:
        raise DataError(f"{where}: the {split} split is empty (0 rows)")

    out: dict[str, np.ndarray] = {}
    for key, kind in keys.items():
        a = raw[key]
        want_shape = {"history": (n, schema.max_len), "dense": (n, len(schema.dense))}.get(kind, (n,))
        if a.shape != want_shape:
            raise DataError(f"{where}: column {key!r} has shape {a.shape}, expected {want_shape}")
        _check_column(where, key, kind, a, 0, schema)
        out[key] = _as_batch_dtype(key, a)
    return Split(schema, out, None, where)


def compact_keys(schema: Schema) -> dict[str, str]:
    """File name (without .npy) in DATA_DIR/<split>/ -> kind; histories live in DATA_DIR/events/."""
    keys = {k: kind for k, kind in expected_keys(schema).items() if kind != "history"}
    keys["hist_end"] = "hist_end"
    return keys


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: not a plain .npy array: {e}") from e
    except OSError as e:
        raise DataError(f"{path}: not a readable .npy file: {e}") from e


def load_events(data_dir: str | Path, schema: Schema) -> dict[str, np.ndarray]:
    """DATA_DIR/events/<history>.npy: every user's behaviour sequence once, memory-mapped, checked."""
    folder = Path(data_dir) / "events"
    events = {h: _open_npy(folder / f"{h}.npy") for h in schema.histories}
    lengths = {h: a.shape for h, a in events.items()}
    if len(set(lengths.values())) != 1 or any(len(s) != 1 for s in lengths.values()):
        raise DataError(f"{folder}: the history sequences must be 1-d and of one length, got {lengths}")
    for h, a in events.items():
        for a0 in range(0, len(a), CHECK_ROWS):
            _check_column(str(folder / f"{h}.npy"), h, "history", np.asarray(a[a0:a0 + CHECK_ROWS]), a0,
                          schema)
    return events


def _load_compact(data_dir: Path, split: str, schema: Schema,
                  events: dict[str, np.ndarray] | None = None) -> Split:
    folder = data_dir / split
    keys = compact_keys(schema)
    present = {p.stem for p in folder.glob("*.npy")}
    unknown = sorted(present - set(keys))
    if unknown:
        raise DataError(f"{folder}: unknown columns {unknown}; the schema expects {list(keys)}")
    cols = {k: _open_npy(folder / f"{k}.npy") for k in keys}
    n = cols["label"].shape[0] if cols["label"].ndim else -1
    if n == 0:
        raise DataError(f"{folder}: the {split} split is empty (0 rows)")
    events = events if events is not None else load_events(data_dir, schema)
    n_events = len(next(iter(events.values())))
    for key, kind in keys.items():
        a, where = cols[key], str(folder / f"{key}.npy")
        want_shape = (n, len(schema.dense)) if kind == "dense" else (n,)
        if a.shape != want_shape:
            raise DataError(f"{where}: column {key!r} has shape {a.shape}, expected {want_shape}")
        # in slices, so that checking a large split never holds more than one slice in memory
        for a0 in range(0, n, CHECK_ROWS):
            part = np.asarray(a[a0:a0 + CHECK_ROWS])
            if kind != "hist_end":
                _check_column(where, key, kind, part, a0, schema)
                continue
            if part.dtype.kind not in "iu":
                raise DataError(f"{where}: column 'hist_end' has dtype {part.dtype}, expected an integer")
            start = part.astype(np.int64) - np.asarray(cols["hist_len"][a0:a0 + CHECK_ROWS]).astype(np.int64)
            bad = (start < 0) | (part > n_events)
            if bad.any():
                row = _first_bad_row(bad)
                raise DataError(f"{where} row {a0 + row}: history window [{start[row]}, {part[row]}) is outside "
                                f"the {n_events} events of {data_dir / 'events'}")
    return Split(schema, cols, events, str(folder))


def write_splits(data_dir: str | Path, schema: Schema, splits: dict[str, Mapping[str, np.ndarray]]) -> None:
    """Write padded split arrays (the npz keys) as compact splits of DATA_DIR, with a new DATA_DIR/events/.

    Each row's history becomes its own window of the event sequences, so nothing is shared between
    rows: for data made row by row (tests, subsets of a split), not what `prepare` writes."""
    data_dir = Path(data_dir)
    folder = data_dir / "events"
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[np.ndarray]] = {h: [] for h in schema.histories}
    offset = 0
    for split, arrays in splits.items():
        hist_len = np.asarray(arrays["hist_len"]).astype(np.int64)
        real = np.arange(schema.max_len)[None, :] < hist_len[:, None]
        for h in schema.histories:
            parts[h].append(np.asarray(arrays[h])[real])  # row-major: each row's history in order
        out = data_dir / split
        out.mkdir(exist_ok=True)
        for key, kind in compact_keys(schema).items():
            if kind == "hist_end":
                value = offset + np.cumsum(hist_len)
            elif kind in ("label", "dense"):
                value = np.asarray(arrays[key]).astype(np.float32)
            else:
                value = np.asarray(arrays[key]).astype(np.int64)
            np.save(out / f"{key}.npy", value)
        offset += int(hist_len.sum())
    for h, chunks in parts.items():
        np.save(folder / f"{h}.npy", np.concatenate(chunks).astype(np.int32))


def keep_rows(data_dir: str | Path, split: str, rows: np.ndarray) -> None:
    """Cut DATA_DIR's `split` down to `rows` (sorted indices), in whichever layout it is stored."""
    data_dir = Path(data_dir)
    folder = data_dir / split
    if folder.is_dir():
        for path in sorted(folder.glob("*.npy")):
            kept = np.load(path, mmap_mode="r", allow_pickle=False)[rows]
            tmp = path.with_name(f".{path.stem}.tmp.npy")
            np.save(tmp, kept)  # the windows point into events/, which stays as it is
            tmp.replace(path)
        return
    path = data_dir / f"{split}.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k][rows] for k in npz.files}
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_frequencies(data_dir: str | Path, schema: Schema) -> dict[str, Tensor]:
    """DATA_DIR/freq/<vocab>.npy: training-split occurrence counts per index (for the MBA regulariser)."""
    freqs = {}
    for vocab in schema.vocab_names:
        path = Path(data_dir) / "freq" / f"{vocab}.npy"
        if not path.is_file():
            raise DataError(f"{path}: missing (the mini-batch aware regulariser needs training frequencies)")
        counts = np.load(path, allow_pickle=False)
        if counts.shape != (schema.vocab_sizes[vocab],) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise DataError(f"{path}: expected {schema.vocab_sizes[vocab]} non-negative integer counts, "
                            f"got shape {counts.shape} dtype {counts.dtype}")
        freqs[vocab] = torch.from_numpy(counts.astype(np.int64))
    return freqs


def batch_bounds(n: int, batch_size: int, min_rows: int) -> list[tuple[int, int]]:
    """[start, end) of each batch. A last batch under `min_rows` joins the one before it, because
    BatchNorm and Dice need more than one row per process to have a variance."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_rows:
        (s, _), (_, e) = bounds[-2], bounds.pop()
        bounds[-1] = (s, e)
    return bounds


class Batches:
    """Batches of one split as dicts of tensors keyed like the split (plus `label`).

    Shuffling is a permutation drawn from numpy's Generator seeded with (seed, epoch), so epoch k is the
    same batch sequence whether or not the run was interrupted before it. With `world > 1` each global
    batch is cut into `world` near-equal shards and this process takes shard `rank`: every process makes
    the same number of steps, the gradient average is over the whole global batch, and a process reads
    only its own rows of the memory-mapped split. Histories are gathered per shard and trimmed to its
    longest `hist_len`, so padding beyond it costs nothing.
    """

    def __init__(self, split: Split | Mapping[str, np.ndarray], schema: Schema, batch_size: int, *, shuffle: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # a plain dict of padded arrays (rows picked by a caller) is read like an npz split
        self.split = split if isinstance(split, Split) else Split(schema, dict(split), None, "arrays")
        self.n = self.split.n
        min_rows = 2 * world if shuffle else 1
        if self.n < min_rows:
            raise DataError(f"{self.n} rows cannot fill a training batch of at least 2 rows per process "
                            f"({world} processes)")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.bounds = batch_bounds(self.n, batch_size, min_rows)

    def __len__(self) -> int:
        return len(self.bounds)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """The batches of `epoch`, from batch number `start` on (to resume mid-epoch)."""
        order = self.order(epoch)
        for s, e in self.bounds[start:]:
            idx = order[s:e]
            if self.world > 1:
                idx = np.array_split(idx, self.world)[self.rank]  # the same cut as torch.tensor_split
            yield self.take(idx)

    def take(self, idx: np.ndarray) -> dict[str, Tensor]:
        arrays = self.split.take(idx, with_group=False)
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()}
