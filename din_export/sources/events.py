"""Generic events files: CSV/TSV with a header or Parquet (streamed in chunks), and in-memory
tables, with user, item, category, timestamp, an optional label and declared feature columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from din_export.sources.columns import Ids, Numbers, release_free_memory
from din_export.sources.table import CHUNK_ROWS, Events, SourceError
from din_export.sources.validate import (
    _bad,
    _check_file,
    _csv_errors,
    _floats,
    _ids,
    _ints,
    _labels,
    _split_names,
)

REQUIRED_EVENT_COLUMNS = ("user", "item", "category", "timestamp")
# Names the dataset itself uses; a feature column called so would collide with them.
RESERVED_NAMES = frozenset({
    *REQUIRED_EVENT_COLUMNS, "label", "rating", "user_id", "item_id", "cate_id", "hist_item_id",
    "hist_cate_id", "hist_len", "dense", "group",
})


PARQUET_SUFFIXES = (".parquet", ".pq")


def _parquet_file(path: Path) -> object:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise SourceError(f"{path}: not a readable Parquet file ({e})") from None


def _csv_sep(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _header(path: Path) -> list[str]:
    """The column names of an events file; a name given twice is refused (which one would be read?)."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        names = list(_parquet_file(path).schema_arrow.names)
        twice = "the Parquet file has two columns named"
    elif suffix in (".csv", ".tsv", ".txt"):
        with _csv_errors(path, _csv_sep(path), None, "a CSV file with a header row"):
            # header=None: pandas would rename a repeated name ("a.1") and hide it
            row = pd.read_csv(path, sep=_csv_sep(path), header=None, nrows=1, dtype=str, keep_default_na=False)
        names = [str(v) for v in row.iloc[0]]
        twice = "line 1: the header has two columns named"
    else:
        raise SourceError(f"{path}: unknown events format {suffix!r} (use .csv, .tsv or .parquet)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SourceError(f"{path}: {twice} {name!r}")
        seen.add(name)
    return names


def _parquet_text_error(path: Path, batch: object, row0: int, error: Exception) -> SourceError:
    """Name the value a batch failed on: a string that is not UTF-8, if there is one."""
    import pyarrow as pa

    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            for i, v in enumerate(col.cast(pa.large_binary()).to_pylist()):
                if v is None:
                    continue
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError as e:
                    return _bad(path, row0 + i + 1, name, v, f"not UTF-8 text (byte 0x{v[e.start]:02x})")
    return SourceError(f"{path}: cannot convert rows {row0 + 1} to {row0 + batch.num_rows} ({error})")


def _event_chunks(path: Path, header: list[str], columns: list[str], id_columns: list[str],
                  chunk_rows: int) -> Iterator[pd.DataFrame]:
    _require_columns(path, header, columns)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow as pa

        row = 0
        # The system allocator for the conversions, not Arrow's default (mimalloc), whose freed pages
        # stay resident until they are reused (a small cut since each reader covers a run of row groups:
        # 0.47 against 0.49 GB after reading 10M rows).
        pool = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        try:
            for batch in _parquet_batches(path, columns, chunk_rows):
                try:
                    # pandas keeps Arrow strings as they are: invalid UTF-8 would only fail much later
                    batch.validate(full=True)
                    # split_blocks: one block per column, no copy of the chunk into 2-d blocks
                    frame = batch.to_pandas(split_blocks=True)
                except pa.ArrowException as e:
                    raise _parquet_text_error(path, batch, row, e) from None
                row += batch.num_rows
                yield frame
        except (pa.ArrowException, OSError) as e:  # a damaged file: pages that do not decode
            raise SourceError(f"{path}: cannot read the Parquet file after row {row} ({e})") from None
        finally:
            pa.set_memory_pool(pool)
        return
    # ids stay text ("007" is not 7); numbers are parsed by the C parser, and `_ints`/`_floats`
    # report any value it could not parse
    with _csv_errors(path, _csv_sep(path), header, "a well-formed CSV file"):
        yield from pd.read_csv(path, sep=_csv_sep(path), usecols=columns, dtype={c: "category" for c in id_columns},
                               keep_default_na=False, na_values=[""], chunksize=chunk_rows)


def _parquet_batches(path: Path, columns: list[str], chunk_rows: int) -> Iterator[object]:
    """The file's record batches, read by a fresh reader per run of row groups of about `chunk_rows`
    rows: one reader over the whole file held about 7 MB of Arrow memory more with every 500,000-row
    batch until it was closed (1.3 GB at 100M rows). The parsed footer is shared, not read again."""
    import pyarrow.parquet as pq

    metadata = _parquet_file(path).metadata
    groups: list[int] = []
    rows = 0
    for i in range(metadata.num_row_groups):
        groups.append(i)
        rows += metadata.row_group(i).num_rows
        if rows >= chunk_rows or i == metadata.num_row_groups - 1:
            reader = pq.ParquetFile(path, metadata=metadata)
            try:
                yield from reader.iter_batches(batch_size=chunk_rows, columns=columns, row_groups=groups)
            finally:
                reader.close()
            groups, rows = [], 0


def _require_columns(path: object, present: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; the file has {list(present)}")


def _declared(sparse: str | Sequence[str] | None, dense: str | Sequence[str] | None,
              where: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    sparse_cols, dense_cols = _split_names(sparse), _split_names(dense)
    declared = [*sparse_cols, *dense_cols]
    clash = sorted(set(declared) & RESERVED_NAMES)
    if clash:
        raise SourceError(f"feature column(s) {clash} use reserved names; rename them in {where}")
    if len(set(declared)) != len(declared):
        raise SourceError(f"a column is declared twice in --sparse-features/--dense-features: {declared}")
    return sparse_cols, dense_cols


def _collect_events(chunks: Iterable[pd.DataFrame], where: object, line0: int, has_label: bool,
                    sparse_cols: tuple[str, ...], dense_cols: tuple[str, ...], source: str,
                    n_rows: int | None = None) -> Events:
    """Check and convert the chunks of an events table; `line0` numbers the first row in messages.
    `n_rows`, where known, lets each column be filled in place (`columns`)."""
    ids = {c: Ids(n_rows) for c in ("user", "item", "category", *sparse_cols)}
    nums = {"timestamp": Numbers(np.int64, n_rows), "label": Numbers(np.int8, n_rows),
            **{c: Numbers(np.float32, n_rows) for c in dense_cols}}
    read = 0
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        lines = np.arange(line0 + read, line0 + read + len(chunk))
        for c, column in ids.items():
            column.add(_ids(chunk[c], where, c, lines))
        nums["timestamp"].add(_ints(chunk["timestamp"], where, "timestamp", lines))
        if has_label:
            nums["label"].add(_labels(chunk["label"], where, "label", lines))
        for c in dense_cols:
            # float32 is what the dataset stores; rounding here or at the end gives the same values
            nums[c].add(_floats(chunk[c], where, c, lines).astype(np.float32))
        read += len(chunk)
        del chunk
        release_free_memory()
    if read == 0:
        raise SourceError(f"{where}: no rows")
    # copy=False: pandas would otherwise copy every column into the frame, holding the table twice
    columns = {c: ids.pop(c).result() for c in ("user", "item", "category")}
    columns["timestamp"] = nums.pop("timestamp").result()
    if has_label:
        columns["label"] = nums.pop("label").result()
    for c in sparse_cols:
        columns[c] = ids.pop(c).result()
    for c in dense_cols:
        columns[c] = nums.pop(c).result()
    return Events(frame=pd.DataFrame(columns, copy=False), source=source, sparse=sparse_cols, dense=dense_cols,
                  stats={"rows_read": read},
                  notes={"category": "category column", "label": "label column" if has_label else "implicit"})


def read_events(path: str | Path, sparse: str | Sequence[str] | None = None,
                dense: str | Sequence[str] | None = None, source: str = "events",
                chunk_rows: int = CHUNK_ROWS) -> Events:
    """CSV/TSV (with header) or Parquet with user, item, category, timestamp, optional label and the
    declared extra columns (`sparse`: categorical, `dense`: numeric). Other columns are ignored."""
    path = Path(path)
    _check_file(path, "events file")
    sparse_cols, dense_cols = _declared(sparse, dense, path)
    header = _header(path)
    has_label = "label" in header
    columns = [*REQUIRED_EVENT_COLUMNS, *(["label"] if has_label else []), *sparse_cols, *dense_cols]
    # error messages count file lines for CSV (line 1 is the header) and rows from 1 for Parquet
    line0 = 1 if path.suffix.lower() in PARQUET_SUFFIXES else 2
    id_columns = ["user", "item", "category", *sparse_cols]
    n_rows = _parquet_file(path).metadata.num_rows if path.suffix.lower() in PARQUET_SUFFIXES else None
    return _collect_events(_event_chunks(path, header, columns, id_columns, chunk_rows), path, line0,
                           has_label, sparse_cols, dense_cols, source, n_rows)


def events_from_frame(frame: pd.DataFrame, sparse: str | Sequence[str] | None = None,
                      dense: str | Sequence[str] | None = None, source: str = "events") -> Events:
    """An in-memory table with the columns `read_events` expects; error messages count rows from 1."""
    where = f"{source} table"
    sparse_cols, dense_cols = _declared(sparse, dense, where)
    has_label = "label" in frame.columns
    columns = [*REQUIRED_EVENT_COLUMNS, *(["label"] if has_label else []), *sparse_cols, *dense_cols]
    _require_columns(where, list(frame.columns), columns)
    return _collect_events([frame[columns]], where, 1, has_label, sparse_cols, dense_cols, source, len(frame))
