"""Checks and conversions the readers share: raw columns -> ids, integers, floats and labels, exactly,
or a `SourceError` naming the file, the line and the field of the first bad value; and the file-level
checks (present, UTF-8, parsable CSV).
"""

from __future__ import annotations

import decimal
import gzip
import io
import math
import re
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from din_export.sources.table import SourceError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT_EXACT = 2**53  # float64 holds every integer below this exactly, and rounds some above it
FLOAT32_MAX = float(np.finfo(np.float32).max)  # dense values are stored as float32
INT_TEXT = re.compile(r"-?[0-9]+")


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
    """One Categorical of strings from the chunks' ids (integer chunks as arrays, the others as Categoricals),
    in the chunks' order; `parts` is emptied as they are coded."""
    if not parts:
        return pd.Categorical(np.array([], dtype=object))
    cats: list[pd.Categorical] = []
    ints: list[np.ndarray] = []
    parts.reverse()  # popped from the end, in order
    while parts:
        part = parts.pop()
        if isinstance(part, np.ndarray):
            ints.append(part)
            continue
        if ints:
            cats.append(_code_ints(ints))
        cats.append(part)
    if ints:
        cats.append(_code_ints(ints))
    if len(cats) == 1:
        return cats[0]
    if len({c.categories.dtype for c in cats}) > 1:
        # integer chunks name their ids as Python strings, text chunks may hold another string dtype (a
        # uint64 column has both where its ids cross 2**63): one dtype, so the categories can be joined
        cats = [pd.Categorical.from_codes(c.codes, categories=pd.Index(c.categories.to_numpy(object), dtype=object))
                for c in cats]
    return union_categoricals(cats, ignore_order=True)


def _code_ints(ints: list[np.ndarray]) -> pd.Categorical:
    """A run of consecutive integer chunks as one Categorical of strings; `ints` is emptied."""
    # codes a chunk at a time against the run's sorted distinct ids, each chunk dropped once coded, so
    # the column is never held twice (nor as int64 codes, which pd.Categorical would make)
    uniq = np.unique(np.concatenate([np.unique(p) for p in ints]))
    codes = np.empty(sum(map(len, ints)), dtype=np.int32 if len(uniq) < 2**31 else np.int64)
    offset = 0
    ints.reverse()
    while ints:
        p = ints.pop()
        codes[offset:offset + len(p)] = np.searchsorted(uniq, p)
        offset += len(p)
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniq.astype(str), dtype=object))


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
