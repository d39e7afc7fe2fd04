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

    Where the row count is known and the chunks are all int32 ids or all Categoricals, they go into
    one int32 array (the ids, or each chunk's own codes) that is coded in place at the end: the column
    is held once, and nothing is kept per chunk but its distinct ids (Arrow's allocator kept a page
    for every chunk's Categorical). Any other mix goes back to `_concat_ids`'s list."""

    def __init__(self, n_rows: int | None) -> None:
        self.values = Numbers(np.int32, n_rows) if n_rows is not None else None
        self.kind = ""  # "int" or "text", set by the first chunk
        self.dtype: object = None  # text: the dtype of the first chunk's categories, that of the result's
        self.distinct: list[np.ndarray | pd.Index] = []  # per chunk: distinct ids, or its categories
        self.starts: list[int] = []  # text: the row each chunk starts at
        self.parts: list[pd.Categorical | np.ndarray] = []

    def add(self, part: pd.Categorical | np.ndarray) -> None:
        kind = ("int" if isinstance(part, np.ndarray) and part.dtype == np.int32
                else "text" if isinstance(part, pd.Categorical) else "")
        if self.values is not None and kind and self.kind in ("", kind):
            self.kind = kind
            if kind == "int":
                self.distinct.append(np.unique(part))
                self.values.add(part)
            else:
                self.starts.append(self.values.filled)
                self.dtype = self.dtype or part.categories.dtype
                # Python strings: an Arrow-backed Index would pin Arrow memory until the end
                self.distinct.append(pd.Index(part.categories.to_numpy(object), dtype=object))
                self.values.add(part.codes)
            return
        if self.values is not None:
            self.parts = self._chunks()
            self.values, self.distinct, self.starts = None, [], []
        self.parts.append(part)

    def _chunks(self) -> list[pd.Categorical | np.ndarray]:
        """What has been added so far, as the chunk list `_concat_ids` takes."""
        if not self.values.filled:
            return []
        values = self.values.result()[:self.values.filled]
        if self.kind == "int":
            return [values]
        bounds = [*self.starts, len(values)]
        return [pd.Categorical.from_codes(values[a:b].copy(), categories=pd.Index(cats, dtype=self.dtype))
                for a, b, cats in zip(bounds[:-1], bounds[1:], self.distinct, strict=True)]

    def result(self) -> pd.Categorical:
        if self.values is None:
            return _concat_ids(self.parts)
        values = self.values.result()
        self.values = None
        if not len(values):
            return _concat_ids([])
        if self.kind == "int":
            uniq = np.unique(np.concatenate(self.distinct))
            for a in range(0, len(values), CODE_ROWS):
                values[a:a + CODE_ROWS] = np.searchsorted(uniq, values[a:a + CODE_ROWS])
            categories = pd.Index(uniq.astype(str), dtype=object)
        else:
            # union_categoricals' rule: categories in order of first appearance, chunk by chunk
            first, *rest = self.distinct
            categories = first.append(rest).unique() if rest else first
            bounds = [*self.starts, len(values)]
            for a, b, cats in zip(bounds[:-1], bounds[1:], self.distinct, strict=True):
                if not cats.equals(categories):
                    values[a:b] = categories.get_indexer(cats)[values[a:b]]
            categories = pd.Index(categories, dtype=self.dtype)
        self.distinct = []
        return pd.Categorical.from_codes(values, categories=categories)
