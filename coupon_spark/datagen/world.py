"""The synthetic shop's world: catalogue, regions, coupon kinds, the population and its hidden traits.

Every random draw is a uniform computed from a hash of (seed, draw number, entity keys), never ``rand()``:
the same seed gives the same shop whatever the partitioning, the cluster or the order of the tasks, and any
single user (or user-day) can be regenerated on its own.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from coupon_spark.config import ShopConfig

# ---- catalogue ----------------------------------------------------------------------------------------------

# Canonical categories with the typical price of one item (EUR) and the gross margin rate.
CATEGORIES: tuple[str, ...] = ("grocery", "fashion", "electronics", "home", "beauty", "sports", "toys", "books")
PRICE_LEVEL_EUR: tuple[float, ...] = (4.0, 35.0, 120.0, 40.0, 18.0, 45.0, 25.0, 14.0)
MARGIN_RATE: tuple[float, ...] = (0.18, 0.45, 0.12, 0.35, 0.50, 0.35, 0.35, 0.25)
ITEMS_PER_BASKET = 2.2
PRODUCTS_PER_CATEGORY = 400

# Kinds of coupon; every user responds to each kind differently.
COUPON_KINDS: tuple[str, ...] = ("price_off", "free_shipping", "bonus_points")


@dataclass(frozen=True)
class Region:
    code: str
    currency: str
    utc_offset: str  # how the region's systems write timestamps: "Z" or "+01:00"
    weight: float
    cities: tuple[str, ...]


REGIONS: tuple[Region, ...] = (
    Region("DE", "EUR", "+01:00", 0.25, ("Berlin", "München", "Köln", "Hamburg", "Düsseldorf")),
    Region("FR", "EUR", "+01:00", 0.18, ("Paris", "Orléans", "Lyon", "Besançon")),
    Region("ES", "EUR", "+01:00", 0.12, ("Madrid", "Málaga", "Córdoba", "A Coruña")),
    Region("IT", "EUR", "+01:00", 0.10, ("Roma", "Milano", "Forlì")),
    Region("NL", "EUR", "+01:00", 0.07, ("Amsterdam", "Utrecht", "'s-Hertogenbosch")),
    Region("GB", "GBP", "Z", 0.15, ("London", "Manchester", "Leeds")),
    Region("US", "USD", "-05:00", 0.13, ("New York", "San José", "Boston")),
)
DEVICES: tuple[str, ...] = ("android", "ios", "web")
DEVICE_WEIGHTS: tuple[float, ...] = (0.45, 0.35, 0.20)

# Latent behaviour classes: they only shape the distributions of the continuous traits below. Whether a user
# is a persuadable, a sure thing, a lost cause or a sleeping dog is read off the response model itself
# (:func:`coupon_spark.datagen.response.uplift_type`), never from this label.
LATENT_CLASSES: tuple[str, ...] = ("casual", "loyal", "dormant", "averse")
LATENT_WEIGHTS: tuple[float, ...] = tuple(ShopConfig().latent_weights)
"""The default class mix (``shop.latent_weights``): a third casual shoppers who answer coupons, a core of loyal
buyers whom coupons do not move, a large dormant tail, and 15% whom a coupon puts off."""
# per class: (intent logit mean, sd), (coupon response mean, sd), max price sensitivity, activity multiplier
_ALPHA = {"casual": (-2.2, 0.6), "loyal": (-0.4, 0.5), "dormant": (-5.5, 0.7), "averse": (-1.5, 0.5)}
_RESPONSE = {"casual": (1.1, 0.35), "loyal": (0.0, 0.02), "dormant": (0.6, 0.3), "averse": (-1.1, 0.25)}
_MAX_SENSITIVITY = {"casual": 1.0, "loyal": 0.3, "dormant": 1.0, "averse": 0.8}
_ACTIVITY = {"casual": 1.0, "loyal": 2.5, "dormant": 0.4, "averse": 1.2}

# Weekly seasonality, Monday first: multiplies views and shifts the purchase logit by its log.
WEEKLY_FACTOR: tuple[float, ...] = (0.95, 0.90, 0.95, 1.00, 1.10, 1.20, 1.05)

MASK_53 = (1 << 53) - 1

# Draw numbers ("salts"): one per independent uniform, so that no two draws share a hash.
S_SIGNUP_NEW, S_SIGNUP_DAY, S_REGION, S_CITY, S_DEVICE, S_DEVICE2, S_DEVICE_CHANGE = 1, 2, 3, 4, 5, 6, 7
S_CLASS, S_ALPHA1, S_ALPHA2, S_SENS, S_RESP1, S_RESP2, S_ACT1, S_ACT2, S_SEGMENT = 10, 11, 12, 13, 14, 15, 16, 17, 18
S_TASTE = 100  # + category index
S_KIND1, S_KIND2 = 200, 220  # + kind index


def season_logit(day: dt.date) -> float:
    """Shift of every user's purchase logit on ``day`` (weekly seasonality)."""
    return math.log(WEEKLY_FACTOR[day.weekday()])


def day_index(day: dt.date) -> int:
    """A stable integer for a day, used as a hash key (days since 1970-01-01)."""
    return (day - dt.date(1970, 1, 1)).days


# ---- column functions ---------------------------------------------------------------------------------------


def uniform(seed: int, salt: int, *keys: Column | str) -> Column:
    """A uniform in (0, 1) from ``xxhash64(seed, salt, keys...)``: deterministic per row, independent per salt."""
    cols = [F.col(k) if isinstance(k, str) else k for k in keys]
    h = F.xxhash64(F.lit(seed), F.lit(salt), *cols)
    return (h.bitwiseAND(F.lit(MASK_53)).cast("double") + F.lit(0.5)) / F.lit(float(1 << 53))


def normal(seed: int, salt1: int, salt2: int, *keys: Column | str) -> Column:
    """A standard normal from two hash uniforms (Box-Muller)."""
    u1, u2 = uniform(seed, salt1, *keys), uniform(seed, salt2, *keys)
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2 * math.pi) * u2)


def choice(u: Column, values: Sequence[object], weights: Sequence[float] | None = None) -> Column:
    """The value whose cumulative-weight interval holds the uniform ``u`` (equal weights when not given)."""
    w = list(weights) if weights is not None else [1.0] * len(values)
    total = sum(w)
    expr = None
    acc = 0.0
    for value, weight in zip(values[:-1], w[:-1], strict=True):
        acc += weight / total
        expr = F.when(u < F.lit(acc), F.lit(value)) if expr is None else expr.when(u < F.lit(acc), F.lit(value))
    last = F.lit(values[-1])
    return last if expr is None else expr.otherwise(last)


def by_key(key: Column, mapping: dict[str, float | str]) -> Column:
    """``mapping[key]`` as a column (a literal map lookup)."""
    return F.element_at(F.create_map(*[F.lit(x) for kv in mapping.items() for x in kv]), key)


# ---- the population -----------------------------------------------------------------------------------------

USER_TRUTH = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("user_num", IntegerType(), False),
        StructField("signup_date", DateType(), False),
        StructField("region", StringType(), False),
        StructField("city", StringType(), False),
        StructField("device", StringType(), False),
        StructField("device_later", StringType(), False),
        StructField("device_change_date", DateType(), False),
        StructField("segment", StringType(), False),
        StructField("alpha", DoubleType(), False),
        StructField("price_sensitivity", DoubleType(), False),
        StructField("activity", DoubleType(), False),
        StructField("basket_eur", DoubleType(), False),
        StructField("margin_rate", DoubleType(), False),
        StructField("taste", ArrayType(DoubleType()), False),
        StructField("kind_response", ArrayType(DoubleType()), False),
    ]
)
"""The population with its hidden traits (``<truth_dir>/user_traits``). Observable: ids, signup, region, city,
device (and its one change), segment. Hidden: ``alpha`` (purchase intent logit on an average day),
``price_sensitivity`` in [0, 1], ``activity`` (mean views per day), ``basket_eur`` (typical basket),
``margin_rate``, ``taste`` (weights over :data:`CATEGORIES`, summing to 1) and ``kind_response`` (response to
each of :data:`COUPON_KINDS`; negative for sleeping dogs)."""


def users_frame(spark: SparkSession, shop: ShopConfig) -> DataFrame:
    """Every user of the population with observable attributes and hidden traits (:data:`USER_TRUTH`).

    Built from ``spark.range`` with column expressions only: 10M users is one parallel pass.
    """
    s = shop.seed
    start = F.lit(shop.start)
    k = len(CATEGORIES)
    base = spark.range(0, shop.users, numPartitions=shop.partitions).select(F.col("id").cast("int").alias("user_num"))
    u = lambda salt: uniform(s, salt, "user_num")  # noqa: E731
    z = lambda s1, s2: normal(s, s1, s2, "user_num")  # noqa: E731
    cls = choice(u(S_CLASS), LATENT_CLASSES, shop.latent_weights)
    is_new = u(S_SIGNUP_NEW) < F.lit(shop.new_signup_share)
    signup = F.when(
        is_new, F.date_add(start, F.floor(u(S_SIGNUP_DAY) * shop.signup_horizon_days).cast("int"))
    ).otherwise(F.date_sub(start, (F.floor(u(S_SIGNUP_DAY) * shop.signup_history_days) + 1).cast("int")))
    region = choice(u(S_REGION), [r.code for r in REGIONS], [r.weight for r in REGIONS])
    cities = F.create_map(*[x for r in REGIONS for x in (F.lit(r.code), F.array(*[F.lit(c) for c in r.cities]))])
    step1 = base.select(
        "user_num",
        F.format_string("U%08d", "user_num").alias("user_id"),
        signup.alias("signup_date"),
        region.alias("region"),
        cities[region].alias("_cities"),
        choice(u(S_DEVICE), DEVICES, DEVICE_WEIGHTS).alias("device"),
        choice(u(S_DEVICE2), DEVICES, DEVICE_WEIGHTS).alias("device_later"),
        F.date_add(start, F.floor(u(S_DEVICE_CHANGE) * 400 - 200).cast("int")).alias("device_change_date"),
        cls.alias("_class"),
        z(S_ALPHA1, S_ALPHA2).alias("_z_alpha"),
        z(S_RESP1, S_RESP2).alias("_z_resp"),
        z(S_ACT1, S_ACT2).alias("_z_act"),
        u(S_SENS).alias("_u_sens"),
        u(S_SEGMENT).alias("_u_segment"),
        u(S_CITY).alias("_u_city"),
        *[F.pow(-F.log(u(S_TASTE + i)), F.lit(2.0)).alias(f"_w{i}") for i in range(k)],
        *[normal(s, S_KIND1 + i, S_KIND2 + i, "user_num").alias(f"_zk{i}") for i in range(len(COUPON_KINDS))],
    )
    c = F.col("_class")
    alpha = by_key(c, {n: m for n, (m, _) in _ALPHA.items()}) + by_key(
        c, {n: sd for n, (_, sd) in _ALPHA.items()}
    ) * F.col("_z_alpha")
    resp = by_key(c, {n: m for n, (m, _) in _RESPONSE.items()}) + by_key(
        c, {n: sd for n, (_, sd) in _RESPONSE.items()}
    ) * F.col("_z_resp")
    # the sign of a user's response is its class's: averse users are sleeping dogs for every kind of coupon
    resp = (
        F.when(c == "averse", F.least(resp, F.lit(-0.3)))
        .when(c == "loyal", resp)
        .otherwise(F.greatest(resp, F.lit(0.1)))
    )
    total = sum((F.col(f"_w{i}") for i in range(k)), F.lit(0.0))
    sens = F.col("_u_sens") * by_key(c, _MAX_SENSITIVITY)  # type: ignore[arg-type]
    mu = math.log(shop.views_per_user_day) - 0.5
    activity = F.exp(F.lit(mu) + F.col("_z_act")) * by_key(c, _ACTIVITY)  # type: ignore[arg-type]
    recent = F.col("signup_date") > F.date_sub(start, 30)
    segment = (
        F.when(recent, F.lit("new"))
        .when((c == "loyal") & (F.col("_u_segment") < 0.7), F.lit("vip"))
        .when((c == "dormant") & (F.col("_u_segment") < 0.6), F.lit("lapsed"))
        .when(F.col("_u_segment") < 0.1, F.lit("vip"))
        .otherwise(F.lit("regular"))
    )
    step2 = step1.select(
        "user_id",
        "user_num",
        "signup_date",
        "region",
        F.element_at("_cities", (F.floor(F.col("_u_city") * F.size("_cities")) + 1).cast("int")).alias("city"),
        "device",
        "device_later",
        "device_change_date",
        segment.alias("segment"),
        alpha.alias("alpha"),
        sens.alias("price_sensitivity"),
        activity.alias("activity"),
        F.array(*[F.col(f"_w{i}") / total for i in range(k)]).alias("taste"),
        F.array(*[resp * (F.lit(1.0) + F.lit(0.3) * F.col(f"_zk{i}")) for i in range(len(COUPON_KINDS))]).alias(
            "kind_response"
        ),
    )
    basket = sum((F.col("taste")[i] * F.lit(PRICE_LEVEL_EUR[i] * ITEMS_PER_BASKET) for i in range(k)), F.lit(0.0)) * (
        F.lit(1.2) - F.lit(0.4) * F.col("price_sensitivity")
    )
    margin = sum((F.col("taste")[i] * F.lit(MARGIN_RATE[i]) for i in range(k)), F.lit(0.0))
    out = step2.select(
        *[c for c in step2.columns if c not in ("taste", "kind_response")],
        basket.alias("basket_eur"),
        margin.alias("margin_rate"),
        "taste",
        "kind_response",
    )
    return out.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in USER_TRUTH.fields])


# ---- the coupon catalogue -----------------------------------------------------------------------------------

COUPON_TRUTH = StructType(
    [
        StructField("coupon_id", StringType(), False),
        StructField("campaign_id", StringType(), False),
        StructField("kind", StringType(), False),
        StructField("category", StringType(), False),
        StructField("face_value_eur", DoubleType(), False),
        StructField("min_spend_eur", DoubleType(), False),
        StructField("cost_eur", DoubleType(), False),
        StructField("valid_from", DateType(), False),
        StructField("valid_to", DateType(), False),
        StructField("campaign_budget_eur", DoubleType(), False),
    ]
)
"""Coupon parameters as the response model uses them (``<truth_dir>/coupons``); ``category`` is ``all`` for a
site-wide coupon."""


def coupon_terms(kind: str, t: int) -> tuple[float, float, float]:
    """``(face value, minimum spend, cost)`` in EUR of the ``t``-th coupon (0-based) of a campaign of ``kind``."""
    if kind == "price_off":
        return 5.0 * (t + 1), 25.0 * (t + 1), 5.0 * (t + 1)
    if kind == "free_shipping":
        return 4.95, 15.0 * t, 3.5
    return 2.0 * (t + 1), 10.0 * (t + 1), 1.2 * (t + 1)


def coupons_pandas(shop: ShopConfig) -> pd.DataFrame:
    """The coupon catalogue (:data:`COUPON_TRUTH` columns): small, so built on the driver, from the seed.

    Campaign 1 runs all year; the others open around the start date for one to four weeks. Each kind has
    its economics: ``price_off`` costs its face value, ``free_shipping`` costs the carrier's fee (less than
    the shipping price shown), ``bonus_points`` cost 60% of their face value (breakage).
    """
    rng = np.random.default_rng([shop.seed, 7])
    rows = []
    budget_unit = shop.budget_eur_per_1k_users * shop.users / 1000.0
    for j in range(shop.campaigns):
        kind = COUPON_KINDS[j % len(COUPON_KINDS)]
        sitewide = j % 2 == 0
        category = "all" if sitewide else CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        if j == 0:
            valid_from, valid_to = shop.start - dt.timedelta(days=30), shop.start + dt.timedelta(days=365)
        else:
            valid_from = shop.start + dt.timedelta(days=int(rng.integers(-7, 14)))
            valid_to = valid_from + dt.timedelta(days=int(rng.integers(7, 29)))
        budget = round(budget_unit * float(rng.uniform(0.5, 2.0)), 2)
        for t in range(shop.coupons_per_campaign):
            face, min_spend, cost = coupon_terms(kind, t)
            rows.append(
                {
                    "coupon_id": f"CPN{j + 1:02d}{t + 1:02d}",
                    "campaign_id": f"CMP{j + 1:02d}",
                    "kind": kind,
                    "category": category,
                    "face_value_eur": face,
                    "min_spend_eur": min_spend,
                    "cost_eur": cost,
                    "valid_from": valid_from,
                    "valid_to": valid_to,
                    "campaign_budget_eur": budget,
                }
            )
    return pd.DataFrame(rows, columns=COUPON_TRUTH.fieldNames())
