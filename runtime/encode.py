"""Raw request rows -> the int64 / float32 arrays the ONNX graph takes (docs/design.md "Model inputs").

Ids are looked up as strings (`str(v)` for ints; integral floats count as ints; bools, other floats,
None and containers are rejected). Unseen ids map to the OOV index 1 and are counted, not refused: new
items are normal in production. Histories keep their most recent `max_len` items (older items are
dropped unread) and are right-padded with 0 to the longest history in the batch. Fields the model does
not use are ignored, so requests may carry labels, ids and anything else; a misspelt field still fails,
as the model's own field is then missing. Errors name the row (its index in the batch) and the field;
with several bad rows the earliest row is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from din_runtime.errors import InputError
from din_runtime.features import Features, Padding, id_key, lookup
from din_runtime.manifest import Manifest


@dataclass(frozen=True)
class Encoded:
    """Model inputs keyed by ONNX input name, and per id field the number of ids that were not in the vocabulary."""

    arrays: dict[str, np.ndarray]
    oov: dict[str, int]

    def __len__(self) -> int:
        return len(self.arrays["hist_len"])


def _features(source: Features | Manifest) -> Features:
    return source.features if isinstance(source, Manifest) else source


def encode_rows(features: Features | Manifest, rows: Sequence[Mapping[str, Any]]) -> Encoded:
    """Encode request rows with a feature spec and its vocabularies (a model's: its Manifest), InputError on
    the earliest bad row."""
    features = _features(features)
    spec, vocabs = features.spec, features.vocabs
    rows = _as_rows(rows)
    arrays: dict[str, np.ndarray] = {}
    oov: dict[str, int] = {}
    problems: list[InputError] = []
    for name, vocab in spec.id_fields:
        try:
            arrays[name], oov[name] = encode_ids(_column(rows, name, "", problems), vocabs[vocab], name)
        except InputError as e:
            problems.append(e)
    try:
        hist_arrays, hist_oov = encode_histories(features, {h: _column(rows, h, [], problems) for h in spec.histories})
        arrays.update(hist_arrays)
        oov.update(hist_oov)
    except InputError as e:
        problems.append(e)
    dense = []
    for name in spec.dense_names:
        try:
            dense.append(encode_dense(_column(rows, name, 0.0, problems), name))
        except InputError as e:
            problems.append(e)
    if problems:
        # Fields are checked one after the other; report the earliest row (ties: the first check), as a reader
        # of the file would.
        raise min(problems, key=lambda e: e.row)
    if spec.dense:
        arrays["dense"] = np.stack(dense, axis=1)
    return Encoded({name: arrays[name] for name in spec.inputs}, oov)


def _column(rows: Sequence[Mapping[str, Any]], field: str, fill: Any, problems: list[InputError]) -> list[Any]:
    """`column(rows, field)`; if a row lacks the field, adds that InputError and fills in a valid `fill`, so
    the field's other checks still run and an earlier bad value is not hidden by a later missing one."""
    try:
        return column(rows, field)
    except InputError as e:
        problems.append(e)
        return [row.get(field, fill) for row in rows]


def _as_rows(rows: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise InputError(f"rows must be a sequence of mappings, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if type(row) is not dict and not isinstance(row, Mapping):
            raise InputError(f"expected a mapping of field -> value, got {type(row).__name__}", row=i)
    return rows


def column(rows: Sequence[Mapping[str, Any]], field: str) -> list[Any]:
    """The values of `field` in each row; InputError naming the first row that lacks it."""
    try:
        return [row[field] for row in rows]
    except KeyError:
        missing = next(i for i, row in enumerate(rows) if field not in row)
        raise InputError("missing", row=missing, field=field) from None


def _keys(values: list[Any]) -> tuple[list[str], int | None, str]:
    """Vocabulary keys of `values`, or the position of the first bad value and why."""
    types = set(map(type, values))
    if types <= {str}:
        return values, None, ""
    if types <= {str, int}:
        return [v if type(v) is str else str(v) for v in values], None, ""
    keys = []
    for i, value in enumerate(values):
        try:
            keys.append(id_key(value))
        except ValueError as e:
            return [], i, str(e)
    return keys, None, ""


def encode_ids(values: list[Any], vocab: Mapping[str, int], field: str) -> tuple[np.ndarray, int]:
    """Indices (int64, one per value) and the number of OOV ids; InputError naming the first bad row."""
    keys, bad, reason = _keys(values)
    if bad is not None:
        raise InputError(reason, row=bad, field=field)
    return lookup(keys, vocab)


def _as_sequence(value: Any, row: int, field: str) -> Sequence[Any]:
    if isinstance(value, (list, tuple)):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    got = "null" if value is None else type(value).__name__
    raise InputError(f"expected a list of ids (oldest first), got {got}", row=row, field=field)


def encode_histories(
    features: Features | Manifest, columns: Mapping[str, list[Any]]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """History arrays (N, L) plus hist_len (N,), L = the longest kept history (at least 1)."""
    features = _features(features)
    spec = features.spec
    problems: list[InputError] = []
    lists = {name: _sequences(values, name, problems) for name, values in columns.items()}
    lengths = {name: _lengths(seqs) for name, seqs in lists.items()}
    first = spec.histories[0]
    raw_len = lengths[first]
    for name in spec.histories[1:]:
        other = lengths[name]
        bad = np.flatnonzero(other != raw_len)
        if len(bad):
            i = int(bad[0])
            problems.append(InputError(f"has {other[i]} items but {first!r} has {raw_len[i]}; histories of a row "
                                       f"must have one length", row=i, field=name))
    max_len = spec.max_len
    keys: dict[str, list[str]] = {}
    for b in spec.behaviour:
        seqs = lists[b.history]
        own_len = lengths[b.history]
        if (own_len > max_len).any():
            seqs = [s[-max_len:] if len(s) > max_len else s for s in seqs]
        keys[b.history], bad_item, reason = _keys(list(chain.from_iterable(seqs)))
        if bad_item is not None:
            # Each history has its own lengths here (they may differ when the length check failed above).
            own_kept = np.minimum(own_len, max_len)
            row = int(np.searchsorted(np.cumsum(own_kept), bad_item, side="right"))
            item = int(bad_item - (np.sum(own_kept[:row]) - own_len[row] + own_kept[row]))
            problems.append(InputError(f"item {item}: {reason}", row=row, field=b.history))
    if problems:
        # Checks run field by field; report the earliest row (ties: the first check), as a reader of the file would.
        raise min(problems, key=lambda e: e.row)

    padding = Padding.of(raw_len, max_len)
    arrays: dict[str, np.ndarray] = {}
    oov: dict[str, int] = {}
    for b in spec.behaviour:
        index, oov[b.history] = lookup(keys[b.history], features.vocabs[b.vocab])
        arrays[b.history] = padding.pad(index)
    arrays["hist_len"] = padding.kept
    return arrays, oov


def _sequences(values: list[Any], field: str, problems: list[InputError]) -> list[Sequence[Any]]:
    """The histories of one field; a value that is not a list adds its InputError and stands as an empty one."""
    if all(type(v) is list for v in values):
        return values
    seqs: list[Sequence[Any]] = []
    first_error = None
    for i, value in enumerate(values):
        try:
            seqs.append(_as_sequence(value, i, field))
        except InputError as e:
            first_error = first_error or e
            seqs.append([])
    if first_error:
        problems.append(first_error)
    return seqs


def _lengths(seqs: list[Sequence[Any]]) -> np.ndarray:
    return np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))


def encode_dense(values: list[Any], field: str) -> np.ndarray:
    """float32 values of one dense feature; InputError for non-numbers and values not finite in float32."""
    if not set(map(type, values)) <= {int, float}:
        for i, value in enumerate(values):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                got = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
                raise InputError(f"expected a number, got {got}", row=i, field=field)
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:
        # An integer beyond float64 (JSON allows any number of digits): find it to name its row.
        i = next(i for i, v in enumerate(values) if not _fits_float64(v))
        # |v| >= 2**(bits - 1): a true lower bound that needs no repr() (which fails past 4300 digits)
        power = int((abs(int(values[i])).bit_length() - 1) * math.log10(2))
        raise InputError(f"an integer beyond 10**{power} overflows float32", row=i, field=field) from None
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(narrow))
    if len(bad):
        i = int(bad[0])
        why = "is not finite" if not np.isfinite(wide[i]) else "overflows float32"
        raise InputError(f"{float(wide[i])!r} {why}", row=i, field=field)
    return narrow


def _fits_float64(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True
