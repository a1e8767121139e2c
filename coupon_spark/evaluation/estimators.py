"""Estimators of a policy's value from logged, randomised decisions, and a bootstrap for arm differences.

Notation: ``n`` logged decisions ``i`` with context ``x_i``, logged action ``a_i`` chosen with probability
``p_i`` (the logging policy's propensity), observed reward ``r_i``; the target policy gives the logged action
the probability ``pi_i = pi(a_i | x_i)`` (1 or 0 for a deterministic policy); ``w_i = pi_i / p_i``.

- IPS: ``V = mean(w_i r_i)``; interval: normal, with the sample standard deviation of ``w_i r_i``.
- Self-normalised IPS: ``V = sum(w_i r_i) / sum(w_i)``; interval: normal, by the delta method, with
  ``se^2 = var(w_i (r_i - V)) / (n mean(w)^2)``.
- Doubly robust: ``V = mean(qhat_pi(x_i) + w_i (r_i - qhat(x_i, a_i)))`` with a reward model ``qhat`` and
  ``qhat_pi(x) = sum_a pi(a | x) qhat(x, a)``; interval: normal on the per-row terms. Unbiased when either the
  propensities or the reward model are right; the propensities of a randomised log are known exactly, so
  ``qhat`` only has to reduce the variance. :func:`cross_fitted_cell_means` is such a model, cross-fitted so
  that no row's own reward enters its prediction.

Every function takes plain numpy arrays and returns an :class:`Estimate`, so the tests can check them against
numbers worked out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval at ``confidence`` and the number of rows behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    se: float = float("nan")

    @classmethod
    def normal(cls, value: float, se: float, n: int, confidence: float) -> Estimate:
        z = float(norm.ppf(0.5 + confidence / 2))
        return cls(float(value), float(value - z * se), float(value + z * se), int(n), float(se))

    @classmethod
    def empty(cls) -> Estimate:
        nan = float("nan")
        return cls(nan, nan, nan, 0, nan)


def _weights(target_prob: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    p = np.asarray(propensity, np.float64)
    if np.any(~(p > 0)):
        raise ValueError("every logged propensity must be > 0 (a randomised log); found zero, negative or NaN")
    return np.asarray(target_prob, np.float64) / p


def _mean_se(terms: np.ndarray) -> tuple[float, float]:
    n = len(terms)
    mean = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def ips(reward: np.ndarray, target_prob: np.ndarray, propensity: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Inverse propensity scoring: ``mean(w_i r_i)`` (see the module docstring)."""
    if len(reward) == 0:
        return Estimate.empty()
    terms = _weights(target_prob, propensity) * np.asarray(reward, np.float64)
    mean, se = _mean_se(terms)
    return Estimate.normal(mean, se, len(terms), confidence)


def snips(reward: np.ndarray, target_prob: np.ndarray, propensity: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Self-normalised IPS: ``sum(w_i r_i) / sum(w_i)``; NaN when no logged action has target probability."""
    if len(reward) == 0:
        return Estimate.empty()
    w = _weights(target_prob, propensity)
    r = np.asarray(reward, np.float64)
    if w.sum() <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(r))
    value = float((w * r).sum() / w.sum())
    n = len(r)
    se = float(np.sqrt(np.var(w * (r - value), ddof=1) / n) / w.mean()) if n > 1 else float("nan")
    return Estimate.normal(value, se, n, confidence)


def doubly_robust(
    reward: np.ndarray,
    target_prob: np.ndarray,
    propensity: np.ndarray,
    q_logged: np.ndarray,
    q_target: np.ndarray,
    confidence: float = 0.95,
) -> Estimate:
    """Doubly robust: ``mean(q_target_i + w_i (r_i - q_logged_i))``.

    Args:
        reward: Observed rewards ``r_i``.
        target_prob: ``pi(a_i | x_i)``.
        propensity: ``p_i``.
        q_logged: ``qhat(x_i, a_i)``: the reward model at the logged action.
        q_target: ``qhat_pi(x_i)``: the reward model's value of the target policy at ``x_i``.
        confidence: Interval level.
    """
    if len(reward) == 0:
        return Estimate.empty()
    w = _weights(target_prob, propensity)
    terms = np.asarray(q_target, np.float64) + w * (np.asarray(reward, np.float64) - np.asarray(q_logged, np.float64))
    mean, se = _mean_se(terms)
    return Estimate.normal(mean, se, len(terms), confidence)


def dr_terms(
    reward: np.ndarray, target_prob: np.ndarray, propensity: np.ndarray, q_logged: np.ndarray, q_target: np.ndarray
) -> np.ndarray:
    """The per-row terms of :func:`doubly_robust` (the difference of two policies' terms gives the interval of
    their difference)."""
    w = _weights(target_prob, propensity)
    return np.asarray(q_target, np.float64) + w * (np.asarray(reward, np.float64) - np.asarray(q_logged, np.float64))


def mean_estimate(terms: np.ndarray, confidence: float = 0.95) -> Estimate:
    """The mean of per-row terms with a normal interval."""
    if len(terms) == 0:
        return Estimate.empty()
    mean, se = _mean_se(np.asarray(terms, np.float64))
    return Estimate.normal(mean, se, len(terms), confidence)


def cross_fitted_cell_means(
    frame: pd.DataFrame, folds: np.ndarray, cell: list[str], action: str, reward: str, target_action: str
) -> tuple[np.ndarray, np.ndarray]:
    """A reward model for :func:`doubly_robust`: the mean reward of the (action, ``cell``) group, learnt on the
    other folds (falling back to the action's mean, then to the overall mean, of the other folds).

    Args:
        frame: One row per logged decision.
        folds: Fold number of each row (e.g. a hash of its id modulo 2).
        cell: Context columns that define the groups (may be empty).
        action: The logged action column (null = no coupon).
        reward: The reward column.
        target_action: The target policy's action column (a deterministic policy).

    Returns:
        ``(q_logged, q_target)``: the model at the logged action and at the target action, for every row.
    """
    none = "\x00none"
    df = frame[[*cell, reward]].copy()
    df["_a"] = frame[action].fillna(none).astype(str).to_numpy()
    df["_t"] = frame[target_action].fillna(none).astype(str).to_numpy()
    q_logged = np.full(len(df), np.nan)
    q_target = np.full(len(df), np.nan)
    folds = np.asarray(folds)
    for f in np.unique(folds):
        test = folds == f
        train = df[~test] if (~test).any() else df[test]  # one fold only: in-sample (tiny logs)
        overall = float(train[reward].mean())
        by_action = train.groupby("_a")[reward].mean()
        by_cell = train.groupby([*cell, "_a"])[reward].mean() if cell else by_action
        part = df[test]
        for col, out in (("_a", q_logged), ("_t", q_target)):
            keys = list(zip(*[part[c] for c in cell], part[col], strict=True)) if cell else list(part[col])
            cell_v = by_cell.reindex(pd.MultiIndex.from_tuples(keys) if cell else keys).to_numpy()
            act_v = by_action.reindex(part[col]).to_numpy()
            out[test] = np.where(np.isnan(cell_v), np.where(np.isnan(act_v), overall, act_v), cell_v)
    return q_logged, q_target


def bootstrap_mean_difference(
    treated: np.ndarray, control: np.ndarray, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """``mean(treated) - mean(control)`` with a percentile bootstrap interval (each arm resampled on its own).

    NaN when either arm is empty.
    """
    t = np.asarray(treated, np.float64)
    c = np.asarray(control, np.float64)
    if len(t) == 0 or len(c) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(t) + len(c))
    rng = np.random.default_rng(seed)
    # resampling an arm = drawing multinomial counts over its rows; the mean is counts . values / n
    diffs = np.empty(samples)
    for b in range(samples):
        diffs[b] = (rng.multinomial(len(t), np.full(len(t), 1 / len(t))) @ t) / len(t) - (
            rng.multinomial(len(c), np.full(len(c), 1 / len(c))) @ c
        ) / len(c)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return Estimate(float(t.mean() - c.mean()), float(lo), float(hi), len(t) + len(c), float(diffs.std(ddof=1)))
