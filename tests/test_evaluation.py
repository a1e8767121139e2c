"""Evaluation: estimators on hand-made logs, the true policy value against a hand computation, the oracle
against the allocator, and the stage end to end (metrics table, report files, rerun)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark.allocation import AllocationParams, allocate_in_memory, make_budget
from coupon_spark.config import AllocationConfig, Config, ShopConfig
from coupon_spark.datagen.response import CouponParams, UserTraits, response_matrix
from coupon_spark.datagen.shop import truth_table
from coupon_spark.datagen.truth import oracle_allocation, redeem_targeting, with_true_values
from coupon_spark.datagen.world import CATEGORIES, COUPON_TRUTH, coupons_pandas, season_logit, users_frame
from coupon_spark.evaluation import (
    NoAllocationError,
    bootstrap_mean_difference,
    cross_fitted_cell_means,
    doubly_robust,
    ips,
    snips,
)
from coupon_spark.evaluation import run as evaluate_run
from coupon_spark.lake import Lake
from coupon_spark.runner import Context
from coupon_spark.schemas import ALLOCATIONS_SCHEMA, CANDIDATES_SCHEMA, EVALUATION_METRICS, ISSUANCES, ORDERS, USERS

Z95 = 1.959963984540054

# ---- estimators on a hand-made log ---------------------------------------------------------------------------

# four logged decisions: reward, propensity of the logged action, target policy's probability of it
R = np.array([10.0, 0.0, 4.0, 2.0])
P = np.array([0.5, 0.25, 0.25, 0.5])
PI = np.array([1.0, 0.0, 1.0, 0.0])
Q_LOGGED = np.array([8.0, 1.0, 3.0, 2.0])
Q_TARGET = np.array([8.0, 5.0, 3.0, 6.0])


def test_ips_snips_dr_on_a_hand_made_log() -> None:
    # w = [2, 0, 4, 0]; w r = [20, 0, 16, 0]
    e = ips(R, PI, P)
    assert e.value == pytest.approx(9.0)
    sd = math.sqrt(((20 - 9) ** 2 + 9**2 + (16 - 9) ** 2 + 9**2) / 3)
    assert e.ci_low == pytest.approx(9.0 - Z95 * sd / 2)
    assert e.ci_high == pytest.approx(9.0 + Z95 * sd / 2)
    assert e.n == 4
    s = snips(R, PI, P)
    assert s.value == pytest.approx(36.0 / 6.0)
    # delta method: terms w (r - 6) = [8, 0, -8, 0], var (ddof 1) = 128 / 3, mean w = 1.5
    se = math.sqrt(128 / 3 / 4) / 1.5
    assert (s.ci_low, s.ci_high) == pytest.approx((6.0 - Z95 * se, 6.0 + Z95 * se))
    # DR terms: 8 + 2 (10 - 8) = 12, 5 + 0 = 5, 3 + 4 (4 - 3) = 7, 6 + 0 = 6
    d = doubly_robust(R, PI, P, Q_LOGGED, Q_TARGET)
    assert d.value == pytest.approx(7.5)
    sd = float(np.std([12, 5, 7, 6], ddof=1))
    assert d.ci_high - d.value == pytest.approx(Z95 * sd / 2)
    with pytest.raises(ValueError, match="propensit"):
        ips(R, PI, np.array([0.5, 0.0, 0.25, 0.5]))
    assert math.isnan(ips(R[:0], PI[:0], P[:0]).value)


def test_estimators_recover_a_known_policy_value() -> None:
    """A uniformly randomised log over 3 actions with Bernoulli rewards of known means; the target policy's
    value is known exactly, and each estimate's 95% interval must hold it (at 6 sigma, not a coin flip)."""
    rng = np.random.default_rng(7)
    n = 60_000
    segment = rng.integers(0, 2, n)
    means = np.array([[0.1, 0.3, 0.5], [0.6, 0.2, 0.1]])  # segment x action
    action = rng.integers(0, 3, n)
    reward = (rng.random(n) < means[segment, action]).astype(float)
    target = np.where(segment == 0, 2, 0)  # the best action of each segment
    truth = 0.5 * 0.5 + 0.5 * 0.6
    p = np.full(n, 1 / 3)
    pi = (action == target).astype(float)
    frame = pd.DataFrame({"segment": segment, "a": action.astype(str), "t": target.astype(str), "r": reward})
    q_log, q_t = cross_fitted_cell_means(frame, np.arange(n) % 2, ["segment"], "a", "r", "t")
    for e in (ips(reward, pi, p), snips(reward, pi, p), doubly_robust(reward, pi, p, q_log, q_t)):
        half = e.ci_high - e.value
        assert abs(e.value - truth) < 3 * half
        assert half < 0.02
    dr, ip = doubly_robust(reward, pi, p, q_log, q_t), ips(reward, pi, p)
    assert dr.ci_high - dr.ci_low < ip.ci_high - ip.ci_low  # the reward model reduces the variance


def test_cross_fitted_cell_means_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "seg": ["a", "a", "b", "a", "a", "b"],
            "act": ["c1", None, "c1", "c1", None, "c1"],
            "tgt": ["c1", "c1", None, None, "c1", "c2"],
            "r": [1.0, 2.0, 3.0, 5.0, 7.0, 11.0],
        }
    )
    folds = np.array([0, 0, 0, 1, 1, 1])
    q_log, q_t = cross_fitted_cell_means(frame, folds, ["seg"], "act", "r", "tgt")
    # fold 0 learns on rows 3..5: (a, c1) 5, (a, none) 7, (b, c1) 11; action c1 (5+11)/2 = 8; overall 23/3
    # fold 1 learns on rows 0..2: (a, c1) 1, (a, none) 2, (b, c1) 3; action none 2; action c1 2
    assert q_log == pytest.approx([5.0, 7.0, 11.0, 1.0, 2.0, 3.0])
    # targets: row 2 (b, none): no cell, action none -> 7; row 5 (b, c2): unknown action -> overall 2
    assert q_t == pytest.approx([5.0, 5.0, 7.0, 2.0, 1.0, 2.0])


def test_bootstrap_mean_difference() -> None:
    e = bootstrap_mean_difference(np.ones(20), np.zeros(30), samples=200)
    assert (e.value, e.ci_low, e.ci_high, e.n) == (1.0, 1.0, 1.0, 50)
    rng = np.random.default_rng(1)
    t, c = rng.normal(1.0, 2.0, 4000), rng.normal(0.5, 2.0, 4000)
    e = bootstrap_mean_difference(t, c, samples=400, seed=3)
    assert e.value == pytest.approx(t.mean() - c.mean())
    se = math.sqrt(t.var(ddof=1) / 4000 + c.var(ddof=1) / 4000)  # normal theory: the bootstrap must agree
    assert e.ci_high - e.ci_low == pytest.approx(2 * Z95 * se, rel=0.15)
    assert math.isnan(bootstrap_mean_difference(t, np.zeros(0)).value)


# ---- the true value against a hand computation ------------------------------------------------------------------


def _traits(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


HAND_USERS = [
    {"user_id": "A", "alpha": -1.0, "price_sensitivity": 0.5, "basket_eur": 40.0, "margin_rate": 0.3,
     "taste": [1 / 8] * 8, "kind_response": [1.0, 0.5, 0.2]},
    {"user_id": "B", "alpha": -2.0, "price_sensitivity": 0.2, "basket_eur": 20.0, "margin_rate": 0.4,
     "taste": [0.5] + [0.5 / 7] * 7, "kind_response": [-0.5, -0.5, -0.5]},
]  # fmt: skip
HAND_COUPONS = pd.DataFrame(
    {
        "coupon_id": ["C1", "C2"], "campaign_id": ["K1", "K2"], "kind": ["price_off", "bonus_points"],
        "category": ["all", "grocery"], "face_value_eur": [5.0, 2.0], "min_spend_eur": [25.0, 10.0],
        "cost_eur": [5.0, 1.2],
    }
)  # fmt: skip


def _hand_increment(u: dict, c: dict, season: float) -> tuple[float, float, float]:
    """(uplift, p_redeem, incremental profit) from the formulas of the response module's docstring."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    k = len(CATEGORIES)
    sitewide = c["category"] == "all"
    taste = 1.0 if sitewide else u["taste"][CATEGORIES.index(c["category"])]
    match = 1.0 if sitewide else min(2.0, k * taste)
    value = min(3.0, (c["face_value_eur"] / max(u["basket_eur"], c["min_spend_eur"])) / 0.25) * (
        0.5 + u["price_sensitivity"]
    )
    kind = ["price_off", "free_shipping", "bonus_points"].index(c["kind"])
    tau = u["kind_response"][kind] * value * match
    p0, p = sig(u["alpha"] + season), sig(u["alpha"] + season + tau)
    use = 0.9 * (1.0 if sitewide else min(1.0, k * taste)) * min(1.0, u["basket_eur"] / c["min_spend_eur"])
    # a redeemer tops the basket up to 0.5 EUR above the minimum spend: E[max(A, s)] - b for an amount A
    # log-normal around b (log-sd 0.5), here by quadrature over the normal draw
    z = np.linspace(-9.0, 9.0, 36001)
    amount = u["basket_eur"] * np.exp(0.5 * z - 0.125)
    density = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    top_up = float(np.sum((np.maximum(amount, c["min_spend_eur"] + 0.5) - amount) * density) * (z[1] - z[0]))
    profit = p * u["margin_rate"] * u["basket_eur"] + p * use * (u["margin_rate"] * top_up - c["cost_eur"])
    return p - p0, p * use, profit - p0 * u["margin_rate"] * u["basket_eur"]


def test_true_values_match_a_hand_computation() -> None:
    day = dt.date(2026, 11, 7)  # a Saturday: season shift log(1.2)
    season = season_logit(day)
    assert season == pytest.approx(math.log(1.2))
    alloc = pd.DataFrame({"user_id": ["A", "B"], "coupon_id": ["C1", "C2"], "coupon_cost": [5.0, 1.2]})
    out = with_true_values(alloc, _traits(HAND_USERS), HAND_COUPONS, season)
    coupons = HAND_COUPONS.to_dict("records")
    a = _hand_increment(HAND_USERS[0], coupons[0], season)
    b = _hand_increment(HAND_USERS[1], coupons[1], season)
    assert out["true_uplift"].tolist() == pytest.approx([a[0], b[0]])
    assert out["true_p_redeem"].tolist() == pytest.approx([a[1], b[1]])
    assert out["true_expected_cost"].tolist() == pytest.approx([a[1] * 5.0, b[1] * 1.2])
    assert out["true_incremental_profit"].sum() == pytest.approx(a[2] + b[2])
    assert out["uplift_type"].tolist() == ["persuadable", "sleeping_dog"]


# ---- oracle against the allocator -----------------------------------------------------------------------------


def _instance(n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Random traits, a 4-coupon catalogue and every (user, coupon) option with the truth and a noisy model."""
    rng = np.random.default_rng(seed)
    taste = rng.dirichlet(np.ones(8), n_users)
    traits = pd.DataFrame(
        {
            "user_id": [f"U{i:04d}" for i in range(n_users)],
            "alpha": rng.normal(-1.5, 1.0, n_users),
            "price_sensitivity": rng.random(n_users),
            "basket_eur": rng.uniform(15, 80, n_users),
            "margin_rate": rng.uniform(0.2, 0.45, n_users),
            "taste": list(taste),
            "kind_response": list(rng.normal(0.5, 0.8, (n_users, 3))),
        }
    )
    coupons = pd.DataFrame(
        {
            "coupon_id": ["C1", "C2", "C3", "C4"], "campaign_id": ["K1", "K1", "K2", "K2"],
            "kind": ["price_off", "free_shipping", "bonus_points", "price_off"],
            "category": ["all", "all", "fashion", "grocery"], "face_value_eur": [5.0, 4.95, 4.0, 10.0],
            "min_spend_eur": [25.0, 15.0, 20.0, 50.0], "cost_eur": [5.0, 3.5, 2.4, 10.0],
        }
    )  # fmt: skip
    options = pd.DataFrame(
        {
            "user_id": np.repeat(traits["user_id"].to_numpy(), 4),
            "coupon_id": np.tile(coupons["coupon_id"].to_numpy(), n_users),
            "campaign_id": np.tile(coupons["campaign_id"].to_numpy(), n_users),
            "coupon_cost": np.tile(coupons["cost_eur"].to_numpy(), n_users),
        }
    )
    options = with_true_values(options, traits, coupons, 0.0)
    # the model: right costs, noisy values
    options["uplift"] = options["true_uplift"]
    options["p_redeem"] = options["true_p_redeem"] * rng.uniform(0.5, 1.5, len(options))
    options["expected_cost"] = options["true_expected_cost"]
    options["expected_profit"] = options["true_incremental_profit"] + rng.normal(0, 1.0, len(options))
    options["model_version"] = "m1"
    return traits, coupons, options


def test_oracle_is_never_worse_than_the_model_and_equals_it_on_true_values() -> None:
    _, _, options = _instance(300, seed=3)
    budgets = [make_budget(None, "amount", 40.0), make_budget("K2", "count", 25)]
    params = AllocationParams(max_per_user=1, solver=dataclasses.replace(AllocationParams().solver, tolerance=1e-4))
    model_rows, _ = allocate_in_memory(options, budgets, params)
    chosen = options.merge(model_rows[model_rows["coupon_id"].notna()][["user_id", "coupon_id"]],
                           on=["user_id", "coupon_id"])  # fmt: skip
    oracle = oracle_allocation(options, budgets, params)
    model_value, oracle_value = chosen["true_incremental_profit"].sum(), oracle["true_incremental_profit"].sum()
    assert oracle_value >= model_value - 1e-3 * abs(oracle_value)
    assert oracle_value > model_value  # the noise costs something here
    assert oracle["true_expected_cost"].sum() <= 40.0 + 1e-6
    assert (oracle["campaign_id"] == "K2").sum() <= 25
    # a model that knows the truth allocates exactly as the oracle does
    truthful = options.assign(expected_profit=options["true_incremental_profit"])
    rows, _ = allocate_in_memory(truthful, budgets, params)
    same = rows[rows["coupon_id"].notna()][["user_id", "coupon_id"]].sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(same, oracle[["user_id", "coupon_id"]].sort_values("user_id").reset_index(drop=True))
    # the redemption baseline respects the budgets on the estimated cost and is worse than the oracle
    red = redeem_targeting(options, budgets, "expected_cost", 1)
    assert red["expected_cost"].sum() <= 40.0 + 1e-9 and red["user_id"].is_unique
    assert red["true_incremental_profit"].sum() < oracle_value


# ---- the stage end to end --------------------------------------------------------------------------------------

RUN = dt.date(2026, 11, 9)


def _write(spark: SparkSession, lake: Lake, pdf: pd.DataFrame, schema, table: str, part: str | None) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(pdf[schema.fieldNames()], schema)
    lake.write(df, table, mode="overwrite", partition_by=[part] if part else None)


def test_evaluate_stage_writes_metrics_and_report(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    from coupon_spark.allocation.job import budgets_from_config, params_from_config, summary_frame
    from coupon_spark.model.registry import Registry

    base = Config.from_file("conf/base.yaml")
    shop = ShopConfig(users=240, partitions=2, start_date="2026-11-02")
    cfg = dataclasses.replace(
        base,
        lake=lake.cfg,
        shop=shop,
        allocation=dataclasses.replace(
            base.allocation, budget=AllocationConfig.Limit(amount=15.0), campaign_budgets={},
            holdout_share=0.2, exploration_share=0.0, partitions=2,
        ),
        evaluate=dataclasses.replace(base.evaluate, bootstrap_samples=200, report_dir=str(tmp_path / "reports")),
    )  # fmt: skip
    # the shop's truth, and candidates whose values ARE the truth (a perfect model)
    users = users_frame(spark, shop).where(F.col("signup_date") <= F.lit(RUN))
    coupons = coupons_pandas(shop)
    lake.write(users, truth_table(cfg, "user_traits"), mode="overwrite")
    lake.write(spark.createDataFrame(coupons, COUPON_TRUTH), truth_table(cfg, "coupons"), mode="overwrite")
    traits = users.toPandas()
    live = coupons[(coupons["valid_from"] <= RUN) & (coupons["valid_to"] >= RUN)].reset_index(drop=True)
    r = response_matrix(UserTraits.from_pandas(traits), CouponParams.from_pandas(live), season_logit(RUN))
    n, m = len(traits), len(live)
    cand = pd.DataFrame(
        {
            "run_date": RUN, "user_id": np.repeat(traits["user_id"].to_numpy(), m),
            "coupon_id": np.tile(live["coupon_id"].to_numpy(), n), "campaign_id": np.tile(live["campaign_id"], n),
            "p_purchase": r.p_purchase[:, 1:].ravel(), "p_purchase_none": np.repeat(r.p_purchase[:, 0], m),
            "p_redeem": r.p_redeem[:, 1:].ravel(), "coupon_cost": np.tile(live["cost_eur"].to_numpy(), n),
            "model_version": "1", "rank": np.tile(np.arange(1, m + 1, dtype=np.int32), n),
        }
    )  # fmt: skip
    cand["uplift"] = cand["p_purchase"] - cand["p_purchase_none"]
    cand["expected_cost"] = cand["p_redeem"] * cand["coupon_cost"]
    cand["expected_profit"] = (r.expected_profit[:, 1:] - r.expected_profit[:, :1]).ravel()
    _write(spark, lake, cand, CANDIDATES_SCHEMA, "candidates", "run_date")
    # the allocator in memory (the Spark job makes the same decisions; tests/test_allocation.py checks that)
    params = params_from_config(cfg.allocation)
    budgets = budgets_from_config(cfg.allocation)
    rows, plan = allocate_in_memory(cand, budgets, params, run_date=RUN.isoformat())
    rows = rows.assign(run_date=RUN, run_id="r1")
    lake.write(spark.createDataFrame(rows[ALLOCATIONS_SCHEMA.fieldNames()], ALLOCATIONS_SCHEMA), "allocations",
               mode="overwrite", partition_by=["run_date"])  # fmt: skip
    value = float(rows["expected_profit"].sum())
    runs = summary_frame(spark, plan, params, RUN, "r1", dt.datetime(2026, 11, 9, 6, tzinfo=dt.timezone.utc), 1.0,
                         plan.spend, value, rows["user_id"].nunique(), len(cand), 0)  # fmt: skip
    lake.write(runs, "allocation_runs", mode="overwrite", partition_by=["run_date"])
    alloc = lake.read("allocations", where={"run_date": RUN}).toPandas()
    treated = alloc[alloc["coupon_id"].notna()]
    hold_users = alloc.loc[alloc["policy"] == "holdout", "user_id"].tolist()
    model_users = alloc.loc[alloc["policy"] == "model", "user_id"].unique().tolist()
    assert len(treated) > 5 and len(hold_users) > 10

    # silver: users (fairness), the played issuances of the run date and a few orders on that day
    su = traits[["user_id", "signup_date", "region", "city", "device", "segment"]].assign(
        updated_at=pd.Timestamp("2026-11-08"), valid_from=RUN, valid_to=None
    )
    _write(spark, lake, su, USERS, "users", None)
    iss = treated[["user_id", "coupon_id"]].assign(
        issuance_id=[f"I{i}" for i in range(len(treated))], issued_at=pd.Timestamp("2026-11-09 08:00:00"),
        policy="coupon-spark/model", propensity=1.0, ingest_date=RUN)  # fmt: skip
    _write(spark, lake, iss, ISSUANCES, "issuances", "ingest_date")
    buyers = model_users[:4] + hold_users[:1]  # model arm: 4 orders of 50 EUR; holdout: 1 of 50 EUR
    orders = pd.DataFrame({"order_id": [f"O{i}" for i in range(len(buyers))], "user_id": buyers,
                           "ordered_at": pd.Timestamp("2026-11-09 12:00:00"), "category": "home",
                           "amount_eur": 50.0, "discount_eur": 0.0, "coupon_id": None, "n_items": 1,
                           "source_currency": "EUR", "updated_at": pd.Timestamp("2026-11-09 12:00:00"),
                           "ingest_date": RUN})  # fmt: skip
    from decimal import Decimal

    orders["amount_eur"] = Decimal("50.00")
    orders["discount_eur"] = Decimal("0.00")
    _write(spark, lake, orders, ORDERS, "orders", "ingest_date")
    # a randomised log: the run's decision for user 0 was logged (target), the others not
    u0, c0 = treated.iloc[0]["user_id"], treated.iloc[0]["coupon_id"]
    logged = pd.DataFrame({
        "issue_date": [dt.date(2026, 11, 3)] * 4, "issuance_id": ["L1", "L2", "L3", "L4"],
        "user_id": [u0, u0, "Uother1", "Uother2"], "coupon_id": [c0, None, c0, None],
        "policy": "random_v1", "propensity": [0.1, 0.25, 0.1, 0.25], "revenue_eur": [100.0, 0.0, 40.0, 20.0],
        "coupon_cost_eur": [5.0, 0.0, 5.0, 0.0], "uc_segment": "regular",
    })  # fmt: skip
    lake.write(spark.createDataFrame(logged), "training_examples", mode="overwrite", partition_by=["issue_date"])
    # a registered model trained on the run date (so no out-of-time examples yet)
    reg = Registry.from_config(cfg)
    v = reg.new_version(cfg.train.model_name)
    cal = [{"bin": "[0.0, 0.1)", "n": 10, "mean_prediction": 0.05, "observed_rate": 0.1}]
    reg.write_json(cfg.train.model_name, v, "metrics.json", {"validation": {
        "purchase": {"n": 10, "auc": 0.71, "log_loss": 0.3, "mean_prediction": 0.05, "observed_rate": 0.1,
                     "expected_calibration_error": 0.05, "calibration": cal}}})  # fmt: skip
    reg.write_json(cfg.train.model_name, v, "manifest.json", {"run_date": RUN.isoformat()})
    reg.set_latest(cfg.train.model_name, v)

    assert evaluate_run(Context(spark, cfg), RUN) == 0
    metrics = lake.read("evaluation_metrics").toPandas()
    schema = lake.read("evaluation_metrics").schema
    assert [(f.name, f.dataType) for f in schema] == [(f.name, f.dataType) for f in EVALUATION_METRICS]
    assert set(metrics["section"]) == {"model", "policy_truth", "policy_logs", "holdout", "budget", "fairness"}

    def one(section: str, metric: str, value_of: str | None = None) -> pd.Series:
        rows = metrics[(metrics["section"] == section) & (metrics["metric"] == metric)]
        if value_of is not None:
            rows = rows[rows["dimension_value"] == value_of]
        assert len(rows) == 1, (section, metric, value_of, rows)
        return rows.iloc[0]

    assert one("model", "registry_validation.auc", "purchase")["value"] == pytest.approx(0.71)
    # the model knows the truth: its allocation is the oracle's
    assert one("policy_truth", "ratio_to_oracle", "model")["value"] == pytest.approx(1.0, abs=1e-6)
    truth_value = with_true_values(treated[treated["policy"] == "model"], traits, coupons, season_logit(RUN))
    assert one("policy_truth", "true_incremental_profit", "model")["value"] == pytest.approx(
        truth_value["true_incremental_profit"].sum()
    )
    assert one("policy_truth", "ratio_to_oracle", "random")["value"] < 1.0
    # IPS of the run's policy: L1 matches (weight 10, reward 100 * 0.3 - 5 = 25), and L4, whose user has no
    # decision in the run (target: no coupon; weight 4, reward 20 * 0.3 = 6); L2, L3 do not; 4 rows
    assert one("policy_logs", "ips", "policy")["value"] == pytest.approx((10 * 25 + 4 * 6) / 4)
    # no coupon for everyone: L2 (weight 4, reward 0) and L4 (weight 4, reward 6) -> SNIPS 24 / 8
    assert one("policy_logs", "snips", "no_coupon")["value"] == pytest.approx(24 / 8)
    assert one("policy_logs", "support_share")["value"] == 1.0
    # realised uplift: model arm 4 * 15 EUR over its users, holdout 15 EUR over its users
    up = one("holdout", "uplift_per_user")
    assert up["value"] == pytest.approx(4 * 15.0 / len(model_users) - 15.0 / len(hold_users))
    assert up["ci_low"] <= up["value"] <= up["ci_high"]
    assert one("budget", "limit", "overall:amount")["value"] == pytest.approx(15.0)
    seg_users = metrics[(metrics["metric"] == "users") & (metrics["dimension"] == "segment")]["value"].sum()
    assert seg_users == alloc.loc[alloc["policy"] != "holdout", "user_id"].nunique()

    folder = tmp_path / "reports" / RUN.isoformat()
    page = (folder / "index.html").read_text()
    for png in ("calibration.png", "uplift_curve.png", "budgets.png", "policy_value.png", "value_over_days.png"):
        assert (folder / png).stat().st_size > 1000
        assert png in page
    # a rerun replaces the date's rows
    assert evaluate_run(Context(spark, cfg), RUN) == 0
    again = lake.read("evaluation_metrics").toPandas()
    assert len(again) == len(metrics) and again["run_id"].nunique() == 1


def test_evaluate_says_what_is_missing(spark: SparkSession, lake: Lake) -> None:
    """Evaluating before the allocation exists is "upstream not ready" (the command line exits 75: retry)."""
    base = Config.from_file("conf/base.yaml")
    cfg = dataclasses.replace(base, lake=lake.cfg)
    with pytest.raises(NoAllocationError, match=r"no allocation for 2026-11-09: run `coupon-spark allocate") as err:
        evaluate_run(Context(spark, cfg), RUN)
    assert err.value.exit_code == 75


def test_off_policy_rows_are_the_ones_the_model_did_not_fit(lake: Lake) -> None:
    """Before the model's training cut-off only its validation split (the training job's own hash) is kept;
    rows after it all are; without the model's training range every row stays, with a warning."""
    from coupon_spark.evaluation.job import held_out, run_model
    from coupon_spark.model.data import validation_mask
    from coupon_spark.model.registry import Registry

    cfg = dataclasses.replace(Config.from_file("conf/base.yaml"), lake=lake.cfg)
    name = cfg.train.model_name
    ids = [f"I{k:05d}" for k in range(2000)]
    dates = [dt.date(2026, 11, 1) if k < 1500 else dt.date(2026, 11, 9) for k in range(2000)]
    pdf = pd.DataFrame({"issuance_id": ids, "issue_date": dates, "reward": 1.0})
    reg, on = Registry.from_config(cfg), dt.date(2026, 11, 12)
    v = reg.new_version(name)
    reg.write_json(name, v, "train_config.json", {"validation_share": 0.2, "seed": 3})
    reg.write_json(name, v, "manifest.json", {"run_date": "2026-11-05", "training_table": {"until": "2026-11-05"}})
    kept, note = held_out(pdf, run_model(cfg, f"{name}/{v}", on))
    before = validation_mask(pd.Series(ids[:1500]), 0.2, 3)
    assert set(kept["issuance_id"]) == {i for i, b in zip(ids[:1500], before, strict=True) if b} | set(ids[1500:])
    assert 200 < before.sum() < 400 and "validation split" in note
    # a version without a manifest's training range: everything, and the note says why
    v2 = reg.new_version(name)
    reg.write_json(name, v2, "manifest.json", {"run_date": "2026-11-05"})
    everything, warn = held_out(pdf, run_model(cfg, f"{name}/{v2}", on))
    assert len(everything) == 2000 and "optimistic" in warn
    # a version that does not exist, or a model never published: everything too, and the note says why
    absent, note = held_out(pdf, run_model(cfg, f"{name}/{v2 + 5}", on))
    assert len(absent) == 2000 and "optimistic" in note
    never = run_model(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, model_name="none_such")), None, on)
    assert isinstance(never, str) and "coupon-spark train" in never
    assert held_out(pdf, never)[0] is pdf and "coupon-spark train" in held_out(pdf, never)[1]


def test_the_evaluation_does_not_import_the_simulator():
    """Production evaluation (the DAG has no simulator) imports coupon_spark.datagen only through the truth
    plug-in, and only where the lake holds the shop's truth."""
    import subprocess
    import sys

    code = (
        "import sys, coupon_spark.evaluation; "
        "print(sorted(m for m in sys.modules if m.startswith('coupon_spark.datagen')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_lake_without_the_shops_truth_has_no_truth_plug_in(spark, tmp_path):
    from coupon_spark.config import Config
    from coupon_spark.evaluation.job import find_truth

    root = Path(__file__).resolve().parents[1]
    cfg = Config.from_file(root / "conf" / "local.yaml", overrides=[f"lake.root={tmp_path}", "lake.backend=bridge"])
    assert find_truth(Lake.from_config(spark, cfg.lake), cfg) is None


# ---- sections as functions of frames (no lake) ----------------------------------------------------------------


def test_the_sections_do_not_touch_the_lake_or_the_registry() -> None:
    """Only the stage's driver reads the lake: the sections module imports neither the lake, the registry nor
    the storage layer (by AST, with a probe that must be found)."""
    import ast

    import coupon_spark.evaluation.sections as sections

    def imported(source: str) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    banned = ("coupon_spark.lake", "coupon_spark.model.registry", "coupon_spark.storage", "coupon_spark.tables")
    probe = imported("from coupon_spark.lake import Lake\ndef f():\n    import coupon_spark.model.registry\n")
    assert {m for m in probe if m.startswith(banned)} == {"coupon_spark.lake", "coupon_spark.model.registry"}
    assert not {m for m in imported(Path(sections.__file__).read_text()) if m.startswith(banned)}


def test_budget_and_holdout_sections_by_hand() -> None:
    from coupon_spark.evaluation import Evaluation, Section
    from coupon_spark.evaluation.sections import PlayedAllocation, budget_section, holdout_section

    run = {
        "run_id": "r1", "primal_value": 12.5, "dual_bound": 13.0, "gap": 0.5, "n_users": 4, "n_holdout": 2,
        "n_exploration": 0, "n_model": 2,
        "budgets": [{"name": "c1/amount", "campaign_id": "c1", "limit": 100.0, "spend": 40.0,
                     "exploration_spend": None, "use": 0.4, "multiplier": 0.0}],
    }  # fmt: skip
    b = budget_section(run)
    assert b.value("budget", "gap") == 0.5 and b.value("budget", "use", "c1/amount") == 0.4
    assert b.value("budget", "exploration_spend", "c1/amount") is None
    assert b.plots.budgets == [("c1/amount", 100.0, 40.0, 0.0)] and not b.messages

    # model arm rewards 3 and 1 (bought once), holdout 0 and 2 (bought once): uplift 2 - 1 = 1 EUR a user
    rewards = pd.DataFrame(
        {"user_id": ["a", "b", "c", "d"], "arm": ["model", "model", "holdout", "holdout"],
         "purchased": [1, 0, 0, 1], "reward": [3.0, 1.0, 0.0, 2.0]}
    )  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    cfg = Config.from_file(root / "conf" / "local.yaml", overrides=["evaluate.bootstrap_samples=200"])
    h = holdout_section(PlayedAllocation(dt.date(2026, 11, 14), dt.date(2026, 11, 15), rewards), cfg)
    assert h.value("holdout", "mean_reward", "model") == 2.0 and h.value("holdout", "mean_reward", "holdout") == 1.0
    assert h.value("holdout", "purchase_rate", "model") == 0.5
    assert h.value("holdout", "uplift_per_user") == 1.0 and h.value("holdout", "purchase_rate_uplift") == 0.0
    profit = next(m for m in h.metrics if m.metric == "incremental_profit")
    assert (profit.value, profit.n, profit.dimension_value) == (2.0, 2, "2026-11-14")
    assert profit.ci_low <= 2.0 <= profit.ci_high
    only_model = holdout_section(
        PlayedAllocation(dt.date(2026, 11, 14), dt.date(2026, 11, 15), rewards[rewards["arm"] == "model"]), cfg
    )
    assert only_model.messages == ["holdout: the allocation of 2026-11-14 has no holdout arm"]

    # a section without its inputs: one message, no rows; the evaluation keeps a plot field no section filled
    ev = Evaluation(dt.date(2026, 11, 14))
    ev.include(b)
    ev.include(Section.missing("holdout", "holdout: nothing played"))
    ev.include(h)
    assert ev.plots.budgets == b.plots.budgets and ev.messages == ["holdout: nothing played"]
    assert len(ev.metrics) == len(b.metrics) + len(h.metrics)
    assert {m.section for m in ev.metrics} == {"budget", "holdout"}
    with pytest.raises(ValueError, match="unknown evaluation section"):
        Section("holdouts")
