"""Feature tables on a tiny hand-made shop: every expected value below is worked out by hand."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from coupon_spark import features, tables
from coupon_spark.config import Config
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.model.data import read_files, snapshot_files
from coupon_spark.schemas import COUPONS, EVENTS, ISSUANCES, ORDERS, REDEMPTIONS, TRAINING_EXAMPLES_KEYS, USERS

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
AS_OF = dt.date(2026, 11, 1)


def ts(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def d(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def eur(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


USERS_ROWS = [
    # user_id, signup_date, region, city, device, segment, updated_at, valid_from, valid_to (the type-2 dimension
    # of two exports: 10-01 with u1 on android, 10-31 with u1 on ios, u2 and u3)
    (
        "u1",
        d("2026-01-01"),
        "DE",
        "Berlin",
        "android",
        "regular",
        ts(d("2026-01-01")),
        d("2026-10-01"),
        d("2026-10-31"),
    ),
    ("u1", d("2026-01-01"), "DE", "Berlin", "ios", "regular", ts(d("2026-10-01")), d("2026-10-31"), None),
    ("u2", d("2026-10-15"), "FR", "Paris", "web", "new", ts(d("2026-10-15")), d("2026-10-31"), None),
    ("u3", d("2026-11-01"), "DE", "Bonn", "web", "new", ts(d("2026-11-01")), d("2026-10-31"), None),  # signs up AS_OF
]
COUPON_ROWS = [
    # coupon_id, campaign_id, kind, category, face, min_spend, cost, valid_from, valid_to, budget, updated_at, ingest
    (
        "c1",
        "camp1",
        "fixed",
        "grocery",
        eur(5),
        eur(20),
        eur(5),
        d("2026-10-01"),
        d("2026-11-10"),
        eur(1000),
        ts(d("2026-10-01")),
        d("2026-10-20"),
    ),
]
ORDER_ROWS = [
    # order_id, user_id, ordered_at, category, amount, discount, coupon_id, n_items, currency, updated_at, ingest
    ("o1", "u1", ts(d("2026-09-15")), "grocery", eur(100), eur(0), None, 3, "EUR", None, d("2026-09-15")),
    ("o2", "u1", ts(d("2026-10-25")), "grocery", eur(10), eur(0), None, 1, "EUR", None, d("2026-10-25")),
    ("o3", "u1", ts(d("2026-10-30")), "fashion", eur(30), eur(5), "c1", 1, "EUR", None, d("2026-10-30")),
    # late: happened on Oct 20 but arrived on AS_OF itself, so it was not known before AS_OF
    ("o4", "u1", ts(d("2026-10-20")), "fashion", eur(999), eur(0), None, 1, "EUR", None, d("2026-11-01")),
    # on AS_OF: not before it
    ("o5", "u2", ts(d("2026-11-01"), 1), "grocery", eur(50), eur(0), None, 1, "EUR", None, d("2026-11-01")),
]
EVENT_ROWS = [
    # event_id, type, user, event_time, session, product, category, price, order_id, ingest
    ("e1", "view", "u1", ts(d("2026-10-31")), "s1", "p1", "grocery", eur(5), None, d("2026-10-31")),
    ("e2", "view", "u1", ts(d("2026-10-31")), "s1", "p2", "grocery", eur(15), None, d("2026-10-31")),
    ("e3", "cart", "u1", ts(d("2026-10-31")), "s1", "p2", "grocery", eur(15), None, d("2026-10-31")),
    ("e4", "view", "u1", ts(d("2026-11-01")), "s2", "p3", "fashion", eur(80), None, d("2026-11-01")),
    ("e5", "view", "u2", ts(d("2026-10-10")), "s3", "p3", "fashion", eur(80), None, d("2026-10-10")),
]
ISSUANCE_ROWS = [
    # issuance_id, user_id, coupon_id, issued_at, policy, propensity, ingest
    ("i1", "u1", "c1", ts(d("2026-10-28"), 9), "random", 0.25, d("2026-10-28")),
]
REDEMPTION_ROWS = [
    # redemption_id, issuance_id, user_id, coupon_id, order_id, redeemed_at, discount, ingest
    ("r1", "i1", "u1", "c1", "o3", ts(d("2026-10-30")), eur(5), d("2026-10-30")),
]


@pytest.fixture()
def cfg(tmp_path) -> Config:
    return Config.from_file(
        ROOT / "conf" / "local.yaml",
        overrides=[f"lake.root={tmp_path / 'lake'}", "features.outcome_window_days=7"],  # windows over days
    )


@pytest.fixture()
def shop(spark: SparkSession, cfg: Config) -> Lake:
    lake = Lake(spark, cfg.lake, BridgeBackend(spark))
    for name, schema, rows in [
        ("users", USERS, USERS_ROWS),
        ("coupons", COUPONS, COUPON_ROWS),
        ("orders", ORDERS, ORDER_ROWS),
        ("events", EVENTS, EVENT_ROWS),
        ("issuances", ISSUANCES, ISSUANCE_ROWS),
        ("redemptions", REDEMPTIONS, REDEMPTION_ROWS),
    ]:
        lake.write(spark.createDataFrame(rows, schema), name, partition_by=[] if name == "users" else ["ingest_date"])
    return lake


def user_rows(lake: Lake, cfg: Config, as_of: dt.date) -> dict[str, dict]:
    df = features.user_features(
        lake.read("users"),
        lake.read("orders"),
        lake.read("events"),
        lake.read("issuances"),
        lake.read("redemptions"),
        [as_of],
        list(cfg.cleanse.categories),
        cfg.features,
    )
    return {r["user_id"]: r.asDict() for r in df.collect()}


def test_rfm_category_shares_and_coupon_history_by_hand(shop, cfg):
    got = user_rows(shop, cfg, AS_OF)
    assert set(got) == {"u1", "u2"}  # u3 signs up on AS_OF itself
    u1 = got["u1"]
    # orders known before Nov 1: o1 (Sep 15, 100 grocery), o2 (Oct 25, 10 grocery), o3 (Oct 30, 30 fashion)
    expected = {
        "uf_tenure_days": 304.0,  # Jan 1 -> Nov 1
        "uf_recency_days": 2.0,  # last order Oct 30
        "uf_orders_7d": 2.0,  # Oct 25..31: o2, o3
        "uf_spend_7d": 40.0,
        "uf_orders_30d": 2.0,
        "uf_spend_30d": 40.0,
        "uf_orders_90d": 3.0,
        "uf_spend_90d": 140.0,
        "uf_avg_basket_90d": 140.0 / 3,
        "uf_share_grocery": 110.0 / 140,
        "uf_share_fashion": 30.0 / 140,
        "uf_share_books": 0.0,
        "uf_views_7d": 2.0,  # e1, e2 (e4 is on Nov 1)
        "uf_views_30d": 2.0,
        "uf_carts_30d": 1.0,
        "uf_sessions_30d": 1.0,
        "uf_avg_viewed_price_30d": 10.0,  # (5 + 15) / 2
        "uf_orders_per_session_30d": 2.0,
        "uf_coupons_issued_90d": 1.0,
        "uf_coupons_redeemed_90d": 1.0,
        "uf_redemption_rate_90d": 1.0,
        "uf_avg_discount_taken_90d": 5.0,
        "uf_discount_order_share_90d": 1.0 / 3,
        "uf_recent_order_share_7d": 2.0 / 3,
    }
    for key, want in expected.items():
        assert u1[key] == pytest.approx(want), key
    assert (u1["uc_region"], u1["uc_device"], u1["uc_segment"]) == ("DE", "ios", "regular")

    u2 = got["u2"]  # no order before Nov 1 (o5 is on Nov 1): recency is the cap, counts are zero
    assert u2["uf_recency_days"] == cfg.features.recency_cap_days
    assert u2["uf_orders_90d"] == 0.0 and u2["uf_spend_90d"] == 0.0 and u2["uf_share_grocery"] == 0.0
    assert u2["uf_views_30d"] == 1.0 and u2["uf_views_7d"] == 0.0  # e5 on Oct 10
    assert u2["uf_tenure_days"] == 17.0
    assert not any(v is None for v in u2.values())


def test_late_record_counts_from_the_day_it_arrived(shop, cfg):
    # o4 (Oct 20, 999 EUR) arrived on Nov 1: unknown as of Nov 1, known (on day Nov 1) as of Nov 2
    nov2 = user_rows(shop, cfg, d("2026-11-02"))["u1"]
    assert nov2["uf_orders_7d"] == 2.0  # known days Oct 26..Nov 1: o3 and the late o4 (o2, Oct 25, is out)
    assert nov2["uf_spend_7d"] == pytest.approx(1029.0)
    assert nov2["uf_spend_90d"] == pytest.approx(1139.0)
    assert nov2["uf_recency_days"] == 1.0


def test_several_snapshots_in_one_pass_equal_one_at_a_time(shop, cfg, spark):
    dates = [d("2026-10-28"), AS_OF, d("2026-11-02")]
    args = (
        shop.read("users"),
        shop.read("orders"),
        shop.read("events"),
        shop.read("issuances"),
        shop.read("redemptions"),
    )
    together = features.user_features(*args, dates, list(cfg.cleanse.categories), cfg.features)
    for day in dates:
        alone = features.user_features(*args, [day], list(cfg.cleanse.categories), cfg.features)
        assert_df_equality(
            together.where(together.as_of_date == day), alone, ignore_row_order=True, ignore_nullable=True
        )


def test_the_daily_run_advances_yesterdays_sums_to_the_full_recomputation(shop, cfg, spark, monkeypatch):
    """Oct 30 is built over its whole reach; Oct 31, Nov 1 and Nov 2 each advance the day before's window sums
    (e4 and the late o4 become known on Nov 1). Every snapshot equals the recomputation from silver bit for bit.
    A cleanse rerun of an ingest date inside the reach (new files) makes the next run build in full again."""
    monkeypatch.setattr(features, "STATE_KEEP_DAYS", 1)  # the sums of the run date and the day before stay
    # a control issuance on Oct 1: its examples are written by the first build; no later ingest date can change
    # them (its window closed on Oct 8, the lateness limit is 7 days), so the advancing runs leave them alone
    oct1 = [("i0", "u1", None, ts(d("2026-10-01"), 9), "random", 0.5, d("2026-10-01"))]
    shop.write(spark.createDataFrame(oct1, ISSUANCES), "issuances", mode="append")

    def recomputed(day: dt.date):
        silver = [shop.read(t) for t in ("users", "orders", "events", "issuances", "redemptions")]
        cats = list(cfg.cleanse.categories)
        return features.user_features(*silver, [day], cats, cfg.features, coupons=shop.read("coupons"))

    # users: u1 from the Oct 1 snapshot; u2 (and u3, who signs up on Nov 1) from the one ingested on Oct 31
    users = {d("2026-10-30"): 1, d("2026-10-31"): 1, AS_OF: 2, d("2026-11-02"): 3}
    for i, day in enumerate(users):
        summary = features.build_features(spark, shop, cfg, day)
        assert summary.incremental == (i > 0), day
        assert summary.issue_dates == ([] if i > 0 else [d("2026-10-01")]), day
        got = shop.read("user_features", where={"as_of_date": day})
        assert got.count() == users[day], day
        assert_df_equality(got, recomputed(day).select(*got.columns), ignore_row_order=True, ignore_nullable=True)
    nov2 = shop.read("user_features", where={"as_of_date": d("2026-11-02")}).where("user_id = 'u1'").first()
    assert nov2["uf_spend_7d"] == 1029.0 and nov2["uf_hist_basket"] == pytest.approx(1139.0 / 4)  # o4 counted
    # the late o4's partition cleansed again: new files in the reach of Nov 2's sums, so Nov 3 builds in full
    again = shop.read("orders", where={"ingest_date": AS_OF})
    shop.write(again, "orders", mode="overwrite", replace_where={"ingest_date": AS_OF})
    assert not features.build_features(spark, shop, cfg, d("2026-11-03")).incremental
    assert shop.dates(tables.USER_WINDOW_SUMS) == [d("2026-11-02"), d("2026-11-03")]
    got = shop.read("user_features", where={"as_of_date": d("2026-11-03")})
    assert_df_equality(got, recomputed(d("2026-11-03")).select(*got.columns), ignore_row_order=True,
                       ignore_nullable=True)  # fmt: skip


def test_training_examples_control_rows_outcomes_and_no_leakage(shop, cfg, spark):
    # a control issuance on Oct 28 (u2's window, Oct 28 10:00 .. Nov 4 00:00, sees its Nov 1 purchase) and Oct 20
    extra = spark.createDataFrame(
        [
            ("i2", "u2", None, ts(d("2026-10-28"), 10), "random", 0.5, d("2026-10-28")),
            ("i3", "u2", None, ts(d("2026-10-20"), 10), "random", 0.5, d("2026-10-20")),
        ],
        ISSUANCES,
    )
    shop.write(extra, "issuances")
    run_date = d("2026-11-05")  # issue dates closed: D + 7 days <= Nov 5, so D <= Oct 29
    summary = features.build_features(spark, shop, cfg, run_date)
    assert summary.issue_dates == [d("2026-10-20"), d("2026-10-28")]
    ex = {r["issuance_id"]: r.asDict() for r in shop.read("training_examples").collect()}
    assert set(ex) == {"i1", "i2", "i3"}
    i1, i2, i3 = ex["i1"], ex["i2"], ex["i3"]
    # treated: o3 (Oct 30, 30 - 5 discount) within [Oct 28 09:00, Nov 4 00:00); redeemed; cost of c1 is 5
    # revenue at list price (30, not 30 - 5): the discount is the coupon's cost, counted once in coupon_cost_eur
    assert (i1["purchased"], i1["redeemed"], i1["revenue_eur"], i1["coupon_cost_eur"]) == (1, 1, 30.0, 5.0)
    assert (i1["cc_category"], i1["cf_face_value"], i1["cf_min_spend"]) == ("grocery", 5.0, 20.0)
    assert i1["cf_discount_ratio"] == pytest.approx(0.25)
    assert i1["cf_days_left"] == 14.0  # valid to Nov 10, as of Oct 28: Oct 28..Nov 10
    assert i1["propensity"] == 0.25
    # control arm: no coupon, propensity kept, coupon features of the "none" arm
    assert i2["coupon_id"] is None and i2["propensity"] == 0.5
    assert (i2["cc_kind"], i2["cc_category"], i2["cf_face_value"]) == ("none", "none", 0.0)
    # o5 (u2, Nov 1 01:00, 50 EUR) is inside [Oct 28 10:00, Nov 4 00:00): the control user bought anyway
    assert (i2["purchased"], i2["redeemed"], i2["revenue_eur"], i2["coupon_cost_eur"]) == (1, 0, 50.0, 0.0)
    assert i3["purchased"] == 0  # Oct 20 .. Oct 27 00:00: nothing
    # point in time: i1's user features are the snapshot of Oct 28 -- o3 (Oct 30) is not in them
    assert i1["uf_orders_90d"] == 2.0 and i1["uf_spend_90d"] == 110.0 and i1["uf_recency_days"] == 3.0
    assert set(TRAINING_EXAMPLES_KEYS.fieldNames()) <= set(i1)


def test_one_day_window_is_the_rest_of_the_issue_day(shop, cfg, spark):
    """With ``outcome_window_days=1`` (a coupon valid on its issue day) only the issue day after ``issued_at``
    counts, and the issue day becomes a training example the next morning."""
    from dataclasses import replace

    one = replace(cfg, features=replace(cfg.features, outcome_window_days=1))
    shop.write(
        spark.createDataFrame(
            [
                ("o9", "u1", ts(d("2026-10-28"), 18), "books", eur(70), eur(0), None, 1, "EUR", None, d("2026-10-28")),
                ("o10", "u2", ts(d("2026-10-30"), 1), "books", eur(20), eur(0), None, 1, "EUR", None, d("2026-10-30")),
            ],
            ORDERS,
        ),
        "orders",
    )
    control = [("i2", "u2", None, ts(d("2026-10-29"), 10), "random", 0.5, d("2026-10-29"))]
    shop.write(spark.createDataFrame(control, ISSUANCES), "issuances")
    summary = features.build_features(spark, shop, one, d("2026-10-30"))
    assert summary.issue_dates == [d("2026-10-28"), d("2026-10-29")]  # Oct 29 closed at Oct 30 00:00
    ex = {r["issuance_id"]: r.asDict() for r in shop.read("training_examples").collect()}
    # i1 (Oct 28 09:00): o9 at 18:00 counts; o3 and its redemption (Oct 30) are after the window
    assert (ex["i1"]["purchased"], ex["i1"]["revenue_eur"], ex["i1"]["redeemed"]) == (1, 70.0, 0)
    assert ex["i1"]["outcome_window_days"] == 1
    # i2 (Oct 29 10:00): o10 on Oct 30 01:00 is the next day
    assert (ex["i2"]["purchased"], ex["i2"]["revenue_eur"]) == (0, 0.0)


def test_purchase_after_issuance_changes_outcome_not_features(shop, cfg, spark):
    run_date = d("2026-11-06")
    features.build_features(spark, shop, cfg, run_date)
    before = {r["issuance_id"]: r.asDict() for r in shop.read("training_examples").collect()}["i1"]
    later = spark.createDataFrame(
        [("o9", "u1", ts(d("2026-10-28"), 18), "books", eur(70), eur(0), None, 1, "EUR", None, d("2026-10-28"))],
        ORDERS,
    )
    shop.write(later, "orders")  # bought on the issue day, after the issuance
    features.build_features(spark, shop, cfg, run_date)
    after = {r["issuance_id"]: r.asDict() for r in shop.read("training_examples").collect()}["i1"]
    feats = [k for k in before if k.startswith(("uf_", "uc_", "cf_", "cc_"))]
    assert {k: before[k] for k in feats} == {k: after[k] for k in feats}
    assert after["revenue_eur"] == before["revenue_eur"] + 70.0


def test_rerun_leaves_tables_identical(shop, cfg, spark):
    run_date = d("2026-11-05")
    features.build_features(spark, shop, cfg, run_date)
    tables = ("user_features", "coupon_features", "training_examples", "feature_stats")

    def content(t: str) -> list[tuple]:
        df = shop.read(t)
        return sorted(map(tuple, (df.drop("source_version") if t == "feature_stats" else df).collect()))

    snap = {t: content(t) for t in tables}
    versions = {t: shop.version(t) for t in tables}
    features.build_features(spark, shop, cfg, run_date)
    for t in tables:
        assert content(t) == snap[t], t
        assert shop.version(t) == versions[t] + 1  # replaced, not appended
    # the statistics point at the feature tables' versions they were computed from
    stats = {r["source_table"]: r["source_version"] for r in shop.read("feature_stats").collect()}
    assert stats == {"user_features": shop.version("user_features"), "coupon_features": shop.version("coupon_features")}


def test_feature_stats_match_numpy(shop, cfg, spark):
    run_date = d("2026-11-05")
    features.build_features(spark, shop, cfg, run_date)
    stats = {r["feature"]: r.asDict() for r in shop.read("feature_stats").collect()}
    uf = shop.read("user_features", where={"as_of_date": run_date}).toPandas()
    import numpy as np

    s = stats["uf_spend_90d"]
    assert s["transform"] == "log1p_standard" and s["source_table"] == "user_features"
    x = np.log1p(uf["uf_spend_90d"].to_numpy())
    assert s["center"] == pytest.approx(x.mean()) and s["scale"] == pytest.approx(x.std())
    share = stats["uf_share_grocery"]
    assert share["transform"] == "standard"
    assert share["center"] == pytest.approx(uf["uf_share_grocery"].mean())
    assert stats["uc_region"]["vocabulary"] == ["DE", "FR"]
    assert stats["cc_category"]["vocabulary"] == ["grocery"]
    assert s["source_version"] == shop.version("user_features")


@pytest.mark.parametrize(
    "run_date, table, first, earliest_run",
    [
        # the users snapshot of Oct 1 is not known before Oct 1: the first run date with users is Oct 2
        ("2026-10-01", "users", "2026-10-01", "2026-10-02"),
        # users are there, but the catalogue arrives on Oct 20 (a snapshot of D takes one ingested on or before D)
        ("2026-10-05", "coupons", "2026-10-20", "2026-10-20"),
    ],
)
def test_a_date_before_any_data_is_refused_and_nothing_is_written(
    shop, cfg, spark, run_date, table, first, earliest_run
):
    with pytest.raises(features.MissingInputError) as err:
        features.build_features(spark, shop, cfg, d(run_date))
    assert str(err.value) == (
        f"no data to build features as of {run_date}: silver table {table!r} ({shop.location(table)}) has no "
        f"snapshot ingested {'before' if table == 'users' else 'on or before'} {run_date} (its first is {first}). "
        f"Nothing was written: run `coupon-spark features --run-date {earliest_run}` or later, or cleanse an "
        "earlier ingest date first"
    )
    assert err.value.exit_code == 75  # the command line: upstream not ready, retry later
    written = [t for t in ("user_features", "coupon_features", "feature_stats", "training_examples") if shop.exists(t)]
    assert written == []


def random_shop(n_users: int, seed: int) -> dict[str, list[tuple]]:
    """A shop of ``n_users`` with several orders, views and coupons per user and day, in cents and random: sums
    whose value depends on the order they are added in, if added as doubles."""
    import numpy as np

    rng = np.random.default_rng(seed)
    start = d("2026-10-01")
    kinds = {"c1": "price_off", "c2": "free_shipping", "c3": "bonus_points"}
    rows: dict[str, list[tuple]] = {"users": [], "orders": [], "events": [], "issuances": [], "redemptions": []}
    rows["coupons"] = [
        (c, f"camp{c}", k, "grocery", eur(5), eur(10), eur(2), start, d("2026-12-01"), eur(10_000), ts(start), start)
        for c, k in kinds.items()
    ]
    for u in range(n_users):
        uid = f"u{u:04d}"
        rows["users"].append((uid, start - dt.timedelta(days=int(rng.integers(0, 60))), "DE", "Berlin", "web",
                              "regular", ts(start), start, None))  # fmt: skip
        for k in range(int(rng.integers(0, 12))):
            day = start + dt.timedelta(days=int(rng.integers(0, 30)))
            amount, disc = eur(rng.integers(100, 30_000) / 100), eur(rng.integers(0, 3) * 1.37)
            rows["orders"].append((f"o{u}_{k}", uid, ts(day, int(rng.integers(0, 24))), "grocery", amount, disc,
                                   None, 1, "EUR", None, day))  # fmt: skip
        for k in range(int(rng.integers(0, 10))):
            day = start + dt.timedelta(days=int(rng.integers(0, 30)))
            rows["events"].append((f"e{u}_{k}", "view", uid, ts(day), f"s{u}_{k % 3}", "p1", "grocery",
                                   eur(rng.integers(100, 9_000) / 100), None, day))  # fmt: skip
        for k in range(int(rng.integers(0, 6))):
            day = start + dt.timedelta(days=int(rng.integers(0, 30)))
            coupon = f"c{int(rng.integers(1, 4))}"
            iid = f"i{u}_{k}"
            rows["issuances"].append((iid, uid, coupon, ts(day, 9), "random", 0.25, day))
            if rng.random() < 0.4:
                rows["redemptions"].append((f"r{u}_{k}", iid, uid, coupon, f"o{u}_0", ts(day, 10),
                                            eur(rng.integers(1, 500) / 100), day))  # fmt: skip
    return rows


def test_features_do_not_depend_on_the_order_spark_adds_rows_in(spark, tmp_path):
    """The same silver rows, landed in one file in one order and in five files in another, give bit-identical
    feature tables and statistics. Spark adds a sum's rows in the order its tasks deliver them, which changes
    from run to run; doubles added in another order differ in the last bits, and the model trained on them
    differs (README, "Model quality": the demo's figures moved between runs of the same world)."""
    from pyspark.sql import functions as F

    rows = random_shop(400, seed=3)
    schemas = {"users": USERS, "coupons": COUPONS, "orders": ORDERS, "events": EVENTS, "issuances": ISSUANCES,
               "redemptions": REDEMPTIONS}  # fmt: skip
    tables = ("user_features", "coupon_features", "training_examples", "feature_stats")
    run_date = d("2026-11-02")
    out = []
    for layout in ("one", "five"):
        cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={tmp_path / layout}"])
        lake = Lake(spark, cfg.lake, BridgeBackend(spark))
        for name, schema in schemas.items():
            df = spark.createDataFrame(rows[name], schema)
            first = schema.fieldNames()[0]
            df = (df.coalesce(1).orderBy(first) if layout == "one"
                  else df.repartition(5).sortWithinPartitions(F.desc(first)))  # fmt: skip
            lake.write(df, name, partition_by=[] if name == "users" else ["ingest_date"])
        features.build_features(spark, lake, cfg, run_date)
        out.append({t: sorted(map(tuple, lake.read(t).drop("source_version").collect()), key=repr) for t in tables})
        # ...and the same files, which the training splits among its ranks: the same rows in each, in one order
        files = snapshot_files(lake.location("training_examples"), lake.version("training_examples"))
        out[-1]["files"] = [(f.partition, list(read_files([f], ["issuance_id"])["issuance_id"])) for f in files]
    for t in (*tables, "files"):
        assert len(out[0][t]) > 0, t
        assert out[0][t] == out[1][t], t  # exact: == on every double
    assert len(out[0]["files"]) >= 2
