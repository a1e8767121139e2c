"""Qini and uplift curves, Qini coefficient and AUUC from randomised logs with known propensities (numpy only).

A targeting policy picks one coupon per user (its best by a predicted incremental profit, the ``score``) and
targets users in decreasing order of that score. Randomised logs can measure how good that ranking is: for
every logged row, either the logged arm is the policy's chosen coupon (``treated``), or it is "no coupon"
(``control``), or it is some other coupon (the row says nothing about this comparison and is ignored). Each
kept row counts ``w = 1 / propensity`` times (the propensity of its logged arm), so that the treated rows
and the control rows each stand for the whole population, whatever the logging probabilities.

Rows are ranked by score, descending; tied scores form one step (the curves are only read at the last row of
each tie, so the order within a tie does not matter). At the top ``k`` rows, with ``W_t(k)``, ``W_c(k)`` the
weights of the treated and control rows and ``R_t(k)``, ``R_c(k)`` their weighted rewards (the weighted Qini
of causalml and scikit-uplift)::

    fraction(k) = (W_t(k) + W_c(k)) / (W_t + W_c)                       # of the population targeted
    qini(k)     = (R_t(k) - R_c(k) * W_t(k) / W_c(k)) / W_t             # control rescaled to the treated weight
    uplift(k)   = (R_t(k) / W_t(k) - R_c(k) / W_c(k)) * fraction(k)     # uplift in the top, times its share

(a term whose weight is 0 counts 0). Both are normalised per row of the population: EUR per user when every
targeted user gets the chosen coupon and the others get nothing, starting at 0 and ending, at fraction 1, at
the estimated average effect of the chosen coupons. Random targeting earns the straight line from ``(0, 0)``
to ``(1, qini[-1])``.

- Qini coefficient: the area between the Qini curve and that line (trapezoids over ``fraction``): > 0 when the
  ranking puts the users the coupon pays for first.
- AUUC: the area under the uplift curve (random targeting gets ``uplift[-1] / 2``).

Example:
    >>> c = uplift_curves(score, treated, control, propensity, reward)
    >>> c.qini_coefficient, c.auuc
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UpliftCurves:
    """The Qini and uplift curves of one ranking, read at every distinct score (and at 0).

    Attributes:
        fraction: Share of the population targeted, ``[0, ..., 1]`` (weighted, see the module docstring).
        qini: The Qini curve at each fraction, EUR per user of the population.
        uplift: The uplift curve at each fraction, EUR per user of the population.
        n_treated: Rows whose logged arm is the policy's choice.
        n_control: Rows whose logged arm is no coupon.
    """

    fraction: np.ndarray
    qini: np.ndarray
    uplift: np.ndarray
    n_treated: int
    n_control: int

    @property
    def qini_coefficient(self) -> float:
        """Area between the Qini curve and the random-targeting line (EUR per user)."""
        return qini_coefficient(self)

    @property
    def auuc(self) -> float:
        """Area under the uplift curve (EUR per user)."""
        return auuc(self)


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under ``y(x)``."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def qini_coefficient(curves: UpliftCurves) -> float:
    """Area between the Qini curve and the straight line from ``(0, 0)`` to ``(1, qini[-1])``.

    Args:
        curves: From :func:`uplift_curves`.

    Returns:
        EUR per user (times the unit of fraction): 0 for a ranking no better than random.
    """
    random = curves.fraction * curves.qini[-1]
    return _area(curves.fraction, curves.qini - random)


def auuc(curves: UpliftCurves) -> float:
    """Area under the uplift curve.

    Args:
        curves: From :func:`uplift_curves`.

    Returns:
        EUR per user (times the unit of fraction); random targeting gets about ``uplift[-1] / 2``.
    """
    return _area(curves.fraction, curves.uplift)


def _as_1d(name: str, values: np.ndarray, dtype: type) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one value per logged row); got shape {a.shape}")
    if dtype is bool:
        if a.dtype != bool:
            if not np.all(np.isin(a, (0, 1))):
                raise ValueError(f"{name} must be boolean (or 0/1); got values other than 0 and 1")
            a = a.astype(bool)
        return a
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; {int((~np.isfinite(a)).sum())} value(s) are NaN or infinite")
    return a


def uplift_curves(
    score: np.ndarray,
    treated: np.ndarray,
    control: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
) -> UpliftCurves:
    """The weighted Qini and uplift curves of ranking the logged rows by ``score``.

    Args:
        score: Per logged row, the policy's predicted incremental profit of its chosen coupon (higher: targeted
            first).
        treated: Per row, whether the logged arm is the policy's chosen coupon.
        control: Per row, whether the logged arm is no coupon. Rows neither treated nor control (another
            coupon was logged) are ignored.
        propensity: Per row, the logging policy's probability of the logged arm, in (0, 1].
        reward: Per row, the logged reward (EUR: ``revenue * margin - coupon cost``).

    Returns:
        The curves, read at 0 and after every distinct score (ties form one step).

    Raises:
        ValueError: Inputs not 1-d or of different lengths, non-finite scores, propensities or rewards, a
            propensity outside (0, 1], a row both treated and control, or no treated or no control row.
    """
    s = _as_1d("score", score, float)
    t = _as_1d("treated", treated, bool)
    c = _as_1d("control", control, bool)
    p = _as_1d("propensity", propensity, float)
    r = _as_1d("reward", reward, float)
    lengths = {"score": len(s), "treated": len(t), "control": len(c), "propensity": len(p), "reward": len(r)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have one value per logged row; got lengths {lengths}")
    if np.any((p <= 0) | (p > 1)):
        bad = p[(p <= 0) | (p > 1)]
        raise ValueError(f"propensity must be in (0, 1]; {len(bad)} value(s) are not, e.g. {bad[0]!r}")
    if np.any(t & c):
        raise ValueError(
            f"{int((t & c).sum())} row(s) are both treated and control: a row's logged arm is either the "
            "policy's chosen coupon or no coupon"
        )
    keep = t | c
    if not t.any() or not c.any():
        raise ValueError(
            f"need treated and control rows; got {int(t.sum())} treated and {int(c.sum())} control: the logs "
            "do not compare the policy's choice with no coupon"
        )
    s, t, c, w, r = s[keep], t[keep], c[keep], 1.0 / p[keep], r[keep]
    order = np.argsort(-s, kind="stable")
    s, t, w, r = s[order], t[order], w[order], r[order]
    wt, wc = np.where(t, w, 0.0), np.where(t, 0.0, w)
    # the last row of each run of equal scores
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    w_t, w_c = np.cumsum(wt)[ends], np.cumsum(wc)[ends]
    r_t, r_c = np.cumsum(wt * r)[ends], np.cumsum(wc * r)[ends]
    fraction = (w_t + w_c) / (w_t[-1] + w_c[-1])
    ratio = np.divide(w_t, w_c, out=np.zeros_like(w_t), where=w_c > 0)
    qini = (r_t - r_c * ratio) / w_t[-1]
    mean_t = np.divide(r_t, w_t, out=np.zeros_like(r_t), where=w_t > 0)
    mean_c = np.divide(r_c, w_c, out=np.zeros_like(r_c), where=w_c > 0)
    uplift = (mean_t - mean_c) * fraction
    return UpliftCurves(
        fraction=np.r_[0.0, fraction],
        qini=np.r_[0.0, qini],
        uplift=np.r_[0.0, uplift],
        n_treated=int(t.sum()),
        n_control=int(c.sum()),
    )
