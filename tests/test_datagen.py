"""The synthetic shop: the response model by hand, the four uplift types, determinism, the landing layout,
the logging policy and the feedback-loop entry point."""

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

from coupon_spark.config import Config, LakeConfig, ShopConfig, SparkConfig
from coupon_spark.datagen import landing
from coupon_spark.datagen.response import (
    NO_COUPON,
    CouponParams,
    UserTraits,
    expected_top_up,
    response_frame,
    response_matrix,
    response_pairs,
    uplift_type,
    user_uplift_types,
)
from coupon_spark.datagen.shop import generate, truth_table
from coupon_spark.datagen.simulate import ISSUANCE_COLUMNS, live_coupons, simulate_day
from coupon_spark.datagen.world import CATEGORIES, coupons_pandas, users_frame
from coupon_spark.lake import Lake
from coupon_spark.schemas import LANDING_FIELDS, LANDING_FILES

DAY = dt.date(2026, 11, 2)


def one_user(**kw: object) -> UserTraits:
    base = dict(alpha=0.0, price_sensitivity=0.5, basket_eur=40.0, margin_rate=0.25)
    base.update(kw)  # type: ignore[arg-type]
    return UserTraits(
        alpha=np.array([base["alpha"]]),
        price_sensitivity=np.array([base["price_sensitivity"]]),
        basket_eur=np.array([base["basket_eur"]]),
        margin_rate=np.array([base["margin_rate"]]),
        taste=np.full((1, len(CATEGORIES)), 1 / len(CATEGORIES)),
        kind_response=np.array([[1.0, -1.0, 0.0]]),
    )


COUPONS = CouponParams.from_pandas(
    pd.DataFrame(
        {
            "coupon_id": ["A", "B"],
            "kind": ["price_off", "free_shipping"],
            "category": ["all", "books"],
            "face_value_eur": [10.0, 4.95],
            "min_spend_eur": [20.0, 0.0],
            "cost_eur": [10.0, 3.5],
        }
    )
)


def test_response_model_by_hand() -> None:
    r = response_matrix(one_user(), COUPONS)
    # no coupon: sigmoid(0) = 0.5; profit 0.5 * 0.25 * 40 = 5
    # A: value = min(3, (10/40)/0.25) * (0.5+0.5) = 1, match 1, tau = 1 -> p = sigmoid(1) = 0.7310586;
    #    use = 0.9 * min(1, 40/20) = 0.9 -> p_redeem = 0.6579527; profit = 0.7310586*10 - 0.6579527*10 = 0.7310586
    # B: value = min(3, (4.95/40)/0.25) * 1 = 0.495, match = min(2, 8 * 1/8) = 1, tau = -0.495
    #    p = sigmoid(-0.495) = 0.3787185; use = 0.9 * min(1, 8/8) * min(1, 40/1e-9) = 0.9
    p_a = 1 / (1 + math.exp(-1))
    p_b = 1 / (1 + math.exp(0.495))
    np.testing.assert_allclose(r.p_purchase, [[0.5, p_a, p_b]], rtol=1e-12)
    np.testing.assert_allclose(r.p_redeem, [[0.0, 0.9 * p_a, 0.9 * p_b]], rtol=1e-12)
    # a redeemer of A tops a basket below 20.5 EUR up to it: E[max(A, 20.5)] - 40 for A log-normal around 40,
    # by Monte Carlo here (the code has it in closed form); B has no minimum spend, so no top-up
    draw = 40.0 * np.exp(0.5 * np.random.default_rng(0).standard_normal(4_000_000) - 0.125)
    top_up = float(np.mean(np.maximum(draw, 20.5) - draw))
    assert expected_top_up(np.array([40.0]), np.array([20.0]))[0] == pytest.approx(top_up, rel=0.01)
    assert 0.5 < top_up < 0.7 and expected_top_up(np.array([40.0]), np.array([0.0]))[0] < 1e-9
    np.testing.assert_allclose(
        r.expected_profit,
        [[5.0, p_a * 10 + 0.9 * p_a * (0.25 * top_up - 10), p_b * 10 - 0.9 * p_b * 3.5]],
        rtol=2e-3,
    )
    assert list(uplift_type(r.p_purchase[0, 0], r.p_purchase[0, 1:])) == ["persuadable", "sleeping_dog"]


def test_pairs_agree_with_the_matrix() -> None:
    users = dataclasses.replace(one_user(), alpha=np.array([-1.0]))
    m = response_matrix(users, COUPONS, season=0.1)
    for j, idx in enumerate([NO_COUPON, 0, 1]):
        p = response_pairs(users, COUPONS, np.array([idx]), season=0.1)
        assert p.p_purchase[0] == pytest.approx(m.p_purchase[0, j])
        assert p.expected_profit[0] == pytest.approx(m.expected_profit[0, j])


def test_uplift_type_thresholds() -> None:
    got = uplift_type(np.array([0.1, 0.1, 0.5, 0.05, 0.5]), np.array([0.2, 0.05, 0.505, 0.055, 0.3]))
    assert list(got) == ["persuadable", "sleeping_dog", "sure_thing", "lost_cause", "sleeping_dog"]


def test_population_holds_all_four_uplift_types(spark: SparkSession) -> None:
    shop = ShopConfig(users=3000, partitions=2)
    users = users_frame(spark, shop).toPandas()
    types = pd.Series(
        user_uplift_types(
            response_matrix(UserTraits.from_pandas(users), CouponParams.from_pandas(coupons_pandas(shop)))
        )
    )
    shares = types.value_counts(normalize=True)
    assert set(shares.index) == {"persuadable", "sure_thing", "lost_cause", "sleeping_dog"}
    assert shares.min() > 0.05, shares.to_dict()
    assert users["taste"].map(sum).sub(1).abs().max() < 1e-9
    assert users["activity"].quantile(0.99) > 5 * users["activity"].median()  # heavy-tailed


def test_response_frame_is_the_matrix_in_long_form(spark: SparkSession) -> None:
    shop = ShopConfig(users=50, partitions=2)
    users = users_frame(spark, shop)
    coupons = coupons_pandas(shop)
    long = response_frame(users, coupons).toPandas()
    m = response_matrix(UserTraits.from_pandas(users.toPandas()), CouponParams.from_pandas(coupons))
    assert len(long) == 50 * (len(coupons) + 1)
    first = long[long["user_id"] == "U00000000"]
    np.testing.assert_allclose(first["p_purchase"].to_numpy(), m.p_purchase[0])
    assert first["coupon_id"].isna().sum() == 1


@pytest.fixture(scope="module")
def shop_runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Config]:
    """The same tiny shop generated twice, with different partitioning."""
    out = []
    for parts in (2, 3):
        root = tmp_path_factory.mktemp(f"shop{parts}")
        cfg = Config(
            spark=SparkConfig(),
            lake=LakeConfig(root=str(root / "lake"), landing=str(root / "landing")),
            shop=ShopConfig(users=300, partitions=parts, dirty_rate=0.05),
        )
        generate(spark, cfg, DAY, days=1)
        out.append(cfg)
    return out[0], out[1]


def test_generator_is_deterministic_whatever_the_partitioning(shop_runs: tuple[Config, Config]) -> None:
    a, b = shop_runs
    for name in LANDING_FILES.values():
        fa = Path(a.lake.landing) / DAY.isoformat() / name
        fb = Path(b.lake.landing) / DAY.isoformat() / name
        assert fa.read_bytes() == fb.read_bytes(), name


def test_spark_sorted_write_gives_the_same_bytes(
    spark: SparkSession, shop_runs: tuple[Config, Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small landing files are sorted and written by the driver; large ones through Spark's sort: same bytes."""
    monkeypatch.setattr(landing, "DRIVER_WRITE_MAX_LINES", 0)
    a = shop_runs[0]
    cfg = dataclasses.replace(
        a, lake=dataclasses.replace(a.lake, root=str(tmp_path / "lake"), landing=str(tmp_path / "landing"))
    )
    generate(spark, cfg, DAY, days=1)
    for name in LANDING_FILES.values():
        fa = Path(a.lake.landing) / DAY.isoformat() / name
        fb = Path(cfg.lake.landing) / DAY.isoformat() / name
        assert fa.read_bytes() == fb.read_bytes(), name


def test_a_different_seed_is_a_different_shop(spark: SparkSession) -> None:
    a = users_frame(spark, ShopConfig(users=20, seed=1)).select("alpha").collect()
    b = users_frame(spark, ShopConfig(users=20, seed=2)).select("alpha").collect()
    assert a != b


def test_landing_layout(shop_runs: tuple[Config, Config]) -> None:
    cfg = shop_runs[0]
    folder = Path(cfg.lake.landing) / DAY.isoformat()
    assert sorted(p.name for p in folder.iterdir()) == sorted(LANDING_FILES.values())
    for source, name in LANDING_FILES.items():
        if name.endswith(".csv"):
            assert (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()[0] == ",".join(
                LANDING_FIELDS[source]
            )
    events = (folder / "events.jsonl").read_bytes()
    assert all(f'"event_type":"{t}"'.encode() in events for t in ("view", "cart", "purchase"))
    assert b"\xe9" in events or b"\xe9" in (folder / "users.csv").read_bytes()  # bad encodings are there


def test_truth_is_saved_apart(spark: SparkSession, shop_runs: tuple[Config, Config]) -> None:
    cfg = shop_runs[0]
    lake = Lake.from_config(spark, cfg.lake)
    assert lake.read(truth_table(cfg, "user_traits")).count() == 300
    assert not (Path(cfg.lake.landing) / "_truth").exists()
    assert Path(cfg.lake.table_path(cfg.shop.truth_dir)).is_dir()
    assert truth_table(cfg, "coupons") == cfg.shop.truth_dir.rstrip("/") + "/coupons"
    # the evaluation finds the truth plug-in on this lake (and none on a real shop's: test_evaluation)
    from coupon_spark.datagen.truth import ShopTruth
    from coupon_spark.evaluation.job import find_truth

    found = find_truth(lake, cfg)
    assert isinstance(found, ShopTruth) and found.cfg is cfg


def test_logging_policy_propensities(spark: SparkSession, shop_runs: tuple[Config, Config]) -> None:
    cfg = shop_runs[0]
    lines = (Path(cfg.lake.landing) / DAY.isoformat() / "issuances.jsonl").read_text(encoding="utf-8", errors="replace")
    df = spark.read.json(
        spark.sparkContext.parallelize(lines.splitlines()),
        schema="coupon_id string, propensity double, issuance_id string, _corrupt_record string",
    )
    rows = df.filter(F.col("_corrupt_record").isNull() & F.col("issuance_id").isNotNull()).collect()
    n_live = len(live_coupons(coupons_pandas(cfg.shop), DAY))
    control = [r for r in rows if r.coupon_id is None]
    treated = [r for r in rows if r.coupon_id is not None and r.coupon_id.startswith("CPN0")]
    assert control and treated
    assert {r.propensity for r in control} == {0.25}
    assert {r.propensity for r in treated if isinstance(r.propensity, float)} <= {0.75 / n_live, None}


def test_simulate_day_takes_any_issuances(spark: SparkSession) -> None:
    """The feedback-loop entry point: only users who were given a coupon can redeem it, and only that one."""
    shop = ShopConfig(users=400, partitions=2)
    users = users_frame(spark, shop)
    coupons = coupons_pandas(shop)
    coupon = live_coupons(coupons, DAY)["coupon_id"].iloc[0]
    given = [f"U{i:08d}" for i in range(0, 400, 2)]
    issuances = spark.createDataFrame(
        [(f"X{u}", u, coupon, dt.datetime(2026, 11, 2, 6), "test", 1.0) for u in given], ISSUANCE_COLUMNS
    )
    out = simulate_day(users, coupons, DAY, issuances, shop)
    red = out.redemptions.collect()
    assert red, "some of 200 treated users redeem"
    assert {r.user_id for r in red} <= set(given) and {r.coupon_id for r in red} == {coupon}
    assert {r.issuance_id for r in red} <= {f"X{u}" for u in given}
    none = simulate_day(users, coupons, DAY, issuances.limit(0), shop)
    assert none.redemptions.count() == 0
    # common random numbers: users without a coupon behave identically under both policies
    untreated = lambda d: {r.order_id for r in d.orders.collect() if r.user_id not in set(given)}  # noqa: E731
    assert untreated(out) == untreated(none)


def test_realised_profit_is_the_truths_expected_profit(spark: SparkSession) -> None:
    """What the shop's records say a coupon earned (orders at list price * margin - the redeemed coupon's cost)
    averages to the truth's expected profit: the top-up to the minimum spend included, the discount counted
    once. Counting the discount also as revenue lost (net amounts) is off by many standard errors here."""
    from coupon_spark.datagen.simulate import active_users
    from coupon_spark.datagen.world import season_logit

    shop = ShopConfig(users=30000, partitions=2)
    users = active_users(users_frame(spark, shop), DAY)
    live = live_coupons(coupons_pandas(shop), DAY)
    # the costliest price-off coupon: its minimum spend binds for many baskets, and its discount is large
    coupon = live[live["kind"] == "price_off"].sort_values("face_value_eur").iloc[-1]
    issued = users.select(
        F.concat(F.lit("X"), "user_id").alias("issuance_id"), "user_id", F.lit(coupon["coupon_id"]).alias("coupon_id"),
        F.lit(dt.datetime(2026, 11, 2, 0, 1)).alias("issued_at"), F.lit("test").alias("policy"),
        F.lit(1.0).alias("propensity"),
    )  # fmt: skip
    out = simulate_day(users, coupons_pandas(shop), DAY, issued, shop)
    traits = users.toPandas().set_index("user_id")
    orders = out.orders.groupBy("user_id").agg(
        F.sum("amount_eur").alias("gross"), F.sum("discount_eur").alias("discount")
    ).toPandas().set_index("user_id").reindex(traits.index, fill_value=0.0)  # fmt: skip
    redeemed = {r.user_id for r in out.redemptions.select("user_id").collect()}
    cost = np.where(traits.index.isin(list(redeemed)), float(coupon["cost_eur"]), 0.0)
    margin = traits["margin_rate"].to_numpy()
    realised = orders["gross"].to_numpy() * margin - cost
    net = (orders["gross"] - orders["discount"]).to_numpy() * margin - cost
    params = CouponParams.from_pandas(pd.DataFrame([coupon]))
    truth = response_pairs(
        UserTraits.from_pandas(traits.reset_index()), params, np.zeros(len(traits), np.int64), season_logit(DAY)
    ).expected_profit
    se = (realised - truth).std(ddof=1) / math.sqrt(len(realised))  # the draws' noise, not the users' spread
    assert abs(realised.mean() - truth.mean()) < 3.5 * se, (realised.mean(), truth.mean(), se)
    assert truth.mean() - net.mean() > 4 * se  # the net amounts would make the coupon look worse than it is
