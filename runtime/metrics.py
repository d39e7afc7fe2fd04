"""Ranking and calibration metrics: AUC, the paper's user-weighted GAUC, and logloss (numpy only).

Ties in scores get the average rank (the Mann-Whitney U statistic), so a constant scorer has AUC 0.5
whatever the order of the rows. Everything is O(n log n).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

LOGLOSS_EPS = 1e-7


def _check(labels: ArrayLike, scores: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(f"labels and {what} must be 1-D of one length, got shapes {y.shape} and {s.shape}")
    if len(y) == 0:
        raise ValueError("no rows: labels and scores are empty")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numbers 0/1, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = np.flatnonzero((y != 0) & (y != 1))
    if len(bad):
        raise ValueError(f"labels must be 0 or 1; row {bad[0]} is {float(y[bad[0]])!r}")
    bad = np.flatnonzero(~np.isfinite(s))
    if len(bad):
        raise ValueError(f"{what} must be finite; row {bad[0]} is {float(s[bad[0]])!r}")
    return y.astype(bool), s


def _group_aucs(y: np.ndarray, s: np.ndarray, gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and AUC of each group (groups numbered 0..G-1 in `gid`); AUC is NaN where a class is missing.

    Sorting by (group, score) puts each group's scores in order; a run of equal scores inside a group
    shares the mean of its positions, and the rank sum of the positives gives Mann-Whitney's U.
    """
    n = len(y)
    order = np.lexsort((s, gid))
    gid, s, y = gid[order], s[order], y[order]
    new_group = np.concatenate(([True], gid[1:] != gid[:-1]))
    new_tie = new_group | np.concatenate(([True], s[1:] != s[:-1]))
    group_start = np.flatnonzero(new_group)
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.append(tie_start[1:], n)
    mean_position = ((tie_start + tie_end - 1) / 2.0)[np.cumsum(new_tie) - 1]
    rank = mean_position - group_start[np.cumsum(new_group) - 1] + 1.0

    counts = np.diff(np.append(group_start, n))
    n_pos = np.add.reduceat(y.astype(np.float64), group_start)
    n_neg = counts - n_pos
    pos_rank_sum = np.add.reduceat(np.where(y, rank, 0.0), group_start)
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    aucs[(n_pos == 0) | (n_neg == 0)] = np.nan
    return counts, aucs


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _check(labels, scores, "scores")
    _, aucs = _group_aucs(y, s, np.zeros(len(y), dtype=np.int64))
    return float(aucs[0])


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """The paper's user-weighted AUC: sum_u n_u AUC_u / sum_u n_u over groups having both labels.

    n_u is the number of rows (impressions) of group u. NaN when no group has both labels.
    """
    y, s = _check(labels, scores, "scores")
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have the labels' shape {y.shape}, got {g.shape}")
    _, gid = np.unique(g, return_inverse=True)
    counts, aucs = _group_aucs(y, s, gid.reshape(-1))
    both = ~np.isnan(aucs)
    if not both.any():
        return float("nan")
    return float((counts[both] * aucs[both]).sum() / counts[both].sum())


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps] so a confident miss stays finite."""
    y, p = _check(labels, probs, "probabilities")
    bad = np.flatnonzero((p < 0) | (p > 1))
    if len(bad):
        raise ValueError(f"probabilities must lie in [0, 1]; row {bad[0]} is {float(p[bad[0]])!r}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
