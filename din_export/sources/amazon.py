"""Amazon reviews (JSON lines, or the Python-literal lines of the 2014 dumps) + item metadata ->
one events table, the category being the last element of the item's last category path."""

from __future__ import annotations

import ast
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from din_export.sources.table import CHUNK_ROWS, Events, SourceError
from din_export.sources.validate import _bad, _check_file, _concat_ids, _int64, _open_binary, _show, _unicode_problem

# a quoted key: the last one before an undecodable byte names the field the byte is in
QUOTED_KEY = re.compile(r"""["']([^"'\\]{1,100})["']\s*:""")


def _json_int(text: str) -> int | str:
    return int(text) if len(text) <= 40 else text


LONG_INT_JSON = json.JSONDecoder(parse_int=_json_int)


def _parse_json(text: str) -> object:
    """json.loads; on the rare line with an integer beyond int()'s 4300-digit limit, long integers
    stay text, so an id keeps its digits and an int64 field refuses it with its line and name."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        return LONG_INT_JSON.decode(text)


def _parse_record(path: Path, n: int, text: str) -> object:
    try:
        return _parse_json(text)
    except RecursionError:
        raise SourceError(f"{path}: line {n}: nested too deeply to parse") from None
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)  # literals only: never evaluates code
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise SourceError(f"{path}: line {n}: neither JSON nor a Python literal ({reason})") from None


def _undecodable(path: Path, n: int, raw: bytes, e: UnicodeDecodeError) -> SourceError:
    keys = QUOTED_KEY.findall(raw[:e.start].decode("utf-8"))
    where = f"line {n}, field {_show(keys[-1])}" if keys else f"line {n}"
    return SourceError(f"{path}: {where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, record) of a JSON-lines file; also the python-literal lines of the 2014 Amazon dumps."""
    n = 0
    try:
        with _open_binary(path) as f:
            for n, raw in enumerate(f, 1):
                if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte order mark
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise _undecodable(path, n, raw, e) from None
                if not text:
                    continue
                rec = _parse_record(path, n, text)
                if not isinstance(rec, dict):
                    raise SourceError(f"{path}: line {n}: expected an object, got {type(rec).__name__}")
                yield n, rec
    except (OSError, EOFError, zlib.error) as e:  # unreadable, not gzip, or a gzip file cut short
        raise SourceError(f"{path}: cannot read {f'past line {n}' if n else 'it'} ({e})") from None


def _field(path: Path, line: int, rec: dict, name: str, kind: type) -> object:
    if name not in rec:
        raise _bad(path, line, name, None, "missing field")
    value = rec[name]
    if kind is int:
        return _int64(path, line, name, value)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _bad(path, line, name, value, "expected a non-empty string id")
    text = str(value)
    problem = _unicode_problem(text)
    if problem:
        raise _bad(path, line, name, value, problem)
    return text


def _amazon_category(path: Path, line: int, rec: dict) -> str | None:
    """The official rule: the last element of the item's last category path."""
    cats = rec.get("categories")
    if cats is None or cats == []:
        return None
    if not isinstance(cats, list) or not all(isinstance(p, list) for p in cats):
        raise _bad(path, line, "categories", cats, "expected a list of category paths (lists)")
    if not cats[-1]:
        return None
    last = cats[-1][-1]
    if not isinstance(last, str) or not last:
        raise _bad(path, line, "categories", cats[-1], "category names must be non-empty strings")
    problem = _unicode_problem(last)
    if problem:
        raise _bad(path, line, "categories", last, problem)
    return last


def read_amazon(reviews: str | Path, meta: str | Path, chunk_rows: int = CHUNK_ROWS) -> Events:
    """Reviews (reviewerID, asin, unixReviewTime) JSON lines + metadata (asin, categories).

    Reviews of items with no category in the metadata are dropped and counted.
    """
    reviews, meta = Path(reviews), Path(meta)
    _check_file(reviews, "Amazon reviews file")
    _check_file(meta, "Amazon metadata file (--meta)")
    users: list[pd.Categorical] = []
    items: list[pd.Categorical] = []
    times: list[np.ndarray] = []
    buf_u: list[str] = []
    buf_i: list[str] = []
    buf_t: list[int] = []

    def flush() -> None:
        users.append(pd.Categorical(buf_u))
        items.append(pd.Categorical(buf_i))
        times.append(np.asarray(buf_t, dtype=np.int64))
        buf_u.clear()
        buf_i.clear()
        buf_t.clear()

    for n, rec in _json_records(reviews):
        buf_u.append(_field(reviews, n, rec, "reviewerID", str))
        buf_i.append(_field(reviews, n, rec, "asin", str))
        buf_t.append(_field(reviews, n, rec, "unixReviewTime", int))
        if len(buf_u) >= chunk_rows:
            flush()
    if buf_u:
        flush()
    if not times:
        raise SourceError(f"{reviews}: no reviews")
    user, item = _concat_ids(users), _concat_ids(items)
    wanted = set(item.categories)
    category: dict[str, str] = {}
    for n, rec in _json_records(meta):
        asin = _field(meta, n, rec, "asin", str)
        if asin in wanted and asin not in category:
            cat = _amazon_category(meta, n, rec)
            if cat is not None:
                category[asin] = cat
    if not category:
        raise SourceError(f"{meta}: no reviewed item has a category (expected 'asin' and 'categories' fields)")
    item_cat = pd.Series(item.categories).map(category).to_numpy(dtype=object)
    row_cat = item_cat[item.codes]
    keep = pd.notna(row_cat)
    frame = pd.DataFrame({
        "user": user[keep].remove_unused_categories(),
        "item": item[keep].remove_unused_categories(),
        "category": pd.Categorical(row_cat[keep]),
        "timestamp": np.concatenate(times)[keep],
    })
    return Events(
        frame=frame, source="amazon",
        stats={"rows_read": len(keep), "reviews_without_category": int((~keep).sum())},
        notes={"category": "last element of the item's last category path"},
    )

