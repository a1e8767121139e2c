"""The shop's past: a year of orders and an earlier randomised promotion, landed as one bulk import.

A shop that starts targeting coupons is not new: it has months to years of orders, and it has run
promotions before. The synthetic shop gets ``shop.backfill_days`` of that past before its first logged day,
drawn from the same hidden traits and the same response model (:mod:`coupon_spark.datagen.response`) as
every later day, in one Spark pass over the (user, day) grid, not day by day:

- **orders**: every active user-day buys with ``p = sigmoid(alpha + season + tau)`` (``tau`` = 0 without a
  coupon), with a basket around the user's typical basket and a category drawn from the user's tastes;
- **an earlier randomised promotion** (policy :data:`POLICY_NAME`): each day it reached
  ``shop.backfill_issue_rate`` of the active users; of those, ``shop.control_share`` got nothing on
  purpose, the others one coupon of its site-wide catalogue (:func:`historic_coupons`: the shop's coupon terms,
  three face values of each kind), drawn uniformly, with the propensity logged; the coupon acts on its issue day only;
- **redemptions** of those coupons.

There is no clickstream in it (shops rarely keep a year of views) and no landing defects (a warehouse export
is typed), but it goes through the cleansing job like any landing folder: ``manifest.json`` marks the folder
as an import covering ``[first, last]``, so its records are checked against that period instead of the
lateness limit, and each lands in the silver partition of its own day (see :mod:`coupon_spark.cleanse`).

Which hidden trait leaves which trace, and why that is realistic:

- ``alpha`` (purchase intent) -> how often the user buys: the share of days with an order. In any shop the
  best predictor of buying is having bought.
- ``basket_eur`` -> the order amounts (log-normal around it), and ``margin_rate`` and ``taste`` -> the
  categories bought: what a shopper spends and on what shows in their receipts.
- ``kind_response`` and ``price_sensitivity`` -> how the user answered the earlier promotion: the purchase
  rate on days a coupon of each kind arrived against the user's other days, and the coupons redeemed. A
  price-sensitive shopper who likes price-off coupons buys more on the days one arrives and redeems it; a
  coupon-averse shopper (a "sleeping dog") buys *less* on those days and rarely redeems. This is the evidence
  a real shop's years of randomised promotions (A/B tested newsletters, control groups) hold, and the only
  place persuadable shoppers differ from coupon-averse ones that buy alike.
- ``activity`` (views) leaves no trace here: the past has no views.

Nothing of the truth reaches the landing files but these traces; the draws are hash uniforms of (seed, draw
number, user, day), independent of the daily simulation's.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DateType, DoubleType, IntegerType, StringType, StructField, StructType

from coupon_spark.cleanse import MANIFEST
from coupon_spark.config import Config, ShopConfig
from coupon_spark.datagen.landing import _fs, day_folder, dirty_lines, write_landing
from coupon_spark.datagen.response import BASKET_LOG_SD, TOP_UP_EUR, CouponParams, UserTraits, logit_shift_and_use
from coupon_spark.datagen.shop import render_coupons, render_issuances, render_orders, render_redemptions, render_users
from coupon_spark.datagen.simulate import (
    ISSUANCE_COLUMNS,
    ORDER_COLUMNS,
    _product,
    _select,
    redemptions_of,
)
from coupon_spark.datagen.world import (
    CATEGORIES,
    COUPON_KINDS,
    COUPON_TRUTH,
    WEEKLY_FACTOR,
    coupon_terms,
    day_index,
    uniform,
)
from coupon_spark.schemas import LANDING_FILES

POLICY_NAME = "legacy_newsletter"
"""The earlier randomised promotion's policy name in the imported issuances."""

# draw numbers of the back-fill (keys: user_num, day number)
S_BF_REACH, S_BF_ARM, S_BF_PICK, S_BF_TIME = 500, 501, 502, 503
S_BF_BUY, S_BF_REDEEM, S_BF_AMOUNT1, S_BF_AMOUNT2, S_BF_CAT, S_BF_ORDER_TIME, S_BF_ITEMS = (
    510,
    511,
    512,
    513,
    514,
    515,
    516,
)


def backfill_period(shop: ShopConfig, first_logged_day: dt.date) -> tuple[dt.date, dt.date]:
    """``(first, last)``: the ``shop.backfill_days`` days before ``first_logged_day``."""
    last = first_logged_day - dt.timedelta(days=1)
    return last - dt.timedelta(days=shop.backfill_days - 1), last


def historic_coupons(first: dt.date, last: dt.date) -> pd.DataFrame:
    """The earlier promotion's catalogue (:data:`COUPON_TRUTH` columns): the terms the shop's coupons have
    (:func:`coupon_spark.datagen.world.coupons_pandas`: three face values of each kind), site-wide, valid
    over the back-fill period."""
    rows = []
    for k, kind in enumerate(COUPON_KINDS):
        for t in range(3):
            face, min_spend, cost = coupon_terms(kind, t)
            rows.append(
                {
                    "coupon_id": f"CPH{k + 1:02d}{t + 1:02d}",
                    "campaign_id": f"CMPH{k + 1:02d}",
                    "kind": kind,
                    "category": "all",
                    "face_value_eur": face,
                    "min_spend_eur": min_spend,
                    "cost_eur": cost,
                    "valid_from": first,
                    "valid_to": last,
                    "campaign_budget_eur": 0.0,
                }
            )
    return pd.DataFrame(rows, columns=COUPON_TRUTH.fieldNames())


_USER_RESPONSE = StructType(
    [
        StructField("user_num", IntegerType(), False),
        StructField("user_id", StringType(), False),
        StructField("signup_date", DateType(), False),
        StructField("alpha", DoubleType(), False),
        StructField("basket_eur", DoubleType(), False),
        StructField("taste_cum", ArrayType(DoubleType()), False),
        StructField("tau", ArrayType(DoubleType()), False),
        StructField("use", ArrayType(DoubleType()), False),
    ]
)


def _user_response(users: DataFrame, coupons: pd.DataFrame) -> DataFrame:
    """Per user: what the grid needs (:data:`_USER_RESPONSE`), the coupon effects from the response model."""
    params = CouponParams.from_pandas(coupons)

    def per_batch(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            traits = UserTraits.from_pandas(pdf)
            tau, use = logit_shift_and_use(traits, params)
            yield pd.DataFrame(
                {
                    "user_num": pdf["user_num"],
                    "user_id": pdf["user_id"],
                    "signup_date": pdf["signup_date"],
                    "alpha": traits.alpha,
                    "basket_eur": traits.basket_eur,
                    "taste_cum": list(np.cumsum(traits.taste, axis=1)),
                    "tau": list(tau),
                    "use": list(use),
                }
            )

    cols = ["user_num", "user_id", "signup_date", "alpha", "price_sensitivity", "basket_eur", "margin_rate"]
    return users.select(*cols, "taste", "kind_response").mapInPandas(per_batch, _USER_RESPONSE)


def _pick(values: Column | str, idx: Column) -> Column:
    """``values[idx]`` (1-based), null when ``idx`` is null (Spark 4.2's ``element_at`` returns the last element
    for a null index)."""
    return F.when(idx.isNotNull(), F.element_at(values, idx))


def _at(day: Column, seconds: Column) -> Column:
    return F.timestamp_seconds(F.unix_timestamp(day.cast("timestamp")) + F.floor(seconds))


def backfill_frames(
    spark: SparkSession, users: DataFrame, shop: ShopConfig, first: dt.date, last: dt.date
) -> tuple[DataFrame, DataFrame, DataFrame, pd.DataFrame, DataFrame]:
    """The past's clean records: (issuances, orders, redemptions, its coupon catalogue, the persisted grid).

    Args:
        users: The population with hidden traits (:data:`coupon_spark.datagen.world.USER_TRUTH`).
        first, last: The period (inclusive).

    Returns:
        Frames with the columns of :data:`~coupon_spark.datagen.simulate.ISSUANCE_COLUMNS`,
        :data:`~coupon_spark.datagen.simulate.ORDER_COLUMNS` and
        :data:`~coupon_spark.datagen.simulate.REDEMPTION_COLUMNS`, lazily evaluated over one persisted grid
        of the reached or buying user-days, returned last: ``unpersist`` it when done.
    """
    coupons = historic_coupons(first, last)
    m = len(coupons)
    s = shop.seed
    n_days = (last - first).days + 1
    season = F.element_at(F.array(*[F.lit(math.log(f)) for f in WEEKLY_FACTOR]), F.weekday("day") + 1)
    days = spark.range(n_days, numPartitions=1).select(
        F.date_add(F.lit(first), F.col("id").cast("int")).alias("day"),
        (F.col("id") + F.lit(day_index(first))).cast("int").alias("dn"),
    )
    days = days.select("day", "dn", season.alias("season"))
    resp = _user_response(users, coupons)
    grid = resp.crossJoin(F.broadcast(days)).where(F.col("signup_date") <= F.col("day"))
    u = lambda salt: uniform(s, salt, "user_num", "dn")  # noqa: E731
    reached = u(S_BF_REACH) < F.lit(shop.backfill_issue_rate)
    control = u(S_BF_ARM) < F.lit(shop.control_share)
    pick = F.floor(u(S_BF_PICK) * m).cast("int") + 1  # 1-based into the catalogue
    idx = F.when(reached & ~control, pick)
    step = grid.select(
        "user_num", "user_id", "day", "dn", "season", "alpha", "basket_eur", "taste_cum", "tau", "use",
        reached.alias("reached"), idx.alias("idx"),
    )  # fmt: skip
    tau = F.coalesce(_pick("tau", F.col("idx")), F.lit(0.0))
    p = F.lit(1.0) / (F.lit(1.0) + F.exp(-(F.col("alpha") + F.col("season") + tau)))
    buy = u(S_BF_BUY) < p
    redeem = buy & F.col("idx").isNotNull() & (u(S_BF_REDEEM) < _pick("use", F.col("idx")))
    # the reached or buying user-days: everything the three outputs need, persisted once
    draws = [
        u(S_BF_TIME).alias("u_time"),
        u(S_BF_AMOUNT1).alias("u_a1"),
        u(S_BF_AMOUNT2).alias("u_a2"),
        u(S_BF_CAT).alias("u_cat"),
        u(S_BF_ORDER_TIME).alias("u_order"),
        u(S_BF_ITEMS).alias("u_items"),
    ]
    keep = ["user_num", "user_id", "day", "dn", "basket_eur", "taste_cum", "reached", "idx"]
    facts = (
        step.select(*keep, buy.alias("buy"), redeem.alias("redeem"), *draws)
        .where(F.col("reached") | F.col("buy"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    ymd = F.date_format("day", "yyyyMMdd")
    ids = F.array(*[F.lit(c) for c in coupons["coupon_id"]])
    face = F.array(*[F.lit(float(x)) for x in coupons["face_value_eur"]])
    min_spend = F.array(*[F.lit(float(x)) for x in coupons["min_spend_eur"]])
    issued_at = _at(F.col("day"), F.lit(6 * 3600) + F.col("u_time") * 3 * 3600)
    issuance_id = F.format_string("I%s-%08d", ymd, "user_num")
    issuances = _select(
        facts.where("reached").select(
            issuance_id.alias("issuance_id"),
            "user_id",
            _pick(ids, F.col("idx")).alias("coupon_id"),
            issued_at.alias("issued_at"),
            F.lit(POLICY_NAME).alias("policy"),
            F.when(F.col("idx").isNull(), F.lit(shop.control_share))
            .otherwise(F.lit((1 - shop.control_share) / m))
            .alias("propensity"),
        ),
        ISSUANCE_COLUMNS,
    )
    # basket: log-normal around the user's typical basket, a redeemer tops up to the minimum spend
    z = F.sqrt(F.lit(-2.0) * F.log("u_a1")) * F.cos(F.lit(2 * math.pi) * F.col("u_a2"))
    amount = F.least(F.col("basket_eur") * F.exp(F.lit(BASKET_LOG_SD) * z - F.lit(BASKET_LOG_SD**2 / 2)), F.lit(5000.0))
    amount = F.when(F.col("redeem"), F.greatest(amount, _pick(min_spend, F.col("idx")) + TOP_UP_EUR)).otherwise(amount)
    cat_idx = F.least(F.size(F.filter("taste_cum", lambda c: c < F.col("u_cat"))), F.lit(len(CATEGORIES) - 1))
    category = F.element_at(F.array(*[F.lit(c) for c in CATEGORIES]), cat_idx + 1)
    # an order comes after the coupon on a day one arrived, else at any time of the day
    after = F.when(F.col("reached"), issued_at).otherwise(F.col("day").cast("timestamp"))
    secs_left = (F.col("dn") + 1) * 86400 - F.unix_timestamp(after)
    orders = _select(
        facts.where("buy")
        .select("*", category.alias("category"))
        .select(
            F.format_string("O%s-%08d", ymd, "user_num").alias("order_id"),
            "user_id",
            F.timestamp_seconds(F.unix_timestamp(after) + F.floor(F.col("u_order") * (secs_left - 1))).alias(
                "ordered_at"
            ),
            "category",
            F.round(amount, 2).alias("amount_eur"),
            F.when(F.col("redeem"), _pick(face, F.col("idx"))).otherwise(F.lit(0.0)).alias("discount_eur"),
            F.when(F.col("redeem"), _pick(ids, F.col("idx"))).alias("coupon_id"),
            F.when(F.col("redeem"), issuance_id).alias("issuance_id"),
            (F.floor(F.col("u_items") * 4) + 1).alias("n_items"),
            _product(F.col("category"), F.col("u_items")).alias("product_id"),
        ),
        ORDER_COLUMNS,
    )
    return issuances, orders, redemptions_of(orders), coupons, facts


def write_backfill(
    spark: SparkSession, cfg: Config, world_users: DataFrame, first_logged_day: dt.date
) -> dict[str, int]:
    """Land the past before ``first_logged_day`` as one import folder (the folder of its last day, with
    ``manifest.json``); returns the lines written per source."""

    shop, fx, aliases = cfg.shop, cfg.cleanse.fx_to_eur, cfg.cleanse.category_aliases
    first, last = backfill_period(shop, first_logged_day)
    issuances, orders, redemptions, coupons, facts = backfill_frames(spark, world_users, shop, first, last)
    orders = orders.persist(StorageLevel.MEMORY_AND_DISK)
    folder = day_folder(cfg.lake.landing, last)
    renderings = [
        render_users(world_users, last, shop.seed),
        render_coupons(spark.createDataFrame(coupons, COUPON_TRUTH), last, shop.seed, aliases),
        render_orders(orders, shop.seed, fx, aliases),
        render_issuances(issuances, shop.seed),
        render_redemptions(redemptions, shop.seed, fx),
    ]
    counts: dict[str, int] = {}
    try:
        for df, r in renderings:
            lines = dirty_lines(df, r, shop.seed, 0.0, [], last)
            counts[r.source] = sum(write_landing(lines, folder, r.source, shop.single_file).values())
    finally:
        orders.unpersist()
        facts.unpersist()
    fs, path = _fs(folder)
    with fs.open_output_stream(f"{path.rstrip('/')}/{LANDING_FILES['events']}") as out:
        out.write(b"")  # no clickstream in the past
    counts["events"] = 0
    manifest = {
        "kind": "import",
        "covers": {"from": first.isoformat(), "to": last.isoformat()},
        "description": f"the shop's past: orders and the {POLICY_NAME} promotion, {shop.backfill_days} days",
        "lines": counts,
    }
    with fs.open_output_stream(f"{path.rstrip('/')}/{MANIFEST}") as out:
        out.write(json.dumps(manifest, indent=2).encode("utf-8"))
    return counts
