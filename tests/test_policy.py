"""The decision policy (``coupon_spark.policy``): pure numpy, one formula for the score job, the gate and the
benches, checked against values worked out by hand."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coupon_spark import policy
from coupon_spark.config import ScoreConfig
from coupon_spark.schemas import COUPON_FEATURE_PREFIXES

ROOT = Path(__file__).resolve().parents[1]


def test_policy_imports_neither_spark_nor_tensorflow_nor_the_model_package():
    code = (
        "import sys, coupon_spark.policy; "
        "print([m for m in ('pyspark', 'tensorflow', 'coupon_spark.model', 'coupon_spark.scoring') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert policy.COUPON_FEATURE_PREFIXES == COUPON_FEATURE_PREFIXES


def test_the_gate_and_the_score_job_import_the_policy_not_each_other():
    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    gate = imports(ROOT / "coupon_spark" / "model" / "gate.py")
    assert "coupon_spark.policy" in gate and "coupon_spark.scoring" not in gate  # the gate -> scoring cycle is gone
    assert "coupon_spark.policy" in imports(ROOT / "coupon_spark" / "scoring.py")
    assert "coupon_spark.policy" in imports(ROOT / "bench" / "model_quality.py")


def test_live_rule_by_hand():
    frame = pd.DataFrame({"cf_days_left": [0, 1, 5, 3], "cf_days_since_start": [2, 0, -1, 4]})
    assert policy.live_on(frame).tolist() == [False, True, False, True]


def test_expected_profit_and_reward_by_hand():
    cfg = ScoreConfig(margin_rate=0.3, default_basket_eur=40.0, top_up=False)
    users = pd.DataFrame({"uf_hist_basket": [50.0, 0.0]})  # the second has no orders: the default basket
    value = policy.purchase_value(users, cfg)
    np.testing.assert_allclose(value, [15.0, 12.0])
    # uplift 0.1 and 0.05, p_redeem 0.2, a 5 EUR coupon: 0.1 * 15 - 0.2 * 5 = 0.5; 0.05 * 12 - 0.2 * 5 = -0.4
    got = policy.expected_profit(np.array([[0.1], [0.05]]), np.full((2, 1), 0.2), value[:, None], np.full((2, 1), 5.0))
    np.testing.assert_allclose(got[:, 0], [0.5, -0.4])
    # a logged purchase of 80 EUR with a 5 EUR coupon: 80 * 0.3 - 5 = 19; no purchase, no coupon: 0
    np.testing.assert_allclose(policy.logged_reward(pd.Series([80.0, 0.0]), pd.Series([5.0, 0.0]), 0.3), [19.0, 0.0])


def test_redemption_cost_nets_the_margin_on_the_top_up():
    """A 30 EUR minimum spend against a 20 EUR basket with no spread: the redeemer adds 10 EUR, worth 3 EUR of
    margin at 30%, so a 5 EUR coupon costs 2 EUR; without a minimum spend it costs 5."""
    cfg = ScoreConfig(margin_rate=0.3, top_up=True, basket_cv=1e-6)
    users = pd.DataFrame({"uf_hist_basket": [20.0]})
    coupons = policy.LiveCoupons(
        pd.DataFrame(), np.zeros((2, 1)), np.array([5.0, 5.0]), np.array([30.0, 0.0]), [None] * 2
    )
    np.testing.assert_allclose(policy.redemption_cost(users, coupons, cfg)[0], [2.0, 5.0], atol=1e-4)


@pytest.mark.parametrize("recent, segment, want", [(0, "a", [True, False, False]), (3, "a", [False] * 3),
                                                   (0, "b", [True, False, True])])  # fmt: skip
def test_eligibility_by_hand(recent, segment, want):
    """Coupon 0: open; coupon 1: minimum spend 200 > 3 x a 50 EUR basket; coupon 2: segment b only."""
    cfg = ScoreConfig(frequency_cap=3, min_spend_factor=3.0)
    users = pd.DataFrame({"uf_hist_basket": [50.0], policy.RECENT_COLUMN: [recent], policy.SEGMENT_COLUMN: [segment]})
    coupons = policy.LiveCoupons(
        pd.DataFrame(), np.zeros((3, 1)), np.ones(3), np.array([0.0, 200.0, 10.0]), [None, None, frozenset({"b"})]
    )
    got = policy.mask_ineligible(np.zeros((1, 3)), users, coupons, cfg)
    assert np.isfinite(got[0]).tolist() == want


def test_the_basket_follows_the_configured_windows():
    """The year's basket first, then the longest window average the features made (not a fixed 90 days)."""
    from coupon_spark.basket import basket_columns, basket_of

    cols = ["user_id", "uf_avg_basket_7d", "uf_avg_basket_60d", "uf_hist_basket", "uf_avg_basket_180d"]
    assert basket_columns(cols) == ["uf_hist_basket", "uf_avg_basket_180d", "uf_avg_basket_60d", "uf_avg_basket_7d"]
    users = pd.DataFrame({"uf_avg_basket_7d": [9.0, 0.0, 0.0], "uf_avg_basket_60d": [30.0, 25.0, 0.0]})
    np.testing.assert_allclose(basket_of(users, 40.0), [30.0, 25.0, 40.0])
    cfg = ScoreConfig(margin_rate=0.5, default_basket_eur=40.0)
    np.testing.assert_allclose(policy.purchase_value(users, cfg), [15.0, 12.5, 20.0])
