"""Columns of an events table gathered chunk by chunk, for readers that stream a large file.

When the reader knows the row count up front (Parquet metadata, an in-memory table), each column is
one array allocated once and filled in place: no list of per-chunk arrays to concatenate at the end
(which held a column twice), and no thousands of chunk-sized allocations left between the chunks'
temporaries, which the C allocator cannot hand back to the system (at 100M rows that fragmentation
was as large as the table itself). Otherwise (CSV) the chunks are kept in a list and joined once.
Either way the result is the same array or Categorical, value for value.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pandas as pd

from din_export.sources.validate import _concat_ids

# integer ids are coded against their distinct values this many rows at a time (searchsorted's
# int64 result is a temporary of this size, not of the column's)
CODE_ROWS = 4_000_000


def _malloc_trim() -> object:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to call
        return None


MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

    glibc keeps freed chunk-sized blocks in its heap for reuse, and the small arrays a reader keeps
    from each chunk (codes, distinct ids) stop it from shrinking the heap: called between chunks,
    the resident memory stays that of the data kept, not of every chunk's temporaries."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class Numbers:
    """A numeric column of `dtype`: `add` each chunk's values in row order, then `result`."""

    def __init__(self, dtype: type | np.dtype, n_rows: int | None) -> None:
        self.dtype = np.dtype(dtype)
        self.out = None if n_rows is None else np.empty(n_rows, dtype=self.dtype)
        self.filled = 0
        self.parts: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        if self.out is not None and self.filled + len(values) <= len(self.out):
            self.out[self.filled:self.filled + len(values)] = values
            self.filled += len(values)
            return
        if self.out is not None:  # more rows than announced: go on as a list, nothing lost
            self.parts.append(self.out[:self.filled].copy())
            self.out = None
        # a copy: a view would keep the chunk's whole block of columns alive until the end
        self.parts.append(np.array(values, dtype=self.dtype))

    def result(self) -> np.ndarray:
        if self.out is not None:
            return self.out if self.filled == len(self.out) else self.out[:self.filled].copy()
        return np.concatenate(self.parts) if self.parts else np.empty(0, dtype=self.dtype)


class Ids:
    """An id column: `add` each chunk's ids as `_ids` returns them (int32 or int64 arrays of integer
    ids, Categoricals of text ids), then `result`, the Categorical of strings `_concat_ids` makes.

    Chunks of int32 ids go into one int32 array that is then coded in place (the codes overwrite the
    ids), so the column is held once; any other chunk turns the column back into `_concat_ids`'s list."""

    def __init__(self, n_rows: int | None) -> None:
        self.ints = Numbers(np.int32, n_rows) if n_rows is not None else None
        self.distinct: list[np.ndarray] = []
        self.parts: list[pd.Categorical | np.ndarray] = []

    def add(self, part: pd.Categorical | np.ndarray) -> None:
        if self.ints is not None and isinstance(part, np.ndarray) and part.dtype == np.int32:
            self.ints.add(part)
            self.distinct.append(np.unique(part))
            return
        if self.ints is not None:
            if self.ints.filled:
                self.parts.append(self.ints.result()[:self.ints.filled])
            self.ints, self.distinct = None, []
        self.parts.append(part)

    def result(self) -> pd.Categorical:
        if self.ints is None:
            return _concat_ids(self.parts)
        ids = self.ints.result()
        self.ints = None
        if not len(ids):
            return _concat_ids([])
        uniq = np.unique(np.concatenate(self.distinct))
        self.distinct = []
        for a in range(0, len(ids), CODE_ROWS):
            ids[a:a + CODE_ROWS] = np.searchsorted(uniq, ids[a:a + CODE_ROWS])
        return pd.Categorical.from_codes(ids, categories=pd.Index(uniq.astype(str), dtype=object))
