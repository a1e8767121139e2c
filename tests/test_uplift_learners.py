"""Baseline uplift learners: the DR pseudo-outcome and the IPS values by hand, the pairs of the DR-learner, and
the LightGBM learners recovering a known effect from a randomised experiment."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from coupon_spark.evaluation.uplift_learners import (
    Arms,
    DRLearner,
    LoggedRows,
    SLearner,
    TLearner,
    dr_pairs,
    dr_pseudo_outcomes,
    ips_arm_values,
    lgbm_params,
)

D1, D2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)


def test_dr_pseudo_outcomes_by_hand() -> None:
    phi = dr_pseudo_outcomes(
        reward=np.array([4.0, 3.0, 3.0]),
        propensity=np.array([0.5, 0.25, 0.5]),
        is_arm=np.array([True, False, False]),
        is_control=np.array([False, True, False]),
        mu_arm=np.array([2.0, 2.0, 2.0]),
        mu_none=np.array([1.0, 1.0, 1.0]),
    )
    # (2 - 1) + (4 - 2) / 0.5; (2 - 1) - (3 - 1) / 0.25; another arm logged: the models alone
    np.testing.assert_allclose(phi, [5.0, -7.0, 1.0])


def test_dr_pseudo_outcomes_are_unbiased_with_wrong_models() -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    effect = rng.normal(1.5, 1.0, n)
    arm = rng.choice(3, n, p=[0.2, 0.5, 0.3])  # this coupon, no coupon, another one
    p = np.array([0.2, 0.5, 0.3])[arm]
    reward = rng.normal(4.0, 2.0, n) + effect * (arm == 0)
    for mu_arm, mu_none in ((np.zeros(n), np.zeros(n)), (np.full(n, 9.0), np.full(n, -3.0))):
        phi = dr_pseudo_outcomes(reward, p, arm == 0, arm == 1, mu_arm, mu_none)
        assert phi.mean() == pytest.approx(effect.mean(), abs=4 * phi.std() / np.sqrt(n))


def test_dr_pairs_by_hand() -> None:
    # d1: A, none, B (row 2 not randomised); d2: A, none (row 4 could only draw C, not logged that day)
    day = np.array([D1, D1, D1, D2, D2], dtype=object)
    coupon = np.array(["A", None, "B", "A", None], dtype=object)
    coupon_x = np.arange(5, dtype=np.float32)[:, None]  # each row's own index: which row a feature came from
    kind = np.array(["k", None, "j", "k", None], dtype=object)
    use = np.array([True, True, False, True, True])
    allowed = [None, None, None, None, frozenset({"C"})]
    pairs = dr_pairs(day, coupon, coupon_x, kind, use, allowed)
    np.testing.assert_array_equal(pairs.row, [0, 0, 1, 1, 3])
    np.testing.assert_array_equal(pairs.coupon_x[:, 0], [0, 2, 0, 2, 3])
    assert list(pairs.kind) == ["k", "j", "k", "j", "k"]
    np.testing.assert_array_equal(pairs.is_arm, [True, False, False, False, True])


def test_ips_arm_values_by_hand() -> None:
    coupon = np.array(["A", "A", None, None, "B", None], dtype=object)
    day = np.array([D1, D1, D1, D1, D2, D2], dtype=object)
    p = np.array([0.5, 0.25, 0.5, 0.5, 0.5, 0.25])
    reward = np.array([4.0, 0.0, 1.0, 3.0, 2.0, 2.0])
    v = ips_arm_values(coupon, day, reward, p).set_index("coupon_id")
    # A on d1: (4 / 0.5 + 0) / (2 + 4) = 4 / 3 against (1 / 0.5 + 3 / 0.5) / (2 + 2) = 2
    assert v.loc["A", "value"] == pytest.approx(4 / 3 - 2)
    # B on d2: 2 against 2 (the control rows of d1 do not count)
    assert v.loc["B", "value"] == pytest.approx(0.0)
    assert (v.loc["A", "n_coupon"], v.loc["A", "n_control"], v.loc["B", "n_control"]) == (2, 2, 1)
    g = ips_arm_values(coupon, day, reward, p, group=np.array(["x", "x", "x", "y", "y", "y"], dtype=object))
    g = g.set_index(["group", "coupon_id"])["value"]
    # group x: A (4 / 3) against its one control row of d1 (1); group y: B (2) against 2
    assert g.loc[("x", "A")] == pytest.approx(4 / 3 - 1)
    assert g.loc[("y", "B")] == pytest.approx(0.0)


def _experiment(n: int, seed: int) -> tuple[LoggedRows, np.ndarray, Arms, np.ndarray, np.ndarray]:
    """Users with two features; one kind of coupon at costs 1 and 2, or none, drawn at random. Each coupon adds
    ``3 sign(x0) - cost / 2`` to the reward. Returns the logged rows, their arms, the two coupons, 500 new
    users and their true effects."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    arm = rng.choice(3, n, p=[0.4, 0.3, 0.3])  # none, coupon 1, coupon 2
    cost = np.array([0.0, 1.0, 2.0], np.float32)
    effect = np.where(arm > 0, 3 * np.sign(x[:, 0]) - cost[arm] / 2, 0.0)
    reward = 2.0 + x[:, 1] + effect + rng.normal(0, 1.0, n)
    rows = LoggedRows(
        user_x=x,
        coupon_x=cost[arm][:, None],
        kind=np.where(arm > 0, "k", None).astype(object),
        reward=reward,
        propensity=np.array([0.4, 0.3, 0.3])[arm],
    )
    grid = rng.uniform(-1, 1, (500, 2)).astype(np.float32)
    arms = Arms(coupon_x=cost[1:, None], kind=np.array(["k", "k"], dtype=object), none_x=np.zeros(1, np.float32))
    true = 3 * np.sign(grid[:, :1]) - cost[None, 1:] / 2
    return rows, arm, arms, grid, true


@pytest.mark.parametrize("learner", ["s", "t", "dr"])
def test_learners_recover_a_known_effect(learner: str) -> None:
    pytest.importorskip("lightgbm")
    rows, arm, arms, grid, true = _experiment(6_000, 1)
    params = lgbm_params(0, num_iterations=100)
    if learner == "s":
        model = SLearner(params).fit(rows)
    elif learner == "t":
        model = TLearner(params).fit(rows)
    else:
        day = np.full(len(rows), D1, dtype=object)
        ids = np.array([None, "c1", "c2"], dtype=object)[arm]
        pairs = dr_pairs(day, ids, rows.coupon_x, rows.kind, np.ones(len(rows), bool))
        assert len(pairs.row) == 2 * len(rows)
        model = DRLearner(params, lgbm_params(0, num_iterations=100, min_data_in_leaf=200)).fit(rows, pairs)
    est = model.effect(grid, arms)
    assert est.shape == (500, 2)
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.95
    assert np.abs(est - true).mean() < 0.4
    # unknown kinds get no estimate
    other = Arms(arms.coupon_x, np.array(["k", "other"], dtype=object), arms.none_x)
    if learner != "s":
        assert np.isnan(model.effect(grid, other)[:, 1]).all()


def test_logged_rows_refuse_ragged_arrays() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        LoggedRows(np.zeros((3, 1)), np.zeros((3, 1)), np.array([None] * 3), np.zeros(2), np.ones(3))


def test_ips_values_are_a_frame_with_named_columns() -> None:
    v = ips_arm_values(np.array(["A", None], dtype=object), np.array([D1, D1], dtype=object), [1.0, 0.0], [0.5, 0.5])
    assert isinstance(v, pd.DataFrame)
    assert list(v.columns) == ["group", "coupon_id", "value", "n_coupon", "n_control"]


@pytest.mark.parametrize("learner", ["s", "t", "dr"])
def test_learners_use_pair_features_where_the_effect_lives_in_them(learner: str) -> None:
    """The effect is ``4 * pair - 1``, with ``pair`` the coupon's face value relative to the user's basket, which
    the user features do not carry (they are noise here): only through the pair features can a learner see it."""
    pytest.importorskip("lightgbm")
    rng = np.random.default_rng(5)
    n = 8_000
    basket = rng.uniform(10, 100, n).astype(np.float32)
    face = np.array([0.0, 5.0, 20.0], np.float32)
    arm = rng.choice(3, n, p=[0.4, 0.3, 0.3])
    pair = np.where(arm > 0, face[arm] / np.maximum(basket, 1), 0.0).astype(np.float32)[:, None]
    reward = 1.0 + np.where(arm > 0, 4 * pair[:, 0] - 1, 0.0) + rng.normal(0, 0.5, n)
    rows = LoggedRows(
        user_x=rng.normal(size=(n, 1)).astype(np.float32),
        coupon_x=face[arm][:, None],
        kind=np.where(arm > 0, "k", None).astype(object),
        reward=reward,
        propensity=np.array([0.4, 0.3, 0.3])[arm],
        pair_x=pair,
    )
    grid_basket = rng.uniform(10, 100, 400).astype(np.float32)
    grid_pair = (face[None, 1:] / grid_basket[:, None])[:, :, None].astype(np.float32)
    arms = Arms(face[1:, None], np.array(["k", "k"], dtype=object), np.zeros(1, np.float32), grid_pair)
    true = 4 * grid_pair[:, :, 0] - 1
    params = lgbm_params(0, num_iterations=150)
    if learner == "s":
        model = SLearner(params).fit(rows)
    elif learner == "t":
        model = TLearner(params).fit(rows)
    else:
        ids = np.array([None, "c1", "c2"], dtype=object)[arm]

        def pair_of(r: np.ndarray, a: np.ndarray) -> np.ndarray:
            f = np.array([face[arm[i]] for i in a], np.float32)
            return (f / np.maximum(basket[r], 1))[:, None]

        pairs = dr_pairs(np.full(n, D1, dtype=object), ids, rows.coupon_x, rows.kind, np.ones(n, bool), pair_of=pair_of)
        assert pairs.pair_x is not None and len(pairs.pair_x) == len(pairs.row)
        model = DRLearner(params, lgbm_params(0, num_iterations=150, min_data_in_leaf=200)).fit(rows, pairs)
    est = model.effect(rng.normal(size=(400, 1)).astype(np.float32), arms)
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.9
    assert np.abs(est - true).mean() < 0.25
