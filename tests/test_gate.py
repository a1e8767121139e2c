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


class _FixedModel:
    """A stand-in for the model with hand-set predictions (the numpy scorer's interface), so that every
    number of :func:`best_option_gains` can be worked out by hand."""

    def __init__(self, p: list[list[float]], p_none: list[float], p_redeem: list[list[float]]):
        self.p, self.p_none, self.p_redeem = np.array(p), np.array(p_none), np.array(p_redeem)

    def user_embed(self, users):  # type: ignore[no-untyped-def]
        return np.zeros((len(users), 1))

    def coupon_embed(self, coupons):  # type: ignore[no-untyped-def]
        return np.zeros((len(coupons), 1))

    def predict(self, u, c):  # type: ignore[no-untyped-def]
        return {
            "p_purchase": self.p,
            "p_purchase_none": self.p_none,
            "p_redeem": self.p_redeem,
            "uplift": self.p - self.p_none[:, None],
        }


def test_best_option_gains_by_hand_and_exploration_support():
    import datetime as dt

    import pandas as pd

    from coupon_spark.config import ScoreConfig
    from coupon_spark.model.gate import best_option_gains

    day = dt.date(2026, 11, 10)
    coupons = pd.DataFrame(
        {"coupon_id": ["B", "A"], "campaign_id": ["k", "k"], "cf_cost": [2.0, 1.0], "cf_min_spend": [0.0, 0.0]}
    )  # sorted to A, B by the scorer's coupon order
    rows = pd.DataFrame(
        {
            "issue_date": [day] * 3,
            "user_id": ["u0", "u1", "u2"],
            "coupon_id": ["A", None, "A"],
            "propensity": [0.25, 0.5, 0.5],
            "revenue_eur": [50.0, 0.0, 0.0],
            "coupon_cost_eur": [1.0, 0.0, 0.0],
            "uf_avg_basket_90d": [100.0, 100.0, 100.0],  # margin 0.3 -> 30 EUR of profit per purchase
        }
    )
    model = _FixedModel(
        p=[[0.2, 0.1], [0.2, 0.1], [0.1, 0.3]], p_none=[0.1, 0.1, 0.1], p_redeem=[[0.1, 0.05], [0.1, 0.05], [0.05, 0.2]]
    )
    cfg = ScoreConfig(margin_rate=0.3)
    # u0, u1: mu_A = 0.2*30 - 0.1*1 = 5.9, mu_B = 3 - 0.1 = 2.9, mu_none = 3 -> best A, S = 2.9
    # u2: mu_A = 3 - 0.05 = 2.95, mu_B = 9 - 0.4 = 8.6 -> best B, S = 5.6
    # u0 logged A (p 0.25), reward 50*0.3 - 1 = 14: 2.9 + (14 - 5.9)/0.25 = 35.3
    # u1 logged none (p 0.5), reward 0: 2.9 - (0 - 3)/0.5 = 8.9;  u2 logged A (not its best): 8.6 - 3 = 5.6
    s, g = best_option_gains(model, rows, {day: coupons}, cfg)
    np.testing.assert_allclose(s, [2.9, 2.9, 5.6])
    np.testing.assert_allclose(g, [35.3, 8.9, 5.6])
    # u2 was explored among {A} only: the logs cannot say what B would have done, so the row goes
    s2, g2 = best_option_gains(model, rows, {day: coupons}, cfg, options={(day, "u2"): frozenset({"A"})})
    np.testing.assert_allclose(s2, [2.9, 2.9])
    np.testing.assert_allclose(g2, [35.3, 8.9])
    # ... but stays when B was one of its options
    s3, _ = best_option_gains(model, rows, {day: coupons}, cfg, options={(day, "u2"): frozenset({"A", "B"})})
    assert len(s3) == 3


def test_too_few_rows_keep_the_gate_closed():
    g = choose_threshold(np.array([1.0, 2.0]), np.array([5.0, 5.0]), 0.95)
    assert not g.is_open and g.rows == 2 and "fewer than" in g.describe()
