"""The decision gate: the doubly robust gain by hand, its unbiasedness against a simulated truth, the threshold
chosen on one part and confirmed on the other, its level on null logs (one test, and a loop of tests on
overlapping logs), the alpha spending, the folds, and decision files old and new."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from coupon_spark.model.gate import (
    MIN_EFFECTIVE_ROWS,
    NO_GATE,
    Gate,
    alpha_of_test,
    alpha_spent,
    best_threshold,
    chunk_ids,
    decide,
    dr_gain,
    fold_ids,
    monitors,
    next_test_index,
    threshold_curve,
)


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


def test_a_policy_with_a_real_gain_opens_each_chunk_judged_at_the_threshold_chosen_before_it():
    rng = np.random.default_rng(1)
    n = 40_000
    score = rng.normal(size=n)
    # coupons pay (+2 EUR) only for the top 10% of scores, and cost 1 EUR elsewhere; noisy per-row gains
    top = score > np.quantile(score, 0.9)
    gain = np.where(top, 2.0, -1.0) + rng.normal(scale=2.0, size=n)
    chunk = rng.integers(0, 10, size=n)
    gate = decide(score, gain, chunk, confidence=0.95, test_index=1, folds=5)
    assert gate.is_open and gate.lower > 0 and gate.mode == "test"
    # candidates: 0 and the 0.5/0.75/0.9/0.95 quantiles of the positive half of the scores, i.e. the top 50%,
    # 25%, 12.5%, 5%, 2.5%. Expected gains: 0.1*2 - (share-0.1)*1 for shares above 10%, else share*2:
    # -0.2, 0.05, 0.175, 0.1, 0.05. Standard errors on all 40,000 rows (E[g^2] = 8 on the top, 5 below it), e.g.
    # share 0.125: sqrt(0.1*8 + 0.025*5 - 0.175^2) / sqrt(40000) = 0.0047, and bounds at z = 1.96:
    # -0.2 - 1.96*0.0083 = -0.216, 0.05 - 1.96*0.0062 = 0.038, 0.175 - 1.96*0.0047 = 0.166,
    # 0.1 - 1.96*0.0031 = 0.094, 0.05 - 1.96*0.0022 = 0.046; test statistics 26, 22.7 and 16 for the top
    # 12.5%, 5% and 2.5%: the published threshold is the top 12.5%'s
    assert [c["lower"] for c in gate.curve] == pytest.approx([-0.216, 0.038, 0.166, 0.094, 0.046], abs=0.025)
    assert gate.selected_threshold == gate.threshold == np.quantile(score[score > 0], 0.75)
    # by hand: chunk j's rows at the threshold chosen on chunks 0..j-1, each chunk centred on its own mean
    terms, centred, chosen = [], [], []
    for j in range(1, 10):
        past, now = chunk < j, chunk == j
        chosen.append(best_threshold(threshold_curve(score[past], gain[past], 1.959964)))
        x = np.where(score[now] > chosen[-1], gain[now], 0.0)
        terms.append(x)
        centred.append(x - x.mean())
    x, d = np.concatenate(terms), np.concatenate(centred)
    assert gate.part_thresholds == pytest.approx(chosen)
    assert gate.gain == pytest.approx(x.mean()) and gate.se == pytest.approx(np.sqrt(np.sum(d * d)) / len(x))
    # the choices on 4,000+ rows are mostly the top 12.5% (else the top 5%): the gain is near 0.175
    assert 0.14 < gate.gain < 0.2 and gate.se == pytest.approx(0.0050, abs=0.0005)
    assert gate.lower == pytest.approx(gate.gain - 1.959964 * gate.se)
    assert gate.rows_selection == (chunk == 0).sum() and gate.rows_confirmation == n - (chunk == 0).sum()
    assert (gate.folds, gate.test_index, gate.alpha, gate.alpha_spent) == (
        5,
        1,
        pytest.approx(0.025),
        pytest.approx(0.025),
    )
    assert "open above" in gate.describe() and "test 1 of the loop" in gate.describe()
    # the same scores with gains that are pure noise around a loss: closed, and says so
    noise = decide(score, -0.1 + rng.normal(scale=2.0, size=n), chunk, confidence=0.95)
    assert not noise.is_open and math.isinf(noise.threshold) and noise.lower < 0 and noise.share_issued == 0.0
    assert math.isfinite(noise.selected_threshold) and noise.describe().startswith("closed: ")
    # nothing to test on: closed
    assert not decide(np.zeros(0), np.zeros(0), np.zeros(0, bool), 0.95).is_open


def at_most(level: float, reps: int) -> float:
    """The most openings of ``reps`` simulated gates that are consistent with an error rate of ``level``: the
    level plus a one-sided 99% binomial margin (the simulation's own noise)."""
    return reps * level + 2.33 * math.sqrt(reps * level * (1 - level))


def null_opens(reps: int, n: int, quantiles: list[float], seed: int) -> tuple[int, int]:
    """Repeated gates on a null (every threshold's gain is exactly 0 in expectation): how often the gate opens,
    and how often choosing and reporting on the same rows at a plain 95% bound would have opened."""
    rng = np.random.default_rng(seed)
    opened = naive = 0
    for _ in range(reps):
        score, gain = rng.normal(size=n), rng.normal(size=n)
        opened += decide(score, gain, rng.integers(0, 10, size=n), 0.95, quantiles=quantiles).is_open
        naive += max(c["lower"] for c in threshold_curve(score, gain, 1.645, quantiles)) > 0
    return opened, naive


def test_a_null_policy_with_many_thresholds_opens_no_more_often_than_the_stated_level():
    """200 gates on null logs, 20 candidate thresholds each: the first test of the loop spends 0.025 (5 of 200
    expected; at most 10 within the simulation's noise); choosing on the rows the gain is reported on opens
    far more often (about 27% here)."""
    quantiles = [i / 20 for i in range(1, 20)]
    opened, naive = null_opens(200, 2000, quantiles, seed=3)
    assert opened <= at_most(0.025, 200)
    assert naive > at_most(0.05, 200)  # the check can fail: the reuse it guards against breaks the level


def test_spending_keeps_the_level_over_a_loop_that_retests_on_overlapping_logs():
    """200 simulated loops of 10 days: logs grow by 300 rows a day on top of 2,000 (the same outcomes are
    re-used every day), a new model scores them every day, nothing pays. With alpha spending the share of loops
    whose gate ever opens stays within the 5% level (at most 0.05 * 10/11 by the union bound); testing every
    day at the first day's 2.5% does not (about 20%)."""
    rng = np.random.default_rng(4)
    reps, days, n0, step = 200, 10, 2000, 300
    n = n0 + days * step
    ever = ever_unspent = 0
    for _ in range(reps):
        gain, sel = rng.normal(size=n), rng.integers(0, 10, size=n)  # the logs: fixed outcomes, stable chunks
        opened = opened_unspent = False
        for j in range(1, days + 1):
            m = n0 + j * step
            score = rng.normal(size=m)  # the day's model
            # min_effective_rows=0: the level of the spending alone, not the guard against few large terms
            opened |= decide(score, gain[:m], sel[:m], 0.95, test_index=j, min_effective_rows=0).is_open
            opened_unspent |= decide(score, gain[:m], sel[:m], 0.95, test_index=1, min_effective_rows=0).is_open
        ever += opened
        ever_unspent += opened_unspent
    assert ever <= at_most(0.05, reps)
    assert ever_unspent > at_most(0.05, reps)


def test_monitoring_a_confirmed_procedure_keeps_the_level_and_gains_power():
    """The loop of the test above with ``monitor``: once a test opened the gate the next days keep it open while
    their gain is positive, and only a closed gate is tested again (at the next index). On null logs the share
    of loops whose gate ever opens stays within the level (the gate is open on a day only after some test
    opened it); on logs where the policy truly pays a little, monitoring keeps the gate open on more days than
    re-testing every version at an ever smaller alpha."""
    rng = np.random.default_rng(5)
    reps, days, n0, step = 200, 10, 2000, 300
    n = n0 + days * step

    def loop(gain: np.ndarray, sel: np.ndarray, monitor: bool) -> list[bool]:
        history: list[Gate] = []
        for j in range(1, days + 1):
            m = n0 + j * step
            on, by = monitors(history, monitor)
            history.append(
                decide(
                    rng.normal(size=m),
                    gain[:m],
                    sel[:m],
                    0.95,
                    by if on else next_test_index(history),
                    monitor=on,
                    min_effective_rows=0,  # the spending and monitoring alone
                )
            )
        return [g.is_open for g in history]

    ever = sum(any(loop(rng.normal(size=n), rng.integers(0, 10, size=n), True)) for _ in range(reps))
    assert ever <= at_most(0.05, reps)
    # a procedure that pays 0.09 EUR a decision (sd 1: z about 3 on the first day's rows, 2 on a part)
    days_open = {True: 0, False: 0}
    for _ in range(40):
        gain, sel = 0.09 + rng.normal(size=n), rng.integers(0, 10, size=n)
        for monitor in (True, False):
            days_open[monitor] += sum(loop(gain, sel, monitor))
    assert days_open[True] > days_open[False] + 20


def test_monitors_by_hand():
    test_open = Gate(0.2, 0.1, 0.02, 0.3, 400, 0.95, rows_selection=200, rows_confirmation=200, test_index=1)
    test_closed = dataclasses.replace(test_open, threshold=math.inf, lower=-0.1)
    kept = dataclasses.replace(test_open, mode="monitor", lower=-0.05)
    dropped = dataclasses.replace(kept, threshold=math.inf, gain=-0.01)
    assert monitors([]) == (False, 0) and monitors([test_closed]) == (False, 0)
    assert monitors([test_open]) == (True, 1) and monitors([test_open, kept]) == (True, 1)
    assert monitors([test_open], enabled=False) == (False, 0)
    # a monitored version spends nothing: after a dropped gate the next test is the 2nd
    assert monitors([test_open, kept, dropped]) == (False, 0) and next_test_index([test_open, kept, dropped]) == 2
    assert monitors([NO_GATE]) == (False, 0)  # no gate (threshold 0) is not a confirmed procedure
    # a monitored decision: open while the gain is positive, whatever its bound; closed when it is not
    rng = np.random.default_rng(6)
    score, sel = rng.normal(size=4000), rng.integers(0, 10, size=4000)
    small = decide(score, np.where(score > 0, 0.05, 0.0) + rng.normal(size=4000), sel, 0.95, 3, monitor=True)
    assert small.mode == "monitor" and small.test_index == 3 and small.gain > 0 and small.lower < 0 and small.is_open
    assert small.describe().startswith("open above") and "kept open while positive" in small.describe()
    assert Gate.from_json(small.to_json()) == small and not small.tested
    loss = decide(score, -0.05 + rng.normal(size=4000), sel, 0.95, 3, monitor=True)
    assert not loss.is_open and loss.gain < 0 and loss.describe().startswith("closed: monitoring")


def test_alpha_spending_by_hand():
    # (1 - 0.95) / (j (j + 1)): 0.025, 0.05/6, 0.05/12; spent 0.05 * j / (j + 1)
    assert [alpha_of_test(0.95, j) for j in (1, 2, 3)] == pytest.approx([0.025, 0.05 / 6, 0.05 / 12])
    assert [alpha_spent(0.95, j) for j in (1, 2, 3)] == pytest.approx([0.025, 0.05 * 2 / 3, 0.0375])
    assert sum(alpha_of_test(0.95, j) for j in range(1, 10_001)) < 0.05
    tested = Gate(math.inf, 0.1, -0.1, 0.0, 400, 0.95, rows_selection=200, rows_confirmation=200, test_index=1)
    untested = Gate(math.inf, math.nan, math.nan, 0.0, 150, 0.95, rows_selection=80, rows_confirmation=70, test_index=2)
    old = Gate(math.inf, math.nan, -0.2, 0.0, 38_000, 0.95)  # before spending: one test
    old_too_few = Gate(math.inf, math.nan, math.nan, 0.0, 40, 0.95)
    assert next_test_index([]) == 1
    assert next_test_index([old, old_too_few]) == 2
    assert next_test_index([old, tested, untested]) == 3  # the untested gate spent nothing
    # versions 1 and 2 deleted: the highest index still counts them
    assert next_test_index([dataclasses.replace(tested, test_index=3)]) == 4
    assert next_test_index([NO_GATE]) == 1


def test_folds_hold_every_row_out_once_and_do_not_follow_the_other_splits():
    from coupon_spark.model.data import validation_mask

    ids = pd.Series([f"i-{k:06d}" for k in range(10_000)])
    fold = fold_ids(ids, 5, seed=7)
    assert set(np.unique(fold)) == {0, 1, 2, 3, 4}
    held_out = sum((fold == k).astype(int) for k in range(5))  # fold model k trains on fold != k
    assert (held_out == 1).all()
    assert all(abs(int((fold == k).sum()) - 2000) < 200 for k in range(5))  # binomial sd 40
    # the same row gets the same fold whatever the shards, and another seed gives other folds
    np.testing.assert_array_equal(fold_ids(ids[3000:], 5, seed=7), fold[3000:])
    assert (fold_ids(ids, 5, seed=8) != fold).mean() > 0.7
    # independent of the validation split and of the chunks: each fold holds its share of both
    val, chunk = validation_mask(ids, 0.1, 7), chunk_ids(ids, 10, 7)
    assert all(abs(val[fold == k].mean() - 0.1) < 0.025 for k in range(5))
    assert set(np.unique(chunk)) == set(range(10)) and all(abs((chunk == j).mean() - 0.1) < 0.015 for j in range(10))
    assert all(abs((chunk[fold == k] == 0).mean() - 0.1) < 0.025 for k in range(5))
    np.testing.assert_array_equal(chunk_ids(ids[3000:], 10, 7), chunk[3000:])
    # no cross-fitting: one fold
    assert (fold_ids(ids, 1, seed=7) == 0).all() and (fold_ids(ids, 0, seed=7) == 0).all()


def test_gate_json_round_trip_and_old_decision_files():
    closed = decide(np.array([1.0, 2.0, 3.0] * 100), np.array([-1.0, -2.0, -3.0] * 100), np.arange(300) % 2 == 0, 0.95)
    obj = closed.to_json()
    assert obj["threshold"] is None and obj["open"] is False and obj["rows_confirmation"] == 150
    back = Gate.from_json(obj)
    assert math.isinf(back.threshold) and back.rows == 300 and back.test_index == 1 and back.tested
    assert back.to_json() == obj
    assert Gate.from_json(NO_GATE.to_json()).threshold == 0.0
    opened = Gate(1.5, 0.2, 0.1, 0.05, 400, 0.95, [], 5, 200, 200, 0.05, 1.5, 2, 0.05 / 6, 0.05 * 2 / 3)
    assert Gate.from_json(opened.to_json()) == opened
    # a decision.json written before cross-fitting and spending
    old = {
        "threshold": None,
        "gain": None,
        "lower": -0.2,
        "share_issued": 0.0,
        "rows": 38000,
        "confidence": 0.95,
        "curve": [{"threshold": 0.0, "gain": -0.1, "se": 0.07, "lower": -0.2, "share_issued": 0.5}],
        "open": False,
    }
    g = Gate.from_json(old)
    assert (g.is_open, g.rows, g.folds, g.test_index, g.tested) == (False, 38000, 0, 0, True)
    assert math.isnan(g.alpha) and "best 95% lower bound -0.200" in g.describe()


class _FixedModel:
    """A stand-in for the model with hand-set predictions (the numpy scorer's interface), so that every
    number of :func:`best_option_gains` can be worked out by hand."""

    def __init__(self, p: list[list[float]], p_none: list[float], p_redeem: list[list[float]]):
        self.p, self.p_none, self.p_redeem = np.array(p), np.array(p_none), np.array(p_redeem)

    def user_embed(self, users):  # type: ignore[no-untyped-def]
        return np.zeros((len(users), 1))

    def coupon_embed(self, coupons):  # type: ignore[no-untyped-def]
        return np.zeros((len(coupons), 1))

    def score_frames(self, users, coupons, coupon_emb=None):  # type: ignore[no-untyped-def]
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
    s, g, at = best_option_gains(model, rows, {day: coupons}, cfg)
    np.testing.assert_allclose(s, [2.9, 2.9, 5.6])
    np.testing.assert_allclose(g, [35.3, 8.9, 5.6])
    np.testing.assert_array_equal(at, [0, 1, 2])
    # u2 was explored among {A} only: the logs cannot say what B would have done, so the row goes
    s2, g2, at2 = best_option_gains(model, rows, {day: coupons}, cfg, options={(day, "u2"): frozenset({"A"})})
    np.testing.assert_allclose(s2, [2.9, 2.9])
    np.testing.assert_allclose(g2, [35.3, 8.9])
    np.testing.assert_array_equal(at2, [0, 1])  # the positions of what is left: u2 (row 2) went
    # ... but stays when B was one of its options
    s3, _, _ = best_option_gains(model, rows, {day: coupons}, cfg, options={(day, "u2"): frozenset({"A", "B"})})
    assert len(s3) == 3


def test_too_few_rows_in_a_chunk_keep_the_gate_closed():
    # 150 rows with a large gain, but 75 in each part (fewer than 100): closed without a test
    g = decide(np.ones(150), np.full(150, 5.0), np.arange(150) % 2 == 0, 0.95, folds=5)
    assert not g.is_open and g.rows == 150 and not g.tested and "fewer than 100 in the first chunk" in g.describe()
    assert next_test_index([g]) == 1


def test_a_gain_that_a_few_large_terms_decide_keeps_the_gate_closed():
    """Kish's effective number of the tested terms, (sum |x|)^2 / sum x^2: 40,000 rows whose gain is 0 except
    on 40 rows with +300 EUR (inverse-propensity terms of a rare arm) have a mean of +0.3 and a tight-looking
    bound, but only ~40 effective rows: closed. The same mean spread over every row opens."""
    n = 40_000
    rng = np.random.default_rng(5)
    score = rng.uniform(1.0, 2.0, n)  # every row issued at every candidate threshold
    chunk = rng.integers(0, 10, size=n)
    gain = np.zeros(n)
    gain[rng.choice(n, 40, replace=False)] = 300.0
    spiky = decide(score, gain, chunk, confidence=0.95)
    x = gain[chunk > 0]
    assert spiky.effective_rows == pytest.approx(np.abs(x).sum() ** 2 / np.sum(x * x)) and spiky.effective_rows < 50
    assert spiky.lower > 0 and not spiky.is_open  # the normal bound alone would have opened it
    assert "effective rows" in spiky.describe()
    assert Gate.from_json(spiky.to_json()).effective_rows == pytest.approx(spiky.effective_rows)
    smooth = decide(score, 0.3 + rng.normal(scale=1.0, size=n), chunk, confidence=0.95)
    assert smooth.is_open and smooth.effective_rows > MIN_EFFECTIVE_ROWS
