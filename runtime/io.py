"""Readers and writers for din-score: JSONL, CSV and Parquet requests in, JSONL or CSV scores out.

Readers stream `Record`s (line number, parsed row or the reason it could not be parsed, raw text) so the
CLI can stop at, or set aside, each bad line with bounded memory. Problems with the file as a whole
(binary, not UTF-8, empty, bad CSV header) raise InputFileError. Writers write beside the target and
rename at the end, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

from din_runtime.arrow import decimals_as_doubles
from din_runtime.errors import DinRuntimeError
from din_runtime.fs import AtomicFile, CommitOnSuccess

INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
PARQUET_INSTALL = "pip install 'din-toolkit[parquet]'"
_BOM = "\ufeff"
# Past line 1 a byte order mark is no part of the data: it would silently become part of an id.
_MIDDLE_BOM = "starts with a UTF-8 byte order mark (BOM) inside the file: were files concatenated?"
_CSV_FIELD_LIMIT = 2**31 - 1  # the largest value the csv module accepts on every platform (a C long)


class InputFileError(DinRuntimeError):
    """The input file as a whole cannot be read (binary, not UTF-8, empty, bad header, unreadable)."""


class Record(NamedTuple):
    """One input row: `line` is its 1-based line (row number for Parquet); `row` is None if `error` is set."""

    line: int
    row: dict[str, Any] | None
    error: str | None = None
    field: str | None = None
    raw: str | None = None

    def raw_text(self) -> str:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.row, default=str, ensure_ascii=False)


def format_of(path: str, given: str, table: dict[str, str], default_for_dash: str, option: str) -> str:
    """The format named by `given`, else by the file extension ("-" means stdin/stdout)."""
    if given != "auto":
        return given
    if path == "-":
        return default_for_dash
    suffix = Path(path).suffix.lower()
    if suffix not in table:
        raise InputFileError(f"cannot tell the format of {path!r} from its extension; name it with {option} "
                             f"(known extensions: {', '.join(sorted(table))})")
    return table[suffix]


def _decode(raw: bytes, line: int) -> str:
    if b"\x00" in raw:
        raise InputFileError(f"line {line} holds a NUL byte: this looks like a binary file, not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                             f"is the file binary or compressed? re-encode it as UTF-8") from None
    return text.removeprefix(_BOM) if line == 1 else text


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys silently; a row saying two things is refused instead.
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_jsonl(stream: BinaryIO) -> Iterator[Record]:
    """One JSON object per line; blank (or whitespace-only) lines are skipped. A JSON array is refused."""
    rows = 0
    for line, raw in enumerate(stream, start=1):
        text = _decode(raw, line)
        if not text.strip():
            continue
        rows += 1
        if rows == 1 and text.lstrip().startswith("["):
            # .json maps to JSONL, so a JSON array file lands here; its lines are no rows worth skipping one by one.
            raise InputFileError(f"line {line} starts with '[': this looks like a JSON array, but din-score reads "
                                 f"JSON Lines (one object per line); convert it with: jq -c '.[]' FILE > FILE.jsonl")
        clean = text.rstrip("\r\n")
        if text.startswith(_BOM):
            yield Record(line, None, _MIDDLE_BOM, raw=clean)
            continue
        try:
            row = _DECODER.decode(text)
        except _DuplicateKey as e:
            yield Record(line, None, "the key appears twice in the object; which value is meant is ambiguous",
                         field=e.key, raw=clean)
            continue
        except (ValueError, RecursionError) as e:
            # ValueError besides JSONDecodeError: an integer literal over Python's 4300-digit limit.
            if isinstance(e, json.JSONDecodeError):
                reason = f"malformed JSON ({e.msg} at column {e.colno})"
            elif isinstance(e, RecursionError):
                reason = "malformed JSON (nested too deeply)"
            else:
                reason = f"malformed JSON ({e})"
            if not raw.endswith(b"\n"):
                reason += "; it is the last line and has no newline: was the file truncated?"
            yield Record(line, None, reason, raw=clean)
            continue
        if not isinstance(row, dict):
            yield Record(line, None, f"expected a JSON object, got {_JSON_KINDS[type(row)]}", raw=clean)
            continue
        yield Record(line, row, raw=clean)
    if rows == 0:
        raise InputFileError("the input is empty: no rows to score")


def read_csv(stream: BinaryIO, list_fields: Iterable[str], number_fields: Iterable[str],
             list_sep: str) -> Iterator[Record]:
    """A header line, then one row per record; blank (or whitespace-only) lines are skipped. List fields are
    split on `list_sep` (an empty cell is an empty list); number fields are parsed as floats; any other empty
    cell counts as a missing value."""
    list_fields, number_fields = set(list_fields), set(number_fields)
    consumed: list[str] = []
    line_no = 0

    def lines() -> Iterator[str]:
        nonlocal line_no
        for raw in stream:
            line_no += 1
            text = _decode(raw, line_no)
            consumed.append(text)
            yield text

    # The csv module refuses fields over 128 KiB by default, which a long history cell exceeds; the line
    # is already in memory whole, so the limit protects nothing here. (The limit is process-wide.)
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(lines(), strict=True)
    header: list[str] | None = None
    rows = 0
    while True:
        start = line_no + 1
        consumed.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            if header is None:
                raise InputFileError(f"line {start}: the CSV header cannot be parsed: {e}") from None
            rows += 1
            yield Record(start, None, f"malformed CSV: {e}", raw="".join(consumed).rstrip("\r\n"))
            continue
        if not values or (len(values) == 1 and not "".join(consumed).strip()):
            continue  # a blank or whitespace-only line is no record, as in JSONL
        if header is None:
            header = values
            _check_header(header)
            continue
        rows += 1
        raw = "".join(consumed).rstrip("\r\n")
        if raw.startswith(_BOM):
            yield Record(start, None, _MIDDLE_BOM, raw=raw)
            continue
        if len(values) != len(header):
            yield Record(start, None, f"has {len(values)} fields, the header has {len(header)}", raw=raw)
            continue
        row: dict[str, Any] = {}
        problem = None
        for name, cell in zip(header, values, strict=True):
            if name in list_fields:
                row[name] = cell.split(list_sep) if cell else []
            elif not cell:
                continue
            elif name in number_fields:
                try:
                    row[name] = float(cell)
                except ValueError:
                    problem = Record(start, None, f"{cell!r:.40} is not a number", field=name, raw=raw)
                    break
            else:
                row[name] = cell
        yield problem or Record(start, row, raw=raw)
    if header is None:
        raise InputFileError("the input is empty: no CSV header and no rows")
    if rows == 0:
        raise InputFileError("the CSV input has a header but no rows to score")


def _check_header(header: list[str]) -> None:
    seen = set()
    for i, name in enumerate(header, start=1):
        if not name:
            raise InputFileError(f"line 1: CSV header column {i} has no name")
        if name in seen:
            raise InputFileError(f"line 1: CSV header names {name!r} twice")
        seen.add(name)


def read_parquet_batches(source: str | BinaryIO, batch_size: int) -> Iterator[tuple[int, Any]]:
    """(first row's 1-based number, pyarrow RecordBatch) of a Parquet file, `batch_size` rows a batch;
    history fields are list columns."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputFileError(f"reading Parquet needs pyarrow: {PARQUET_INSTALL}") from None
    try:
        table = pyarrow.parquet.ParquetFile(source)
        names = table.schema_arrow.names
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if repeated is not None:
            raise InputFileError(f"the Parquet input has two columns named {repeated!r}")
        rows = 0
        for batch in table.iter_batches(batch_size=batch_size):
            if batch.num_rows:
                yield rows + 1, batch
                rows += batch.num_rows
    except (pyarrow.ArrowException, OSError) as e:
        raise InputFileError(f"cannot read the Parquet input: {e}") from e
    if rows == 0:
        raise InputFileError("the Parquet input has no rows to score")


def parquet_records(first: int, batch: Any) -> list[Record]:
    """The rows of a batch of `read_parquet_batches` as Records; `line` is the 1-based row number; decimal
    columns as doubles (din_runtime.arrow.decimals_as_doubles)."""
    import pyarrow as pa

    columns = [decimals_as_doubles(c) for c in batch.columns]
    names = batch.schema.names
    try:
        rows = pa.RecordBatch.from_arrays(columns, names=names).to_pylist()
    except UnicodeDecodeError:  # a string that is not UTF-8 somewhere: find it row by row
        return [_parquet_record(first + i, names, columns, i) for i in range(batch.num_rows)]
    return [Record(first + i, row) for i, row in enumerate(rows)]


def _parquet_record(line: int, names: list[str], columns: list[Any], i: int) -> Record:
    row: dict[str, Any] = {}
    bad = None
    for name, column in zip(names, columns, strict=True):
        try:
            row[name] = column[i].as_py()
        except UnicodeDecodeError:
            bad = bad or name
            row[name] = "<not UTF-8>"  # for the errors file's raw text only
    if bad is None:
        return Record(line, row)
    return Record(line, None, "holds bytes that are not UTF-8", bad, json.dumps(row, default=str, ensure_ascii=False))


class AtomicText(CommitOnSuccess):
    """A UTF-8 text file written beside `path` and renamed over it only by `commit()` (din_runtime.fs).

    `path` "-" writes straight to stdout instead (streamed, so nothing to undo), as UTF-8 whatever the
    locale: JSONL and CSV output must not depend on the terminal's encoding.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._target: AtomicFile | None = None
        if path == "-":
            self.file: IO[str] = sys.stdout
            if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.encoding.lower() not in ("utf-8", "utf8"):
                sys.stdout.reconfigure(encoding="utf-8")
            return
        self._target = AtomicFile(path, "w", encoding="utf-8", newline="")
        self.file = self._target.file

    def commit(self) -> None:
        if self._target is None:
            self.file.flush()
        else:
            self._target.commit()

    def discard(self) -> None:
        if self._target is not None:
            self._target.discard()


class ScoreWriter:
    """Scores as JSONL objects or CSV rows, with the `id_field` value passed through first if given."""

    def __init__(self, out: AtomicText, fmt: str, id_field: str | None) -> None:
        self._out = out.file
        self._fmt = fmt
        self._id_field = id_field
        self._csv = csv.writer(self._out, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._csv.writerow(([id_field] if id_field else []) + ["score"])
        self._id_key = json.dumps(id_field, ensure_ascii=False) if id_field else ""

    def write(self, ids: list[Any] | None, scores: Iterable[Any]) -> None:
        # str() of a numpy float32 is its shortest round-trip form; float() would print float64 noise.
        texts = [str(s) for s in scores]
        try:
            if self._csv:
                # Non-string ids as JSON text, as in JSONL output: true, null, ["a","b"], not Python reprs.
                cells = None if ids is None else [i if isinstance(i, str) else _id_json(i) for i in ids]
                self._csv.writerows(zip(cells, texts, strict=True) if cells is not None else ([t] for t in texts))
            elif ids is not None:
                self._out.writelines(f'{{{self._id_key}: {_id_json(i)}, "score": {t}}}\n'
                                     for i, t in zip(ids, texts, strict=True))
            else:
                self._out.writelines(f'{{"score": {t}}}\n' for t in texts)
        except (UnicodeEncodeError, ValueError):
            # din-score checks each id with `id_problem` first, to name its row; this backstops other callers.
            problem = next((p for p in map(id_problem, ids or ()) if p), None)
            if problem is None:
                raise
            raise DinRuntimeError(f"an id-field value {problem}") from None


def _id_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)


def id_problem(value: Any) -> str | None:
    """Why `value` cannot be copied into UTF-8 JSON or CSV output as a request id, or None if it can."""
    try:
        _id_json(value).encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (e.g. \\ud800), which UTF-8 output cannot carry"
    except ValueError:
        return "holds NaN or an infinity, which JSON output cannot carry"
    return None


def write_error(out: AtomicText, record: Record, field: str | None, reason: str) -> None:
    """One rejected row of the --errors file: its line, field, reason and raw text."""
    entry = {"line": record.line, "field": field, "error": reason, "raw": record.raw_text()}
    out.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
