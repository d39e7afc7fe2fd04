"""Taobao UserBehavior (user,item,category,behavior,timestamp CSV, no header), read in chunks, with
the official time window and a choice of behaviours."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from din_export.sources.table import CHUNK_ROWS, Events, SourceError
from din_export.sources.validate import _bad, _check_file, _csv_errors, _first, _ints

# The official UserBehavior window: 2017-11-25 00:00 to 2017-12-03 00:00 (UTC+8 midnight), half-open.
TAOBAO_WINDOW = (1511539200, 1512316800)
TAOBAO_BEHAVIOURS = ("pv", "cart", "fav", "buy")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _is_int(v: object) -> bool:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isfinite(v) and v == np.round(v))
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _taobao_row_ok(row: pd.Series) -> bool:
    if pd.notna(row["extra"]) or row["behavior"] not in TAOBAO_BEHAVIOURS:
        return False
    return all(_is_int(row[c]) for c in ("user", "item", "category", "timestamp"))


def read_taobao(path: str | Path, behaviours: Sequence[str] = ("pv",),
                chunk_rows: int = CHUNK_ROWS) -> Events:
    """UserBehavior.csv (no header: user,item,category,behavior,timestamp), read in chunks.

    Drops and counts: an unterminated final line that does not parse (the file was cut), rows with
    missing fields, timestamps outside TAOBAO_WINDOW, behaviours not in `behaviours`.
    """
    path = Path(path)
    _check_file(path, "Taobao UserBehavior file")
    unknown = set(behaviours) - set(TAOBAO_BEHAVIOURS)
    if unknown:
        raise SourceError(f"unknown Taobao behaviours {sorted(unknown)}; known: {TAOBAO_BEHAVIOURS}")
    names = ["user", "item", "category", "behavior", "timestamp"]
    unterminated = not _ends_with_newline(path)
    stats = {"rows_read": 0, "truncated_final_line": 0, "incomplete_rows": 0, "out_of_window": 0,
             "other_behaviours": 0}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in ("user", "item", "category", "timestamp")}
    # Numeric columns are left to the C parser (fast); a bad value turns its column to text, which
    # `_ints` then reports with its line. A sixth column catches lines with too many fields (pandas
    # would otherwise make the first field an index). Blank lines stay rows so line numbers hold.
    # The format has no quoting: a stray quote is a bad value, not the start of a multi-line field.
    with _csv_errors(path, ",", names, "a 5-field CSV"):
        reader = pd.read_csv(path, header=None, names=[*names, "extra"], dtype={"behavior": str, "extra": str},
                             keep_default_na=False, na_values=[""], skip_blank_lines=False,
                             quoting=csv.QUOTE_NONE, chunksize=chunk_rows)
    line0 = 1
    chunks = iter(reader)
    chunk = _next_chunk(chunks, path, names)
    while chunk is not None:
        following = _next_chunk(chunks, path, names)
        n_lines = len(chunk)
        if following is None and unterminated and n_lines and not _taobao_row_ok(chunk.iloc[-1]):
            chunk = chunk.iloc[:-1]
            stats["truncated_final_line"] = 1
        extra = chunk.pop("extra").notna().to_numpy()
        if extra.any():
            raise SourceError(f"{path}: line {line0 + _first(extra)}: more than 5 fields")
        stats["rows_read"] += len(chunk)
        incomplete = chunk.isna().any(axis=1).to_numpy()
        stats["incomplete_rows"] += int(incomplete.sum())
        lines = line0 + np.flatnonzero(~incomplete)
        good = chunk[~incomplete].reset_index(drop=True)
        cols = {name: _ints(good[name], path, name, lines)
                for name in ("user", "item", "category", "timestamp")}
        behaviour = good["behavior"].to_numpy()
        bad = ~np.isin(behaviour, TAOBAO_BEHAVIOURS)
        if bad.any():
            i = _first(bad)
            raise _bad(path, int(lines[i]), "behavior", behaviour[i], f"expected one of {TAOBAO_BEHAVIOURS}")
        in_window = (cols["timestamp"] >= TAOBAO_WINDOW[0]) & (cols["timestamp"] < TAOBAO_WINDOW[1])
        wanted = np.isin(behaviour, list(behaviours))
        stats["out_of_window"] += int((~in_window).sum())
        stats["other_behaviours"] += int((in_window & ~wanted).sum())
        keep = in_window & wanted
        for name, arr in cols.items():
            arr = arr[keep]
            fits = name != "timestamp" and (arr.size == 0 or (arr.min() >= 0 and arr.max() < 2**31))
            parts[name].append(arr.astype(np.int32) if fits else arr)
        line0 += n_lines
        chunk = following
    if stats["rows_read"] == 0:
        raise SourceError(f"{path}: " + ("no complete row (its only line is cut short)" if stats["truncated_final_line"]
                                         else "the file is empty"))
    frame = pd.DataFrame({
        name: _int_ids(np.concatenate(parts[name])) for name in ("user", "item", "category")
    })
    frame["timestamp"] = np.concatenate(parts["timestamp"]).astype(np.int64)
    return Events(
        frame=frame, source="taobao", stats=stats,
        notes={"behaviours": ",".join(behaviours), "window": f"[{TAOBAO_WINDOW[0]}, {TAOBAO_WINDOW[1]})",
               "category": "category_id column"},
    )


def _next_chunk(chunks: Iterator[pd.DataFrame], path: Path, names: Sequence[str]) -> pd.DataFrame | None:
    with _csv_errors(path, ",", names, "a 5-field CSV"):
        return next(chunks, None)


def _int_ids(arr: np.ndarray) -> pd.Categorical:
    cat = pd.Categorical(arr)
    return cat.rename_categories(cat.categories.astype(str))

