"""Dataset directory -> validated numpy arrays -> batches of torch tensors.

A split is checked once when it is loaded (keys, dtypes, shapes, label values, id ranges), so a bad
row is reported by split, row and field before training starts rather than as an index error deep in
an embedding lookup. Batching is pure index arithmetic on whole-split tensors: no per-row Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from din_export.schema import Schema

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
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


def _vocab_of(schema: Schema) -> dict[str, str]:
    vocab = {s.name: s.vocab for s in schema.sparse}
    for b in schema.behaviour:
        vocab[b.target] = b.vocab
        vocab[b.history] = b.vocab
    return vocab


def _first_bad_row(bad: np.ndarray) -> int:
    """Row index of the first True in a (N,) or (N, ...) boolean array."""
    rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    return int(np.flatnonzero(rows)[0])


def load_split(data_dir: str | Path, split: str, schema: Schema | None = None) -> dict[str, np.ndarray]:
    """Read and validate DATA_DIR/<split>.npz: int64 ids, float32 dense and label, every row checked."""
    data_dir = Path(data_dir)
    schema = schema or load_schema(data_dir)
    path = data_dir / f"{split}.npz"
    where = f"{path}"
    if not path.is_file():
        raise DataError(f"{where}: missing (expected the {split} split of a `din-export prepare` dataset)")
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

    vocab_of = _vocab_of(schema)
    out: dict[str, np.ndarray] = {}
    for key, kind in keys.items():
        a = raw[key]
        want_shape = {"history": (n, schema.max_len), "dense": (n, len(schema.dense))}.get(kind, (n,))
        if a.shape != want_shape:
            raise DataError(f"{where}: column {key!r} has shape {a.shape}, expected {want_shape}")
        if kind in ("label", "dense"):
            if a.dtype.kind not in "fiub":
                raise DataError(f"{where}: column {key!r} has dtype {a.dtype}, expected float32")
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                row = _first_bad_row(~np.isfinite(a))
                raise DataError(f"{where} row {row}: {key!r} is not finite ({raw[key][row]})")
            if kind == "label" and not np.isin(a, (0.0, 1.0)).all():
                row = _first_bad_row(~np.isin(a, (0.0, 1.0)))
                raise DataError(f"{where} row {row}: 'label' is {raw[key][row]}, expected 0 or 1")
        else:
            if a.dtype.kind not in "iu":
                raise DataError(f"{where}: column {key!r} has dtype {a.dtype}, expected int64")
            a = a.astype(np.int64, copy=False)
            if kind in ("id", "history"):
                vocab = vocab_of[key]
                size = schema.vocab_sizes[vocab]
                bad = (a < 0) | (a >= size)
                if bad.any():
                    row = _first_bad_row(bad)
                    value = a[row][bad[row]].flat[0] if kind == "history" else a[row]
                    raise DataError(f"{where} row {row}: {key!r} = {value} is outside vocabulary {vocab!r} "
                                    f"(indices 0..{size - 1})")
            elif kind == "hist_len":
                bad = (a < 0) | (a > schema.max_len)
                if bad.any():
                    row = _first_bad_row(bad)
                    raise DataError(f"{where} row {row}: 'hist_len' = {a[row]} is outside 0..{schema.max_len}")
        out[key] = a
    return out


def load_frequencies(data_dir: str | Path, schema: Schema) -> dict[str, Tensor]:
    """DATA_DIR/freq/<vocab>.npy: training-split occurrence counts per index (for the MBA regulariser)."""
    freqs = {}
    for vocab in dict.fromkeys([s.vocab for s in schema.sparse] + [b.vocab for b in schema.behaviour]):
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
    """Batches of one split as dicts of tensors keyed like the npz (plus `label`).

    Shuffling is a permutation drawn from numpy's Generator seeded with (seed, epoch), so epoch k is the
    same batch sequence whether or not the run was interrupted before it. With `world > 1` each global
    batch is cut into `world` near-equal shards and this process takes shard `rank`: every process makes
    the same number of steps and the gradient average is over the whole global batch. Histories are
    trimmed to the longest `hist_len` of the shard, so padding beyond it costs nothing.
    """

    def __init__(self, arrays: dict[str, np.ndarray], schema: Schema, batch_size: int, *, shuffle: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = len(arrays["label"])
        min_rows = 2 * world if shuffle else 1
        if self.n < min_rows:
            raise DataError(f"{self.n} rows cannot fill a training batch of at least 2 rows per process "
                            f"({world} processes)")
        self.tensors = {k: torch.from_numpy(v) for k, v in arrays.items() if k != "group"}
        self.histories = set(schema.histories)
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
        order = torch.from_numpy(self.order(epoch))
        for s, e in self.bounds[start:]:
            idx = order[s:e]
            if self.world > 1:
                idx = torch.tensor_split(idx, self.world)[self.rank]
            yield self.take(idx)

    def take(self, idx: Tensor) -> dict[str, Tensor]:
        hist_len = self.tensors["hist_len"][idx]
        width = int(hist_len.max()) if len(idx) else 0
        batch = {}
        for k, t in self.tensors.items():
            batch[k] = (t[idx, :width] if k in self.histories else t[idx]).to(self.device, non_blocking=True)
        return batch
