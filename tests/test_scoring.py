"""The scoring UDF against TensorFlow's predictions and a brute-force ranking written out in plain Python."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from coupon_spark import policy, scoring
from coupon_spark.config import ScoreConfig
from coupon_spark.model.network import build_model, export_weights
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.transform import FeatureTransform

N_USERS = 40
CFG = ScoreConfig(
    top_k=3,
    margin_rate=0.3,
    default_basket_eur=40.0,
    min_spend_factor=2.0,
    frequency_cap=2,
    targeting={"camp_b": ["vip"]},
    batch_rows=7,  # several chunks per Arrow batch
)


def make_users() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in range(N_USERS)],
            "uf_spend_90d": rng.gamma(2.0, 50.0, N_USERS),
            "uf_avg_basket_90d": np.where(np.arange(N_USERS) % 5 == 0, 0.0, rng.gamma(3.0, 15.0, N_USERS)),
            "uf_share_grocery": rng.uniform(0, 1, N_USERS),
            "uc_segment": np.where(np.arange(N_USERS) % 3 == 0, "vip", "regular"),
            "recent_coupons": np.where(np.arange(N_USERS) % 7 == 0, 2, np.arange(N_USERS) % 2),
        }
    )


COUPONS = pd.DataFrame(
    {
        "coupon_id": ["c1", "c2", "c3", "c4", "c5", "c_new"],
        "campaign_id": ["camp_a", "camp_a", "camp_b", "camp_b", "camp_c", "camp_c"],
        "cf_face_value": [5.0, 10.0, 15.0, 5.0, 20.0, 8.0],
        "cf_min_spend": [20.0, 40.0, 60.0, 0.0, 400.0, 30.0],
        "cf_cost": [5.0, 10.0, 15.0, 5.0, 20.0, 8.0],
        "cc_category": ["grocery", "all", "fashion", "grocery", "all", "books"],
    }
)

STATS = [
    {"feature": "uf_spend_90d", "kind": "numeric", "transform": "log1p_standard", "center": 4.0, "scale": 1.0},
    {"feature": "uf_avg_basket_90d", "kind": "numeric", "transform": "log1p_standard", "center": 3.5, "scale": 0.8},
    {"feature": "uf_share_grocery", "kind": "numeric", "transform": "standard", "center": 0.5, "scale": 0.3},
    {"feature": "uc_segment", "kind": "categorical", "transform": "onehot", "vocabulary": ["regular", "vip"]},
    {"feature": "cf_face_value", "kind": "numeric", "transform": "log1p_standard", "center": 2.3, "scale": 0.5},
    {"feature": "cf_min_spend", "kind": "numeric", "transform": "log1p_standard", "center": 3.0, "scale": 1.2},
    {"feature": "cf_cost", "kind": "numeric", "transform": "log1p_standard", "center": 2.3, "scale": 0.5},
    {"feature": "cc_category", "kind": "categorical", "transform": "onehot", "vocabulary": ["all", "grocery"]},
]


@pytest.fixture(scope="module")
def model_and_scorer():
    transform = FeatureTransform.from_stats(STATS)
    spec = ModelSpec(
        user_dim=transform.user_dim,
        coupon_dim=transform.coupon_dim,
        embedding_dim=4,
        hidden_units=[8],
        id_embedding_dim=3,
        user_id_buckets=16,
        coupon_ids=["c1", "c2", "c3", "c4", "c5"],  # c_new is unseen: the unknown-coupon embedding
    )
    model = build_model(spec, seed=7)
    # make the predictions spread out: scale the output layers so probabilities are not all ~0.5
    weights = {k: (v * 1.5 if "dense" in k else v) for k, v in export_weights(model).items()}
    model = build_model(spec, weights=weights)
    return model, NumpyScorer(spec, transform, weights)


def tf_predictions(model, scorer: NumpyScorer, users: pd.DataFrame) -> dict[tuple[str, str], dict[str, float]]:
    """TensorFlow's own call() on every (user, coupon) row and on the control arm."""
    t, spec = scorer.transform, scorer.spec
    n, m = len(users), len(COUPONS)
    rep = users.loc[users.index.repeat(m)].reset_index(drop=True)
    cps = pd.concat([COUPONS] * n, ignore_index=True)
    inputs = {
        "user_x": t.user_matrix(rep),
        "user_bucket": spec.user_buckets(rep["user_id"]),
        "coupon_x": t.coupon_matrix(cps),
        "coupon_index": spec.coupon_index(cps["coupon_id"]),
    }
    out = {k: v.numpy() for k, v in model(inputs).items()}
    return {
        (rep["user_id"][i], cps["coupon_id"][i]): {
            "p_purchase": float(out["p_purchase"][i]),
            "p_purchase_none": float(out["p_purchase_none"][i]),
            "p_redeem": float(out["p_redeem"][i]),
        }
        for i in range(n * m)
    }


def top_up_by_quadrature(basket: float, cv: float, min_spend: float) -> float:
    """``E[max(A, s)] - E[A]`` for ``A`` log-normal with mean ``basket`` and coefficient of variation ``cv``, by
    quadrature over the normal draw (the code has it in closed form)."""
    if min_spend <= 0:
        return 0.0
    sd = math.sqrt(math.log1p(cv * cv))
    z = np.linspace(-9.0, 9.0, 18001)
    amount = basket * np.exp(sd * z - sd * sd / 2)
    density = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return float(np.sum((np.maximum(amount, min_spend) - amount) * density) * (z[1] - z[0]))


def brute_force_top_k(users: pd.DataFrame, preds: dict, cfg: ScoreConfig) -> dict[tuple[str, str], tuple[int, float]]:
    """Every eligible pair's profit, ranked per user with sorted(): {(user, coupon): (rank, profit)}."""
    out = {}
    for u in users.itertuples():
        if u.recent_coupons >= cfg.frequency_cap:
            continue
        basket = u.uf_avg_basket_90d if u.uf_avg_basket_90d > 0 else cfg.default_basket_eur
        scored = []
        for c in COUPONS.itertuples():
            if c.cf_min_spend > cfg.min_spend_factor * basket:
                continue
            allowed = cfg.targeting.get(c.campaign_id)
            if allowed is not None and u.uc_segment not in allowed:
                continue
            p = preds[(u.user_id, c.coupon_id)]
            # a redeemer tops the basket up to the minimum spend: the margin on it lowers what a redemption costs
            cost = c.cf_cost - (cfg.margin_rate * top_up_by_quadrature(basket, cfg.basket_cv, c.cf_min_spend))
            profit = (p["p_purchase"] - p["p_purchase_none"]) * cfg.margin_rate * basket - p["p_redeem"] * cost
            scored.append((profit, c.coupon_id))
        best = sorted(scored, key=lambda pc: (-pc[0], pc[1]))[: cfg.top_k]  # ties: the smaller coupon id first
        for rank, (profit, cid) in enumerate(best, start=1):
            out[(u.user_id, cid)] = (rank, profit)
    return out


def run_udf(spark: SparkSession, scorer: NumpyScorer, users: pd.DataFrame, cfg: ScoreConfig) -> pd.DataFrame:
    live = policy.prepare_coupons(COUPONS, scorer, cfg)
    df = spark.createDataFrame(users).repartition(3)
    return scoring.score_users(df, scorer, live, cfg).toPandas()


def test_scores_equal_tensorflow_and_top_k_equals_brute_force(spark, model_and_scorer):
    model, scorer = model_and_scorer
    users = make_users()
    got = run_udf(spark, scorer, users, CFG)
    preds = tf_predictions(model, scorer, users)
    expected = brute_force_top_k(users, preds, CFG)
    assert len(expected) > 30  # the instance is not trivial
    assert {(r.user_id, r.coupon_id): r.rank for r in got.itertuples()} == {k: v[0] for k, v in expected.items()}
    for r in got.itertuples():
        p = preds[(r.user_id, r.coupon_id)]
        assert r.p_purchase == pytest.approx(p["p_purchase"], abs=1e-5)
        assert r.p_purchase_none == pytest.approx(p["p_purchase_none"], abs=1e-5)
        assert r.p_redeem == pytest.approx(p["p_redeem"], abs=1e-5)
        assert r.uplift == pytest.approx(p["p_purchase"] - p["p_purchase_none"], abs=1e-5)
        assert r.expected_profit == pytest.approx(expected[(r.user_id, r.coupon_id)][1], abs=1e-4)
        assert r.expected_cost == pytest.approx(r.p_redeem * r.coupon_cost)


def test_ineligible_coupons_never_appear(spark, model_and_scorer):
    _, scorer = model_and_scorer
    users = make_users()
    got = run_udf(spark, scorer, users, CFG).merge(users, on="user_id")
    capped = set(users.user_id[users.recent_coupons >= CFG.frequency_cap])
    assert capped and not (set(got.user_id) & capped)
    assert (got[got.campaign_id == "camp_b"].uc_segment == "vip").all()
    basket = np.where(got.uf_avg_basket_90d > 0, got.uf_avg_basket_90d, CFG.default_basket_eur)
    spend = got.coupon_id.map(dict(zip(COUPONS.coupon_id, COUPONS.cf_min_spend, strict=True)))
    assert (spend <= CFG.min_spend_factor * basket).all()
    assert "c5" not in set(got.coupon_id)  # min spend 400: implausible for every basket here


def test_chunking_does_not_change_the_result(spark, model_and_scorer):
    _, scorer = model_and_scorer
    users = make_users()
    small = run_udf(spark, scorer, users, CFG).sort_values(["user_id", "rank"]).reset_index(drop=True)
    big = run_udf(spark, scorer, users, dataclasses.replace(CFG, batch_rows=10_000))
    pd.testing.assert_frame_equal(small, big.sort_values(["user_id", "rank"]).reset_index(drop=True))


def test_live_coupons_are_valid_and_funded(spark):
    cf = spark.createDataFrame(
        [
            ("k1", "camp_a", 1.0, 0.0, 100.0),  # valid today, campaign spent 30 of 100
            ("k2", "camp_b", 0.0, 5.0, 100.0),  # expired yesterday
            ("k3", "camp_b", 3.0, -1.0, 100.0),  # starts tomorrow
            ("k4", "camp_c", 5.0, 2.0, 20.0),  # campaign spent 20 of 20: out of budget
            ("k5", "camp_d", 5.0, 2.0, 0.0),  # no budget set: unlimited
        ],
        "coupon_id string, campaign_id string, cf_days_left double, cf_days_since_start double, "
        "cf_campaign_budget double",
    )
    coupons = spark.createDataFrame(
        [("k1", "camp_a", 10.0), ("k4", "camp_c", 20.0)], "coupon_id string, campaign_id string, cost_eur double"
    )
    day = dt.date(2026, 11, 10)
    before, on = day - dt.timedelta(days=1), day
    redemptions = spark.createDataFrame(
        [("k1", before), ("k1", before), ("k1", before), ("k4", before - dt.timedelta(days=3)), ("k4", on)],
        "coupon_id string, ingest_date date",
    )
    live = {r.coupon_id for r in scoring.live_coupons(cf, redemptions, coupons, day).collect()}
    assert live == {"k1", "k5"}
    # A rerun of an earlier day: camp_c had spent nothing before 2026-11-06 (its first redemption came that day),
    # and the redemption ingested on the run date itself is not yet known to the run.
    early = scoring.live_coupons(cf, redemptions, coupons, before - dt.timedelta(days=3)).collect()
    assert {r.coupon_id for r in early} == {"k1", "k4", "k5"}
    spent = {r.campaign_id: r.spent for r in scoring.campaign_spend(redemptions, coupons, day).collect()}
    assert spent == {"camp_a": pytest.approx(30.0), "camp_c": pytest.approx(20.0)}  # k4 on the run date: not yet
    later = scoring.campaign_spend(redemptions, coupons, day + dt.timedelta(days=1)).collect()
    everything = {r.campaign_id: r.spent for r in later}
    assert everything == {"camp_a": pytest.approx(30.0), "camp_c": pytest.approx(40.0)}


def test_recent_coupons_count_only_coupons_before_the_run_date(spark):
    run = dt.date(2026, 11, 10)
    utc = dt.timezone.utc
    users = spark.createDataFrame([("a",), ("b",)], "user_id string")
    iss = spark.createDataFrame(
        [
            ("a", "c1", dt.datetime(2026, 11, 9, 23, tzinfo=utc), dt.date(2026, 11, 9)),
            ("a", None, dt.datetime(2026, 11, 8, tzinfo=utc), dt.date(2026, 11, 8)),  # control arm: no coupon
            ("a", "c2", dt.datetime(2026, 11, 2, tzinfo=utc), dt.date(2026, 11, 2)),  # 8 days before: outside 7
            ("a", "c3", dt.datetime(2026, 11, 10, 1, tzinfo=utc), dt.date(2026, 11, 10)),  # on the run date
            ("b", "c1", dt.datetime(2026, 11, 3, 0, tzinfo=utc), dt.date(2026, 11, 3)),  # exactly 7 days before
            ("b", "c2", dt.datetime(2026, 11, 9, 12, tzinfo=utc), dt.date(2026, 11, 10)),  # arrived late: not known
        ],
        "user_id string, coupon_id string, issued_at timestamp, ingest_date date",
    )
    got = {r.user_id: r.recent_coupons for r in scoring.with_recent_coupons(users, iss, run, 7).collect()}
    assert got == {"a": 1, "b": 1}


def test_the_decision_gate_zeroes_the_estimates_it_could_not_show_to_pay(model_and_scorer):
    """Positive profits at or below the model's threshold become 0 (never issued by the model arm), the rest and
    the raw estimates stay; a closed gate (inf) leaves no positive profit at all."""
    _, scorer = model_and_scorer
    users = make_users()
    live = policy.prepare_coupons(COUPONS, scorer, CFG)
    raw = scoring.score_chunk(users, scorer, live, CFG).set_index(["user_id", "coupon_id"])
    positive = raw.expected_profit[raw.expected_profit > 0]
    threshold = float(positive.median())
    gated_scorer = NumpyScorer(scorer.spec, scorer.transform, scorer.weights, decision_threshold=threshold)
    gated = scoring.score_chunk(users, gated_scorer, live, CFG).set_index(["user_id", "coupon_id"])
    both = raw.join(gated, rsuffix="_g", how="inner")
    want = np.where((both.expected_profit > 0) & (both.expected_profit <= threshold), 0.0, both.expected_profit)
    np.testing.assert_allclose(both.expected_profit_g, want, atol=1e-6)
    np.testing.assert_allclose(both.uplift_g, both.uplift, atol=1e-7)
    np.testing.assert_allclose(both.expected_cost_g, both.expected_cost, atol=1e-7)
    assert ((both.expected_profit > threshold).sum() >= 2) and ((both.expected_profit_g == 0).sum() >= 2)
    closed = NumpyScorer(scorer.spec, scorer.transform, scorer.weights, decision_threshold=float("inf"))
    shut = scoring.score_chunk(users, closed, live, CFG)
    assert len(shut) > 0 and (shut.expected_profit <= 0).all()


def test_decisions_on_the_ensemble_lower_bound(model_and_scorer, tmp_path):
    """With fold models as members, the score is the estimate less z standard deviations of the members'
    estimates, each member computed here one pair at a time from TensorFlow's own predictions; the members
    travel with the version (fold_weights.npz) and NumpyScorer.load finds them."""
    model, scorer = model_and_scorer
    spec, transform = scorer.spec, scorer.transform
    members = [export_weights(build_model(spec, seed=s)) for s in (11, 12, 13)]
    members = [{k: (v * 1.5 if "dense" in k else v) for k, v in w.items()} for w in members]
    users = make_users().head(12)
    cfg = dataclasses.replace(
        CFG, uncertainty_z=2.0, frequency_cap=10**6, targeting={}, top_up=False
    )  # the top-up: see brute_force_top_k
    # by hand: each member's profit per pair from TF, their sample sd, then profit - 2 sd
    per_member = [tf_predictions(build_model(spec, weights=w), scorer, users) for w in members]
    own = tf_predictions(model, scorer, users)
    want = {}
    for u in users.itertuples():
        basket = u.uf_avg_basket_90d if u.uf_avg_basket_90d > 0 else cfg.default_basket_eur
        for c in COUPONS.itertuples():
            if c.cf_min_spend > cfg.min_spend_factor * basket:
                continue

            def profit(p: dict[str, float], cost: float = c.cf_cost, b: float = basket) -> float:
                return (p["p_purchase"] - p["p_purchase_none"]) * cfg.margin_rate * b - p["p_redeem"] * cost

            sd = float(np.std([profit(pm[(u.user_id, c.coupon_id)]) for pm in per_member], ddof=1))
            want[(u.user_id, c.coupon_id)] = profit(own[(u.user_id, c.coupon_id)]) - 2.0 * sd
    ens = NumpyScorer(spec, transform, scorer.weights, members=[NumpyScorer(spec, transform, w) for w in members])
    coupons = policy.prepare_coupons(COUPONS, ens, cfg)
    got = scoring.score_chunk(users, ens, coupons, dataclasses.replace(cfg, top_k=len(COUPONS)))
    assert len(got) == len(want)
    for r in got.itertuples():
        assert r.expected_profit == pytest.approx(want[(r.user_id, r.coupon_id)], abs=2e-4)
    # a version folder with fold_weights.npz loads as the same ensemble
    np.savez(tmp_path / "weights.npz", **scorer.weights)
    np.savez(tmp_path / "fold_weights.npz", **{f"{k}/{n}": a for k, w in enumerate(members) for n, a in w.items()})
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "transform.json").write_text(transform.to_json())
    loaded = NumpyScorer.load(tmp_path)
    assert len(loaded.members) == 3
    again = scoring.score_chunk(
        users, loaded, policy.prepare_coupons(COUPONS, loaded, cfg), dataclasses.replace(cfg, top_k=6)
    )
    np.testing.assert_allclose(again["expected_profit"], got["expected_profit"], atol=1e-6)
    # z = 0: the point estimate
    plain = scoring.score_chunk(users, ens, coupons, dataclasses.replace(cfg, uncertainty_z=0.0, top_k=6))
    for r in plain.itertuples():
        assert r.expected_profit >= want[(r.user_id, r.coupon_id)] - 2e-4


def test_basket_cv_shrinks_a_users_own_spread_toward_the_prior():
    """cv^2 = ((n - 1) own^2 + 4 prior^2) / (n - 1 + 4); the prior alone under two orders or without history."""
    users = pd.DataFrame(
        {
            "uf_hist_orders_365d": [0.0, 1.0, 5.0, 101.0],
            "uf_hist_basket": [0.0, 30.0, 50.0, 40.0],
            "uf_hist_basket_sd": [0.0, 0.0, 50.0, 8.0],
        }
    )
    cfg = dataclasses.replace(CFG, basket_cv=0.5)
    # n = 5: own 1.0 -> (4 * 1 + 4 * 0.25) / 8 = 0.625; n = 101: own 0.2 -> (100 * 0.04 + 1) / 104
    want = [0.5, 0.5, math.sqrt(0.625), math.sqrt(5.0 / 104)]
    np.testing.assert_allclose(policy.basket_cv(users, cfg), want, rtol=1e-12)
    np.testing.assert_allclose(policy.basket_cv(users[["uf_hist_basket"]], cfg), [0.5] * 4)
    # the top-up grows as the minimum spend rises above the basket, and is 0 without one
    top = policy.expected_top_up(np.array([40.0]), np.array([0.5]), np.array([0.0, 20.0, 40.0, 80.0]))[0]
    assert top[0] == 0.0 and 0 < top[1] < top[2] < top[3] and top[3] > 80.0 - 40.0
    assert top[2] == pytest.approx(top_up_by_quadrature(40.0, 0.5, 40.0), rel=1e-4)


def test_a_past_run_date_scores_with_the_model_that_day_had(tmp_path):
    """A rerun of day D takes the newest version trained by D (not one trained on later data); a rerun that
    retrains a past day publishes for that day only (the pointer stays with the later days); a rollback of the
    ``latest`` pointer is kept; no version trained by D is an error that says what to do."""
    from coupon_spark.model.registry import ModelNotFoundError, Registry

    registry, name, day = Registry(str(tmp_path / "models")), "m", dt.date(2026, 11, 12)
    days = [day + dt.timedelta(days=n) for n in range(5)]

    def publish(trained: dt.date) -> int:  # what train.publish does last
        v = registry.new_version(name)
        registry.write_json(name, v, "manifest.json", {"version": v, "run_date": trained})
        registry.advance_latest(name, v)
        return v

    assert [publish(d) for d in days[:3]] == [1, 2, 3]  # v1..v3 trained on days 1..3
    registry.new_version(name)  # v4: a crashed run, no manifest
    assert registry.latest(name) == 3
    assert [registry.latest_as_of(name, d) for d in days] == [1, 2, 3, 3, 3]
    assert publish(days[0]) == 5 and registry.latest(name) == 3  # day 1 retrained (its inputs changed)
    assert [registry.latest_as_of(name, d) for d in days] == [5, 2, 3, 3, 3]
    registry.set_latest(name, 2)  # a rollback: v3 is not used, even on its own day
    assert [registry.latest_as_of(name, d) for d in days[:4]] == [5, 2, 2, 2]
    assert publish(days[3]) == 6 and registry.latest(name) == 6  # a later day moves on from the rollback
    with pytest.raises(ModelNotFoundError, match="coupon-spark train --run-date 2026-11-11"):
        registry.latest_as_of(name, day - dt.timedelta(days=1))
