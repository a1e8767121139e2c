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

Every function takes plain 1-D numpy arrays and returns an :class:`Estimate`, so the tests can check them
against numbers worked out by hand. Inputs are checked before anything is computed: arrays of different
lengths (a length-1 array is not broadcast), arrays that are not 1-D, NaN or infinite values, propensities
outside ``(0, 1]``, target probabilities outside ``[0, 1]`` and a ``confidence`` outside ``(0, 1)`` raise an
:class:`EstimatorInputError` (a ``ValueError``) that names the argument, the first bad index and value, and
what was expected.

The weighted estimators also report how far a few heavy weights dominate: the effective sample size
``(sum w)^2 / sum w^2`` (``n`` for equal weights, 1 when one row carries all the weight) and the largest
weight's share of ``sum w``. The normal interval is unreliable when the effective sample size is small;
``bootstrap=B`` adds a percentile interval from ``B`` resamples of the rows (the reward model of DR is held
fixed: it is not refitted on each resample).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import norm

from coupon_spark.errors import InputError

# the bootstrap draws its row indices in blocks of about this many cells, whatever the number of resamples
_BOOTSTRAP_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval at ``confidence`` and the number of rows behind it.

    Attributes:
        value: The estimate.
        ci_low: Lower end of the (normal) interval.
        ci_high: Upper end of the (normal) interval.
        n: Rows behind the estimate.
        se: Standard error of ``value`` (NaN when unknown).
        ess: Effective sample size of the importance weights, ``(sum w)^2 / sum w^2``; 0 when every weight is 0,
            NaN for estimators without weights. Far below ``n``: a few rows dominate, trust the bootstrap
            interval (if any) more than the normal one.
        max_weight_share: The largest weight's share of ``sum w`` (NaN without weights or when ``sum w = 0``).
        bootstrap_low: Lower end of the percentile bootstrap interval (NaN unless one was asked for).
        bootstrap_high: Upper end of the percentile bootstrap interval (NaN unless one was asked for).
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    se: float = float("nan")
    ess: float = float("nan")
    max_weight_share: float = float("nan")
    bootstrap_low: float = float("nan")
    bootstrap_high: float = float("nan")

    @classmethod
    def normal(cls, value: float, se: float, n: int, confidence: float) -> Estimate:
        z = float(norm.ppf(0.5 + confidence / 2))
        return cls(float(value), float(value - z * se), float(value + z * se), int(n), float(se))

    @classmethod
    def empty(cls) -> Estimate:
        nan = float("nan")
        return cls(nan, nan, nan, 0, nan)


# ---- input checks ---------------------------------------------------------------------------------------------


class EstimatorInputError(InputError, ValueError):
    """An estimator's input is unusable; the message names the argument, what was found and what is expected."""


class ArrayShapeError(EstimatorInputError):
    """An input is not a 1-D array with one value per logged decision."""


class LengthMismatchError(EstimatorInputError):
    """Inputs that must have one value per logged decision have different lengths."""


class InvalidValueError(EstimatorInputError):
    """An input holds a NaN, an infinite or an out-of-range value (or ``confidence``/``bootstrap`` is invalid)."""


@dataclass(frozen=True)
class _Rule:
    """The values an array may hold: finite, in ``[low, high]`` (``(low, high]`` when ``low_open``)."""

    expected: str
    hint: str = ""
    low: float = -np.inf
    high: float = np.inf
    low_open: bool = False

    def bad(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            below = (x <= self.low) if self.low_open else (x < self.low)
            return ~np.isfinite(x) | below | (x > self.high)


_REWARD = _Rule("a finite reward", "drop or fill the rows without an observed reward")
_MODEL = _Rule("a finite model prediction", "check the reward model")
_TERMS = _Rule("a finite number", "drop the rows that produced it")
_TARGET = _Rule(
    "a probability in [0, 1]", "pass pi(a_i | x_i), the target policy's probability of the logged action", 0.0, 1.0
)
_PROPENSITY = _Rule(
    "a propensity in (0, 1]",
    "a randomised log gives every logged action a probability > 0 and <= 1 (a percentage, or 1 / propensity?)",
    0.0,
    1.0,
    low_open=True,
)


def _as_1d(name: str, x: ArrayLike) -> np.ndarray:
    try:
        a = np.asarray(x, np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidValueError(f"{name}: expected numbers, found values that are not ({err})") from None
    if a.ndim != 1:
        found = "a scalar" if a.ndim == 0 else f"shape {a.shape}"
        hint = "; flatten a column with .ravel()" if a.ndim == 2 and 1 in a.shape else ""
        raise ArrayShapeError(f"{name}: expected a 1-D array with one value per logged decision, found {found}{hint}")
    return a


def _check_confidence(confidence: float) -> None:
    c = confidence
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or not 0 < float(c) < 1:
        raise InvalidValueError(f"confidence: expected a level strictly between 0 and 1 (e.g. 0.95), found {c!r}")


def _check_samples(name: str, samples: int, minimum: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < minimum:
        raise InvalidValueError(f"{name}: expected a whole number of resamples >= {minimum}, found {samples!r}")


def _validated(
    arrays: dict[str, tuple[ArrayLike, _Rule]], confidence: float | None = None, same_length: bool = True
) -> list[np.ndarray]:
    """The arrays as 1-D float64, after checking ``confidence``, shapes, lengths and values, in that order.

    Raises:
        InvalidValueError: ``confidence`` outside ``(0, 1)``, non-numeric input, or a value its rule refuses.
        ArrayShapeError: An array that is not 1-D (a scalar, or an ``(n, 1)`` column).
        LengthMismatchError: Arrays of different lengths (when ``same_length``).
    """
    if confidence is not None:
        _check_confidence(confidence)
    out = [_as_1d(name, x) for name, (x, _) in arrays.items()]
    names = list(arrays)
    if same_length:
        for name, a in zip(names[1:], out[1:], strict=True):
            if len(a) != len(out[0]):
                note = " (a length-1 array is not broadcast)" if 1 in (len(a), len(out[0])) else ""
                raise LengthMismatchError(
                    f"{name}: expected one value per logged decision, {len(out[0])} like {names[0]}, found "
                    f"{len(a)}{note}"
                )
    for name, a, (_, rule) in zip(names, out, arrays.values(), strict=True):
        bad = rule.bad(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            count = int(bad.sum())
            raise InvalidValueError(
                f"{name}: expected {rule.expected} in every row, found {float(a[i])!r} at index {i} "
                f"({count} of {len(a)} values bad); {rule.hint}"
            )
    return out


# ---- estimators -----------------------------------------------------------------------------------------------


def _mean_se(terms: np.ndarray) -> tuple[float, float]:
    n = len(terms)
    mean = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def _weight_diagnostics(w: np.ndarray) -> tuple[float, float]:
    """Effective sample size ``(sum w)^2 / sum w^2`` and the largest weight's share of ``sum w`` (weights >= 0)."""
    total, squares = float(w.sum()), float((w * w).sum())
    if total <= 0:
        return 0.0, float("nan")
    return total * total / squares, float(w.max()) / total


def _bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over ``samples`` resamples of ``n`` rows with replacement.

    ``statistic`` maps a ``(k, n)`` array of row indices (one resample a row) to the ``k`` estimates. Resample
    ``b`` is the ``b``-th draw of ``rng.integers(0, n, size=n)`` from ``np.random.default_rng(seed)``; the draws
    are made in blocks to bound memory. Resamples whose estimate is undefined (NaN) are left out; ``(nan, nan)``
    when ``samples`` is 0 or no resample has an estimate.
    """
    nan = float("nan")
    if samples == 0:
        return nan, nan
    rng = np.random.default_rng(seed)
    stats = np.empty(samples)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    for start in range(0, samples, block):
        k = min(block, samples - start)
        stats[start : start + k] = statistic(rng.integers(0, n, size=(k, n)))
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return nan, nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _reported(
    e: Estimate, w: np.ndarray | None = None, boot: tuple[float, float] = (float("nan"), float("nan"))
) -> Estimate:
    """``e`` with the weight diagnostics of ``w`` (if given) and the bootstrap interval ``boot``."""
    ess, share = _weight_diagnostics(w) if w is not None else (float("nan"), float("nan"))
    return dataclasses.replace(e, ess=ess, max_weight_share=share, bootstrap_low=boot[0], bootstrap_high=boot[1])


def _mean_of_resamples(terms: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda idx: terms[idx].mean(axis=1)


def _policy_inputs(
    reward: ArrayLike,
    target_prob: ArrayLike,
    propensity: ArrayLike,
    confidence: float | None,
    bootstrap: int,
    **models: ArrayLike,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Checked ``reward`` and weights ``w = target_prob / propensity`` (and the checked reward-model arrays)."""
    _check_samples("bootstrap", bootstrap, 0)
    arrays = {
        "reward": (reward, _REWARD),
        "target_prob": (target_prob, _TARGET),
        "propensity": (propensity, _PROPENSITY),
    }
    arrays |= {name: (x, _MODEL) for name, x in models.items()}
    r, pi, p, *rest = _validated(arrays, confidence)
    return r, pi / p, rest


def ips(
    reward: ArrayLike,
    target_prob: ArrayLike,
    propensity: ArrayLike,
    confidence: float = 0.95,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: ``mean(w_i r_i)`` (see the module docstring).

    Args:
        reward: Observed rewards ``r_i`` (finite).
        target_prob: ``pi(a_i | x_i)``, in ``[0, 1]``.
        propensity: ``p_i``, in ``(0, 1]``.
        confidence: Interval level, in ``(0, 1)``.
        bootstrap: Resamples for a percentile bootstrap interval (0: none).
        seed: Seed of the bootstrap.

    Raises:
        EstimatorInputError: See the module docstring.
    """
    r, w, _ = _policy_inputs(reward, target_prob, propensity, confidence, bootstrap)
    if len(r) == 0:
        return Estimate.empty()
    terms = w * r
    mean, se = _mean_se(terms)
    boot = _bootstrap_interval(_mean_of_resamples(terms), len(r), bootstrap, confidence, seed)
    return _reported(Estimate.normal(mean, se, len(terms), confidence), w, boot)


def snips(
    reward: ArrayLike,
    target_prob: ArrayLike,
    propensity: ArrayLike,
    confidence: float = 0.95,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: ``sum(w_i r_i) / sum(w_i)``; NaN when no logged action has target probability.

    Arguments as :func:`ips`; resamples in which no logged action has target probability are left out of the
    bootstrap interval.
    """
    r, w, _ = _policy_inputs(reward, target_prob, propensity, confidence, bootstrap)
    if len(r) == 0:
        return Estimate.empty()
    n = len(r)
    if w.sum() <= 0:
        return _reported(Estimate(float("nan"), float("nan"), float("nan"), n), w)
    value = float((w * r).sum() / w.sum())
    se = float(np.sqrt(np.var(w * (r - value), ddof=1) / n) / w.mean()) if n > 1 else float("nan")
    wr = w * r

    def ratio(idx: np.ndarray) -> np.ndarray:
        num, den = wr[idx].sum(axis=1), w[idx].sum(axis=1)
        return np.divide(num, den, out=np.full(len(idx), np.nan), where=den > 0)

    boot = _bootstrap_interval(ratio, n, bootstrap, confidence, seed)
    return _reported(Estimate.normal(value, se, n, confidence), w, boot)


def doubly_robust(
    reward: ArrayLike,
    target_prob: ArrayLike,
    propensity: ArrayLike,
    q_logged: ArrayLike,
    q_target: ArrayLike,
    confidence: float = 0.95,
    bootstrap: int = 0,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: ``mean(q_target_i + w_i (r_i - q_logged_i))``.

    Args:
        reward: Observed rewards ``r_i`` (finite).
        target_prob: ``pi(a_i | x_i)``, in ``[0, 1]``.
        propensity: ``p_i``, in ``(0, 1]``.
        q_logged: ``qhat(x_i, a_i)``: the reward model at the logged action (finite).
        q_target: ``qhat_pi(x_i)``: the reward model's value of the target policy at ``x_i`` (finite).
        confidence: Interval level, in ``(0, 1)``.
        bootstrap: Resamples for a percentile bootstrap interval (0: none); the reward model is held fixed.
        seed: Seed of the bootstrap.

    Raises:
        EstimatorInputError: See the module docstring.
    """
    r, w, (q_log, q_tgt) = _policy_inputs(
        reward, target_prob, propensity, confidence, bootstrap, q_logged=q_logged, q_target=q_target
    )
    if len(r) == 0:
        return Estimate.empty()
    terms = q_tgt + w * (r - q_log)
    mean, se = _mean_se(terms)
    boot = _bootstrap_interval(_mean_of_resamples(terms), len(r), bootstrap, confidence, seed)
    return _reported(Estimate.normal(mean, se, len(terms), confidence), w, boot)


def dr_terms(
    reward: ArrayLike, target_prob: ArrayLike, propensity: ArrayLike, q_logged: ArrayLike, q_target: ArrayLike
) -> np.ndarray:
    """The per-row terms of :func:`doubly_robust` (the difference of two policies' terms gives the interval of
    their difference); inputs are checked as there."""
    r, w, (q_log, q_tgt) = _policy_inputs(
        reward, target_prob, propensity, None, 0, q_logged=q_logged, q_target=q_target
    )
    return q_tgt + w * (r - q_log)


def mean_estimate(terms: ArrayLike, confidence: float = 0.95, bootstrap: int = 0, seed: int = 0) -> Estimate:
    """The mean of per-row terms (finite, 1-D) with a normal interval, and a bootstrap one if ``bootstrap``."""
    _check_samples("bootstrap", bootstrap, 0)
    (t,) = _validated({"terms": (terms, _TERMS)}, confidence)
    if len(t) == 0:
        return Estimate.empty()
    mean, se = _mean_se(t)
    boot = _bootstrap_interval(_mean_of_resamples(t), len(t), bootstrap, confidence, seed)
    return _reported(Estimate.normal(mean, se, len(t), confidence), None, boot)


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
    folds = np.asarray(folds)
    if folds.shape != (len(frame),):
        raise ArrayShapeError(
            f"folds: expected a 1-D array with one fold per row of frame ({len(frame)},), found shape {folds.shape}"
        )
    none = "\x00none"
    df = frame[[*cell, reward]].copy()
    df["_a"] = frame[action].fillna(none).astype(str).to_numpy()
    df["_t"] = frame[target_action].fillna(none).astype(str).to_numpy()
    q_logged = np.full(len(df), np.nan)
    q_target = np.full(len(df), np.nan)
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
    treated: ArrayLike, control: ArrayLike, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """``mean(treated) - mean(control)`` with a percentile bootstrap interval (each arm resampled on its own).

    NaN when either arm is empty. The arms are 1-D and finite (their lengths may differ); ``samples >= 1``.
    """
    _check_samples("samples", samples, 1)
    t, c = _validated({"treated": (treated, _TERMS), "control": (control, _TERMS)}, confidence, same_length=False)
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
    return Estimate(
        float(t.mean() - c.mean()),
        float(lo),
        float(hi),
        len(t) + len(c),
        float(diffs.std(ddof=1)) if samples > 1 else float("nan"),
    )
