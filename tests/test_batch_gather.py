"""Split.take's gather at the edges the training batches never reach: a width narrower than the rows'
histories, repeated rows, no rows at all, rows whose histories are all empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_compact_data import padded_by_loop

from din_export.data import load_split
from din_export.prepare import prepare
from din_export.synthetic import SyntheticConfig, generate, to_events


@pytest.fixture(scope="module")
def compact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gather") / "ds"
    prepare(to_events(generate(SyntheticConfig(users=120, items=90, categories=8), seed=3)), out, max_len=9, seed=1)
    return out


def test_take_equals_the_padded_rows_at_any_width(compact_dir: Path) -> None:
    split, ref = load_split(compact_dir, "train"), padded_by_loop(compact_dir, "train")
    lengths = ref["hist_len"]
    assert lengths.min() == 0 and lengths.max() == 9  # empty and full windows both occur
    rng = np.random.default_rng(0)
    rows = np.r_[rng.integers(0, split.n, 200), np.flatnonzero(lengths == 0)[:3], 5, 5]
    for width in (None, 0, 1, 4, 9):
        got = split.take(rows, width=width)
        wide = int(lengths[rows].max()) if width is None else width
        assert got.keys() == ref.keys()
        for key, value in got.items():
            want = ref[key][rows][:, :wide] if key in split.histories else ref[key][rows]
            assert value.dtype == want.dtype and value.flags.c_contiguous, key
            np.testing.assert_array_equal(value, want, err_msg=f"{key} at width {width}")


def test_take_of_no_rows_and_of_empty_histories(compact_dir: Path) -> None:
    split, ref = load_split(compact_dir, "train"), padded_by_loop(compact_dir, "train")
    none = split.take(np.array([], dtype=np.int64))
    assert all(v.shape[0] == 0 for v in none.values())
    assert all(none[h].shape == (0, 0) for h in split.histories)
    empty = np.flatnonzero(ref["hist_len"] == 0)[:4]
    got = split.take(empty, width=3)
    for h in split.histories:
        np.testing.assert_array_equal(got[h], np.zeros((len(empty), 3), dtype=np.int64))
