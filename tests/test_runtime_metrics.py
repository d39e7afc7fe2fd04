"""auc / gauc / logloss against hand-computed cases and a brute-force pairwise definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from din_runtime import auc, gauc, logloss
from hypothesis import given, settings
from hypothesis import strategies as st


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([1, 1, 0, 0], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.25)
    assert auc([0, 1], [0.2, 0.9]) == 1.0


def test_auc_ties_count_half():
    # pos 0.5 beats neg 0.2 and ties neg 0.5 (1.5); pos 0.9 beats both (2): 3.5 / 4
    assert auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert auc([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.5)


def test_auc_one_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0], [0.1]))


def test_gauc_hand_computed():
    # user a: pos 0.9 beats neg 0.5, loses to neg 0.95 -> 0.5 over 3 rows; user b -> 1.0 over 2 rows;
    # user c has only positives and is left out: (3 * 0.5 + 2 * 1.0) / 5 = 0.7
    labels = [1, 0, 0, 0, 1, 1, 1]
    scores = [0.9, 0.5, 0.95, 0.2, 0.8, 0.1, 0.3]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    assert gauc(labels, scores, groups) == pytest.approx(0.7)
    assert gauc(labels, scores, [7, 7, 7, 3, 3, 1, 1]) == pytest.approx(0.7)


def test_gauc_weights_by_impressions_not_users():
    # a: AUC 1 over 4 rows, b: AUC 0 over 2 rows -> 4/6, where a plain mean over users gives 0.5
    labels = [1, 0, 0, 0, 1, 0]
    scores = [0.9, 0.1, 0.2, 0.3, 0.1, 0.9]
    assert gauc(labels, scores, ["a"] * 4 + ["b"] * 2) == pytest.approx(4 / 6)


def test_gauc_without_mixed_groups_is_nan():
    assert math.isnan(gauc([1, 0], [0.3, 0.4], ["a", "b"]))


def test_logloss_hand_computed_and_clipped():
    assert logloss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert math.isfinite(logloss([0, 1], [1.0, 0.0]))


@pytest.mark.parametrize("call, message", [
    (lambda: auc([0, 2], [0.1, 0.2]), "0 or 1"),
    (lambda: auc([0, 1], [0.1]), "one length"),
    (lambda: auc([0, 1], [0.1, float("nan")]), "finite"),
    (lambda: auc([], []), "empty"),
    (lambda: logloss([0, 1], [0.1, 1.5]), r"\[0, 1\]"),
    (lambda: gauc([0, 1], [0.1, 0.2], ["a"]), "shape"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5), st.integers(0, 3)), min_size=2, max_size=60))
def test_matches_pairwise_definition(rows):
    y, s, g = (np.array(c) for c in zip(*rows, strict=True))
    s = s.astype(float)
    if 0 < y.sum() < len(y):
        assert auc(y, s) == pytest.approx(pairwise_auc(y, s))
        perm = np.random.default_rng(0).permutation(len(y))
        assert auc(y[perm], s[perm]) == pytest.approx(auc(y, s))
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * pairwise_auc(y[m], s[m])
            den += m.sum()
    if den:
        assert gauc(y, s, g) == pytest.approx(num / den)
    else:
        assert math.isnan(gauc(y, s, g))
