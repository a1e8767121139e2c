"""One day of the shop: who is reached by which coupon, then views, carts, purchases and redemptions.

:func:`simulate_day` takes any set of issuances: today the randomised logging policy's
(:func:`random_policy`), later the allocations the system decided (the feedback loop). Outcomes are drawn
from the hidden response model (:mod:`coupon_spark.datagen.response`) with hash uniforms, so the same
(seed, user, day) always draws the same numbers whatever the policy: two policies are compared on common
random numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from coupon_spark.config import ShopConfig
from coupon_spark.datagen.response import BASKET_LOG_SD, TOP_UP_EUR, CouponParams, UserTraits, response_pairs
from coupon_spark.datagen.world import (
    CATEGORIES,
    PRICE_LEVEL_EUR,
    PRODUCTS_PER_CATEGORY,
    WEEKLY_FACTOR,
    day_index,
    season_logit,
    uniform,
)

POLICY_NAME = "random_v1"

# draw numbers of the day simulation (keys: user_num, day)
S_REACH, S_ARM, S_PICK, S_ISSUE_TIME = 300, 301, 302, 303
S_BUY, S_REDEEM, S_AMOUNT1, S_AMOUNT2, S_ORDER_CAT, S_ORDER_TIME, S_ITEMS = 310, 311, 312, 313, 314, 315, 316
S_VIEWS, S_VIEW_CAT, S_VIEW_PRODUCT, S_VIEW_TIME, S_CART, S_SESSION, S_PRODUCT_PRICE = 320, 321, 322, 323, 324, 325, 326

ISSUANCE_COLUMNS = StructType(
    [
        StructField("issuance_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType(), True),
        StructField("issued_at", TimestampType(), False),
        StructField("policy", StringType(), False),
        StructField("propensity", DoubleType(), False),
    ]
)
"""What :func:`simulate_day` accepts as issuances (the landing ``issuances.jsonl`` fields, typed)."""

ORDER_COLUMNS = StructType(
    [
        StructField("order_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("ordered_at", TimestampType(), False),
        StructField("category", StringType(), False),
        StructField("amount_eur", DoubleType(), False),
        StructField("discount_eur", DoubleType(), False),
        StructField("coupon_id", StringType(), True),
        StructField("issuance_id", StringType(), True),
        StructField("n_items", IntegerType(), False),
        StructField("product_id", StringType(), False),
    ]
)

EVENT_COLUMNS = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("event_time", TimestampType(), False),
        StructField("session_id", StringType(), False),
        StructField("product_id", StringType(), False),
        StructField("category", StringType(), False),
        StructField("price_eur", DoubleType(), False),
        StructField("order_id", StringType(), True),
    ]
)

REDEMPTION_COLUMNS = StructType(
    [
        StructField("redemption_id", StringType(), False),
        StructField("issuance_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("coupon_id", StringType(), False),
        StructField("order_id", StringType(), False),
        StructField("redeemed_at", TimestampType(), False),
        StructField("discount_eur", DoubleType(), False),
    ]
)


@dataclass(frozen=True)
class DayOutcome:
    """Clean (true) records of one day: amounts in EUR, timestamps in UTC."""

    day: dt.date
    events: DataFrame  # EVENT_COLUMNS
    orders: DataFrame  # ORDER_COLUMNS
    redemptions: DataFrame  # REDEMPTION_COLUMNS


def _select(df: DataFrame, schema: StructType) -> DataFrame:
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _ids(prefix: str, day: dt.date, num: Column | str) -> Column:
    return F.format_string(f"{prefix}{day:%Y%m%d}-%08d", num)


def _at(day: dt.date, seconds: Column) -> Column:
    """``day`` 00:00 UTC plus a number of seconds, as a timestamp."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    return F.timestamp_seconds(F.lit(start) + F.floor(seconds))


def active_users(users: DataFrame, day: dt.date) -> DataFrame:
    """Users who have signed up by ``day``."""
    return users.filter(F.col("signup_date") <= F.lit(day))


def live_coupons(coupons: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Coupons that may be issued on ``day`` (inside their validity window)."""
    return coupons[(coupons["valid_from"] <= day) & (coupons["valid_to"] >= day)].reset_index(drop=True)


def random_policy(users: DataFrame, coupons: pd.DataFrame, day: dt.date, shop: ShopConfig) -> DataFrame:
    """The randomised logging policy: reach ``issue_rate`` of the active users; of those, ``control_share``
    get nothing (an issuance row with a null coupon), the others one live coupon picked uniformly.

    ``propensity`` is the probability of the logged action given that the user was reached: ``control_share``
    for the control arm, ``(1 - control_share) / n_live`` for each coupon (1.0 for the control arm when no
    coupon is live).
    """
    live = live_coupons(coupons, day)["coupon_id"].tolist()
    s, d = shop.seed, F.lit(day_index(day))
    u = lambda salt: uniform(s, salt, "user_num", d)  # noqa: E731
    reached = active_users(users, day).filter(u(S_REACH) < F.lit(shop.issue_rate))
    if live:
        control = u(S_ARM) < F.lit(shop.control_share)
        pick = F.element_at(F.array(*[F.lit(c) for c in live]), (F.floor(u(S_PICK) * len(live)) + 1).cast("int"))
        coupon = F.when(control, F.lit(None).cast("string")).otherwise(pick)
        propensity = F.when(control, F.lit(shop.control_share)).otherwise(F.lit((1 - shop.control_share) / len(live)))
    else:
        coupon, propensity = F.lit(None).cast("string"), F.lit(1.0)
    out = reached.select(
        _ids("I", day, "user_num").alias("issuance_id"),
        "user_id",
        coupon.alias("coupon_id"),
        _at(day, F.lit(6 * 3600) + u(S_ISSUE_TIME) * 3 * 3600).alias("issued_at"),
        F.lit(POLICY_NAME).alias("policy"),
        propensity.alias("propensity"),
    )
    return _select(out, ISSUANCE_COLUMNS)


def _orders_udf(coupons: pd.DataFrame, season: float):
    params = CouponParams.from_pandas(coupons)
    cat_names = np.array(CATEGORIES, dtype=object)

    def draw(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            traits = UserTraits.from_pandas(pdf)
            idx = params.index_of(pdf["coupon_id"])
            r = response_pairs(traits, params, idx, season)
            buys = pdf["u_buy"].to_numpy() < r.p_purchase
            use = np.divide(r.p_redeem, r.p_purchase, out=np.zeros_like(r.p_redeem), where=r.p_purchase > 0)
            redeems = buys & (idx >= 0) & (pdf["u_redeem"].to_numpy() < use)
            # basket: lognormal around the user's typical basket; a redeemer tops up to the minimum spend
            z = np.sqrt(-2 * np.log(pdf["u_amount1"].to_numpy())) * np.cos(2 * np.pi * pdf["u_amount2"].to_numpy())
            amount = np.minimum(traits.basket_eur * np.exp(BASKET_LOG_SD * z - BASKET_LOG_SD**2 / 2), 5000.0)
            ci = np.where(idx >= 0, idx, 0)
            if len(params.coupon_id):
                min_spend, face = params.min_spend_eur[ci], params.face_value_eur[ci]
                coupon_cat = params.category_index[ci]
            else:
                min_spend = face = np.zeros(len(pdf))
                coupon_cat = np.full(len(pdf), -1)
            amount = np.where(redeems, np.maximum(amount, min_spend + TOP_UP_EUR), amount)
            cum = np.cumsum(traits.taste, axis=1) if len(pdf) else np.zeros((0, len(CATEGORIES)))
            taste_cat = (cum < pdf["u_order_cat"].to_numpy()[:, None]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
            cat = np.where(redeems & (coupon_cat >= 0), coupon_cat, taste_cat)
            out = pdf.loc[buys, ["order_id", "user_id", "issuance_id", "coupon_id", "issued_at", "u_time", "u_items"]]
            out = out.assign(
                category=cat_names[cat[buys]],
                amount_eur=np.round(amount[buys], 2),
                discount_eur=np.where(redeems[buys], face[buys], 0.0),
                redeemed=redeems[buys],
            )
            yield out

    return draw


_DRAW_SCHEMA = (
    "order_id string, user_id string, issuance_id string, coupon_id string, issued_at timestamp, u_time double, "
    "u_items double, category string, amount_eur double, discount_eur double, redeemed boolean"
)


def simulate_day(
    users: DataFrame, coupons: pd.DataFrame, day: dt.date, issuances: DataFrame, shop: ShopConfig
) -> DayOutcome:
    """Draw one day of the shop given who received which coupon.

    Args:
        users: The population with hidden traits (:data:`coupon_spark.datagen.world.USER_TRUTH`).
        coupons: The catalogue (:data:`coupon_spark.datagen.world.COUPON_TRUTH`).
        day: The day (UTC).
        issuances: Rows with at least ``issuance_id``, ``user_id``, ``coupon_id`` (null = none) and
            ``issued_at``: any policy's decisions. A user's first issuance of the day (by ``issuance_id``)
            is the one that acts; a coupon outside its validity window acts as none and cannot be redeemed.
        shop: Shop settings (seed, activity).

    Returns:
        The day's clean events, orders and redemptions.
    """
    s, d = shop.seed, F.lit(day_index(day))
    u = lambda salt, *keys: uniform(s, salt, "user_num", d, *keys)  # noqa: E731
    live = live_coupons(coupons, day)
    first = Window.partitionBy("user_id").orderBy("issuance_id")
    acting = (
        issuances.select("issuance_id", "user_id", "coupon_id", "issued_at")
        .withColumn("_n", F.row_number().over(first))
        .filter(F.col("_n") == 1)
        .select(
            "issuance_id",
            "user_id",
            F.when(F.col("coupon_id").isin(live["coupon_id"].tolist()), F.col("coupon_id")).alias("coupon_id"),
            "issued_at",
        )
    )
    active = active_users(users, day)
    base = active.join(acting, on="user_id", how="left")
    draws = base.select(
        _ids("O", day, "user_num").alias("order_id"),
        "user_id",
        "issuance_id",
        "coupon_id",
        "issued_at",
        "alpha",
        "price_sensitivity",
        "basket_eur",
        "margin_rate",
        "taste",
        "kind_response",
        u(S_BUY).alias("u_buy"),
        u(S_REDEEM).alias("u_redeem"),
        u(S_AMOUNT1).alias("u_amount1"),
        u(S_AMOUNT2).alias("u_amount2"),
        u(S_ORDER_CAT).alias("u_order_cat"),
        u(S_ORDER_TIME).alias("u_time"),
        u(S_ITEMS).alias("u_items"),
    )
    drawn = draws.mapInPandas(_orders_udf(coupons, season_logit(day)), _DRAW_SCHEMA)
    # purchases happen after the coupon arrives (if any), else at any time of the day
    day_start = _at(day, F.lit(0))
    after = F.coalesce(F.col("issued_at"), day_start)
    secs_left = F.lit(day_index(day) + 1) * 86400 - F.unix_timestamp(after)
    ordered_at = F.timestamp_seconds(F.unix_timestamp(after) + F.floor(F.col("u_time") * (secs_left - 1)))
    orders = _select(
        drawn.select(
            "order_id",
            "user_id",
            ordered_at.alias("ordered_at"),
            "category",
            "amount_eur",
            "discount_eur",
            F.when(F.col("redeemed"), F.col("coupon_id")).alias("coupon_id"),
            F.when(F.col("redeemed"), F.col("issuance_id")).alias("issuance_id"),
            (F.floor(F.col("u_items") * 4) + 1).alias("n_items"),
            _product(F.col("category"), F.col("u_items")).alias("product_id"),
        ),
        ORDER_COLUMNS,
    )
    redemptions = redemptions_of(orders)
    events = _views_and_carts(active, day, shop).unionByName(_purchase_events(orders, shop))
    return DayOutcome(day=day, events=_select(events, EVENT_COLUMNS), orders=orders, redemptions=redemptions)


def redemptions_of(orders: DataFrame) -> DataFrame:
    """The redemption records of the orders that redeemed a coupon (:data:`REDEMPTION_COLUMNS`)."""
    return _select(
        orders.filter(F.col("coupon_id").isNotNull()).select(
            F.concat(F.lit("R"), F.substring("order_id", 2, 100)).alias("redemption_id"),
            "issuance_id",
            "user_id",
            "coupon_id",
            "order_id",
            F.col("ordered_at").alias("redeemed_at"),
            "discount_eur",
        ),
        REDEMPTION_COLUMNS,
    )


def _product(category: Column, u: Column) -> Column:
    number = F.lpad(F.floor(u * PRODUCTS_PER_CATEGORY).cast("string"), 4, "0")
    return F.concat(F.substring(category, 1, 3), F.lit("-"), number)


def _product_price(seed: int, category: Column, product_id: Column) -> Column:
    """A product's list price (EUR): its category's level times a per-product factor in [0.4, 1.6)."""
    level = F.element_at(F.create_map(*[x for c, p in zip(CATEGORIES, PRICE_LEVEL_EUR, strict=True)
                                        for x in (F.lit(c), F.lit(p))]), category)  # fmt: skip
    return F.round(level * (F.lit(0.4) + F.lit(1.2) * uniform(seed, S_PRODUCT_PRICE, product_id)), 2)


def _views_and_carts(active: DataFrame, day: dt.date, shop: ShopConfig) -> DataFrame:
    """Product views (heavy-tailed count per user, weekly seasonality) and the carts some of them lead to."""
    s, d = shop.seed, F.lit(day_index(day))
    factor = F.lit(WEEKLY_FACTOR[day.weekday()])
    n_views = F.floor(-F.col("activity") * factor * F.log(uniform(s, S_VIEWS, "user_num", d))).cast("int")
    cum = F.array(*[sum((F.col("taste")[j] for j in range(i + 1)), F.lit(0.0)) for i in range(len(CATEGORIES))])
    per_user = active.select("user_id", "user_num", cum.alias("cum"), n_views.alias("n")).filter(F.col("n") > 0)
    views = per_user.select("user_id", "user_num", "cum", F.explode(F.sequence(F.lit(1), F.col("n"))).alias("k"))
    uk = lambda salt: uniform(s, salt, "user_num", d, "k")  # noqa: E731
    # the number of cumulative tastes below the draw (a sum of comparisons: compiled, and one draw per view, where
    # a higher-order filter would be interpreted and draw once per category)
    u_cat = uk(S_VIEW_CAT)
    below = sum((F.when(F.col("cum")[i] < u_cat, 1).otherwise(0) for i in range(len(CATEGORIES))), F.lit(0))
    cat_idx = F.least(below, F.lit(len(CATEGORIES) - 1))
    category = F.element_at(F.array(*[F.lit(c) for c in CATEGORIES]), cat_idx + 1)
    viewed = views.select(
        "user_id",
        "user_num",
        "k",
        category.alias("category"),
        uk(S_VIEW_PRODUCT).alias("_u_product"),
        _at(day, uk(S_VIEW_TIME) * 86399).alias("event_time"),
        uk(S_CART).alias("_u_cart"),
    ).select(
        "*",
        _product(F.col("category"), F.col("_u_product")).alias("product_id"),
        F.format_string(f"S{day:%Y%m%d}-%08d-%d", "user_num", (F.floor((F.col("k") - 1) / 5) + 1).cast("int")).alias(
            "session_id"
        ),
    )
    priced = viewed.withColumn("price_eur", _product_price(s, F.col("category"), F.col("product_id")))
    # a view, and the cart it leads to, from one pass over the views (a union of the two would draw them twice)
    view = F.struct(
        F.format_string(f"E{day:%Y%m%d}-%08d-%04d-v", "user_num", "k").alias("event_id"),
        F.lit("view").alias("event_type"),
        F.col("event_time").alias("event_time"),
    )
    cart = F.struct(
        F.format_string(f"E{day:%Y%m%d}-%08d-%04d-c", "user_num", "k").alias("event_id"),
        F.lit("cart").alias("event_type"),
        F.least(F.col("event_time") + F.expr("INTERVAL 2 MINUTES"), _at(day, F.lit(86399))).alias("event_time"),
    )
    carted = F.col("_u_cart") < F.lit(shop.cart_rate)
    rows = priced.select(
        "user_id", "session_id", "product_id", "category", "price_eur",
        F.explode(F.when(carted, F.array(view, cart)).otherwise(F.array(view))).alias("_e"),
    )  # fmt: skip
    return rows.select(
        "_e.event_id", "_e.event_type", "user_id", "_e.event_time", "session_id", "product_id", "category",
        "price_eur", F.lit(None).cast("string").alias("order_id"),
    )  # fmt: skip


def _purchase_events(orders: DataFrame, shop: ShopConfig) -> DataFrame:
    """A cart and a purchase event for every order."""
    num = F.substring_index("order_id", "-", -1).cast("int")
    day_tag = F.substring("order_id", 2, 8)
    base = orders.select(
        "order_id", "user_id", "ordered_at", "category", "product_id",
        F.format_string("S%s-%08d-p", day_tag, num).alias("session_id"),
        _product_price(shop.seed, F.col("category"), F.col("product_id")).alias("price_eur"),
        F.format_string("E%s-%08d-p", day_tag, num).alias("_eid"),
    )  # fmt: skip
    cart_time = F.greatest(F.col("ordered_at") - F.expr("INTERVAL 1 MINUTE"), F.date_trunc("day", "ordered_at"))
    carts = base.select(
        F.concat("_eid", F.lit("c")).alias("event_id"), F.lit("cart").alias("event_type"), "user_id",
        cart_time.alias("event_time"), "session_id", "product_id", "category", "price_eur",
        F.lit(None).cast("string").alias("order_id"),
    )  # fmt: skip
    purchases = base.select(
        F.concat("_eid", F.lit("p")).alias("event_id"), F.lit("purchase").alias("event_type"), "user_id",
        F.col("ordered_at").alias("event_time"), "session_id", "product_id", "category", "price_eur", "order_id",
    )  # fmt: skip
    return carts.unionByName(purchases)
