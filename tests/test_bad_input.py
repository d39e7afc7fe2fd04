"""Hostile input for din-score and din_runtime, driven by one table of cases that docs/bad-input.md shows.

Four kinds of case:
- RowCase: one bad row among good ones (or every row bad). Stop mode: exit 1 naming the line (row for
  Parquet) and the field, no output file. Skip mode: exit 0, rows read = scored + rejected, the errors
  file names each rejected line and field, the scored rows are exactly the good ones with the API's scores.
- Recovery: not an error; the run succeeds and every row scores exactly like an equivalent clean row.
- FileCase: a problem with the whole input or the command line: the same exit code in both modes,
  no output, no errors file, no temporary file left behind.
- ModelCase: a model directory that is missing, foreign, tampered with or pointing outside itself.
Every case also asserts that no exception escaped (no traceback). `test_doc_lists_every_case` keeps
docs/bad-input.md and this table identical; `python tests/test_bad_input.py` prints the doc's rows.
A subset (`real=True`) also runs against a DIN exported by din_export.
"""

from __future__ import annotations

import ast
import copy
import csv
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from din_runtime import Scorer, load_manifest
from din_runtime.cli import main
from reliability_fixtures import Names, exported_din, valid_rows
from runtime_fixtures import build_model_dir

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
ROWS = 5
POS = 2  # the row a single-row case changes: line 3 of a JSONL file, line 4 of a CSV file (after the header)
EXT = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
# The fixture model's field names, used to render the doc (the real DIN uses the same names).
DOC_NAMES = Names("user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id", "age", 4)

Row = dict[str, Any]
Change = Callable[[Row, Names], "Row | str"]


# --- The cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCase:
    id: str
    input: str
    bad: Change
    says: str  # in the message after "line N, field 'F': " ({item}, {hist}... are the model's field names)
    field: str | None  # a Names attribute, or a literal field name, or None (the row is not an object)
    fmt: str = "jsonl"
    args: tuple[str, ...] = ()
    position: int = POS
    every_row: bool = False
    newline: bool = True
    real: bool = False
    test = "test_bad_row"

    def field_name(self, names: Names) -> str | None:
        return getattr(names, self.field, self.field) if self.field else None

    def outcome(self) -> str:
        where = "row" if self.fmt == "parquet" else "line"
        line = line_of(self.fmt, 0 if self.every_row else self.position)
        field = self.field_name(DOC_NAMES)
        head = f"{where} {line}" + (f", field '{field}'" if field else "")
        bad = ROWS if self.every_row else 1
        return (f"`{head}: {self.says.format(**asdict(DOC_NAMES))}`; skip: {ROWS} read = {ROWS - bad} scored "
                f"+ {bad} rejected")

    exit_text = "1 (skip: 0)"


@dataclass(frozen=True)
class Recovery:
    id: str
    input: str
    what: str
    change: Change | None = None
    same_as: Callable[[Row, Names], Row] | None = None  # the clean row it must score like (default: itself)
    transform: Callable[[bytes], bytes] | None = None  # applied to the whole file
    summary: str = ""
    fmt: str = "jsonl"
    args: tuple[str, ...] = ()
    real: bool = False
    test = "test_recovery"
    exit_text = "0"

    def outcome(self) -> str:
        return self.what.format(**asdict(DOC_NAMES))


@dataclass(frozen=True)
class FileCase:
    id: str
    input: str
    make: Callable[[Path, list[Row], Names], list[str]]  # writes what it needs, returns INPUT and options
    says: str
    exit: int = 1
    both_modes: bool = True
    test = "test_bad_file"

    def outcome(self) -> str:
        return f"`{self.says}`"

    @property
    def exit_text(self) -> str:
        return str(self.exit)


@dataclass(frozen=True)
class ModelCase:
    id: str
    input: str
    make: Callable[[Path, Path], Path]  # (copy of a good model dir, scratch dir) -> MODEL_DIR to pass
    says: str
    real: bool = False
    test = "test_bad_model_dir"
    exit_text = "1"

    def outcome(self) -> str:
        return f"`{self.says}`"


def with_(**changes: Any) -> Change:
    """A change setting fields: keys are Names attributes (item, hist, ...) or literal field names."""
    def change(row: Row, n: Names) -> Row:
        for key, value in changes.items():
            row[getattr(n, key, key)] = value(row, n) if callable(value) else value
        return row
    return change


def without(key: str) -> Change:
    def change(row: Row, n: Names) -> Row:
        del row[getattr(n, key, key)]
        return row
    return change


def raw(text: str | Callable[[Row, Names], str]) -> Change:
    return lambda row, n: text(row, n) if callable(text) else text


def giant_int_line(row: Row, n: Names) -> str:
    # json.dumps cannot write an integer over 4300 digits either, so splice the literal in.
    return json.dumps({**row, n.item: 0}).replace(f'"{n.item}": 0', f'"{n.item}": {"9" * 5000}')


def duplicate_key_line(row: Row, n: Names) -> str:
    return json.dumps({n.user: "someone-else"})[:-1] + ", " + json.dumps(row)[1:]


def csv_line(row: Row) -> str:
    return csv_row(csv_cells(row, list(row)))


def csv_row(cells: list[str]) -> str:
    f = io.StringIO()
    csv.writer(f, lineterminator="").writerow(cells)
    return f.getvalue()


def unseen(row: Row, n: Names) -> Row:
    return {**row, n.item: "never-seen-id"}


def full(items: list, n: Names) -> list:
    """`items` repeated to exactly max_len items."""
    return (items * n.max_len)[:n.max_len]


def long_history(items: list) -> list:
    return (items * (100_000 // len(items) + 1))[:100_000]


def tail_history(row: Row, n: Names) -> Row:
    return {**row, n.hist: row[n.hist][-n.max_len:], n.hist2: row[n.hist2][-n.max_len:]}


ROW_CASES = [
    RowCase("missing-field", "a row without a model field (`{item}`)", without("item"), "missing", "item",
            real=True),
    RowCase("null-id", "`\"{user}\": null`", with_(user=None), "is null", "user"),
    RowCase("null-history", "`\"{hist}\": null`", with_(hist=None),
            "expected a list of ids (oldest first), got null", "hist", real=True),
    RowCase("null-dense", "`\"{dense}\": null`", with_(dense=None), "expected a number, got null", "dense"),
    RowCase("string-for-number", "`\"{dense}\": \"49\"`", with_(dense="49"), "expected a number, got str '49'",
            "dense", real=True),
    RowCase("number-for-list", "`\"{hist}\": 5`", with_(hist=5), "expected a list of ids (oldest first), got int",
            "hist", real=True),
    RowCase("string-for-list", "`\"{hist}\": \"a|b\"` (a CSV cell in JSON)", with_(hist="a|b"),
            "expected a list of ids (oldest first), got str", "hist"),
    RowCase("object-for-id", "`\"{user}\": {{\"id\": 1}}`", with_(user={"id": 1}),
            "expected a string or integer id, got dict", "user"),
    RowCase("list-for-id", "`\"{item}\": [\"...\"]`", with_(item=lambda r, n: [r[n.item]]),
            "expected a string or integer id, got list", "item"),
    RowCase("nested-history-item", "`\"{hist}\": [[\"...\"], ...]`",
            with_(hist=lambda r, n: [[r[n.hist][0]]] + r[n.hist][1:]),
            "item 0: expected a string or integer id, got list", "hist"),
    RowCase("bool-id", "`\"{item}\": true`", with_(item=True), "True is a boolean, not an id", "item", real=True),
    RowCase("bool-history-item", "`false` as the last history item",
            with_(hist=lambda r, n: r[n.hist][:-1] + [False]), "item 2: False is a boolean, not an id", "hist"),
    RowCase("bool-dense", "`\"{dense}\": true`", with_(dense=True), "expected a number, got bool True", "dense"),
    RowCase("float-id", "`\"{item}\": 3.5`", with_(item=3.5), "3.5 is not an integral number, so not an id",
            "item", real=True),
    RowCase("nan-id", "`\"{item}\": NaN` (a literal Python's json accepts)", with_(item=float("nan")),
            "nan is not an integral number, so not an id", "item"),
    RowCase("infinity-id", "`\"{item}\": Infinity`", with_(item=float("inf")),
            "inf is not an integral number, so not an id", "item"),
    RowCase("nan-history-item", "`NaN` inside `{hist}`", with_(hist=lambda r, n: [float("nan")] + r[n.hist][1:]),
            "item 0: nan is not an integral number", "hist"),
    RowCase("nan-dense", "`\"{dense}\": NaN`", with_(dense=float("nan")), "nan is not finite", "dense", real=True),
    RowCase("infinity-dense", "`\"{dense}\": Infinity`", with_(dense=float("inf")), "inf is not finite", "dense",
            real=True),
    RowCase("minus-infinity-dense", "`\"{dense}\": -Infinity`", with_(dense=float("-inf")), "-inf is not finite",
            "dense"),
    RowCase("float32-overflow-dense", "`\"{dense}\": 1e39` (finite in float64, not in float32)",
            with_(dense=1e39), "1e+39 overflows float32", "dense"),
    RowCase("huge-integer-dense", "`\"{dense}\": 999...9` (400 digits, beyond float64)", with_(dense=int("9" * 400)),
            "an integer beyond 10**399 overflows float32", "dense"),
    RowCase("integer-over-4300-digits", "`\"{item}\": 999...9` (5,000 digits: Python refuses to parse it)",
            raw(giant_int_line), "malformed JSON (Exceeds the limit (4300 digits)", None),
    RowCase("history-lengths-differ", "`{hist2}` shorter than `{hist}`", with_(hist2=lambda r, n: r[n.hist2][:1]),
            "has 1 items but '{hist}' has 3; histories of a row must have one length", "hist2", real=True),
    RowCase("malformed-json", "`{{not json`", raw("{not json"),
            "malformed JSON (Expecting property name enclosed in double quotes at column 2)", None, real=True),
    RowCase("python-dict-line", "a Python dict repr (single quotes)", raw(lambda r, n: str(r)),
            "malformed JSON (Expecting property name enclosed in double quotes", None),
    RowCase("bad-escape", "`{{\"{user}\": \"\\x41\"}}`", raw(lambda r, n: f'{{"{n.user}": "\\x41"}}'),
            "malformed JSON (Invalid \\escape", None),
    RowCase("truncated-last-line", "the last line cut short, no final newline",
            raw(lambda r, n: json.dumps(r)[:-12]),
            "it is the last line and has no newline: was the file truncated?", None, position=ROWS - 1,
            newline=False, real=True),
    RowCase("array-line", "`[1, 2]`", raw("[1, 2]"), "expected a JSON object, got an array", None),
    RowCase("scalar-line", "`42`", raw("42"), "expected a JSON object, got a number", None),
    RowCase("null-line", "`null`", raw("null"), "expected a JSON object, got null", None),
    RowCase("deeply-nested-json", "an extra field nested 100,000 arrays deep",
            raw(lambda r, n: json.dumps(r)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "malformed JSON (nested too deeply)", None),
    RowCase("duplicate-key", "`{user}` twice in one object (json keeps the last silently)", raw(duplicate_key_line),
            "the key appears twice in the object; which value is meant is ambiguous", "user", real=True),
    RowCase("bom-inside-file", "a UTF-8 BOM at the start of line 3 (files concatenated)",
            raw(lambda r, n: "\ufeff" + json.dumps(r)), "starts with a UTF-8 byte order mark", None),
    RowCase("csv-bom-inside-file", "a UTF-8 BOM at the start of CSV line 4", raw(lambda r, n: "\ufeff" + csv_line(r)),
            "starts with a UTF-8 byte order mark", None, fmt="csv"),
    RowCase("label-not-binary", "`\"label\": 2` with `--label-field label`", with_(label=2),
            "label must be 0 or 1, got 2", "label", args=("--label-field", "label"), real=True),
    RowCase("label-boolean", "`\"label\": true` with `--label-field label`", with_(label=True),
            "label must be 0 or 1, got True", "label", args=("--label-field", "label")),
    RowCase("label-string", "`\"label\": \"1\"` with `--label-field label`", with_(label="1"),
            "label must be 0 or 1, got '1'", "label", args=("--label-field", "label")),
    RowCase("label-nan", "`\"label\": NaN` with `--label-field label`", with_(label=float("nan")),
            "label must be 0 or 1, got nan", "label", args=("--label-field", "label")),
    RowCase("label-missing", "no `label` with `--label-field label`", without("label"),
            "missing (named by --label-field)", "label", args=("--label-field", "label")),
    RowCase("id-field-missing", "no `rid` with `--id-field rid`", without("rid"), "missing (named by --id-field)",
            "rid", args=("--id-field", "rid")),
    RowCase("id-field-nan", "`\"rid\": NaN` with `--id-field rid` (JSON output cannot hold it)",
            with_(rid=float("nan")), "holds NaN or an infinity, which JSON output cannot carry", "rid",
            args=("--id-field", "rid")),
    RowCase("id-field-lone-surrogate", "`\"rid\": \"\\ud800\"` with `--id-field rid` (not encodable as UTF-8)",
            with_(rid="\ud800"), "holds a lone surrogate", "rid", args=("--id-field", "rid")),
    # CSV: line 1 is the header, so row 3 is line 4.
    RowCase("csv-missing-column", "CSV without the `{dense}` column", without("dense"), "missing", "dense",
            fmt="csv", every_row=True, real=True),
    RowCase("csv-empty-id-cell", "CSV with an empty `{user}` cell", with_(user=None), "missing", "user", fmt="csv"),
    RowCase("csv-short-row", "CSV row with 2 cells", raw("a,b"), "has 2 fields, the header has", None, fmt="csv"),
    RowCase("csv-long-row", "CSV row with one cell too many", raw(lambda r, n: csv_line(r) + ",extra"),
            "fields, the header has", None, fmt="csv"),
    RowCase("csv-dense-not-a-number", "CSV `{dense}` cell `forty`", with_(dense="forty"),
            "'forty' is not a number", "dense", fmt="csv", real=True),
    RowCase("csv-dense-nan-text", "CSV `{dense}` cell `nan`", with_(dense="nan"), "nan is not finite", "dense",
            fmt="csv"),
    RowCase("csv-dense-inf-text", "CSV `{dense}` cell `-inf`", with_(dense="-inf"), "-inf is not finite", "dense",
            fmt="csv"),
    RowCase("csv-history-lengths-differ", "CSV `{hist2}` cell with fewer items",
            with_(hist2=lambda r, n: r[n.hist2][:1]), "has 1 items but '{hist}' has 3", "hist2", fmt="csv"),
    RowCase("csv-unterminated-quote", "CSV last row opening a quote it never closes",
            raw(lambda r, n: '"' + csv_line(r)), "malformed CSV: unexpected end of data", None, fmt="csv",
            position=ROWS - 1),
    RowCase("csv-label-text", "CSV `label` cell `yes` with `--label-field label`", with_(label="yes"),
            "'yes' is not a number", "label", fmt="csv", args=("--label-field", "label")),
    RowCase("csv-label-not-binary", "CSV `label` cell `3` with `--label-field label`", with_(label=3),
            "label must be 0 or 1, got 3.0", "label", fmt="csv", args=("--label-field", "label")),
    # Parquet: "row N" is the row number.
    RowCase("parquet-null-history", "Parquet null in the `{hist}` list column", with_(hist=None),
            "expected a list of ids (oldest first), got null", "hist", fmt="parquet"),
    RowCase("parquet-null-id", "Parquet null `{user}`", with_(user=None), "is null", "user", fmt="parquet"),
    RowCase("parquet-nan-dense", "Parquet NaN `{dense}`", with_(dense=float("nan")), "nan is not finite", "dense",
            fmt="parquet"),
    RowCase("parquet-missing-column", "Parquet without the `{dense}` column", without("dense"), "missing", "dense",
            fmt="parquet", every_row=True),
    RowCase("parquet-timestamp-id", "Parquet timestamp column as `{user}`",
            with_(user=datetime.datetime(2020, 1, 1)),
            "expected a string or integer id, got datetime", "user", fmt="parquet", every_row=True),
    RowCase("parquet-string-history", "Parquet string column as `{hist}`", with_(hist="a|b"),
            "expected a list of ids (oldest first), got str", "hist", fmt="parquet", every_row=True),
]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def blank_lines(data: bytes) -> bytes:
    return b"\n  \n" + data.replace(b"\n", b"\n\n", 2) + b"\r\n\n"


def reorder_csv(data: bytes) -> bytes:
    table = list(csv.reader(io.StringIO(data.decode())))
    order = list(reversed(range(len(table[0]))))
    f = io.StringIO()
    csv.writer(f, lineterminator="\n").writerows([[line[i] for i in order] for line in table])
    return f.getvalue().encode()


def add_csv_column(data: bytes) -> bytes:
    lines = data.decode().splitlines()
    return ("\n".join([lines[0] + ",comment"] + [line + ",\"free, text\"" for line in lines[1:]]) + "\n").encode()


RECOVERIES = [
    Recovery("oov-id", "`\"{item}\": \"never-seen-id\"`", "scored with the OOV index 1; summary `OOV ids: {item} 1`",
             with_(item="never-seen-id"), lambda r, n: {**r, n.item: "another-unseen-id"},
             summary="OOV ids: {item} 1", real=True),
    Recovery("oov-history-items", "unseen ids in `{hist}`", "OOV index for each; counted per history field",
             with_(hist=lambda r, n: ["x1", "x2", "x3"]), lambda r, n: {**r, n.hist: ["y1", "y2", "y3"]},
             summary="{hist} 3"),
    Recovery("negative-id", "`\"{item}\": -5`", "an id like any other: unseen, so OOV and counted",
             with_(item=-5), unseen, summary="OOV ids: {item} 1", real=True),
    Recovery("id-beyond-int64", "`\"{item}\": 99999999999999999999`",
             "ids are compared as strings, so no overflow: unseen, OOV and counted",
             with_(item=99999999999999999999), unseen, summary="OOV ids: {item} 1", real=True),
    Recovery("integer-id", "`\"{item}\": 101` where the vocabulary holds `\"101\"`", "the same id as the string",
             with_(item=lambda r, n: int(r[n.item]))),
    Recovery("integral-float-id", "`\"{item}\": 101.0` where the vocabulary holds `\"101\"`",
             "an integral float counts as the integer", with_(item=lambda r, n: float(r[n.item]))),
    Recovery("unicode-id", "`\"{user}\": \"usér-中\"`", "an ordinary (unseen) id", with_(user="usér-中"),
             lambda r, n: {**r, n.user: "nobody"}, summary="{user} 1"),
    Recovery("extra-unknown-field", "an extra field `\"zzz\": {{\"nested\": [1, null]}}`",
             "ignored (requests may carry anything; a misspelt model field fails as missing)",
             with_(zzz={"nested": [1, None]}), lambda r, n: r, real=True),
    Recovery("label-without-flag", "`\"label\": \"garbage\"` without `--label-field`", "not read, so not checked",
             with_(label="garbage"), lambda r, n: r),
    Recovery("integer-dense", "`\"{dense}\": 20` (an int)", "the same as 20.0",
             with_(dense=lambda r, n: int(r[n.dense])), lambda r, n: r),
    Recovery("empty-history", "`\"{hist}\": [], \"{hist2}\": []`", "scored with hist_len 0 (nothing attended)",
             with_(hist=[], hist2=[]), real=True),
    Recovery("history-100k", "histories of 100,000 items",
             "only the most recent max_len items are kept (the older ones are not read: see "
             "`test_history_100k_reads_only_the_kept_tail`)",
             with_(hist=lambda r, n: long_history(r[n.hist]), hist2=lambda r, n: long_history(r[n.hist2])),
             lambda r, n: tail_history({**r, n.hist: long_history(r[n.hist]), n.hist2: long_history(r[n.hist2])}, n),
             real=True),
    Recovery("bad-items-beyond-max-len", "`null` items older than the last max_len",
             "never read, so not an error (only kept items are checked)",
             with_(hist=lambda r, n: [None] * 10 + full(r[n.hist], n),
                   hist2=lambda r, n: [None] * 10 + full(r[n.hist2], n)),
             lambda r, n: {**r, n.hist: full(r[n.hist], n), n.hist2: full(r[n.hist2], n)}),
    Recovery("huge-line", "a 20 MB string field on one line", "read and ignored like any extra field",
             with_(blob="x" * 20_000_000), lambda r, n: r),
    Recovery("crlf-lines", "CRLF line ends", "the same rows", transform=crlf),
    Recovery("bom-first-line", "a UTF-8 BOM before line 1", "the BOM is dropped",
             transform=lambda d: b"\xef\xbb\xbf" + d),
    Recovery("blank-lines", "blank and whitespace-only lines", "skipped, not counted as rows",
             transform=blank_lines, summary=f"{ROWS} rows read"),
    Recovery("no-final-newline", "a valid last line without newline", "read as usual",
             transform=lambda d: d.rstrip(b"\n")),
    Recovery("csv-blank-lines", "CSV with blank and whitespace-only lines, also before the header",
             "skipped, not counted as rows", fmt="csv", transform=blank_lines, summary=f"{ROWS} rows read"),
    Recovery("csv-reordered-columns", "CSV columns in reverse order", "read by header name: the same scores",
             fmt="csv", transform=reorder_csv, real=True),
    Recovery("csv-extra-column", "CSV with an extra column holding commas in quotes", "ignored",
             fmt="csv", transform=add_csv_column),
    Recovery("csv-crlf", "CSV with CRLF line ends", "the same rows", fmt="csv", transform=crlf),
    Recovery("csv-bom", "CSV with a UTF-8 BOM", "the BOM is not part of the first column's name", fmt="csv",
             transform=lambda d: b"\xef\xbb\xbf" + d),
    Recovery("csv-empty-history-cell", "CSV empty `{hist}` and `{hist2}` cells", "an empty history",
             with_(hist=[], hist2=[]), fmt="csv"),
    Recovery("csv-float-text-id", "CSV `{item}` cell `101.0`",
             "CSV cells are strings, so `\"101.0\"` is not `\"101\"`: unseen, OOV and counted",
             with_(item=lambda r, n: f"{r[n.item]}.0"), unseen, summary="OOV ids: {item} 1", fmt="csv"),
    Recovery("csv-quoted-separator-id", "CSV `{user}` cell `a,\"b|c` (quoted)", "an ordinary (unseen) id",
             with_(user='a,"b|c'), lambda r, n: {**r, n.user: "nobody"}, summary="{user} 1", fmt="csv"),
]


def write_bytes(name: str, data: bytes) -> Callable[[Path, list[Row], Names], list[str]]:
    def make(tmp: Path, rows: list[Row], n: Names) -> list[str]:
        (tmp / name).write_bytes(data)
        return [str(tmp / name)]
    return make


def rows_then(name: str, fmt: str, edit: Callable[[bytes], bytes], *options: str) -> Callable:
    def make(tmp: Path, rows: list[Row], n: Names) -> list[str]:
        (tmp / name).write_bytes(edit(render(rows, fmt)))
        return [str(tmp / name), *options]
    return make


def write_json_array(path: Path, rows: list[Row]) -> Path:
    with path.open("w") as f:
        json.dump(rows, f, indent=2)
    return path


def latin1_line_3(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[2] = "café".encode("latin-1") + lines[2]
    return b"\n".join(lines)


def with_output(target: Callable[[Path], str], *options: str) -> Callable:
    def make(tmp: Path, rows: list[Row], n: Names) -> list[str]:
        (tmp / "in.jsonl").write_bytes(render(rows, "jsonl"))
        return [str(tmp / "in.jsonl"), "-o", target(tmp), *options]
    return make


def directory(tmp: Path) -> str:
    (tmp / "scores.jsonl").mkdir()
    return str(tmp / "scores.jsonl")


def parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def parquet_case(build: Callable[[list[Row]], bytes]) -> Callable:
    def make(tmp: Path, rows: list[Row], n: Names) -> list[str]:
        (tmp / "in.parquet").write_bytes(build(rows))
        return [str(tmp / "in.parquet")]
    return make


def pa_table(rows: list[Row]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def duplicate_columns(rows: list[Row]) -> bytes:
    import pyarrow as pa

    table = pa_table(rows)
    return parquet_bytes(pa.Table.from_arrays(table.columns + [table.column(0)], table.column_names
                                              + [table.column_names[0]]))


FILE_CASES = [
    FileCase("empty-file", "an empty .jsonl file", write_bytes("in.jsonl", b""),
             "the input is empty: no rows to score"),
    FileCase("blank-file", "only blank lines", write_bytes("in.jsonl", b"\n  \n\r\n"), "the input is empty"),
    FileCase("json-array-file", "a JSON array (`json.dump(rows, f, indent=2)`) named .json",
             lambda tmp, rows, n: [str(write_json_array(tmp / "in.json", rows))],
             "line 1 starts with '[': this looks like a JSON array, but din-score reads JSON Lines"),
    FileCase("json-array-one-line", "a JSON array on one line, after blank lines",
             write_bytes("in.jsonl", b"\n  \n" + b'[{"a": 1}, {"a": 2}]\n'),
             "line 3 starts with '[': this looks like a JSON array"),
    FileCase("gzip-file", "gzip-compressed JSONL named .jsonl", rows_then("in.jsonl", "jsonl", gzip.compress),
             "holds a NUL byte: this looks like a binary file, not text"),
    FileCase("utf16-file", "JSONL saved as UTF-16",
             rows_then("in.jsonl", "jsonl", lambda d: d.decode().encode("utf-16")), "holds a NUL byte"),
    FileCase("non-utf8-bytes", "a Latin-1 `é` on line 3", rows_then("in.jsonl", "jsonl", latin1_line_3),
             "line 3 is not UTF-8 text (byte 0xe9 at column 4)"),
    FileCase("non-utf8-csv", "a Latin-1 `é` on CSV line 3", rows_then("in.csv", "csv", latin1_line_3),
             "line 3 is not UTF-8 text (byte 0xe9"),
    FileCase("binary-file", "random bytes", write_bytes("in.jsonl", bytes(range(256)) * 4), "holds a NUL byte"),
    FileCase("csv-empty", "an empty .csv file", write_bytes("in.csv", b""), "the input is empty: no CSV header"),
    FileCase("csv-header-only", "a CSV header and no rows", rows_then("in.csv", "csv", lambda d: d.split(b"\n")[0]),
             "the CSV input has a header but no rows to score"),
    FileCase("csv-duplicate-header", "a CSV header naming a column twice",
             rows_then("in.csv", "csv", lambda d: b"rid," + d.replace(b"\n", b",r\n")), "CSV header names 'rid' twice"),
    FileCase("csv-empty-header-name", "a CSV header with an empty name",
             rows_then("in.csv", "csv", lambda d: d.replace(b"\n", b",\n")), "has no name"),
    FileCase("csv-unparsable-header", "a CSV header with an unterminated quote", write_bytes("in.csv", b'"user_id\n'),
             "line 1: the CSV header cannot be parsed"),
    FileCase("parquet-truncated", "a Parquet file cut short",
             parquet_case(lambda rows: parquet_bytes(pa_table(rows))[:-40]), "cannot read the Parquet input"),
    FileCase("parquet-not-parquet", "JSONL named .parquet", parquet_case(lambda rows: render(rows, "jsonl")),
             "cannot read the Parquet input"),
    FileCase("parquet-no-rows", "a Parquet file with a schema and no rows",
             parquet_case(lambda rows: parquet_bytes(pa_table(rows).slice(0, 0))), "the Parquet input has no rows"),
    FileCase("parquet-duplicate-columns", "a Parquet file with two columns of one name",
             parquet_case(duplicate_columns), "the Parquet input has two columns named"),
    FileCase("unknown-extension", "`in.txt` without `--format`", rows_then("in.txt", "jsonl", bytes),
             "cannot tell the format of"),
    FileCase("input-missing", "INPUT that does not exist", lambda tmp, rows, n: [str(tmp / "nope.jsonl")],
             "does not exist", exit=2),
    FileCase("input-is-directory", "INPUT that is a directory", lambda tmp, rows, n: [str(tmp)],
             "is a directory", exit=2),
    FileCase("output-is-directory", "`-o` naming an existing directory", with_output(directory),
             "is a directory, not a file"),
    FileCase("output-directory-missing", "`-o` inside a missing directory",
             with_output(lambda tmp: str(tmp / "no" / "scores.jsonl")), "No such file or directory"),
    FileCase("output-is-input", "`-o` naming INPUT", with_output(lambda tmp: str(tmp / "in.jsonl")),
             "must be different files", exit=2),
    FileCase("skip-without-errors-file", "`--on-error skip` without `--errors`",
             rows_then("in.jsonl", "jsonl", bytes, "--on-error", "skip"), "go together", exit=2, both_modes=False),
    FileCase("batch-size-zero", "`--batch-size 0`", rows_then("in.jsonl", "jsonl", bytes, "--batch-size", "0"),
             "--batch-size", exit=2),
    FileCase("empty-list-separator", "`--list-sep ''`", rows_then("in.csv", "csv", bytes, "--list-sep", ""),
             "--list-sep must not be empty", exit=2),
]


def put(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d


def edit_manifest(d: Path, change: Callable[[dict], None]) -> Path:
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def replace_model(d: Path, data: bytes) -> Path:
    """model.onnx replaced by `data`, with the manifest's hash updated (a consistent but hostile directory)."""
    (d / "model.onnx").write_bytes(data)
    return edit_manifest(d, lambda m: m.update(sha256=hashlib.sha256(data).hexdigest()))


def flip_byte(d: Path, scratch: Path) -> Path:
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))
    return d


def external_data(location: str) -> Callable[[Path, Path], Path]:
    """The largest initializer moved to external data at `location`, hash updated."""
    def make(d: Path, scratch: Path) -> Path:
        import onnx
        from onnx import external_data_helper

        model = onnx.load(d / "model.onnx")
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        external_data_helper.set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data))
        (d / location).write_bytes(tensor.raw_data)  # the data is really there: the refusal is not a read error
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        return replace_model(d, model.SerializeToString())
    return make


def symlink_out(name: str) -> Callable[[Path, Path], Path]:
    """`name` inside the model dir replaced by a symlink to an identical copy outside it."""
    def make(d: Path, scratch: Path) -> Path:
        outside = scratch / f"outside-{Path(name).name}"
        shutil.copyfile(d / name, outside)
        (d / name).unlink()
        (d / name).symlink_to(outside)
        return d
    return make


def other_graph(d: Path, scratch: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["prob"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return replace_model(d, model.SerializeToString())


def wrong_output_shape(d: Path, scratch: Path) -> Path:
    """The manifest's inputs, but `prob` of shape (batch, 1): a graph that is not a DIN."""
    import onnx
    from onnx import TensorProto, helper

    original = onnx.load(d / "model.onnx")
    nodes = [helper.make_node("Cast", ["hist_len"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
             helper.make_node("Unsqueeze", ["f", "axes"], ["prob"])]
    graph = helper.make_graph(nodes, "wrong", list(original.graph.input),
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return replace_model(d, model.SerializeToString())


def first_vocab(d: Path) -> Path:
    return d / json.loads((d / "manifest.json").read_text())["vocab_files"][load_manifest(d).sparse[0].vocab]


def edit_vocab(change: Callable[[list], list]) -> Callable[[Path, Path], Path]:
    def make(d: Path, scratch: Path) -> Path:
        path = first_vocab(d)
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return d
    return make


def fresh(content: dict[str, bytes]) -> Callable[[Path, Path], Path]:
    def make(d: Path, scratch: Path) -> Path:
        target = scratch / "other"
        target.mkdir()
        for name, data in content.items():
            (target / name).write_bytes(data)
        return target
    return make


MODEL_CASES = [
    ModelCase("model-dir-missing", "MODEL_DIR that does not exist", lambda d, s: s / "nowhere", "does not exist"),
    ModelCase("model-dir-empty", "an empty MODEL_DIR", fresh({}), "is empty"),
    ModelCase("model-dir-is-file", "MODEL_DIR naming model.onnx itself", lambda d, s: d / "model.onnx",
              "is not a directory"),
    ModelCase("foreign-directory", "a directory of other files", fresh({"notes.txt": b"hello"}),
              "is not a din model directory (no manifest.json"),
    ModelCase("run-directory", "a training run directory", fresh({"model.safetensors": b"x", "config.json": b"{}"}),
              "it looks like a training run directory; export it first"),
    ModelCase("dataset-directory", "a dataset directory", fresh({"schema.json": b"{}"}),
              "it looks like a dataset directory"),
    ModelCase("foreign-manifest", "manifest.json of another tool (`\"format\": \"mlflow\"`)",
              fresh({"manifest.json": b'{"format": "mlflow"}'}), "manifest.json has format 'mlflow'"),
    ModelCase("manifest-not-json", "manifest.json that is not JSON",
              lambda d, s: put(d, "manifest.json", b"{oops"), "is not valid JSON"),
    ModelCase("manifest-deeply-nested", "manifest.json nested 100,000 deep",
              lambda d, s: put(d, "manifest.json", b"[" * 100_000 + b"]" * 100_000),
              "is not valid JSON: nested too deeply"),
    ModelCase("manifest-not-object", "manifest.json holding `[]`",
              lambda d, s: put(d, "manifest.json", b"[]"), "must hold a JSON object"),
    ModelCase("manifest-missing-key", "manifest without `sha256`",
              lambda d, s: edit_manifest(d, lambda m: m.pop("sha256")), "'sha256' must be a non-empty string"),
    ModelCase("manifest-future-version", "`\"format_version\": 2`",
              lambda d, s: edit_manifest(d, lambda m: m.update(format_version=2)), "format_version 2 is not supported"),
    ModelCase("manifest-bool-version", "`\"format_version\": true` (equal to 1 in Python)",
              lambda d, s: edit_manifest(d, lambda m: m.update(format_version=True)),
              "format_version True is not supported"),
    ModelCase("manifest-padding-index", "`\"padding_index\": 5`",
              lambda d, s: edit_manifest(d, lambda m: m.update(padding_index=5)), "padding_index is 5"),
    ModelCase("manifest-inputs-reordered", "manifest inputs in another order",
              lambda d, s: edit_manifest(d, lambda m: m["inputs"].reverse()), "do not match the schema's input order"),
    ModelCase("model-one-byte-changed", "model.onnx with one byte flipped", flip_byte,
              "the file was changed or damaged after export", real=True),
    ModelCase("model-truncated", "model.onnx cut short",
              lambda d, s: put(d, "model.onnx", (d / "model.onnx").read_bytes()[:100]),
              "the file was changed or damaged after export"),
    ModelCase("model-file-dotdot", "`\"model_file\": \"../m2/model.onnx\"`",
              lambda d, s: edit_manifest(d, lambda m: m.update(model_file="../m2/model.onnx")),
              "must be a relative path inside the model directory", real=True),
    ModelCase("model-file-absolute", "`\"model_file\": \"/etc/passwd\"`",
              lambda d, s: edit_manifest(d, lambda m: m.update(model_file="/etc/passwd")),
              "must be a relative path inside the model directory"),
    ModelCase("model-file-nul", "`\"model_file\": \"model\\u0000.onnx\"`",
              lambda d, s: edit_manifest(d, lambda m: m.update(model_file="model\0.onnx")),
              "must be a relative path inside the model directory"),
    ModelCase("model-file-is-directory", "`\"model_file\": \"vocab\"`",
              lambda d, s: edit_manifest(d, lambda m: m.update(model_file="vocab")), "is not a regular file"),
    ModelCase("model-symlink-out", "model.onnx a symlink to a file outside the directory", symlink_out("model.onnx"),
              "outside the model directory", real=True),
    ModelCase("manifest-symlink-out", "manifest.json a symlink to a file outside", symlink_out("manifest.json"),
              "outside the model directory", real=True),
    ModelCase("vocab-symlink-out", "a vocabulary file a symlink to a file outside",
              lambda d, s: symlink_out(str(first_vocab(d).relative_to(d)))(d, s), "outside the model directory"),
    ModelCase("vocab-file-dotdot", "a `vocab_files` path with `..`",
              lambda d, s: edit_manifest(d, lambda m: m["vocab_files"].update(
                  {k: "../" + v for k, v in m["vocab_files"].items()})),
              "must be a relative path inside the model directory"),
    ModelCase("vocab-file-missing", "a vocabulary file deleted", lambda d, s: first_vocab(d).unlink() or d,
              "does not exist"),
    ModelCase("vocab-wrong-size", "a vocabulary with one id more than vocab_sizes says",
              edit_vocab(lambda ids: ids + ["extra"]), "but schema vocab_sizes says", real=True),
    ModelCase("vocab-duplicate-ids", "a vocabulary listing an id twice", edit_vocab(lambda ids: ids[:-1] + ids[:1]),
              "twice"),
    ModelCase("vocab-not-strings", "a vocabulary of numbers", edit_vocab(lambda ids: list(range(len(ids)))),
              "must be a JSON list of strings"),
    ModelCase("external-data", "model.onnx keeping a tensor in external data (hash updated)",
              external_data("model.onnx.data"), "keeps tensors in external data files", real=True),
    ModelCase("external-data-outside", "external data at `../secret.bin` (hash updated)",
              external_data("../secret.bin"), "keeps tensors in external data files"),
    ModelCase("not-onnx", "model.onnx replaced by text (hash updated)",
              lambda d, s: replace_model(d, b"this is not onnx"), "is not a valid ONNX model"),
    ModelCase("other-graph", "another valid ONNX graph (hash updated)", other_graph,
              "model.onnx inputs ['x'] differ from the manifest's"),
    ModelCase("wrong-output-shape", "a graph with the right inputs and `prob` of shape (batch, 1)",
              wrong_output_shape, "returned 'prob' of shape (5, 1) for inputs of batch 5"),
]

ALL_CASES: list[Any] = ROW_CASES + RECOVERIES + FILE_CASES + MODEL_CASES


# --- Running din-score ----------------------------------------------------------------------------------


def line_of(fmt: str, position: int) -> int:
    return position + (2 if fmt == "csv" else 1)


def csv_cells(row: Row, header: list[str]) -> list[str]:
    cells = []
    for name in header:
        value = row.get(name)
        cells.append("|".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value))
    return cells


def render(items: list[Row | str], fmt: str, newline: bool = True) -> bytes:
    if fmt == "parquet":
        return parquet_bytes(pa_table(items))
    if fmt == "csv":
        header = list(next(i for i in items if isinstance(i, dict)))
        lines = [csv_row(header)] + [i if isinstance(i, str) else csv_row(csv_cells(i, header)) for i in items]
    else:
        lines = [i if isinstance(i, str) else json.dumps(i) for i in items]
    return ("\n".join(lines) + ("\n" if newline else "")).encode()


def din_score(*args: object) -> Any:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def scores_of(path: Path) -> tuple[list, np.ndarray]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [s.get("rid") for s in lines], np.array([s["score"] for s in lines], dtype=np.float32)


def no_temporary_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.tmp")]


def check_bad_row(case: RowCase, model_dir: Path, scorer: Scorer, tmp_path: Path) -> None:
    names = Names.of(scorer.manifest)
    rows = valid_rows(scorer.manifest, ROWS)
    bad = list(range(ROWS)) if case.every_row else [case.position]
    items: list[Row | str] = [case.bad(copy.deepcopy(r), names) if i in bad else r for i, r in enumerate(rows)]
    src = tmp_path / f"in.{EXT[case.fmt]}"
    src.write_bytes(render(items, case.fmt, case.newline))
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    field = case.field_name(names)
    where = "row" if case.fmt == "parquet" else "line"
    says = case.says.format(**asdict(names))

    stop = din_score(model_dir, src, "-o", out, *case.args)
    assert stop.exit_code == 1, stop.output
    head = f"Error: {src}: {where} {line_of(case.fmt, bad[0])}" + (f", field '{field}'" if field else "") + ": "
    assert head in stop.stderr and says in stop.stderr, stop.stderr
    assert not out.exists()

    skip = din_score(model_dir, src, "-o", out, "--on-error", "skip", "--errors", errors, "--id-field", "rid",
                     *case.args)
    assert skip.exit_code == 0, skip.output
    good = [r for i, r in enumerate(rows) if i not in bad]
    assert f"{ROWS} rows read, {len(good)} scored, {len(bad)} rejected" in skip.stderr
    rejected = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [e["line"] for e in rejected] == [line_of(case.fmt, i) for i in bad]
    assert all(e["field"] == field and says in e["error"] for e in rejected), rejected
    ids, scores = scores_of(out)
    assert len(ids) + len(rejected) == ROWS
    assert ids == [r["rid"] for r in good]
    np.testing.assert_array_equal(scores, scorer.score(good))
    no_temporary_files(tmp_path)


def check_recovery(case: Recovery, model_dir: Path, scorer: Scorer, tmp_path: Path) -> None:
    names = Names.of(scorer.manifest)
    rows = valid_rows(scorer.manifest, ROWS)
    items: list[Row | str] = list(rows)
    expected = list(rows)
    if case.change:
        items[POS] = case.change(copy.deepcopy(rows[POS]), names)
        expected[POS] = case.same_as(copy.deepcopy(rows[POS]), names) if case.same_as else items[POS]
    data = render(items, case.fmt)
    src = tmp_path / f"in.{EXT[case.fmt]}"
    src.write_bytes(case.transform(data) if case.transform else data)
    out = tmp_path / "out.jsonl"
    result = din_score(model_dir, src, "-o", out, "--id-field", "rid", *case.args)
    assert result.exit_code == 0, result.output
    assert f"{ROWS} rows read, {ROWS} scored, 0 rejected" in result.stderr
    assert case.summary.format(**asdict(names)) in result.stderr
    ids, scores = scores_of(out)
    assert ids == [r["rid"] for r in rows]
    np.testing.assert_array_equal(scores, scorer.score(expected))


# --- Tests ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def scorer(model_dir) -> Scorer:
    return Scorer.load(model_dir)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return exported_din(tmp_path_factory)


@pytest.fixture(scope="module")
def real_scorer(real_dir) -> Scorer:
    return Scorer.load(real_dir)


def needs_pyarrow(case: Any) -> None:
    if getattr(case, "fmt", "") == "parquet" or case.id.startswith("parquet"):
        pytest.importorskip("pyarrow")


@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: c.id)
def test_bad_row(case, model_dir, scorer, tmp_path):
    needs_pyarrow(case)
    check_bad_row(case, model_dir, scorer, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in ROW_CASES if c.real], ids=lambda c: c.id)
def test_bad_row_real_din(case, real_dir, real_scorer, tmp_path):
    check_bad_row(case, real_dir, real_scorer, tmp_path)


@pytest.mark.parametrize("case", RECOVERIES, ids=lambda c: c.id)
def test_recovery(case, model_dir, scorer, tmp_path):
    check_recovery(case, model_dir, scorer, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in RECOVERIES if c.real], ids=lambda c: c.id)
def test_recovery_real_din(case, real_dir, real_scorer, tmp_path):
    check_recovery(case, real_dir, real_scorer, tmp_path)


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_bad_file(case, model_dir, scorer, tmp_path):
    needs_pyarrow(case)
    rows = valid_rows(scorer.manifest, ROWS)
    args = case.make(tmp_path, rows, Names.of(scorer.manifest))
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    if "-o" not in args:
        args += ["-o", str(out)]
    modes = [(), ("--on-error", "skip", "--errors", str(errors))] if case.both_modes else [()]
    for mode in modes:
        result = din_score(model_dir, *args, *mode)
        assert result.exit_code == case.exit, result.output
        assert case.says in result.output, result.output
        assert not out.exists() and not errors.exists()
        no_temporary_files(tmp_path)


def check_bad_model_dir(case: ModelCase, good_dir: Path, tmp_path: Path) -> None:
    copied = Path(shutil.copytree(good_dir, tmp_path / "m"))
    target = case.make(copied, tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_bytes(render(valid_rows(load_manifest(good_dir), ROWS), "jsonl"))
    out = tmp_path / "out.jsonl"
    result = din_score(target, src, "-o", out)
    assert result.exit_code == 1, result.output
    assert case.says in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
def test_bad_model_dir(case, model_dir, tmp_path):
    check_bad_model_dir(case, model_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.real], ids=lambda c: c.id)
def test_bad_model_dir_real_din(case, real_dir, tmp_path):
    check_bad_model_dir(case, real_dir, tmp_path)


def doc_row(case: Any) -> str:
    tests = [case.test] + ([f"{case.test}_real_din"] if getattr(case, "real", False) else [])
    cells = [f"`{case.id}`", case.input.format(**asdict(DOC_NAMES)), case.outcome(), case.exit_text]
    cells = [c.replace("|", "\\|") for c in cells]  # a pipe would end the table cell, even in code
    return f"| {' | '.join(cells)} | {', '.join(f'`{t}`' for t in tests)} |"


def test_doc_lists_every_case():
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
    doc = DOC.read_text()
    missing = [doc_row(c) for c in ALL_CASES if doc_row(c) not in doc]
    assert not missing, "docs/bad-input.md lacks (or has stale) rows; print them with " \
                        "`python tests/test_bad_input.py`:\n" + "\n".join(missing)
    listed = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")}
    assert listed == {c.id for c in ALL_CASES}
    for name in {t.strip("` ") for c in ALL_CASES for t in doc_row(c).split("|")[-2].split(",")}:
        assert callable(globals().get(name)), f"the doc names a test that does not exist: {name}"


if __name__ == "__main__":
    for title, cases in (("Bad rows", ROW_CASES), ("Recoveries", RECOVERIES), ("Whole input", FILE_CASES),
                         ("Model directories", MODEL_CASES)):
        print(f"\n{title}\n\n| id | input | what happens | exit | test |\n|---|---|---|---|---|")
        print("\n".join(doc_row(c) for c in cases))


# --- No pickle on the load path -------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_constant(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str) -> list[str]:
    """Ways `source` could unpickle or evaluate data: pickle-family imports, torch.load without
    weights_only=True, np.load without allow_pickle=False, allow_pickle=True anywhere, pandas pickles, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {m}" for m in modules if m.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(f"line {node.lineno}: {name}()")
        elif name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and not _is_constant(keywords.get("allow_pickle"), False):
            found.append(f"line {node.lineno}: {name} without allow_pickle=False")
        elif name.endswith(("read_pickle", "to_pickle")):
            found.append(f"line {node.lineno}: {name}()")
        if _is_constant(keywords.get("allow_pickle"), True):
            found.append(f"line {node.lineno}: allow_pickle=True")
    return found


def test_the_pickle_scanner_finds_each_pattern():
    hostile = """
import pickle
from joblib import load
import numpy as np, torch, pandas as pd
np.load("a.npy")
np.load("a.npy", allow_pickle=True)
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
pd.read_pickle("f")
eval("1 + 1")
np.savez("x", allow_pickle=True)
"""
    found = unsafe_loads(hostile)
    assert len(found) == 10, found
    safe = """
import numpy as np, torch, ast
np.load("a.npz", allow_pickle=False)
torch.load("m.pt", weights_only=True)
ast.literal_eval("[1]")
model.eval()
"""
    assert unsafe_loads(safe) == []


def test_no_pickle_on_the_load_path():
    sources = sorted((ROOT / "runtime").glob("*.py")) + sorted((ROOT / "din_export").rglob("*.py"))
    assert len(sources) > 10
    found = [f"{p.relative_to(ROOT)} {hit}" for p in sources for hit in unsafe_loads(p.read_text())]
    assert found == []


NO_UNPICKLING = """
import pickle, _pickle, sys

def refuse(*args, **kwargs):
    raise AssertionError("something tried to unpickle")

for module in (pickle, _pickle):
    for name in ("load", "loads", "Unpickler"):
        setattr(module, name, refuse)
sys.addaudithook(lambda event, args: refuse() if event == "pickle.find_class" else None)

from din_runtime import Scorer
from din_runtime.cli import main

model_dir, rows, out = sys.argv[1:]
Scorer.load(model_dir).score([])
main([model_dir, rows, "-o", out, "--label-field", "label", "--metrics-out", out + ".metrics.json"],
     standalone_mode=False)
assert "torch" not in sys.modules and "din_export" not in sys.modules
print("ok")
"""


def test_the_runtime_never_unpickles(model_dir, scorer, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(render(valid_rows(scorer.manifest, ROWS), "jsonl"))
    done = subprocess.run([sys.executable, "-c", NO_UNPICKLING, str(model_dir), str(src), str(tmp_path / "s.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == ROWS


# --- Output files: old or new, never half -----------------------------------------------------------------


def test_a_bad_row_after_many_batches_keeps_the_previous_output(model_dir, scorer, tmp_path):
    rows = valid_rows(scorer.manifest, 40)
    items: list[Row | str] = [*rows[:37], "{broken", *rows[38:]]
    (tmp_path / "in.jsonl").write_bytes(render(items, "jsonl"))
    out, metrics = tmp_path / "s.jsonl", tmp_path / "m.json"
    out.write_text("previous\n")
    result = din_score(model_dir, tmp_path / "in.jsonl", "-o", out, "--batch-size", 3, "--label-field", "label",
                       "--metrics-out", metrics)
    assert result.exit_code == 1 and "line 38: malformed JSON" in result.stderr
    assert out.read_text() == "previous\n" and not metrics.exists()
    no_temporary_files(tmp_path)


def _killed_mid_run(model_dir: Path, rows: list[Row], tmp_path: Path, sig: int) -> subprocess.Popen:
    """din-score reading stdin that stays open, killed once it has written part of its output."""
    out = tmp_path / "s.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "din_runtime", str(model_dir), "-", "-o", str(out),
                             "--batch-size", "1", "--threads", "1"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(render(rows, "jsonl"))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    # Output goes to a temporary file beside OUT; once it holds data the run is mid-way, blocked on stdin.
    while not any(p.stat().st_size for p in tmp_path.glob(".s.jsonl.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_killed_mid_run_keeps_the_previous_output(model_dir, scorer, tmp_path, sig):
    (tmp_path / "s.jsonl").write_text("previous\n")
    proc = _killed_mid_run(model_dir, valid_rows(scorer.manifest, 600), tmp_path, sig)
    assert (tmp_path / "s.jsonl").read_text() == "previous\n"
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in stderr
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL  # nothing can clean up after SIGKILL: the temp file stays
    else:
        assert proc.returncode in (128 + sig, 1)  # SIGINT: click reports "Aborted!" and exits 1
        assert not list(tmp_path.glob("*.tmp")), "the temporary output must be removed"


# --- Long histories, real processes -----------------------------------------------------------------------


def test_history_100k_reads_only_the_kept_tail(scorer):
    names = Names.of(scorer.manifest)
    row = valid_rows(scorer.manifest, 1)[0]
    tail = {h: long_history(row[h])[-names.max_len:] for h in (names.hist, names.hist2)}
    # Every item older than max_len is a bad id: reading any of them would be an error.
    old = [None] * (100_000 - names.max_len)
    long_row = {**row, **{h: old + items for h, items in tail.items()}}
    encoded = scorer.encode([long_row] * 10)
    assert encoded.arrays["hist_len"].tolist() == [names.max_len] * 10
    assert encoded.arrays[names.hist].shape == (10, names.max_len)
    short = scorer.encode([{**row, **tail}] * 10)
    for name, array in short.arrays.items():
        np.testing.assert_array_equal(encoded.arrays[name], array)


@pytest.mark.parametrize("case_id", ["gzip-file", "duplicate-key", "huge-integer-dense", "model-symlink-out"])
def test_no_traceback_from_a_real_process(case_id, model_dir, scorer, tmp_path):
    case = next(c for c in ALL_CASES if c.id == case_id)
    rows = valid_rows(scorer.manifest, ROWS)
    names = Names.of(scorer.manifest)
    target = model_dir
    if isinstance(case, FileCase):
        args = case.make(tmp_path, rows, names)
    else:
        if isinstance(case, ModelCase):
            target = case.make(Path(shutil.copytree(model_dir, tmp_path / "m")), tmp_path)
        else:
            rows[POS] = case.bad(rows[POS], names)
        (tmp_path / "in.jsonl").write_bytes(render(rows, "jsonl"))
        args = [str(tmp_path / "in.jsonl")]
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "din_runtime", str(target), *args], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and case.says.format(**asdict(names)) in done.stderr


def test_stdout_is_utf8_whatever_the_locale(model_dir, scorer, tmp_path):
    rows = valid_rows(scorer.manifest, 2)
    rows[1]["rid"] = "usér-中"
    (tmp_path / "in.jsonl").write_bytes(render(rows, "jsonl"))
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "din_runtime", str(model_dir), str(tmp_path / "in.jsonl"),
                           "--id-field", "rid"], capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["rid"] for line in done.stdout.decode("utf-8").splitlines()] == ["r0", "usér-中"]


@pytest.mark.parametrize("fmt, value", [("jsonl", "\ud800"), ("jsonl", float("nan")), ("csv", "\ud800")])
def test_score_writer_refuses_ids_it_cannot_write(tmp_path, fmt, value):
    """The backstop for callers of ScoreWriter that do not check ids per row first (din-export predict)."""
    from din_runtime.errors import DinRuntimeError
    from din_runtime.io import AtomicText, ScoreWriter

    with pytest.raises(DinRuntimeError, match="an id-field value holds"), AtomicText(str(tmp_path / f"s.{fmt}")) as out:
        ScoreWriter(out, fmt, "rid").write(["ok", value], np.array([0.5, 0.25], dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
