"""Scorer.score_arrays's one-pass checks against the element-wise rules they stand for: every integer width
and byte order, negative ids, non-contiguous arrays, NaN and infinities anywhere in dense."""

from __future__ import annotations

import numpy as np
import pytest
from din_runtime import InputError, Scorer
from runtime_fixtures import build_model_dir, request


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    return Scorer.load(build_model_dir(tmp_path_factory.mktemp("model") / "m", with_attention=True))


@pytest.fixture(scope="module")
def arrays(scorer: Scorer) -> dict[str, np.ndarray]:
    return dict(scorer.encode([request(i, hist=i % 7) for i in range(6)]).arrays)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.int64, ">i8", "<i4", ">u4"])
@pytest.mark.parametrize("name", ["item_id", "hist_item_id"])
def test_negative_and_too_large_ids_name_the_first_bad_row(scorer, arrays, dtype, name):
    good = arrays[name].astype(dtype)
    np.testing.assert_array_equal(scorer.score_arrays({**arrays, name: good}), scorer.score_arrays(arrays))
    limit = scorer.manifest.vocab_sizes[scorer.manifest.vocab_of(name)]
    assert np.iinfo(dtype).max > limit
    bad_values = [limit] + ([-1] if np.dtype(dtype).kind == "i" else [])
    for value in bad_values:
        bad = good.copy()
        bad[3] = value
        bad[4] = value
        with pytest.raises(InputError, match="outside") as e:
            scorer.score_arrays({**arrays, name: bad})
        assert (e.value.row, e.value.field) == (3, name)


def test_unsigned_ids_beyond_int64_are_refused(scorer, arrays):
    big = arrays["item_id"].astype(np.uint64)
    big[2] = np.iinfo(np.uint64).max
    with pytest.raises(InputError, match="outside") as e:
        scorer.score_arrays({**arrays, "item_id": big})
    assert e.value.row == 2


def test_non_contiguous_arrays_are_checked_and_scored(scorer, arrays):
    wide = np.repeat(arrays["hist_cate_id"], 2, axis=1)[:, ::2]  # a strided view, same values
    assert not wide.flags.c_contiguous
    np.testing.assert_array_equal(scorer.score_arrays({**arrays, "hist_cate_id": wide}), scorer.score_arrays(arrays))
    wide = wide.copy()[:, ::1]
    strided = np.repeat(wide, 2, axis=1)
    strided[4, 2] = -5
    with pytest.raises(InputError, match="outside") as e:
        scorer.score_arrays({**arrays, "hist_cate_id": strided[:, ::2]})
    assert (e.value.row, e.value.field) == (4, "hist_cate_id")


@pytest.mark.parametrize("dtype, value", [(np.float32, np.nan), (np.float32, np.inf), (np.float32, -np.inf),
                                          (np.float16, np.nan), (np.float16, -np.inf), (np.float64, np.inf),
                                          (np.float64, 1e39), (np.float64, -1e39)])
def test_dense_values_not_finite_as_float32_name_the_first_bad_row(scorer, arrays, dtype, value):
    dense = arrays["dense"].astype(dtype)
    dense[2, -1] = value
    dense[5, 0] = value
    with pytest.raises(InputError, match="not finite") as e:
        scorer.score_arrays({**arrays, "dense": dense})
    assert (e.value.row, e.value.field) == (2, "dense")


def test_finite_dense_of_any_number_type_is_scored(scorer, arrays):
    expected = scorer.score_arrays(arrays)
    for dtype in (np.float64, np.int64, np.int32):
        dense = arrays["dense"].round().astype(dtype)
        np.testing.assert_allclose(scorer.score_arrays({**arrays, "dense": dense}),
                                   scorer.score_arrays({**arrays, "dense": dense.astype(np.float32)}), rtol=0, atol=0)
    assert expected.shape == (6,)


def test_hist_len_outside_the_width_names_its_row(scorer, arrays):
    width = arrays["hist_item_id"].shape[1]
    for value in (-1, width + 1):
        hist_len = arrays["hist_len"].copy()
        hist_len[1] = value
        with pytest.raises(InputError, match="history width") as e:
            scorer.score_arrays({**arrays, "hist_len": hist_len})
        assert (e.value.row, e.value.field) == (1, "hist_len")
    full = np.full_like(arrays["hist_len"], width)
    assert scorer.score_arrays({**arrays, "hist_len": full}).shape == (6,)


def test_empty_batch_scores_nothing(scorer, arrays):
    empty = {k: v[:0] for k, v in arrays.items()}
    assert scorer.score_arrays(empty).shape == (0,)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, ">i8", np.uint64])
@pytest.mark.parametrize("name", ["item_id", "hist_len"])
def test_a_single_id_is_checked_like_a_column(scorer, arrays, dtype, name):
    one = {k: v[3:4] for k, v in arrays.items()}  # B=1: single ids take their own path
    np.testing.assert_array_equal(scorer.score_arrays({**one, name: one[name].astype(dtype)}),
                                  scorer.score_arrays(one))
    limit = arrays["hist_item_id"].shape[1] + 1 if name == "hist_len" else \
        scorer.manifest.vocab_sizes[scorer.manifest.vocab_of(name)]
    values = [np.iinfo(dtype).max] + ([-1] if np.dtype(dtype).kind == "i" else [])
    values += [limit] if np.iinfo(dtype).max >= limit else []
    for value in values:
        with pytest.raises(InputError, match="history width" if name == "hist_len" else "outside") as e:
            scorer.score_arrays({**one, name: np.array([value], dtype=dtype)})
        assert (e.value.row, e.value.field) == (0, name)
