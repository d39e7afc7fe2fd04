"""The memory-saving paths of reading and sorting give what the simple ones give, value for value:
columns filled in place (din_export.sources.columns) against chunk lists joined at the end, and
prepare's combined-key sort and chunked permutation against lexsort and fancy indexing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from din_export import prepare as P
from din_export.sources import events_from_frame, read_events
from din_export.sources.columns import Ids, Numbers
from din_export.sources.validate import _concat_ids


def _same_categorical(a: pd.Categorical, b: pd.Categorical) -> None:
    assert list(a.categories) == list(b.categories)
    assert a.categories.dtype == b.categories.dtype
    np.testing.assert_array_equal(a.codes, b.codes)
    assert list(np.asarray(a)) == list(np.asarray(b))


@pytest.mark.parametrize("n_rows", [None, 9, 7, 12])  # unknown, exact, fewer than read, more than read
def test_numbers_fill_in_place_or_as_a_list(n_rows: int | None) -> None:
    chunks = [np.array([3, 1, 2]), np.array([9, 8]), np.array([7, 7, 5, 4])]
    col = Numbers(np.int64, n_rows)
    for c in chunks:
        col.add(c)
    out = col.result()
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.concatenate(chunks))


def test_numbers_list_mode_copies_the_chunk() -> None:
    """A view would keep the whole chunk (a 2-d pandas block) alive, and change with it."""
    chunk = np.array([1, 2, 3])
    col = Numbers(np.int64, None)
    col.add(chunk)
    chunk[:] = 0
    np.testing.assert_array_equal(col.result(), [1, 2, 3])


@pytest.mark.parametrize("n_rows", [None, 8, 5])
def test_int_ids_coded_in_place_equal_the_chunk_list(n_rows: int | None) -> None:
    chunks = [np.array([30, 7, 30], dtype=np.int32), np.array([-2, 7], dtype=np.int32),
              np.array([100, 30, 5], dtype=np.int32)]
    col = Ids(n_rows)
    for c in chunks:
        col.add(c)
    _same_categorical(col.result(), _concat_ids([c.copy() for c in chunks]))


@pytest.mark.parametrize("n_rows", [None, 9, 6])
def test_text_ids_coded_in_place_equal_the_chunk_list(n_rows: int | None) -> None:
    """Categories in order of first appearance, each chunk's codes moved onto them (union_categoricals)."""
    chunks = [pd.Categorical(["b", "a", "b"]), pd.Categorical(["a", "b"]), pd.Categorical(["d", "a", "c", "a"])]
    col = Ids(n_rows)
    for c in chunks:
        col.add(c)
    _same_categorical(col.result(), _concat_ids(list(chunks)))


def test_ids_fall_back_to_the_list_for_mixed_chunks() -> None:
    wide = np.array([2**40, 3], dtype=np.int64)
    chunks = [np.array([5, 3], dtype=np.int32), wide]
    col = Ids(4)
    for c in chunks:
        col.add(c)
    _same_categorical(col.result(), _concat_ids([c.copy() for c in chunks]))
    col = Ids(6)
    for c in [*chunks, np.array([1, 2], dtype=np.int32)]:  # int32 after int64: the list goes on
        col.add(c)
    _same_categorical(col.result(), _concat_ids([*[c.copy() for c in chunks], np.array([1, 2], dtype=np.int32)]))


@pytest.mark.parametrize("order", ["int first", "text first"])
def test_mixed_integer_and_text_chunks_keep_their_order(order: str) -> None:
    ints = [np.array([5, 7, 5], dtype=np.int32), np.array([2**40], dtype=np.int64)]
    text = [pd.Categorical(["x", "5"])]
    chunks = [ints[0], *text, ints[1]] if order == "int first" else [*text, *ints]
    expected = [str(v) for c in chunks for v in np.asarray(c)]
    for n_rows in (None, 6):
        col = Ids(n_rows)
        for c in chunks:
            col.add(c.copy())
        got = col.result()
        assert list(np.asarray(got)) == expected
        assert len(set(got.categories)) == len(got.categories)  # "5" once, from either kind of chunk


def test_uint64_ids_across_2_63_read_in_chunks(tmp_path) -> None:
    """A uint64 column whose ids cross 2**63 gives integer chunks below and text chunks above: one
    column, in file order, as the table read whole gives it."""
    users = np.array([2**63 - 4 + i for i in range(8)], dtype=np.uint64)
    frame = pd.DataFrame({"user": users, "item": [f"i{i % 3}" for i in range(8)], "category": ["c"] * 8,
                          "timestamp": np.arange(8)})
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, row_group_size=2)
    streamed = read_events(path, chunk_rows=2).frame
    assert list(streamed["user"].astype(str)) == [str(u) for u in users]
    whole = events_from_frame(frame).frame
    assert list(whole["user"].astype(str)) == [str(u) for u in users]


def test_parquet_in_chunks_equals_the_table_read_whole(tmp_path) -> None:
    """Parquet (row count known: columns filled in place) read in small chunks gives the frame of the
    same table read from memory in one chunk."""
    rng = np.random.default_rng(0)
    n = 1000
    frame = pd.DataFrame({
        "user": rng.integers(0, 50, n), "item": rng.integers(-5, 300, n),
        "category": [f"c{v}" for v in rng.integers(0, 7, n)], "timestamp": rng.integers(0, 10**9, n),
        "label": rng.integers(0, 2, n).astype(np.int8), "gender": rng.choice(["f", "m"], n),
        "price": rng.random(n) * 100,
    })
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, row_group_size=300)
    streamed = read_events(path, "gender", "price", chunk_rows=128).frame
    whole = events_from_frame(frame, "gender", "price").frame
    assert list(streamed.columns) == list(whole.columns)
    for c in streamed.columns:
        if isinstance(whole[c].dtype, pd.CategoricalDtype):
            _same_categorical(streamed[c].array, whole[c].array)
        else:
            assert streamed[c].dtype == whole[c].dtype
            np.testing.assert_array_equal(streamed[c].to_numpy(), whole[c].to_numpy())


@pytest.mark.parametrize("span", [1000, 2**62])  # a combined key fits; it does not (lexsort)
def test_time_order_is_lexsort(span: int) -> None:
    rng = np.random.default_rng(1)
    n = 5000
    user = rng.integers(0, 40, n).astype(np.int32)
    ts = rng.integers(0, 30, n).astype(np.int64) * (span // 30)  # many ties: file order must decide
    ts[0] = span - 1
    order = P._time_order(user, ts, 40)
    assert order.dtype == np.int32
    np.testing.assert_array_equal(order, np.lexsort((ts, user)))


def test_permuted_equals_fancy_indexing(monkeypatch) -> None:
    monkeypatch.setattr(P, "REMAP_CELLS", 7)  # several slices
    rng = np.random.default_rng(2)
    order = rng.permutation(50).astype(np.int32)
    values = rng.random((50, 3)).astype(np.float32)
    np.testing.assert_array_equal(P._permuted(values, order), values[order])
    np.testing.assert_array_equal(P._permuted(values[:, 0], order), values[order, 0])
