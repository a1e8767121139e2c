"""The shop's past (datagen.backfill) and its bulk import through the cleansing job."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark.cleanse import ImportManifestError, cleanse_day, import_period
from coupon_spark.config import Config, FeaturesConfig
from coupon_spark.datagen.backfill import (
    POLICY_NAME,
    backfill_frames,
    backfill_period,
    historic_coupons,
    write_backfill,
)
from coupon_spark.datagen.response import CouponParams, UserTraits, logit_shift_and_use, response_pairs
from coupon_spark.datagen.world import users_frame
from coupon_spark.features import build_features, import_plan
from coupon_spark.lake import Lake

FIRST_LOGGED = dt.date(2026, 10, 29)


def _cfg(tmp_path: Path, users: int = 400, days: int = 60) -> Config:
    return Config.from_file(
        "conf/local.yaml",
        overrides=[
            f"lake.root={tmp_path / 'lake'}",
            f"lake.landing={tmp_path / 'landing'}",
            f"shop.users={users}",
            f"shop.backfill_days={days}",
            "shop.backfill_issue_rate=0.3",
            "shop.partitions=2",
        ],
    )


def test_logit_shift_reproduces_the_response_model() -> None:
    """p(c) = sigmoid(alpha + season + tau) with tau, use from logit_shift_and_use equals response_pairs."""
    rng = np.random.default_rng(3)
    n = 50
    taste = rng.dirichlet(np.ones(8), n)
    traits = UserTraits(
        alpha=rng.normal(-2, 1, n),
        price_sensitivity=rng.random(n),
        basket_eur=rng.gamma(3, 20, n),
        margin_rate=rng.uniform(0.1, 0.5, n),
        taste=taste,
        kind_response=rng.normal(0, 1, (n, 3)),
    )
    coupons = CouponParams.from_pandas(historic_coupons(dt.date(2026, 1, 1), dt.date(2026, 2, 1)))
    tau, use = logit_shift_and_use(traits, coupons)
    season = -0.1
    for j in range(len(coupons.coupon_id)):
        want = response_pairs(traits, coupons, np.full(n, j), season)
        p = 1 / (1 + np.exp(-(traits.alpha + season + tau[:, j])))
        np.testing.assert_allclose(p, want.p_purchase, rtol=1e-9)
        np.testing.assert_allclose(p * use[:, j], want.p_redeem, rtol=1e-9)
    none = response_pairs(traits, coupons, np.full(n, -1), season)
    np.testing.assert_allclose(1 / (1 + np.exp(-(traits.alpha + season))), none.p_purchase, rtol=1e-12)


def test_backfill_records_are_consistent_and_leave_the_traits_traces(spark: SparkSession, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, users=1500, days=90)
    first, last = backfill_period(cfg.shop, FIRST_LOGGED)
    assert (first, last) == (dt.date(2026, 7, 31), dt.date(2026, 10, 28))
    users = users_frame(spark, cfg.shop)
    iss, orders, red, coupons, facts = backfill_frames(spark, users, cfg.shop, first, last)
    try:
        i, o, r = iss.toPandas(), orders.toPandas(), red.toPandas()
    finally:
        facts.unpersist()
    truth = users.toPandas().set_index("user_id")
    # issuances: the promotion's policy, its catalogue, the control share and the propensities it logged
    assert set(i["policy"]) == {POLICY_NAME}
    assert set(i["coupon_id"].dropna()) <= set(coupons["coupon_id"])
    control = i["coupon_id"].isna()
    assert np.allclose(i.loc[control, "propensity"], 0.25) and np.allclose(i.loc[~control, "propensity"], 0.75 / 9)
    assert 0.2 < control.mean() < 0.3
    assert i["issuance_id"].is_unique and o["order_id"].is_unique
    days = pd.to_datetime(i["issued_at"]).dt.date
    assert days.min() >= first and days.max() <= last
    # nobody acts before signing up
    signup = truth.loc[o["user_id"], "signup_date"].to_numpy()
    assert (pd.to_datetime(o["ordered_at"]).dt.date.to_numpy() >= signup).all()
    # a redemption is an order with the coupon issued to that user that day, at least its minimum spend
    red_orders = o[o["coupon_id"].notna()].merge(i, on="issuance_id", suffixes=("", "_i"))
    assert len(red_orders) == o["coupon_id"].notna().sum() == len(r)
    assert (red_orders["user_id"] == red_orders["user_id_i"]).all()
    assert (red_orders["coupon_id"] == red_orders["coupon_id_i"]).all()
    assert (pd.to_datetime(red_orders["ordered_at"]) >= pd.to_datetime(red_orders["issued_at"])).all()
    min_spend = coupons.set_index("coupon_id").loc[red_orders["coupon_id"], "min_spend_eur"].to_numpy()
    assert (red_orders["amount_eur"].to_numpy() >= min_spend + 0.5 - 1e-9).all()
    # the traces: a coupon-averse shopper buys less on the days a coupon arrives, a persuadable one more
    o_day = o.assign(day=pd.to_datetime(o["ordered_at"]).dt.date)[["user_id", "day"]].drop_duplicates()
    i_day = i.assign(day=pd.to_datetime(i["issued_at"]).dt.date, coupon=~control)
    got = i_day.merge(o_day.assign(bought=1), on=["user_id", "day"], how="left").fillna({"bought": 0})
    resp = np.stack(truth.loc[got["user_id"], "kind_response"].to_numpy()).mean(axis=1)
    got["group"] = np.where(resp < -0.3, "averse", np.where(resp > 0.5, "persuadable", "other"))
    rate = got.groupby(["group", "coupon"])["bought"].mean()
    assert rate[("averse", True)] < rate[("averse", False)]
    assert rate[("persuadable", True)] > rate[("persuadable", False)]


def test_import_manifest_is_checked(tmp_path: Path) -> None:
    d = dt.date(2026, 10, 28)
    assert import_period(None, d, "m") is None
    p = import_period({"kind": "import", "covers": {"from": "2026-10-01", "to": "2026-10-28"}}, d, "m")
    assert p is not None and len(p.days) == 28 and p.days[0] == dt.date(2026, 10, 1)
    with pytest.raises(ImportManifestError, match="folder of its last day"):
        import_period({"kind": "import", "covers": {"from": "2026-10-01", "to": "2026-10-27"}}, d, "m")
    with pytest.raises(ImportManifestError, match="not an import manifest"):
        import_period({"kind": "snapshot"}, d, "m")


def test_bulk_import_lands_each_fact_on_its_day_and_reruns_replace(spark: SparkSession, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, users=300, days=30)
    lake = Lake.from_config(spark, cfg.lake)
    first, last = backfill_period(cfg.shop, FIRST_LOGGED)
    users = users_frame(spark, cfg.shop)
    counts = write_backfill(spark, cfg, users, FIRST_LOGGED)
    manifest = json.loads((tmp_path / "landing" / last.isoformat() / "manifest.json").read_text())
    assert manifest["kind"] == "import" and manifest["covers"] == {"from": str(first), "to": str(last)}
    # a fact outside the period is quarantined, not imported onto a wrong day
    orders_file = tmp_path / "landing" / last.isoformat() / "orders.csv"
    lines = orders_file.read_text().splitlines()
    early = lines[1].split(",")
    early[0], early[2] = "OLD-1", f"{first - dt.timedelta(days=1)}T12:00:00Z"
    late = lines[1].split(",")
    late[0], late[2] = "LATE-1", f"{last + dt.timedelta(days=1)}T00:10:00Z"
    orders_file.write_text("\n".join([*lines, ",".join(early), ",".join(late)]) + "\n")

    res = cleanse_day(spark, lake, cfg, last)
    assert res.period is not None and res.period.first == first
    o = res.sources["orders"]
    assert o.records_read == counts["orders"] + 2 and o.accepted == counts["orders"]
    assert o.quarantined_by_reason == {"stale_timestamp": 1, "future_timestamp": 1}
    silver = lake.read("orders").select("ingest_date", F.to_date("ordered_at").alias("d")).toPandas()
    assert (silver["ingest_date"] == silver["d"]).all()  # each fact on its own day
    assert silver["ingest_date"].min() >= first and silver["ingest_date"].max() <= last
    assert lake.read("users").select("valid_from", "valid_to").distinct().collect() == [(last, None)]
    n_iss = lake.read("issuances").count()
    assert n_iss == counts["issuances"]
    # a rerun replaces every covered day: nothing doubles
    cleanse_day(spark, lake, cfg, last, force=True)
    assert lake.read("orders").count() == counts["orders"] and lake.read("issuances").count() == n_iss


def test_import_plan_maps_each_issue_date_to_its_snapshot() -> None:
    cfg = FeaturesConfig(import_snapshot_days=7, import_min_history_days=10)
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    plan = import_plan(days, cfg, closed_to=dt.date(2026, 2, 5), done={dt.date(2026, 1, 20)})
    # first snapshot 01-11; then 01-18, 01-25, 02-01; nothing before 01-11, after 02-05 or already done
    assert min(plan) == dt.date(2026, 1, 11) and max(plan) == dt.date(2026, 2, 5)
    assert dt.date(2026, 1, 20) not in plan and len(plan) == 26 - 1
    assert plan[dt.date(2026, 1, 11)] == plan[dt.date(2026, 1, 17)] == dt.date(2026, 1, 11)
    assert plan[dt.date(2026, 1, 18)] == dt.date(2026, 1, 18) and plan[dt.date(2026, 2, 5)] == dt.date(2026, 2, 1)
    assert import_plan([], cfg, dt.date(2026, 2, 5)) == {}


def test_imported_promotion_becomes_point_in_time_training_examples_once(spark: SparkSession, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, users=300, days=40)
    cfg = replace(cfg, features=replace(cfg.features, import_snapshot_days=10, import_min_history_days=15))
    lake = Lake.from_config(spark, cfg.lake)
    first, last = backfill_period(cfg.shop, FIRST_LOGGED)
    write_backfill(spark, cfg, users_frame(spark, cfg.shop), FIRST_LOGGED)
    cleanse_day(spark, lake, cfg, last)
    s = build_features(spark, lake, cfg, FIRST_LOGGED)
    snaps = [first + dt.timedelta(days=15), first + dt.timedelta(days=25), first + dt.timedelta(days=35)]
    assert sorted(set(s.imported.values())) == snaps and min(s.imported) == snaps[0] and max(s.imported) == last
    ex = lake.read("training_examples").toPandas()
    iss = lake.read("issuances").toPandas()
    iss["day"] = pd.to_datetime(iss["issued_at"]).dt.date
    want = iss[(iss["policy"] == POLICY_NAME) & (iss["day"] >= snaps[0])]
    assert len(ex) == len(want) and set(ex["issuance_id"]) == set(want["issuance_id"])
    # every row sees the coupons its user got before the row's snapshot, and none after (point in time)
    ex["snap"] = [s.imported[pd.Timestamp(d).date()] for d in ex["issue_date"]]
    treated = iss[iss["coupon_id"].notna()]
    for _, row in ex.sample(40, random_state=1).iterrows():
        seen = treated[(treated["user_id"] == row["user_id"]) & (treated["day"] < row["snap"])]
        assert row["uf_resp_issued_all"] == len(seen)
    # the historic coupons' terms reach the rows (the catalogue was landed once, at the import's end)
    on = ex[ex["coupon_id"].notna()]
    assert (on["cf_face_value"] > 0).all() and (on["cc_category"] == "all").all()
    # a second run finds the rows there and builds none again
    again = build_features(spark, lake, cfg, FIRST_LOGGED)
    assert again.imported == {} and lake.read("training_examples").count() == len(ex)
