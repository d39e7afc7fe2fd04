"""encode_rows: lookups, OOV, truncation, padding, casts, and errors that name the row and the field."""

from __future__ import annotations

import numpy as np
import pytest
from din_runtime import InputError, load_manifest
from din_runtime.encode import encode_rows
from runtime_fixtures import MAX_LEN, VOCABS, build_model_dir, request


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(build_model_dir(tmp_path_factory.mktemp("model") / "m"))


def index(vocab: str, raw: str) -> int:
    return VOCABS[vocab].index(raw) + 2


def test_arrays_follow_the_model_inputs(manifest):
    rows = [request(0, hist=2), request(1, hist=0), request(2, hist=3)]
    enc = encode_rows(manifest, rows)
    assert list(enc.arrays) == list(manifest.inputs)
    a = enc.arrays
    assert all(a[k].dtype == np.int64 for k in manifest.inputs if k != "dense")
    assert a["dense"].dtype == np.float32 and a["dense"].shape == (3, 2)
    np.testing.assert_array_equal(a["dense"][:, 0], [20, 21, 22])
    np.testing.assert_array_equal(a["hist_len"], [2, 0, 3])
    assert a["hist_item_id"].shape == (3, 3)
    expected_row0 = [index("item_id", v) for v in rows[0]["hist_item_id"]] + [0]
    np.testing.assert_array_equal(a["hist_item_id"][0], expected_row0)
    np.testing.assert_array_equal(a["hist_item_id"][1], [0, 0, 0])
    assert a["user_id"][2] == index("user_id", rows[2]["user_id"])
    assert a["cate_id"][1] == index("cate_id", rows[1]["cate_id"])
    assert len(enc) == 3


def test_unseen_ids_map_to_oov_and_are_counted(manifest):
    rows = [request(0, item_id="999999"), request(1, hist_item_id=["nope", "100", "also-new"],
                                                   hist_cate_id=["Drama", "Western", "Drama"])]
    enc = encode_rows(manifest, rows)
    assert enc.arrays["item_id"][0] == 1
    np.testing.assert_array_equal(enc.arrays["hist_item_id"][1], [1, 2, 1])
    assert enc.arrays["hist_cate_id"][1, 1] == 1
    assert enc.oov["item_id"] == 1 and enc.oov["hist_item_id"] == 2 and enc.oov["hist_cate_id"] == 1
    assert enc.oov["user_id"] == 0


def test_integer_ids_are_looked_up_as_strings(manifest):
    as_str = encode_rows(manifest, [request(0, item_id="105", hist_item_id=["100", "101"], hist_cate_id=["F", "G"])])
    as_int = encode_rows(manifest, [request(0, item_id=105, hist_item_id=[100, np.int64(101)],
                                            hist_cate_id=["F", "G"])])
    as_float = encode_rows(manifest, [request(0, item_id=105.0, hist_item_id=(100.0, 101),
                                              hist_cate_id=np.array(["F", "G"]))])
    for other in (as_int, as_float):
        for name in manifest.inputs:
            np.testing.assert_array_equal(as_str.arrays[name], other.arrays[name])
    assert as_str.arrays["item_id"][0] == index("item_id", "105")


@pytest.mark.parametrize("value, message", [
    (True, "boolean"), (105.5, "integral"), (None, "null"), (["105"], "string or integer"),
    ({"id": 1}, "string or integer"), (float("nan"), "integral"),
])
def test_bad_scalar_ids(manifest, value, message):
    with pytest.raises(InputError, match=message) as e:
        encode_rows(manifest, [request(0), request(1, item_id=value)])
    assert (e.value.row, e.value.field) == (1, "item_id")


def test_bad_history_item_names_the_item(manifest):
    with pytest.raises(InputError, match="item 1: .*boolean") as e:
        encode_rows(manifest, [request(0, hist_item_id=["100", False, "102"])])
    assert (e.value.row, e.value.field) == (0, "hist_item_id")


def test_history_must_be_a_list(manifest):
    with pytest.raises(InputError, match="list of ids") as e:
        encode_rows(manifest, [request(0), request(1, hist_cate_id="Drama|Comedy")])
    assert (e.value.row, e.value.field) == (1, "hist_cate_id")


def test_truncation_keeps_the_most_recent(manifest):
    items = [str(100 + k) for k in range(MAX_LEN + 3)]
    cates = ["Drama"] * len(items)
    enc = encode_rows(manifest, [request(0, hist_item_id=items, hist_cate_id=cates), request(1, hist=1)])
    np.testing.assert_array_equal(enc.arrays["hist_item_id"][0], [index("item_id", i) for i in items[-MAX_LEN:]])
    np.testing.assert_array_equal(enc.arrays["hist_len"], [MAX_LEN, 1])
    assert enc.arrays["hist_item_id"].shape == (2, MAX_LEN)


def test_bad_items_older_than_max_len_are_dropped_unread(manifest):
    items = [None] + ["100"] * MAX_LEN
    enc = encode_rows(manifest, [request(0, hist_item_id=items, hist_cate_id=["Drama"] * len(items))])
    assert enc.arrays["hist_len"][0] == MAX_LEN


def test_histories_of_a_row_share_one_length(manifest):
    with pytest.raises(InputError, match="one length") as e:
        encode_rows(manifest, [request(0), request(1, hist_cate_id=["Drama"])])
    assert (e.value.row, e.value.field) == (1, "hist_cate_id")


def test_empty_history_and_empty_batch(manifest):
    enc = encode_rows(manifest, [request(0, hist=0)])
    assert enc.arrays["hist_item_id"].shape == (1, 1) and enc.arrays["hist_len"][0] == 0
    empty = encode_rows(manifest, [])
    assert len(empty) == 0 and empty.arrays["dense"].shape == (0, 2)


def test_missing_field_names_row_and_field(manifest):
    row = request(2)
    del row["gender"]
    with pytest.raises(InputError, match="row 2, field 'gender': missing") as e:
        encode_rows(manifest, [request(0), request(1), row])
    assert (e.value.row, e.value.field) == (2, "gender")


def test_earliest_bad_row_is_reported(manifest):
    late = request(3)
    del late["user_id"]
    rows = [request(0), request(1), request(2, age="old"), late]
    with pytest.raises(InputError) as e:
        encode_rows(manifest, rows)
    assert (e.value.row, e.value.field) == (2, "age")


def _missing(row: dict, field: str) -> dict:
    del row[field]
    return row


@pytest.mark.parametrize("early, late", [
    ({"hist_cate_id": [None, "Drama", "Comedy"]}, {"hist_item_id": [None, "101", "102"]}),
    ({"hist_cate_id": ["Drama", False, "Comedy"]}, {"hist_item_id": "x"}),
    ({"hist_cate_id": [None, "Drama", "Comedy"]}, {"hist_cate_id": ["Drama"]}),
    ({"hist_cate_id": [None, "Drama", "Comedy"]}, {"hist_item_id": 5, "hist_cate_id": "x"}),
    ({"hist_cate_id": "x"}, {"hist_item_id": "y"}),
], ids=["null-cate-item-vs-null-item", "bool-cate-item-vs-string-history", "cate-item-vs-length",
        "cate-item-vs-two-non-lists", "non-list-cate-vs-non-list-item"])
def test_earliest_bad_row_wins_across_history_fields(manifest, early, late):
    rows = [request(0), request(1, **early), request(2, **late), request(3)]
    with pytest.raises(InputError) as e:
        encode_rows(manifest, rows)
    assert (e.value.row, e.value.field) == (1, "hist_cate_id")


def test_earliest_bad_row_wins_over_a_later_missing_field(manifest):
    rows = [request(0, hist_cate_id=["Drama", None, "Comedy"]), _missing(request(1), "hist_item_id")]
    with pytest.raises(InputError, match="item 1: is null") as e:
        encode_rows(manifest, rows)
    assert (e.value.row, e.value.field) == (0, "hist_cate_id")
    rows = [request(0, item_id=True), _missing(request(1), "item_id"), _missing(request(2), "age")]
    with pytest.raises(InputError, match="boolean") as e:
        encode_rows(manifest, rows)
    assert (e.value.row, e.value.field) == (0, "item_id")


@pytest.mark.parametrize("bad, field, message", [
    ({"hist_item_id": ["100", None], "hist_cate_id": ["Drama"]}, "hist_cate_id", "has 1 items"),
    ({"hist_item_id": 5, "hist_cate_id": [None]}, "hist_item_id", "list of ids"),
    ({"hist_item_id": [None], "hist_cate_id": [None]}, "hist_item_id", "item 0: is null"),
])
def test_one_row_with_several_history_problems_keeps_the_first_check(manifest, bad, field, message):
    with pytest.raises(InputError, match=message) as e:
        encode_rows(manifest, [request(0), request(1, **bad)])
    assert (e.value.row, e.value.field) == (1, field)


def test_a_bad_item_in_a_history_longer_than_the_first_is_still_a_length_error(manifest):
    # The items of hist_cate_id are checked with its own lengths: hist_item_id's would place item 3 past the batch.
    rows = [request(0, hist_item_id=["100"], hist_cate_id=["Drama", "Drama", "Drama", None])]
    with pytest.raises(InputError, match="has 4 items but 'hist_item_id' has 1") as e:
        encode_rows(manifest, rows)
    assert (e.value.row, e.value.field) == (0, "hist_cate_id")


def test_extra_fields_are_ignored(manifest):
    plain = encode_rows(manifest, [request(0)])
    extra = encode_rows(manifest, [request(0, request_id="r-1", whatever=[1, 2])])
    for name in manifest.inputs:
        np.testing.assert_array_equal(plain.arrays[name], extra.arrays[name])


def test_dense_values_cast_to_float32(manifest):
    enc = encode_rows(manifest, [request(0, age=np.int32(40), price=np.float64(2.5)), request(1, age=41.25)])
    np.testing.assert_array_equal(enc.arrays["dense"], np.array([[40, 2.5], [41.25, 1.5]], dtype=np.float32))


@pytest.mark.parametrize("value, message", [
    (float("nan"), "not finite"), (float("inf"), "not finite"), (1e39, "overflows float32"),
    ("49", "expected a number, got str"), (True, "expected a number"), (None, "null"), ([1.0], "list"),
])
def test_bad_dense_values(manifest, value, message):
    with pytest.raises(InputError, match=message) as e:
        encode_rows(manifest, [request(0), request(1, age=value)])
    assert (e.value.row, e.value.field) == (1, "age")


def test_rows_must_be_mappings(manifest):
    with pytest.raises(InputError, match="mapping") as e:
        encode_rows(manifest, [request(0), ["not", "a", "row"]])
    assert e.value.row == 1
    with pytest.raises(InputError, match="sequence of mappings"):
        encode_rows(manifest, request(0))
