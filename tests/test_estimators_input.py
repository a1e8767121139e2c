"""Off-policy estimators: bad input is refused with a message naming the argument; the weight diagnostics
(effective sample size, largest weight's share) and the bootstrap interval against hand computations."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from coupon_spark.evaluation import estimators
from coupon_spark.evaluation.estimators import (
    ArrayShapeError,
    Estimate,
    EstimatorInputError,
    InvalidValueError,
    LengthMismatchError,
    bootstrap_mean_difference,
    cross_fitted_cell_means,
    doubly_robust,
    dr_terms,
    ips,
    mean_estimate,
    snips,
)

# four logged decisions: reward, propensity of the logged action, target policy's probability of it
R = np.array([10.0, 0.0, 4.0, 2.0])
P = np.array([0.5, 0.25, 0.25, 0.5])
PI = np.array([1.0, 0.0, 1.0, 0.0])
Q_LOGGED = np.array([8.0, 1.0, 3.0, 2.0])
Q_TARGET = np.array([8.0, 5.0, 3.0, 6.0])


def _with(a: np.ndarray, i: int, v: float) -> np.ndarray:
    out = a.copy()
    out[i] = v
    return out


def _call(name: str, **override: Any) -> Any:
    kw: dict[str, Any] = {"reward": R, "target_prob": PI, "propensity": P}
    if name in ("doubly_robust", "dr_terms"):
        kw |= {"q_logged": Q_LOGGED, "q_target": Q_TARGET}
    fns: dict[str, Callable[..., Any]] = {
        "ips": ips,
        "snips": snips,
        "doubly_robust": doubly_robust,
        "dr_terms": dr_terms,
    }
    return fns[name](**(kw | override))


POLICY_ESTIMATORS = ["ips", "snips", "doubly_robust", "dr_terms"]

# (case, override, error class, message pattern)
BAD_ARRAYS = [
    ("lengths differ", {"propensity": P[:3]}, LengthMismatchError,
     r"^propensity: expected one value per logged decision, 4 like reward, found 3$"),
    ("length 1 would broadcast", {"propensity": np.array([0.5])}, LengthMismatchError,
     r"^propensity: .* 4 like reward, found 1 \(a length-1 array is not broadcast\)$"),
    ("(n, 1) column", {"target_prob": PI[:, None]}, ArrayShapeError,
     r"^target_prob: expected a 1-D array .* found shape \(4, 1\); flatten a column with \.ravel\(\)$"),
    ("scalar", {"propensity": 0.5}, ArrayShapeError, r"^propensity: expected a 1-D array .* found a scalar$"),
    ("NaN reward", {"reward": _with(R, 2, np.nan)}, InvalidValueError,
     r"^reward: expected a finite reward in every row, found nan at index 2 \(1 of 4 values bad\)"),
    ("infinite reward", {"reward": _with(R, 0, np.inf)}, InvalidValueError, r"^reward: .* found inf at index 0 "),
    ("non-numeric reward", {"reward": np.array(["a", "b", "c", "d"])}, InvalidValueError,
     r"^reward: expected numbers"),
    ("NaN target_prob", {"target_prob": _with(PI, 1, np.nan)}, InvalidValueError,
     r"^target_prob: expected a probability in \[0, 1\] in every row, found nan at index 1 \(1 of 4 values bad\)"),
    ("target_prob above 1", {"target_prob": _with(PI, 3, 1.5)}, InvalidValueError,
     r"^target_prob: expected a probability in \[0, 1\] .* found 1.5 at index 3 "),
    ("negative target_prob", {"target_prob": _with(PI, 0, -0.5)}, InvalidValueError,
     r"^target_prob: .* found -0.5 at index 0 "),
    ("propensity above 1", {"propensity": _with(P, 3, 1.5)}, InvalidValueError,
     r"^propensity: expected a propensity in \(0, 1\] in every row, found 1.5 at index 3 \(1 of 4 values bad\)"),
    ("infinite propensity", {"propensity": _with(P, 1, np.inf)}, InvalidValueError,
     r"^propensity: .* found inf at index 1 "),
    ("zero propensity", {"propensity": _with(P, 1, 0.0)}, InvalidValueError, r"^propensity: .* found 0.0 at index 1 "),
    ("negative propensity", {"propensity": np.array([0.5, -0.25, -0.25, 0.5])}, InvalidValueError,
     r"^propensity: .* found -0.25 at index 1 \(2 of 4 values bad\)"),
    ("NaN propensity", {"propensity": _with(P, 2, np.nan)}, InvalidValueError,
     r"^propensity: .* found nan at index 2 "),
]  # fmt: skip

BAD_DR = [
    ("NaN q_logged", {"q_logged": _with(Q_LOGGED, 1, np.nan)}, InvalidValueError,
     r"^q_logged: expected a finite model prediction in every row, found nan at index 1 "),
    ("q_target lengths differ", {"q_target": Q_TARGET[:2]}, LengthMismatchError,
     r"^q_target: .* 4 like reward, found 2$"),
]  # fmt: skip

BAD_SETTINGS = [
    ("confidence 0", {"confidence": 0.0}, r"^confidence: expected a level strictly between 0 and 1 .* found 0.0$"),
    ("confidence 1", {"confidence": 1}, r"^confidence: .* found 1$"),
    ("confidence 95", {"confidence": 95.0}, r"^confidence: .* found 95.0$"),
    ("confidence negative", {"confidence": -0.1}, r"^confidence: .* found -0.1$"),
    ("confidence NaN", {"confidence": float("nan")}, r"^confidence: .* found nan$"),
    ("bootstrap negative", {"bootstrap": -1}, r"^bootstrap: expected a whole number of resamples >= 0, found -1$"),
    ("bootstrap not whole", {"bootstrap": 2.5}, r"^bootstrap: .* found 2.5$"),
]


@pytest.mark.parametrize("name", POLICY_ESTIMATORS)
@pytest.mark.parametrize(("case", "override", "error", "pattern"), BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
def test_policy_estimators_refuse_bad_arrays(
    name: str, case: str, override: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern) as info:
        _call(name, **override)
    assert isinstance(info.value, EstimatorInputError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["doubly_robust", "dr_terms"])
@pytest.mark.parametrize(("case", "override", "error", "pattern"), BAD_DR, ids=[c[0] for c in BAD_DR])
def test_doubly_robust_refuses_bad_reward_model(
    name: str, case: str, override: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        _call(name, **override)


@pytest.mark.parametrize("name", ["ips", "snips", "doubly_robust"])
@pytest.mark.parametrize(("case", "override", "pattern"), BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_policy_estimators_refuse_bad_settings(name: str, case: str, override: dict[str, Any], pattern: str) -> None:
    with pytest.raises(InvalidValueError, match=pattern):
        _call(name, **override)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: mean_estimate(R[:, None]), ArrayShapeError, r"^terms: .* found shape \(4, 1\)"),
        (lambda: mean_estimate(_with(R, 3, np.nan)), InvalidValueError, r"^terms: .* found nan at index 3 "),
        (lambda: mean_estimate(R, confidence=1.5), InvalidValueError, r"^confidence: .* found 1.5$"),
        (lambda: mean_estimate(R, bootstrap=-2), InvalidValueError, r"^bootstrap: .* found -2$"),
        (lambda: bootstrap_mean_difference(R[:, None], R), ArrayShapeError, r"^treated: .* found shape \(4, 1\)"),
        (lambda: bootstrap_mean_difference(R, _with(R, 1, np.inf)), InvalidValueError, r"^control: .* found inf at"),
        (lambda: bootstrap_mean_difference(R, R, confidence=0.0), InvalidValueError, r"^confidence: .* found 0.0$"),
        (lambda: bootstrap_mean_difference(R, R, samples=0), InvalidValueError, r"^samples: .* >= 1, found 0$"),
        (
            lambda: cross_fitted_cell_means(
                pd.DataFrame({"a": ["x", None], "t": ["x", "x"], "r": [1.0, 2.0]}), np.array([0]), [], "a", "r", "t"
            ),
            ArrayShapeError,
            r"^folds: expected a 1-D array with one fold per row of frame \(2,\), found shape \(1,\)$",
        ),
    ],
    ids=["terms column", "terms NaN", "terms confidence", "terms bootstrap", "treated column", "control inf",
         "difference confidence", "difference samples", "folds length"],
)  # fmt: skip
def test_other_estimators_refuse_bad_input(call: Callable[[], Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_good_input_of_length_one_and_zero_still_works() -> None:
    one = ips(np.array([3.0]), np.array([1.0]), np.array([0.5]))
    assert (one.value, one.n, one.ess, one.max_weight_share) == (6.0, 1, 1.0, 1.0)
    assert math.isnan(one.se)
    assert math.isnan(snips(R[:0], PI[:0], P[:0]).value)
    assert math.isnan(doubly_robust(R[:0], PI[:0], P[:0], Q_LOGGED[:0], Q_TARGET[:0], bootstrap=10).value)
    assert ips(list(R), list(PI), list(P)).value == pytest.approx(9.0)  # plain lists are 1-D arrays too


# ---- weight diagnostics ---------------------------------------------------------------------------------------


def test_effective_sample_size_and_largest_share_by_hand() -> None:
    # w = PI / P = [2, 0, 4, 0]: sum 6, sum of squares 4 + 16 = 20; ESS = 36 / 20 = 1.8; largest share 4 / 6
    for e in (ips(R, PI, P), snips(R, PI, P), doubly_robust(R, PI, P, Q_LOGGED, Q_TARGET)):
        assert e.ess == pytest.approx(1.8)
        assert e.max_weight_share == pytest.approx(2 / 3)
        assert e.n == 4
    # equal weights: w = [2, 2, 2, 2]: ESS = 64 / 16 = 4 = n, largest share 1/4
    even = ips(R, np.ones(4), np.full(4, 0.5))
    assert (even.ess, even.max_weight_share) == pytest.approx((4.0, 0.25))
    # no logged action has target probability: no effective rows, no share, SNIPS undefined
    none = snips(R, np.zeros(4), P)
    assert none.ess == 0.0
    assert math.isnan(none.max_weight_share)
    assert math.isnan(none.value)
    # no weights behind a mean of terms
    assert math.isnan(mean_estimate(R).ess)


def test_estimate_stays_backwards_compatible() -> None:
    e = Estimate(1.0, 0.0, 2.0, 3)
    assert math.isnan(e.se) and math.isnan(e.ess) and math.isnan(e.bootstrap_low)
    d = ips(R, PI, P)
    assert math.isnan(d.bootstrap_low) and math.isnan(d.bootstrap_high)  # no bootstrap unless asked


# ---- bootstrap interval ---------------------------------------------------------------------------------------


def _hand_rolled(estimate: Callable[[np.ndarray], float], n: int, samples: int, seed: int) -> tuple[float, float]:
    """Percentile interval at 95%: resample b is the b-th ``rng.integers(0, n, size=n)``; undefined ones dropped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        v = estimate(rng.integers(0, n, size=n))
        if not math.isnan(v):
            values.append(v)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.parametrize("block_cells", [1 << 22, 8])  # one block; two resamples a block
def test_bootstrap_matches_a_hand_rolled_loop(monkeypatch: pytest.MonkeyPatch, block_cells: int) -> None:
    monkeypatch.setattr(estimators, "_BOOTSTRAP_BLOCK_CELLS", block_cells)
    cases: list[tuple[Estimate, Callable[[np.ndarray], float]]] = [
        (ips(R, PI, P, bootstrap=50, seed=3), lambda i: ips(R[i], PI[i], P[i]).value),
        (snips(R, PI, P, bootstrap=50, seed=3), lambda i: snips(R[i], PI[i], P[i]).value),
        (
            doubly_robust(R, PI, P, Q_LOGGED, Q_TARGET, bootstrap=50, seed=3),
            lambda i: doubly_robust(R[i], PI[i], P[i], Q_LOGGED[i], Q_TARGET[i]).value,
        ),
        (mean_estimate(R, bootstrap=50, seed=3), lambda i: mean_estimate(R[i]).value),
    ]
    for e, by_hand in cases:
        assert (e.bootstrap_low, e.bootstrap_high) == pytest.approx(_hand_rolled(by_hand, 4, 50, 3))
        assert e.bootstrap_low <= e.value <= e.bootstrap_high


def test_bootstrap_agrees_with_the_normal_interval_on_a_large_log() -> None:
    rng = np.random.default_rng(11)
    n = 4000
    p = rng.choice([0.2, 0.5], n)
    pi = (rng.random(n) < 0.5).astype(float)
    r = rng.normal(1.0, 1.0, n)
    for e in (ips(r, pi, p, bootstrap=400, seed=1), snips(r, pi, p, bootstrap=400, seed=1)):
        assert e.bootstrap_low < e.value < e.bootstrap_high
        assert e.bootstrap_high - e.bootstrap_low == pytest.approx(e.ci_high - e.ci_low, rel=0.15)
