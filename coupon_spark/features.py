"""Point-in-time feature tables in Delta Lake: user and coupon features, training examples, feature statistics.

``coupon-spark features --run-date R`` writes, for as-of date R (and for any earlier issue date whose
snapshot is missing), the tables whose contracts are in :mod:`coupon_spark.schemas` ("features" section).

Point in time. A record counts for the snapshot of date D only if it was *known* before D 00:00 UTC: it
arrived in an ingest folder before D (``ingest_date < D``) and happened before D. Each record is placed on its
*known day*, ``greatest(date(event time), ingest_date)`` (its own day when it arrived on time, the day it
arrived when late), and a window of w days for D covers known days ``[D - w, D - 1]``. So nothing that
happened, or arrived, on or after D can reach a snapshot of D, and a training example (an issuance on D)
carries the snapshot of D.

Coupon response. A user's answer to coupons is the one trait that separates a shopper a coupon persuades from
one it puts off when both buy alike, and it shows only where coupons were issued to them. Over the history
window (``features.history_window_days``, up to a year of the shop's past) each user gets, per coupon kind k
(``features.coupon_kinds``) and for all kinds together: ``n_k`` coupons received, ``y_k`` of those issue days
with a purchase, ``r_k`` redeemed. Against the user's baseline purchase rate on the other days,
``b = (purchase days - y) / (observed days - n)``, the purchase lift on coupon days is shrunk toward the
population's lift ``delta_k`` of the same snapshot (a prior worth ``m = features.response_prior_issuances``
issuances)::

    uf_resp_lift_k        = (y_k - n_k * b + m * delta_k) / (n_k + m)
    uf_resp_redeem_rate_k = (r_k + m * rho_k) / (n_k + m)          rho_k: the population's redemption rate
    uf_resp_z_k           = (y_k - n_k * b) / sqrt(n_k * b * (1 - b) + 0.01)    the evidence against no effect

so a user with no coupons gets the population's value and one with many gets their own. These are rates, not
counts: they do not drift as the history fills. ``uf_hist_*`` are the purchase history over the same window
(order-day rate, basket mean and spread) for the same reason.

How. Every source is reduced to daily aggregates per (user, known day). For the as-of dates wanted, "probe"
rows (user, D) are added, and window sums over each user's days (``rangeBetween(-w, -1)``) give every window
feature for every as-of date in one sort, without replicating facts per date.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DecimalType, StructField, StructType

from coupon_spark import tables
from coupon_spark.config import Config, FeaturesConfig
from coupon_spark.errors import UpstreamNotReady
from coupon_spark.lake import Lake
from coupon_spark.runner import Context
from coupon_spark.schemas import (
    COUPON_FEATURE_PREFIXES,
    FEATURE_STATS,
    TRAINING_EXAMPLES_KEYS,
    USER_FEATURE_PREFIXES,
)

log = logging.getLogger(__name__)

CONTROL = "none"  # cc_* value of the control arm ("no coupon") and of a missing category
UNKNOWN = "unknown"


class MissingInputError(UpstreamNotReady, ValueError):
    """A silver table the feature job needs is missing or has no data before the as-of date."""


# ---- column functions --------------------------------------------------------------------------------------


def known_day(event_time: str, ingest_date: str = "ingest_date") -> Column:
    """The day a record became known: its event day, or its ingest day when it arrived late."""
    return F.greatest(F.to_date(F.col(event_time)), F.col(ingest_date))


def day_number(col: Column) -> Column:
    """Days since 1970-01-01, the ordering key of the per-user windows."""
    return F.datediff(col, F.lit("1970-01-01").cast("date"))


def safe_ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num / den).otherwise(F.lit(0.0))


EXACT = DecimalType(38, 18)


def exact_sum(col: Column) -> Column:
    """``sum(col)`` as a double that does not depend on the order Spark adds the rows in.

    Spark adds a group's rows in the order its tasks deliver them, which changes from run to run; doubles added
    in another order differ in their last bits, and a model trained on them ends elsewhere (the demo's figures
    moved between runs of the same world). Here each value is rounded once to 18 decimals (a function of the
    value alone) and the decimals are added exactly. Money columns (decimal(12,2)) are added without rounding.
    Sums of 0/1 flags stay doubles: whole numbers below 2**53 add exactly in any order.
    """
    return F.sum(col.cast(EXACT)).cast("double")


def _slug(value: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in value.lower()).strip("_")


# ---- daily aggregates per (user_id, day) -------------------------------------------------------------------


def daily_orders(orders: DataFrame, categories: list[str]) -> DataFrame:
    """Per (user_id, day): orders, spend, orders with a discount, and spend per category."""
    cat = F.col("category")
    return (
        orders.withColumn("day", known_day("ordered_at"))
        .groupBy("user_id", "day")
        .agg(
            F.count("*").cast("double").alias("orders"),
            exact_sum(F.col("amount_eur")).alias("spend"),
            exact_sum(F.col("amount_eur") * F.col("amount_eur")).alias("spend_sq"),
            F.sum(F.when(F.col("discount_eur") > 0, 1.0).otherwise(0.0)).alias("discount_orders"),
            *[
                exact_sum(F.when(cat == c, F.col("amount_eur")).otherwise(0)).alias(f"spend_cat_{_slug(c)}")
                for c in categories
            ],
        )
    )


def daily_events(events: DataFrame) -> DataFrame:
    """Per (user_id, day): views, carts, sessions, and the summed price of viewed items."""
    kind = F.col("event_type")
    return (
        events.withColumn("day", known_day("event_time"))
        .groupBy("user_id", "day")
        .agg(
            F.sum(F.when(kind == "view", 1.0).otherwise(0.0)).alias("views"),
            F.sum(F.when(kind == "cart", 1.0).otherwise(0.0)).alias("carts"),
            F.countDistinct("session_id").cast("double").alias("sessions"),
            exact_sum(F.when((kind == "view") & F.col("price_eur").isNotNull(), F.col("price_eur"))).alias(
                "viewed_price_sum"
            ),
            F.sum(F.when((kind == "view") & F.col("price_eur").isNotNull(), 1.0).otherwise(0.0)).alias("viewed_priced"),
        )
        .fillna(0.0, subset=["viewed_price_sum"])
    )


def coupon_kinds_of(coupons: DataFrame) -> DataFrame:
    """(coupon_id, kind): each coupon's kind (lower case) from any catalogue snapshot."""
    return coupons.groupBy("coupon_id").agg(F.lower(F.max("kind")).alias("kind"))


def daily_coupons(
    issuances: DataFrame, redemptions: DataFrame, kinds: DataFrame | None = None, kind_names: Iterable[str] = ()
) -> DataFrame:
    """Per (user_id, day): coupons issued (the control arm excluded), redeemed, and the discount taken; with
    ``kinds`` (:func:`coupon_kinds_of`) also ``issued_<kind>`` and ``redeemed_<kind>`` for ``kind_names``."""
    names = list(kind_names)
    iss = issuances.where(F.col("coupon_id").isNotNull()).withColumn("day", known_day("issued_at"))
    red = redemptions.withColumn("day", known_day("redeemed_at"))
    if kinds is not None and names:
        iss = iss.join(F.broadcast(kinds), on="coupon_id", how="left")
        red = red.join(F.broadcast(kinds), on="coupon_id", how="left")
    per_kind = lambda prefix: [  # noqa: E731
        F.sum(F.when(F.col("kind") == k, 1.0).otherwise(0.0)).alias(f"{prefix}_{_slug(k)}") for k in names
    ] if kinds is not None else []  # fmt: skip
    issued = iss.groupBy("user_id", "day").agg(F.count("*").cast("double").alias("issued"), *per_kind("issued"))
    redeemed = red.groupBy("user_id", "day").agg(
        F.count("*").cast("double").alias("redeemed"),
        exact_sum(F.coalesce(F.col("discount_eur"), F.lit(0))).alias("discount_taken"),
        *per_kind("redeemed"),
    )
    return issued.join(redeemed, on=["user_id", "day"], how="full_outer")


DAILY_METRICS_ORDERS = ["orders", "spend", "discount_orders"]
DAILY_METRICS_EVENTS = ["views", "carts", "sessions", "viewed_price_sum", "viewed_priced"]
DAILY_METRICS_COUPONS = ["issued", "redeemed", "discount_taken"]


def response_metrics(kind_names: Iterable[str]) -> list[str]:
    """Daily metrics of the coupon-response features: per kind issued, redeemed, and issued on a purchase day;
    the same for all coupons together (``issued``, ``redeemed``, ``issued_buy``)."""
    out = ["issued_buy"]
    for k in kind_names:
        out += [f"issued_{_slug(k)}", f"redeemed_{_slug(k)}", f"issued_buy_{_slug(k)}"]
    return out


def combine_daily(frames: Iterable[DataFrame], metrics: list[str]) -> DataFrame:
    """Union of daily aggregates (missing metrics as 0), summed per (user_id, day)."""
    aligned = []
    for f in frames:
        aligned.append(
            f.select(
                "user_id",
                F.col("day").cast("date").alias("day"),
                *[(F.coalesce(F.col(m), F.lit(0.0)) if m in f.columns else F.lit(0.0)).alias(m) for m in metrics],
            )
        )
    out = aligned[0]
    for f in aligned[1:]:
        out = out.unionByName(f)
    return out.groupBy("user_id", "day").agg(*[F.sum(m).alias(m) for m in metrics])


# ---- snapshots ---------------------------------------------------------------------------------------------


def _pick_snapshot(table: DataFrame, as_of_dates: list[dt.date], strict: bool, earliest_fallback: bool) -> DataFrame:
    """``(as_of_date, ingest_date)``: the newest snapshot of a dimension ingested before (``strict``) or on each
    date. ``earliest_fallback``: a date before every snapshot takes the earliest one (an imported past, whose
    dimension files were landed once, at its end); otherwise such a date has none."""
    spark = table.sparkSession
    dates = spark.createDataFrame([(d,) for d in as_of_dates], StructType([StructField("as_of_date", DateType())]))
    snaps = table.select("ingest_date").distinct()
    before = (F.col("ingest_date") < F.col("as_of_date")) if strict else (F.col("ingest_date") <= F.col("as_of_date"))
    pick = dates.join(snaps, before, how="inner").groupBy("as_of_date").agg(F.max("ingest_date").alias("ingest_date"))
    if not earliest_fallback:
        return pick
    first = snaps.agg(F.min("ingest_date").alias("first"))
    return (
        dates.join(pick, on="as_of_date", how="left")
        .crossJoin(first)
        .select("as_of_date", F.coalesce(F.col("ingest_date"), F.col("first")).alias("ingest_date"))
        .where(F.col("ingest_date").isNotNull())
    )


def users_as_of(users: DataFrame, as_of_dates: list[dt.date], earliest_fallback: bool = False) -> DataFrame:
    """(as_of_date, user profile) for each date: the newest users snapshot ingested before it (see
    :func:`_pick_snapshot` for ``earliest_fallback``), users signed up before it."""
    pick = _pick_snapshot(users, as_of_dates, strict=True, earliest_fallback=earliest_fallback)
    return (
        users.join(F.broadcast(pick), on="ingest_date", how="inner")
        .where(F.col("signup_date").isNull() | (F.col("signup_date") < F.col("as_of_date")))
        .select("as_of_date", "user_id", "signup_date", "region", "device", "segment")
    )


def with_window_features(
    daily: DataFrame,
    probes: DataFrame,
    metrics: list[str],
    windows: list[int],
    long_metrics: Iterable[str] = (),
    long_window: int = 0,
) -> DataFrame:
    """Window sums of every metric over each probe's preceding ``w`` known days, and the last order day; and of
    ``long_metrics`` (a subset of ``metrics``) over ``long_window`` days too, in the same pass.

    Args:
        daily: (user_id, day, *metrics) daily aggregates.
        probes: (user_id, as_of_date) rows to compute features for.
        metrics: Metric columns of ``daily``.
        windows: Window lengths in days.

    Returns:
        (user_id, as_of_date, ``<metric>_<w>d`` for every metric and window, ``last_order_day``).
    """
    carried = [*metrics, *[m for m in long_metrics if m not in metrics]]
    rows = daily.select(
        "user_id",
        day_number(F.col("day")).alias("dn"),
        F.lit(False).alias("probe"),
        F.lit(None).cast("date").alias("as_of_date"),
        *carried,
    ).unionByName(
        probes.select(
            "user_id",
            day_number(F.col("as_of_date")).alias("dn"),
            F.lit(True).alias("probe"),
            "as_of_date",
            *[F.lit(0.0).alias(m) for m in carried],
        )
    )
    by_user = Window.partitionBy("user_id").orderBy("dn")
    windowed = [F.sum(m).over(by_user.rangeBetween(-w, -1)).alias(f"{m}_{w}d") for w in windows for m in metrics]
    longs = [m for m in long_metrics if long_window > 0 and long_window not in windows]
    windowed += [F.sum(m).over(by_user.rangeBetween(-long_window, -1)).alias(f"{m}_{long_window}d") for m in longs]
    out_cols = [f"{m}_{w}d" for w in windows for m in metrics] + [f"{m}_{long_window}d" for m in longs]
    last_order = F.max(F.when(F.col("orders") > 0, F.col("dn"))).over(
        by_user.rangeBetween(Window.unboundedPreceding, -1)
    )
    return (
        rows.select("user_id", "probe", "as_of_date", "dn", *windowed, last_order.alias("last_order_dn"))
        .where(F.col("probe"))
        .select(
            "user_id",
            "as_of_date",
            *[F.coalesce(F.col(c), F.lit(0.0)).alias(c) for c in out_cols],
            (F.col("dn") - F.col("last_order_dn")).alias("days_since_last_order"),
        )
    )


def user_features(
    users: DataFrame,
    orders: DataFrame,
    events: DataFrame,
    issuances: DataFrame,
    redemptions: DataFrame,
    as_of_dates: list[dt.date],
    categories: list[str],
    cfg: FeaturesConfig,
    coupons: DataFrame | None = None,
    earliest_users: bool = False,
) -> DataFrame:
    """The ``user_features`` snapshots of ``as_of_dates`` (see the module docstring for the time semantics).

    The silver inputs may hold any dates: each source is cut to what was known before the latest as-of date,
    and the windows do the rest. ``coupons`` (the silver catalogue) gives each issued coupon its kind for the
    per-kind response features; without it those count no coupon. ``earliest_users``: a date before the first
    users snapshot takes that snapshot (the snapshots of an imported past, :func:`users_as_of`).
    """
    windows = sorted(set(cfg.windows_days))
    hist = int(cfg.history_window_days)
    last = max(as_of_dates)
    horizon = min(as_of_dates) - dt.timedelta(days=max(*windows, hist) + 1)

    def known_before(df: DataFrame, ts: str) -> DataFrame:
        day = known_day(ts)
        return df.where((F.col("ingest_date") < F.lit(last)) & (day < F.lit(last)) & (day >= F.lit(horizon)))

    kinds = [_slug(k) for k in cfg.coupon_kinds]
    resp = response_metrics(cfg.coupon_kinds)
    cat_metrics = [f"spend_cat_{_slug(c)}" for c in categories]
    base_metrics = DAILY_METRICS_ORDERS + cat_metrics + DAILY_METRICS_EVENTS + DAILY_METRICS_COUPONS
    kind_metrics = [m for m in resp if not m.startswith("issued_buy")]
    combined = combine_daily(
        [
            daily_orders(known_before(orders, "ordered_at"), categories),
            daily_events(known_before(events, "event_time")),
            daily_coupons(
                known_before(issuances, "issued_at"),
                known_before(redemptions, "redeemed_at"),
                coupon_kinds_of(coupons) if coupons is not None else None,
                cfg.coupon_kinds,
            ),
        ],
        [*base_metrics, "spend_sq", *kind_metrics],
    )
    # a purchase day, and the coupons that arrived on one (a coupon acts on its issue day)
    buy_day = F.when(F.col("orders") > 0, 1.0).otherwise(0.0)
    daily = combined.select(
        "*",
        buy_day.alias("buy_day"),
        (F.col("issued") * buy_day).alias("issued_buy"),
        *[(F.col(f"issued_{k}") * buy_day).alias(f"issued_buy_{k}") for k in kinds],
    )
    long_metrics = ["orders", "spend", "spend_sq", "buy_day", "issued", "redeemed", *resp]
    # the short windows only for the metrics that have short-window features; the response metrics: the long one
    profiles = users_as_of(users, as_of_dates, earliest_fallback=earliest_users)
    win = with_window_features(
        daily, profiles.select("user_id", "as_of_date"), base_metrics, windows, long_metrics, hist
    )
    big = max(windows)
    mid = sorted(w for w in windows if w <= 30)[-1] if any(w <= 30 for w in windows) else big
    short = windows[0]
    cap = float(cfg.recency_cap_days)

    def col(m: str, w: int) -> Column:
        return F.col(f"{m}_{w}d")

    feats = [
        F.datediff(F.col("as_of_date"), F.col("signup_date")).cast("double").alias("uf_tenure_days"),
        F.least(F.coalesce(F.col("days_since_last_order").cast("double"), F.lit(cap)), F.lit(cap)).alias(
            "uf_recency_days"
        ),
        *[col("orders", w).alias(f"uf_orders_{w}d") for w in windows],
        *[col("spend", w).alias(f"uf_spend_{w}d") for w in windows],
        safe_ratio(col("spend", big), col("orders", big)).alias(f"uf_avg_basket_{big}d"),
        *[safe_ratio(col(m, big), col("spend", big)).alias(f"uf_share_{m[len('spend_cat_') :]}") for m in cat_metrics],
        *[col("views", w).alias(f"uf_views_{w}d") for w in windows if w <= 30],
        col("carts", mid).alias(f"uf_carts_{mid}d"),
        col("sessions", mid).alias(f"uf_sessions_{mid}d"),
        safe_ratio(col("orders", mid), col("sessions", mid)).alias(f"uf_orders_per_session_{mid}d"),
        safe_ratio(col("viewed_price_sum", mid), col("viewed_priced", mid)).alias(f"uf_avg_viewed_price_{mid}d"),
        col("issued", big).alias(f"uf_coupons_issued_{big}d"),
        col("redeemed", big).alias(f"uf_coupons_redeemed_{big}d"),
        safe_ratio(col("redeemed", big), col("issued", big)).alias(f"uf_redemption_rate_{big}d"),
        safe_ratio(col("discount_taken", big), col("redeemed", big)).alias(f"uf_avg_discount_taken_{big}d"),
        safe_ratio(col("discount_orders", big), col("orders", big)).alias(f"uf_discount_order_share_{big}d"),
        safe_ratio(col("orders", short), col("orders", big)).alias(f"uf_recent_order_share_{short}d"),
    ]
    h = lambda m: F.coalesce(F.col(f"{m}_{hist}d"), F.lit(0.0))  # noqa: E731
    joined = profiles.join(win, on=["user_id", "as_of_date"], how="left")
    # days the user was there within the history window, and the purchase rate on days without a coupon
    observed = F.greatest(
        F.least(F.datediff(F.col("as_of_date"), F.col("signup_date")), F.lit(hist)).cast("double"), F.lit(1.0)
    )
    observed = F.coalesce(observed, F.lit(float(hist)))
    base_rate = F.least(
        safe_ratio(
            F.greatest(h("buy_day") - h("issued_buy"), F.lit(0.0)), F.greatest(observed - h("issued"), F.lit(1.0))
        ),
        F.lit(1.0),
    )
    groups = [("all", "issued", "redeemed", "issued_buy")] + [
        (k, f"issued_{k}", f"redeemed_{k}", f"issued_buy_{k}") for k in kinds
    ]
    raw = joined.select(
        "*",
        base_rate.alias("_base"),
        observed.alias("_observed"),
        *[(h(y) - h(n) * base_rate).alias(f"_excess_{g}") for g, n, _, y in groups],
    )
    # the population's lift and redemption rate per snapshot: the prior every user is shrunk toward
    prior = raw.groupBy("as_of_date").agg(
        *[safe_ratio(exact_sum(F.col(f"_excess_{g}")), F.sum(h(n))).alias(f"_delta_{g}") for g, n, _, _ in groups],
        *[safe_ratio(F.sum(h(r)), F.sum(h(n))).alias(f"_rho_{g}") for g, n, r, _ in groups],
    )
    m = F.lit(float(cfg.response_prior_issuances))
    hist_feats = [
        h("orders").alias(f"uf_hist_orders_{hist}d"),
        (h("buy_day") / F.col("_observed")).alias("uf_hist_buy_day_rate"),
        safe_ratio(h("spend"), h("orders")).alias("uf_hist_basket"),
        F.sqrt(
            F.greatest(
                safe_ratio(h("spend_sq"), h("orders")) - F.pow(safe_ratio(h("spend"), h("orders")), 2), F.lit(0.0)
            )
        ).alias("uf_hist_basket_sd"),
        F.col("_base").alias("uf_hist_base_rate"),
    ]
    for g, n, r, _ in groups:
        hist_feats += [
            h(n).alias(f"uf_resp_issued_{g}"),
            ((F.col(f"_excess_{g}") + m * F.col(f"_delta_{g}")) / (h(n) + m)).alias(f"uf_resp_lift_{g}"),
            ((h(r) + m * F.col(f"_rho_{g}")) / (h(n) + m)).alias(f"uf_resp_redeem_rate_{g}"),
            # the same evidence as a z-score against "no effect": how sure the lift is, not only how large
            safe_ratio(
                F.col(f"_excess_{g}"), F.sqrt(h(n) * F.col("_base") * (F.lit(1.0) - F.col("_base")) + F.lit(0.01))
            ).alias(f"uf_resp_z_{g}"),
        ]
    return (
        raw.join(F.broadcast(prior), on="as_of_date", how="left")
        .select(
            "as_of_date",
            "user_id",
            *feats,
            *hist_feats,
            F.coalesce(F.col("region"), F.lit(UNKNOWN)).alias("uc_region"),
            F.coalesce(F.col("device"), F.lit(UNKNOWN)).alias("uc_device"),
            F.coalesce(F.col("segment"), F.lit(UNKNOWN)).alias("uc_segment"),
        )
        .fillna(0.0)
    )


def coupon_features(coupons: DataFrame, as_of_dates: list[dt.date], earliest_fallback: bool = False) -> DataFrame:
    """The ``coupon_features`` of ``as_of_dates``: the newest catalogue snapshot ingested on or before each date
    (a coupon's terms are known on the day it can be issued; see :func:`_pick_snapshot` for
    ``earliest_fallback``)."""
    pick = _pick_snapshot(coupons, as_of_dates, strict=False, earliest_fallback=earliest_fallback)
    face = F.col("face_value_eur").cast("double")
    min_spend = F.col("min_spend_eur").cast("double")
    return (
        coupons.join(F.broadcast(pick), on="ingest_date", how="inner")
        .select(
            "as_of_date",
            "coupon_id",
            "campaign_id",
            F.coalesce(face, F.lit(0.0)).alias("cf_face_value"),
            F.coalesce(min_spend, F.lit(0.0)).alias("cf_min_spend"),
            F.coalesce(safe_ratio(face, F.greatest(min_spend, face)), F.lit(0.0)).alias("cf_discount_ratio"),
            F.coalesce(F.col("cost_eur").cast("double"), F.lit(0.0)).alias("cf_cost"),
            F.coalesce(F.col("campaign_budget_eur").cast("double"), F.lit(0.0)).alias("cf_campaign_budget"),
            (F.datediff(F.col("valid_to"), F.col("as_of_date")) + 1).cast("double").alias("cf_days_left"),
            F.datediff(F.col("as_of_date"), F.col("valid_from")).cast("double").alias("cf_days_since_start"),
            F.coalesce(F.col("kind"), F.lit(UNKNOWN)).alias("cc_kind"),
            F.coalesce(F.col("category"), F.lit(UNKNOWN)).alias("cc_category"),
        )
        .fillna(0.0)
    )


def feature_columns(df: DataFrame, prefixes: tuple[str, ...]) -> list[str]:
    return [c for c in df.columns if c.startswith(prefixes)]


def training_examples(
    issuances: DataFrame,
    orders: DataFrame,
    redemptions: DataFrame,
    coupons: DataFrame,
    user_feats: DataFrame,
    coupon_feats: DataFrame,
    issue_dates: list[dt.date],
    window_days: int,
) -> DataFrame:
    """One row per issuance of ``issue_dates`` (control arm included) with point-in-time features and outcomes.

    Args:
        issuances, orders, redemptions, coupons: silver tables.
        user_feats: ``user_features`` holding the snapshots of ``issue_dates``.
        coupon_feats: ``coupon_features`` holding the snapshots of ``issue_dates``.
        issue_dates: Dates whose outcome windows have closed.
        window_days: Outcome window: from ``issued_at`` to the end of day ``issue_date + window_days - 1`` (UTC).
    """
    iss = (
        issuances.withColumn("issue_date", F.to_date("issued_at"))
        .where(F.col("issue_date").isin(issue_dates))
        .select("issuance_id", "user_id", "coupon_id", "issued_at", "issue_date", "policy", "propensity")
    )
    # the window closes at 00:00 UTC of the day after its last day: a coupon of the shop expires at the end of
    # its issue day, so with window_days=1 the outcome is exactly what the coupon could change
    ends = F.to_timestamp(F.date_add(F.col("i.issue_date"), int(window_days)))
    o = orders.select(
        F.col("user_id").alias("o_user"),
        "ordered_at",
        # at list price: a price-off coupon's discount is its cost to the shop (coupon_cost_eur), counted once in
        # the reward revenue * margin - cost; the net amount would count it twice (as margin lost and as cost)
        F.col("amount_eur").alias("gross"),
    )
    purchases = (
        iss.alias("i")
        .join(
            o,
            (F.col("i.user_id") == F.col("o_user"))
            & (F.col("ordered_at") >= F.col("i.issued_at"))
            & (F.col("ordered_at") < ends),
            how="inner",
        )
        .groupBy("issuance_id")
        .agg(F.lit(1).alias("purchased"), exact_sum(F.col("gross")).alias("revenue_eur"))
    )
    cost = coupons.groupBy("coupon_id").agg(F.max(F.col("cost_eur").cast("double")).alias("unit_cost"))
    redeemed = (
        iss.alias("i")
        .join(redemptions.select("issuance_id", "redeemed_at"), on="issuance_id", how="inner")
        .where(F.col("redeemed_at") < ends)
        .join(cost, on="coupon_id", how="left")
        .groupBy("issuance_id")
        .agg(F.lit(1).alias("redeemed"), F.max(F.coalesce(F.col("unit_cost"), F.lit(0.0))).alias("coupon_cost_eur"))
    )
    ucols = feature_columns(user_feats, USER_FEATURE_PREFIXES)
    ccols = feature_columns(coupon_feats, COUPON_FEATURE_PREFIXES)
    uf = user_feats.select(F.col("as_of_date").alias("issue_date"), "user_id", *ucols)
    cf = coupon_feats.select(F.col("as_of_date").alias("issue_date"), "coupon_id", "campaign_id", *ccols)
    out = (
        iss.join(uf, on=["issue_date", "user_id"], how="left")
        .join(cf, on=["issue_date", "coupon_id"], how="left")
        .join(purchases, on="issuance_id", how="left")
        .join(redeemed, on="issuance_id", how="left")
    )
    control = F.col("coupon_id").isNull()
    keys = [f.name for f in TRAINING_EXAMPLES_KEYS.fields]
    exprs = {
        "purchased": F.coalesce(F.col("purchased"), F.lit(0)).cast("int"),
        "redeemed": F.coalesce(F.col("redeemed"), F.lit(0)).cast("int"),
        "revenue_eur": F.coalesce(F.col("revenue_eur"), F.lit(0.0)),
        "coupon_cost_eur": F.coalesce(F.col("coupon_cost_eur"), F.lit(0.0)),
        "outcome_window_days": F.lit(window_days).cast("int"),
        "propensity": F.col("propensity").cast("double"),
    }
    # files that are a function of the rows: each row's task by a hash of (issue_date, issuance_id), over a
    # fixed number of tasks, and sorted in it. The training splits the files among its ranks, so files that
    # changed with the order Spark delivered the rows in would change the model (same rows, same model)
    tasks = int(out.sparkSession.conf.get("spark.sql.shuffle.partitions") or 1)
    return (
        out.select(
            *[exprs.get(k, F.col(k)).alias(k) for k in keys],
            *[F.coalesce(F.col(c), F.lit(0.0 if c.startswith("uf_") else UNKNOWN)).alias(c) for c in ucols],
            *[
                F.when(control, F.lit(0.0 if c.startswith("cf_") else CONTROL))
                .otherwise(F.coalesce(F.col(c), F.lit(0.0 if c.startswith("cf_") else UNKNOWN)))
                .alias(c)
                for c in ccols
            ],
        )
        .repartition(tasks, "issue_date", "issuance_id")
        .sortWithinPartitions("issue_date", "issuance_id")
    )


def transform_of(name: str, log1p_fragments: list[str]) -> str:
    """``log1p_standard`` for non-negative heavy-tailed features (counts, money, days), else ``standard``."""
    if any(tag in name for tag in ("share", "rate", "ratio")):
        return "standard"
    return "log1p_standard" if any(f in name for f in log1p_fragments) else "standard"


def exact_moments(df: DataFrame, columns: dict[str, Column]) -> dict[str, tuple[float, float]]:
    """Mean and population standard deviation of each column (nulls skipped; none: 0, 0), the same bits
    whatever order Spark adds the rows in (:func:`exact_sum`). Two passes: the largest ``|x|`` of each column,
    then the exact sums of ``x / max|x|`` and its square, which lie in [-1, 1] and so cannot overflow; the
    variance ``E[x^2] - E[x]^2`` is then worked out in the driver with 50 digits, so the rounding of each row to
    18 decimals of its scale costs at most ~1e-18 of it, also for a nearly constant column."""
    if not columns:
        return {}
    top = df.agg(*[F.max(F.abs(x)).alias(c) for c, x in columns.items()]).first()
    assert top is not None
    scale = {c: float(top[c] or 0.0) or 1.0 for c in columns}
    aggs = []
    for c, x in columns.items():
        z = x / F.lit(scale[c])
        aggs += [F.count(x).alias(f"{c}__n"), F.sum(z.cast(EXACT)).alias(f"{c}__s1"),
                 F.sum((z * z).cast(EXACT)).alias(f"{c}__s2")]  # fmt: skip
    sums = df.agg(*aggs).first()
    assert sums is not None
    out = {}
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        for c in columns:
            n = sums[f"{c}__n"]
            if not n:
                out[c] = (0.0, 0.0)
                continue
            m1, m2 = sums[f"{c}__s1"] / n, sums[f"{c}__s2"] / n
            var = max(m2 - m1 * m1, decimal.Decimal(0))
            out[c] = (float(m1) * scale[c], float(var.sqrt()) * scale[c])
    return out


def feature_stats(
    df: DataFrame,
    numeric: list[str],
    categorical: list[str],
    as_of: dt.date,
    source_table: str,
    source_version: int,
    cfg: FeaturesConfig,
) -> DataFrame:
    """The transformation of each feature column of ``df``, computed in Spark (one pass for all numeric
    columns, one small aggregation per categorical column)."""
    spark = df.sparkSession
    kinds = {c: transform_of(c, cfg.log1p_features) for c in numeric}

    def transformed(c: str) -> Column:
        x = F.col(c).cast("double")
        return F.log1p(F.greatest(x, F.lit(0.0))) if kinds[c] == "log1p_standard" else x

    rows: list[tuple] = []
    for c, (mean, sd) in exact_moments(df, {c: transformed(c) for c in numeric}).items():
        rows.append(
            (as_of, c, "numeric", kinds[c], mean, sd if sd > 1e-12 else 1.0, None, source_table, source_version)
        )
    for c in categorical:
        top = (
            df.groupBy(c)
            .count()
            .where(F.col(c).isNotNull())
            .orderBy(F.desc("count"), F.asc(c))
            .limit(cfg.vocabulary_max_size)
            .collect()
        )
        vocab = sorted(str(r[c]) for r in top)
        rows.append((as_of, c, "categorical", "onehot", None, None, vocab, source_table, source_version))
    return spark.createDataFrame(rows, FEATURE_STATS)


# ---- the job -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureRunSummary:
    as_of: dt.date
    snapshots: list[dt.date]
    issue_dates: list[dt.date]
    imported: dict[dt.date, dt.date]
    versions: dict[str, int]
    rows: dict[str, int]
    seconds: dict[str, float]


def build_features(spark: SparkSession, lake: Lake, cfg: Config, run_date: dt.date) -> FeatureRunSummary:
    """Write the feature tables for ``run_date``: snapshots (plus missing issue-date snapshots), the training
    examples of every issue date whose outcome window closed within the look-back, and the feature stats."""
    fcfg = cfg.features
    for t in tables.SILVER:
        if not lake.exists(t):
            raise MissingInputError(
                f"silver table {t.name!r} ({lake.location(t)}) does not exist: run `coupon-spark cleanse` first"
            )
    # a snapshot of D holds the users ingested before D and the catalogue ingested on or before D: without them
    # every table would be written empty, with placeholder statistics; refuse before writing anything
    for t, lag in ((tables.USERS, 1), (tables.COUPONS, 0)):
        ingested = lake.dates(t)
        if not ingested or ingested[0] + dt.timedelta(days=lag) > run_date:
            when = "before" if lag else "on or before"
            found, todo = (
                (
                    f"its first is {ingested[0]}",
                    f"run `coupon-spark features --run-date "
                    f"{ingested[0] + dt.timedelta(days=lag)}` or later, or cleanse an earlier ingest date first",
                )
                if ingested
                else ("it is empty", f"cleanse an ingest date {when} {run_date} first")
            )
            raise MissingInputError(
                f"no data to build features as of {run_date}: silver table {t.name!r} ({lake.location(t)}) has no "
                f"snapshot ingested {when} {run_date} ({found}). Nothing was written: {todo}"
            )
    seconds: dict[str, float] = {}
    versions: dict[str, int] = {}
    counts: dict[str, int] = {}

    def replace(df: DataFrame, table: tables.Table, label: str = "") -> None:
        """Replace the partitions present in ``df``; note the version, the rows and the time (under ``label``)."""
        started = time.perf_counter()
        res = lake.write(df, table)  # the catalog's replace_partitions by its date column
        key = label or table.name
        seconds[key] = round(time.perf_counter() - started, 2)
        versions[key], counts[key] = res.version, res.num_rows

    win = fcfg.outcome_window_days
    # issue dates whose windows closed: issued on D, counted until (D + window) 00:00, known up to R 00:00
    closed_from = run_date - dt.timedelta(days=fcfg.training_lookback_days)
    closed_to = run_date - dt.timedelta(days=win)
    iss = lake.read(tables.ISSUANCES)
    # daily training examples come from the logged policies; an imported past promotion's come once (below)
    is_import = F.coalesce(F.col("policy"), F.lit("")).isin(*fcfg.import_policies)
    trainable = iss.where(~is_import)
    wanted = sorted(
        r[0]
        for r in trainable.select(F.to_date("issued_at").alias("d"))
        .where(F.col("d").between(closed_from, closed_to))
        .distinct()
        .collect()
    )
    have_user, have_coupon = set(lake.dates(tables.USER_FEATURES)), set(lake.dates(tables.COUPON_FEATURES))
    snapshots = sorted({run_date} | {d for d in wanted if d not in have_user or d not in have_coupon})
    categories = list(cfg.cleanse.categories)

    users, orders, events = lake.read(tables.USERS), lake.read(tables.ORDERS), lake.read(tables.EVENTS)
    redemptions, coupons = lake.read(tables.REDEMPTIONS), lake.read(tables.COUPONS)
    imported = iss.where(is_import)
    plan = import_plan(
        sorted(r[0] for r in imported.select(F.to_date("issued_at").alias("d")).distinct().collect()),
        fcfg,
        closed_to,
        done=set(lake.dates(tables.TRAINING_EXAMPLES)),
    )
    if plan:  # the imported past's training examples, once: features of a snapshot every import_snapshot_days
        snaps = sorted(set(plan.values()))
        ufi = user_features(
            users, orders, events, iss, redemptions, snaps, categories, fcfg, coupons=coupons, earliest_users=True
        )
        days = spark.createDataFrame(sorted(plan.items()), "issue_date date, snapshot date")
        ufi = ufi.join(F.broadcast(days), ufi["as_of_date"] == days["snapshot"]).select(
            F.col("issue_date").alias("as_of_date"), *[c for c in ufi.columns if c != "as_of_date"]
        )
        cfi = coupon_features(coupons, sorted(plan), earliest_fallback=True)
        exi = training_examples(imported, orders, redemptions, coupons, ufi, cfi, sorted(plan), win)
        replace(exi, tables.TRAINING_EXAMPLES, label="training_examples (import)")
        # the catalogue each imported row could draw from: what the decision gate replays the model on
        replace(cfi, tables.COUPON_FEATURES, label="coupon_features (import)")
    uf = user_features(users, orders, events, iss, redemptions, snapshots, categories, fcfg, coupons=coupons)
    replace(uf, tables.USER_FEATURES)
    cf = coupon_features(coupons, snapshots)
    replace(cf, tables.COUPON_FEATURES)

    # the transformation: computed from the snapshot of the run date, as committed
    parts = []
    for table, (numeric, categorical) in (
        (tables.USER_FEATURES, ("uf_", "uc_")),
        (tables.COUPON_FEATURES, ("cf_", "cc_")),
    ):
        snap = lake.read(table, where={"as_of_date": run_date})
        num = [c for c in snap.columns if c.startswith(numeric)]
        cat = [c for c in snap.columns if c.startswith(categorical)]
        parts.append(feature_stats(snap, num, cat, run_date, table.name, versions[table.name], fcfg))
    stats = parts[0].unionByName(parts[1])
    replace(stats, tables.FEATURE_STATS)

    if wanted:
        ex = training_examples(
            trainable,
            orders,
            redemptions,
            coupons,
            lake.read(tables.USER_FEATURES, where={"as_of_date": wanted}),
            lake.read(tables.COUPON_FEATURES, where={"as_of_date": wanted}),
            wanted,
            win,
        )
        replace(ex, tables.TRAINING_EXAMPLES)
    return FeatureRunSummary(run_date, snapshots, wanted, plan, versions, counts, seconds)


def import_plan(
    issue_days: list[dt.date], cfg: FeaturesConfig, closed_to: dt.date, done: set[dt.date] | None = None
) -> dict[dt.date, dt.date]:
    """``{issue date: snapshot date}`` for the imported issuances still without training examples.

    Snapshots fall every ``cfg.import_snapshot_days`` from ``cfg.import_min_history_days`` after the first
    imported issue date; each issue date takes the latest on or before it (a snapshot holds what was known
    before its date, so nothing of the issue day leaks in). Issue dates before the first snapshot, after
    ``closed_to`` (their outcome window is open) or in ``done`` get none.
    """
    if not issue_days:
        return {}
    first = min(issue_days) + dt.timedelta(days=cfg.import_min_history_days)
    step = cfg.import_snapshot_days
    done = done or set()
    return {
        d: first + dt.timedelta(days=(d - first).days // step * step)
        for d in sorted(issue_days)
        if first <= d <= closed_to and d not in done
    }


def run(ctx: Context, run_date: dt.date) -> int:
    """``coupon-spark features``: build and print what was written."""
    cfg = ctx.cfg
    s = build_features(ctx.spark, ctx.lake, cfg, run_date)
    print(f"features as of {s.as_of}: snapshots {[str(d) for d in s.snapshots]}")
    if s.imported:
        days, snaps = sorted(s.imported), sorted(set(s.imported.values()))
        print(
            f"  imported past: training examples for issue dates {days[0]} .. {days[-1]} ({len(days)}), "
            f"features of {len(snaps)} snapshots {snaps[0]} .. {snaps[-1]}"
        )
    if s.issue_dates:
        print(f"  training examples for issue dates {s.issue_dates[0]} .. {s.issue_dates[-1]} ({len(s.issue_dates)})")
    else:
        print(f"  no issue date's {cfg.features.outcome_window_days}-day outcome window has closed yet")
    for t in s.versions:
        print(f"  {t:<18} version {s.versions[t]:<4} {s.rows[t]:>10} rows  {s.seconds.get(t, 0):>6.1f}s")
    return 0
