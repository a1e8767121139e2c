"""The decision gate: the doubly robust gain by hand, its unbiasedness against a simulated truth, and the
threshold choice on constructed gains."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coupon_spark.model.gate import NO_GATE, Gate, choose_threshold, dr_gain


def test_dr_gain_by_hand():
    # row 0: logged the best coupon (p=0.1), reward 5, mu_best 2, mu_none 1 -> (2-1) + (5-2)/0.1 = 31
    # row 1: logged none (p=0.5), reward 4, mu_best 2, mu_none 1 -> (2-1) - (4-1)/0.5 = -5
    # row 2: logged another coupon: only the model part, 3 - 1 = 2
    got = dr_gain(
        mu_best=np.array([2.0, 2.0, 3.0]),
        mu_none=np.array([1.0, 1.0, 1.0]),
        reward=np.array([5.0, 4.0, 9.0]),
        propensity=np.array([0.1, 0.5, 0.2]),
        logged_best=np.array([True, False, False]),
        logged_none=np.array([False, True, False]),
    )
    np.testing.assert_allclose(got, [31.0, -5.0, 2.0])


def test_dr_gain_is_unbiased_whatever_the_reward_model():
    """A simulated randomised log with a known truth: the mean DR gain of "best coupon" matches the true gain
    within its standard error, with a reward model that is badly wrong."""
    rng = np.random.default_rng(0)
    n, arms = 200_000, 4  # arm 0 = none
    x = rng.normal(size=n)
    true_value = np.stack([np.zeros(n), 0.5 * x, -0.3 + 0 * x, 0.2 - 0.4 * x], axis=1) + 2.0
    best = np.argmax(true_value[:, 1:], axis=1) + 1  # the policy under test: the truly best coupon
    p = np.array([0.4, 0.2, 0.2, 0.2])
    logged = rng.choice(arms, size=n, p=p)
    reward = true_value[np.arange(n), logged] + rng.normal(scale=3.0, size=n)
    wrong_mu = np.full((n, arms), 1.0)  # ignores x and the arms
    rows = np.arange(n)
    g = dr_gain(wrong_mu[rows, best], wrong_mu[:, 0], reward, p[logged], logged == best, logged == 0)
    truth = float(np.mean(true_value[rows, best] - true_value[:, 0]))
    se = g.std() / math.sqrt(n)
    assert abs(g.mean() - truth) < 3 * se
    assert se < 0.05  # the check has power


def test_threshold_opens_where_the_top_scores_pay_and_stays_closed_on_noise():
    rng = np.random.default_rng(1)
    n = 20_000
    score = rng.normal(size=n)
    # coupons pay (+2 EUR) only for the top 10% of scores, and cost 1 EUR elsewhere; noisy per-row gains
    top = score > np.quantile(score, 0.9)
    gain = np.where(top, 2.0, -1.0) + rng.normal(scale=2.0, size=n)
    gate = choose_threshold(score, gain, confidence=0.95)
    assert gate.is_open and gate.lower > 0
    # candidates: 0 and the 0.5/0.75/0.9/0.95 quantiles of the positive half of the scores, i.e. the top 50%,
    # 25%, 12.5%, 5%, 2.5%. Expected gains: 0.1*2 - (share-0.1)*1 for shares above 10%, else share*2:
    # -0.2, 0.05, 0.175, 0.1, 0.05 -> the top 12.5% (the 0.75 quantile of the positive scores)
    assert gate.threshold == pytest.approx(np.quantile(score[score > 0], 0.75))
    assert gate.gain == pytest.approx(0.175, abs=0.03) and gate.share_issued == pytest.approx(0.125, abs=0.002)
    assert gate.rows == n and len(gate.curve) == 5
    # the same scores with gains that are pure noise around a loss: closed, and says so
    noise = choose_threshold(score, -0.1 + rng.normal(scale=2.0, size=n), confidence=0.95)
    assert not noise.is_open and math.isinf(noise.threshold) and noise.lower < 0
    assert "closed" in noise.describe()
    # nothing to test on: closed
    assert not choose_threshold(np.zeros(0), np.zeros(0), 0.95).is_open


def test_gate_json_round_trip_keeps_a_closed_gate_closed():
    closed = choose_threshold(np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0]), 0.95)
    obj = closed.to_json()
    assert obj["threshold"] is None and obj["open"] is False
    back = Gate.from_json(obj)
    assert math.isinf(back.threshold) and back.rows == 3
    assert Gate.from_json(NO_GATE.to_json()).threshold == 0.0
    opened = Gate(1.5, 0.2, 0.1, 0.05, 100, 0.95)
    assert Gate.from_json(opened.to_json()).threshold == pytest.approx(1.5)
