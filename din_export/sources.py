"""Readers: each raw source -> one events table (`Events`) that `prepare` turns into a dataset.

The table has one row per behaviour, in the order of the source file (that order is the tie key for
equal timestamps), with columns
    user, item, category   pandas Categorical of raw ids as strings
    timestamp              int64
    label                  int8 0/1, only for explicit sources (MovieLens, events with a label)
    <sparse features>      Categorical of strings, declared in `Events.sparse`
    <dense features>       float32 (float64 from the MovieLens, Taobao and Amazon readers), declared in
                           `Events.dense`
Ids are kept as categoricals so a large file costs a few bytes per row, not a Python string each.

Every reader raises `SourceError` naming the file, the line and the field of the first bad value
(also for bytes that are not UTF-8, integers beyond int64 and files that are not what they claim);
rows it drops on purpose (truncated last line, out-of-window timestamps, ...) are counted in
`Events.stats`. Formats and rules are in docs/data.md.
"""

from __future__ import annotations

import ast
import csv
import decimal
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

CHUNK_ROWS = 500_000

# ml-100k genre flags, in u.item column order (u.genre lists the same names).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
# The official UserBehavior window: 2017-11-25 00:00 to 2017-12-03 00:00 (UTC+8 midnight), half-open.
TAOBAO_WINDOW = (1511539200, 1512316800)
TAOBAO_BEHAVIOURS = ("pv", "cart", "fav", "buy")
CLICK_RATING = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT_EXACT = 2**53  # float64 holds every integer below this exactly, and rounds some above it
FLOAT32_MAX = float(np.finfo(np.float32).max)  # dense values are stored as float32
INT_TEXT = re.compile(r"-?[0-9]+")

REQUIRED_EVENT_COLUMNS = ("user", "item", "category", "timestamp")
# Names the dataset itself uses; a feature column called so would collide with them.
RESERVED_NAMES = frozenset({
    *REQUIRED_EVENT_COLUMNS, "label", "rating", "user_id", "item_id", "cate_id", "hist_item_id",
    "hist_cate_id", "hist_len", "dense", "group",
})


class SourceError(ValueError):
    """A source file is missing or malformed; the message names the file, line and field."""


@dataclass
class Events:
    frame: pd.DataFrame
    source: str
    sparse: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    stats: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def explicit(self) -> bool:
        """True when each row carries its own click label (else every row is a positive)."""
        return "label" in self.frame.columns


# ---------------------------------------------------------------------------------------------------
# column conversion helpers; `lines` holds the file line of each row of the chunk, for error messages


def _show(value: object) -> str:
    """repr(value), shortened: a bad value may be megabytes long. numpy scalars show as the Python value
    (2, not np.int64(2)): the user wrote the number, not the dtype."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _bad(path: Path | str, line: int, name: str, value: object, why: str) -> SourceError:
    return SourceError(f"{path}: line {line}, field {name!r}: {why} (got {_show(value)})")


def _unicode_problem(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (a lone surrogate, e.g. from a JSON "\\ud800"), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate at character {e.start + 1}, which is not text"
    return None


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(values: pd.Series, path: Path | str, name: str, lines: np.ndarray) -> pd.Categorical | np.ndarray:
    """Raw ids -> Categorical of strings, with the same str() rule as the runtime vocabularies; integer
    ids stay integers (int32 where they fit) until `_concat_ids` names them, since a Categorical per
    chunk would hold each chunk's distinct ids as Python strings (gigabytes over 100M rows)."""
    missing = values.isna().to_numpy()
    if missing.any():
        raise _bad(path, int(lines[_first(missing)]), name, None, "missing id")
    if pd.api.types.is_bool_dtype(values):
        raise _bad(path, int(lines[0]), name, values.iloc[0], "ids must be strings or integers, not booleans")
    if pd.api.types.is_float_dtype(values):
        arr = values.to_numpy(np.float64)
        frac = ~np.isfinite(arr) | (arr != np.floor(arr))
        if frac.any():
            i = _first(frac)
            raise _bad(path, int(lines[i]), name, arr[i], "ids must be integers or strings")
        big = np.abs(arr) >= FLOAT_EXACT
        if big.any():
            i = _first(big)
            raise _bad(path, int(lines[i]), name, arr[i],
                       "too large for a floating-point id to be exact; store ids as integers or strings")
        values = pd.Series(arr.astype(np.int64))
    if values.dtype.kind in "iu" and len(values):
        arr = values.to_numpy()
        lo, hi = int(arr.min()), int(arr.max())
        if hi <= INT64_MAX:
            return arr.astype(np.int32 if INT32_MIN <= lo and hi <= INT32_MAX else np.int64)
    try:
        cat = pd.Categorical(values)
    except TypeError:  # unhashable values (lists, dicts, arrays) cannot be ids
        i = next((i for i, v in enumerate(values) if not isinstance(v, Hashable)), 0)
        raise _bad(path, int(lines[i]), name, values.iloc[i], "ids must be strings or integers") from None
    cats = cat.categories
    if cats.dtype.kind in "iu":
        return cat.rename_categories(cats.astype(str))
    if cats.dtype == object:
        odd = [c for c in cats if not isinstance(c, str)]
        if odd:
            i = _first((values == odd[0]).to_numpy())
            raise _bad(path, int(lines[i]), name, odd[0], "ids must be strings or integers")
        for c in cats:
            problem = _unicode_problem(c)
            if problem:
                raise _bad(path, int(lines[_first((values == c).to_numpy())]), name, c, problem)
    return cat


def _as_float(v: object) -> float:
    try:
        return float(v)
    except OverflowError:  # an int beyond float's range
        return math.inf
    except (TypeError, ValueError):
        return math.nan


def _to_float(values: pd.Series) -> np.ndarray:
    """Text or Python objects -> float64, NaN where not a number."""
    try:
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    except (OverflowError, TypeError, ValueError):  # e.g. Python ints beyond float's range
        return np.array([_as_float(v) for v in values], dtype=np.float64)


def _exact_int(v: object) -> tuple[int | None, str]:
    """(the exact integer of `v`, "") or (None, why not); for values float64 may have rounded."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        n = int(v)
    elif isinstance(v, (str, decimal.Decimal)):
        try:
            d = decimal.Decimal(v.strip() if isinstance(v, str) else v)
        except decimal.InvalidOperation:
            return None, "expected an integer"
        if not d.is_finite() or d != d.to_integral_value():
            return None, "expected an integer"
        n = int(d)  # bounded: only values whose float is below 2**64 get here
    else:
        return None, "too large for a floating-point value to be exact; store it as an integer"
    if not INT64_MIN <= n <= INT64_MAX:
        return None, "integer out of the 64-bit range"
    return n, ""


def _int_problem(v: object) -> str:
    """The message for a value that did not convert: out of range if it is an integer at all."""
    if isinstance(v, (bool, np.bool_)):
        return "expected an integer"
    if isinstance(v, str):
        integral = INT_TEXT.fullmatch(v.strip()) is not None
    elif isinstance(v, (float, np.floating, decimal.Decimal)):
        integral = math.isfinite(v) and v == round(v)
    else:
        integral = isinstance(v, (int, np.integer))
    return "integer out of the 64-bit range" if integral else "expected an integer"


def _ints(values: pd.Series, path: Path | str, name: str, lines: np.ndarray) -> np.ndarray:
    """int64 of a column, exactly: no wrap-around of uint64 or huge ints, no float rounding."""
    missing = values.isna().to_numpy()
    if missing.any():
        raise _bad(path, int(lines[_first(missing)]), name, None, "missing value")
    if pd.api.types.is_datetime64_any_dtype(values):
        naive = values.dt.tz_convert(None) if values.dt.tz is not None else values
        return naive.to_numpy("datetime64[s]").astype(np.int64)
    if pd.api.types.is_timedelta64_dtype(values):
        raise _bad(path, int(lines[0]), name, values.iloc[0], "expected an integer or a timestamp, not a duration")
    if pd.api.types.is_bool_dtype(values):
        raise _bad(path, int(lines[0]), name, values.iloc[0], "expected an integer, not a boolean")
    kind = values.dtype.kind
    if kind == "i":
        return values.to_numpy(np.int64)
    if kind == "u":
        arr = values.to_numpy(np.uint64)
        big = arr > INT64_MAX
        if big.any():
            i = _first(big)
            raise _bad(path, int(lines[i]), name, values.iloc[i], "integer out of the 64-bit range")
        return arr.astype(np.int64)
    arr = values.to_numpy(np.float64, na_value=np.nan) if kind == "f" else _to_float(values)
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) >= 2.0**64)
    if bad.any():
        i = _first(bad)
        raise _bad(path, int(lines[i]), name, values.iloc[i], _int_problem(values.iloc[i]))
    large = np.abs(arr) >= FLOAT_EXACT
    out = np.where(large, 0, arr).astype(np.int64)
    for i in np.flatnonzero(large):  # float64 may have rounded these: take the exact value, or refuse
        n, why = _exact_int(values.iloc[i])
        if n is None:
            raise _bad(path, int(lines[i]), name, values.iloc[i], why)
        out[i] = n
    return out


def _floats(values: pd.Series, path: Path | str, name: str, lines: np.ndarray) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        raise _bad(path, int(lines[0]), name, values.iloc[0], "expected a number, not a boolean")
    kind = values.dtype.kind
    arr = values.to_numpy(np.float64, na_value=np.nan) if kind in "iuf" else _to_float(values)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = _first(bad)
        raise _bad(path, int(lines[i]), name, values.iloc[i], "expected a finite number")
    big = np.abs(arr) > FLOAT32_MAX
    if big.any():
        i = _first(big)
        raise _bad(path, int(lines[i]), name, values.iloc[i], "beyond the float32 range dense values are stored in")
    return arr


def _labels(values: pd.Series, path: Path | str, name: str, lines: np.ndarray) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy().astype(np.int8)
    arr = _ints(values, path, name, lines)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = _first(bad)
        raise _bad(path, int(lines[i]), name, values.iloc[i], "label must be 0 or 1")
    return arr.astype(np.int8)


def _concat_ids(parts: list[pd.Categorical | np.ndarray]) -> pd.Categorical:
    """One Categorical of strings from the chunks' ids (integer chunks as arrays, the others as Categoricals)."""
    if not parts:
        return pd.Categorical(np.array([], dtype=object))
    ints = [p for p in parts if isinstance(p, np.ndarray)]
    cats = [p for p in parts if not isinstance(p, np.ndarray)]
    if ints:
        # codes a chunk at a time against the sorted distinct ids, each chunk dropped once coded, so
        # the column is never held twice (nor as int64 codes, which pd.Categorical would make)
        uniq = np.unique(np.concatenate([np.unique(p) for p in ints]))
        codes = np.empty(sum(map(len, ints)), dtype=np.int32 if len(uniq) < 2**31 else np.int64)
        offset = 0
        parts.clear()
        while ints:
            p = ints.pop(0)
            codes[offset:offset + len(p)] = np.searchsorted(uniq, p)
            offset += len(p)
        cats.append(pd.Categorical.from_codes(codes, categories=pd.Index(uniq.astype(str), dtype=object)))
    return union_categoricals(cats, ignore_order=True) if len(cats) > 1 else cats[0]


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise SourceError(f"{what} expected, but {path} is a directory")
    if not path.is_file():
        raise SourceError(f"{what} not found: {path}")


def _split_names(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(s.strip() for s in items if s.strip())


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _not_utf8(path: Path, sep: str, names: Sequence[str] | None) -> SourceError:
    """The first line of `path` that is not UTF-8, with the field the bad byte is in (fields split on
    `sep`, quotes ignored: this only names the place). Called after a parser has failed on it."""
    with _open_binary(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                i = raw[:e.start].count(sep.encode())
                where = f"line {n}, field {names[i]!r}" if names is not None and i < len(names) else f"line {n}"
                return SourceError(f"{path}: {where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                   f"{e.start + 1})")
    return SourceError(f"{path}: not UTF-8 text")


@contextmanager
def _csv_errors(path: Path, sep: str, names: Sequence[str] | None, what: str) -> Iterator[None]:
    """pandas' errors while parsing `path` -> SourceError naming the line (and field where known)."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as e:
        raise SourceError(f"{path}: not {what} ({str(e).split('C error: ')[-1].strip()})") from None
    except UnicodeDecodeError:
        raise _not_utf8(path, sep, names) from None


# ---------------------------------------------------------------------------------------------------
# MovieLens


def _read_table(path: Path, sep: str, n_fields: int, encoding: str) -> list[tuple[int, list[str]]]:
    """Small metadata files (items, users): (line number, fields) per non-blank line."""
    _check_file(path, "MovieLens file")
    rows = []
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) != n_fields:
                raise SourceError(f"{path}: line {n}: expected {n_fields} fields separated by {sep!r}, "
                                  f"found {len(parts)}")
            rows.append((n, parts))
    if not rows:
        raise SourceError(f"{path}: the file is empty")
    return rows


def _int64(path: Path, line: int, name: str, value: object) -> int:
    """An int, or the text of one, as an int64; text never goes through int() when it is too long."""
    if isinstance(value, str) and INT_TEXT.fullmatch(value.strip()):
        if len(value.strip().lstrip("-").lstrip("0")) > 19:
            raise _bad(path, line, name, value, "integer out of the 64-bit range")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, line, name, value, "expected an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise _bad(path, line, name, value, "integer out of the 64-bit range")
    return value


def _ratings(path: Path, sep: str) -> pd.DataFrame:
    """user, item, rating, timestamp of a ratings file, checked; one row per line, file order."""
    _check_file(path, "MovieLens ratings file")
    data = path.read_bytes()
    if sep != "\t":
        # "::" is not a single-character separator; the files contain no tabs, so swap it for one
        data = data.replace(sep.encode(), b"\t")
    names = ["user", "item", "rating", "timestamp"]
    with _csv_errors(path, sep, names, "a ratings file with 4 fields per line"):
        df = pd.read_csv(io.BytesIO(data), sep="\t", header=None, names=names, dtype=str,
                         keep_default_na=False, na_values=[""], skip_blank_lines=False)
    if df.empty:
        raise SourceError(f"{path}: the file is empty (no ratings)")
    lines = np.arange(1, len(df) + 1)
    for name in names:
        if df[name].isna().any():
            raise _bad(path, int(lines[_first(df[name].isna().to_numpy())]), name, None,
                       "missing value (expected 4 fields per line)")
    rating = _ints(df["rating"], path, "rating", lines)
    bad = (rating < 1) | (rating > 5)
    if bad.any():
        i = _first(bad)
        raise _bad(path, int(lines[i]), "rating", int(rating[i]), "rating must be 1..5")
    return pd.DataFrame({
        "user": _ints(df["user"], path, "user", lines).astype(str),
        "item": _ints(df["item"], path, "item", lines).astype(str),
        "rating": rating.astype(np.int8),
        "timestamp": _ints(df["timestamp"], path, "timestamp", lines),
    })


def _ml100k_items(path: Path) -> dict[str, str]:
    genres = {}
    for n, parts in _read_table(path, "|", 5 + len(ML100K_GENRES), "latin-1"):
        item = str(_int64(path, n, "movie id", parts[0]))
        flags = parts[5:]
        for name, flag in zip(ML100K_GENRES, flags, strict=True):
            if flag not in ("0", "1"):
                raise _bad(path, n, f"genre {name}", flag, "genre flags must be 0 or 1")
        if "1" not in flags:
            raise _bad(path, n, "genres", "".join(flags), "the movie has no genre")
        genres[item] = ML100K_GENRES[flags.index("1")]
    return genres


def _ml1m_items(path: Path) -> dict[str, str]:
    genres = {}
    for n, parts in _read_table(path, "::", 3, "latin-1"):
        item = str(_int64(path, n, "MovieID", parts[0]))
        first = parts[2].split("|")[0].strip()
        if not first:
            raise _bad(path, n, "Genres", parts[2], "the movie has no genre")
        genres[item] = first
    return genres


def _users(path: Path, sep: str, order: tuple[int, int, int, int]) -> dict[str, tuple[str, str, float]]:
    """user -> (gender, occupation, age); `order` = field positions of id, age, gender, occupation."""
    i_id, i_age, i_gender, i_occ = order
    users = {}
    for n, parts in _read_table(path, sep, 5, "latin-1"):
        uid = str(_int64(path, n, "user id", parts[i_id]))
        users[uid] = (parts[i_gender], parts[i_occ], float(_int64(path, n, "age", parts[i_age])))
    return users


def read_movielens(path: str | Path) -> Events:
    """ml-100k (u.data, u.item, u.user) or ml-1m (ratings.dat, movies.dat, users.dat) directory.

    Category = the movie's first genre (ml-100k: the first flag set, in u.genre order; ml-1m: the
    first name in `Genre1|Genre2`). label = rating >= 4. Profile: gender, occupation (sparse), age
    (dense; ml-1m stores the age bucket's lower bound).
    """
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"MovieLens directory not found: {root}")
    if (root / "u.data").is_file():
        variant = "ml-100k"
        ratings_path = root / "u.data"
        ratings = _ratings(ratings_path, "\t")
        genres = _ml100k_items(root / "u.item")
        users = _users(root / "u.user", "|", (0, 1, 2, 3))
    elif (root / "ratings.dat").is_file():
        variant = "ml-1m"
        ratings_path = root / "ratings.dat"
        ratings = _ratings(ratings_path, "::")
        genres = _ml1m_items(root / "movies.dat")
        users = _users(root / "users.dat", "::", (0, 2, 1, 3))
    else:
        raise SourceError(f"{root}: neither u.data (ml-100k) nor ratings.dat (ml-1m) is there")

    category = ratings["item"].map(genres)
    if category.isna().any():
        i = int(np.flatnonzero(category.isna().to_numpy())[0])
        raise _bad(ratings_path, i + 1, "item", ratings["item"].iloc[i], "movie missing from the movie file")
    profile = ratings["user"].map(users)
    if profile.isna().any():
        i = int(np.flatnonzero(profile.isna().to_numpy())[0])
        raise _bad(ratings_path, i + 1, "user", ratings["user"].iloc[i], "user missing from the user file")
    gender, occupation, age = zip(*profile.tolist(), strict=True)
    frame = pd.DataFrame({
        "user": pd.Categorical(ratings["user"]),
        "item": pd.Categorical(ratings["item"]),
        "category": pd.Categorical(category),
        "timestamp": ratings["timestamp"].to_numpy(np.int64),
        "label": (ratings["rating"].to_numpy() >= CLICK_RATING).astype(np.int8),
        "rating": ratings["rating"].to_numpy(np.int8),
        "gender": pd.Categorical(list(gender)),
        "occupation": pd.Categorical(list(occupation)),
        "age": np.asarray(age, dtype=np.float64),
    })
    return Events(
        frame=frame, source="movielens", sparse=("gender", "occupation"), dense=("age",),
        stats={"rows_read": len(frame)},
        notes={"variant": variant, "category": "first genre of the movie",
               "label": f"rating >= {CLICK_RATING}"},
    )


# ---------------------------------------------------------------------------------------------------
# Taobao UserBehavior


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


# ---------------------------------------------------------------------------------------------------
# Amazon reviews + metadata


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


# ---------------------------------------------------------------------------------------------------
# generic events (CSV / Parquet)


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
        try:
            for batch in _parquet_file(path).iter_batches(batch_size=chunk_rows, columns=columns):
                try:
                    # pandas keeps Arrow strings as they are: invalid UTF-8 would only fail much later
                    batch.validate(full=True)
                    frame = batch.to_pandas()
                except pa.ArrowException as e:
                    raise _parquet_text_error(path, batch, row, e) from None
                row += batch.num_rows
                yield frame
        except (pa.ArrowException, OSError) as e:  # a damaged file: pages that do not decode
            raise SourceError(f"{path}: cannot read the Parquet file after row {row} ({e})") from None
        return
    # ids stay text ("007" is not 7); numbers are parsed by the C parser, and `_ints`/`_floats`
    # report any value it could not parse
    with _csv_errors(path, _csv_sep(path), header, "a well-formed CSV file"):
        yield from pd.read_csv(path, sep=_csv_sep(path), usecols=columns, dtype={c: "category" for c in id_columns},
                               keep_default_na=False, na_values=[""], chunksize=chunk_rows)


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
                    sparse_cols: tuple[str, ...], dense_cols: tuple[str, ...], source: str) -> Events:
    """Check and convert the chunks of an events table; `line0` numbers the first row in messages."""
    ids: dict[str, list[pd.Categorical]] = {c: [] for c in ("user", "item", "category", *sparse_cols)}
    nums: dict[str, list[np.ndarray]] = {c: [] for c in ("timestamp", "label", *dense_cols)}
    n_rows = 0
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)
        lines = np.arange(line0 + n_rows, line0 + n_rows + len(chunk))
        for c in ids:
            ids[c].append(_ids(chunk[c], where, c, lines))
        # a copy: a view would keep the chunk's whole 2-d block of int64 columns alive until the end
        nums["timestamp"].append(_ints(chunk["timestamp"], where, "timestamp", lines).copy())
        if has_label:
            nums["label"].append(_labels(chunk["label"], where, "label", lines))
        for c in dense_cols:
            # float32 is what the dataset stores; rounding here or at the end gives the same values
            nums[c].append(_floats(chunk[c], where, c, lines).astype(np.float32))
        n_rows += len(chunk)
    if n_rows == 0:
        raise SourceError(f"{where}: no rows")
    # each column is built while its chunks are dropped, so the table is never held twice
    frame = pd.DataFrame({c: _concat_ids(ids.pop(c)) for c in ("user", "item", "category")})
    frame["timestamp"] = np.concatenate(nums.pop("timestamp"))
    if has_label:
        frame["label"] = np.concatenate(nums.pop("label"))
    for c in sparse_cols:
        frame[c] = _concat_ids(ids.pop(c))
    for c in dense_cols:
        frame[c] = np.concatenate(nums.pop(c))
    return Events(frame=frame, source=source, sparse=sparse_cols, dense=dense_cols,
                  stats={"rows_read": n_rows},
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
    return _collect_events(_event_chunks(path, header, columns, id_columns, chunk_rows), path, line0,
                           has_label, sparse_cols, dense_cols, source)


def events_from_frame(frame: pd.DataFrame, sparse: str | Sequence[str] | None = None,
                      dense: str | Sequence[str] | None = None, source: str = "events") -> Events:
    """An in-memory table with the columns `read_events` expects; error messages count rows from 1."""
    where = f"{source} table"
    sparse_cols, dense_cols = _declared(sparse, dense, where)
    has_label = "label" in frame.columns
    columns = [*REQUIRED_EVENT_COLUMNS, *(["label"] if has_label else []), *sparse_cols, *dense_cols]
    _require_columns(where, list(frame.columns), columns)
    return _collect_events([frame[columns]], where, 1, has_label, sparse_cols, dense_cols, source)
