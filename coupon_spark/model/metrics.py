"""Binary classification metrics that add up across ranks: AUC, log loss, calibration.

Each rank summarises its validation predictions into one fixed-length float64 vector
(:func:`binary_summary`); the element-wise sum over ranks (one allreduce) is the summary of all predictions,
and :func:`summary_metrics` turns it into numbers. AUC comes from a histogram of ``AUC_BINS`` equal-width
probability bins (pairs in the same bin count one half), which is within ``1 / AUC_BINS`` of the exact AUC
(:func:`roc_auc`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

AUC_BINS = 4096
CALIBRATION_BINS = 10
_EPS = 1e-7


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Exact ROC AUC (ties count one half); NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(p, np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def binary_summary(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Additive summary of labels ``y`` (0/1) and predicted probabilities ``p``.

    Layout: positives per AUC bin, negatives per AUC bin, then per calibration bin the sum of ``p``, the sum of
    ``y`` and the count, then ``[n, sum log loss, sum p, sum y]``.
    """
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    b = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    pos = np.bincount(b, weights=y, minlength=AUC_BINS)
    neg = np.bincount(b, weights=1 - y, minlength=AUC_BINS)
    c = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    cal_p = np.bincount(c, weights=p, minlength=CALIBRATION_BINS)
    cal_y = np.bincount(c, weights=y, minlength=CALIBRATION_BINS)
    cal_n = np.bincount(c, minlength=CALIBRATION_BINS).astype(np.float64)
    pc = np.clip(p, _EPS, 1 - _EPS)
    ll = -(y * np.log(pc) + (1 - y) * np.log1p(-pc)).sum()
    return np.concatenate([pos, neg, cal_p, cal_y, cal_n, [len(y), ll, p.sum(), y.sum()]])


def summary_metrics(summary: np.ndarray) -> dict[str, Any]:
    """AUC (binned), log loss, mean prediction vs. observed rate, expected calibration error and the
    calibration table of a (summed) :func:`binary_summary`."""
    a, k = AUC_BINS, CALIBRATION_BINS
    pos, neg = summary[:a], summary[a : 2 * a]
    cal_p, cal_y, cal_n = summary[2 * a : 2 * a + k], summary[2 * a + k : 2 * a + 2 * k], summary[2 * a + 2 * k :][:k]
    n, ll, sp, sy = summary[-4:]
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos > 0 and n_neg > 0:
        neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        auc = float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))
    else:
        auc = float("nan")
    nz = cal_n > 0
    ece = float((np.abs(cal_p[nz] - cal_y[nz])).sum() / n) if n else float("nan")
    return {
        "n": int(n),
        "auc": auc,
        "log_loss": float(ll / n) if n else float("nan"),
        "mean_prediction": float(sp / n) if n else float("nan"),
        "observed_rate": float(sy / n) if n else float("nan"),
        "expected_calibration_error": ece,
        "calibration": [
            {
                "bin": f"[{i / k:.1f}, {(i + 1) / k:.1f})",
                "n": int(cal_n[i]),
                "mean_prediction": float(cal_p[i] / cal_n[i]),
                "observed_rate": float(cal_y[i] / cal_n[i]),
            }
            for i in range(k)
            if cal_n[i] > 0
        ],
    }
