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
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DecimalType, StructField, StructType

from coupon_spark import tables
from coupon_spark.config import Config, FeaturesConfig
from coupon_spark.dimension import VALID_FROM, in_force, is_snapshot_layout
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


def cents(money: Column) -> Column:
    """A money value (``decimal(12,2)``) in whole cents: its sums are exact whatever the order or the grouping
    (a window sum, or yesterday's sum plus the day entering minus the day leaving, give the same integer)."""
    return (money * 100).cast("long")


def _count_if(cond: Column) -> Column:
    return F.count(F.when(cond, 1))


# ---- daily aggregates per (user_id, day) -------------------------------------------------------------------
# Every daily metric is a whole number (a count, or money in cents, or squared money in cents^2), so window sums
# over them are exact and the incremental run's add-and-subtract equals the full recomputation bit for bit.


def daily_orders(orders: DataFrame, categories: list[str]) -> DataFrame:
    """Per (user_id, day): orders, spend (cents) and its square (cents^2), orders with a discount, and spend per
    category (cents)."""
    cat = F.col("category")
    amount = cents(F.col("amount_eur"))
    return (
        orders.withColumn("day", known_day("ordered_at"))
        .groupBy("user_id", "day")
        .agg(
            F.count("*").alias("orders"),
            F.sum(amount).alias("spend"),
            F.sum(amount * amount).alias("spend_sq"),
            _count_if(F.col("discount_eur") > 0).alias("discount_orders"),
            *[F.sum(F.when(cat == c, amount).otherwise(0)).alias(f"spend_cat_{_slug(c)}") for c in categories],
        )
    )


def daily_events(events: DataFrame) -> DataFrame:
    """Per (user_id, day): views, carts, sessions, and the summed price (cents) of viewed items."""
    kind = F.col("event_type")
    priced_view = (kind == "view") & F.col("price_eur").isNotNull()
    return (
        events.withColumn("day", known_day("event_time"))
        .groupBy("user_id", "day")
        .agg(
            _count_if(kind == "view").alias("views"),
            _count_if(kind == "cart").alias("carts"),
            F.countDistinct("session_id").alias("sessions"),
            F.sum(F.when(priced_view, cents(F.col("price_eur")))).alias("viewed_price_sum"),
            _count_if(priced_view).alias("viewed_priced"),
        )
        .fillna(0, subset=["viewed_price_sum"])
    )


def coupon_kinds_of(coupons: DataFrame) -> DataFrame:
    """(coupon_id, kind): each coupon's kind (lower case) from any catalogue snapshot."""
    return coupons.groupBy("coupon_id").agg(F.lower(F.max("kind")).alias("kind"))


def daily_coupons(
    issuances: DataFrame, redemptions: DataFrame, kinds: DataFrame | None = None, kind_names: Iterable[str] = ()
) -> DataFrame:
    """Per (user_id, day): coupons issued (the control arm excluded), redeemed, and the discount taken (cents);
    with ``kinds`` (:func:`coupon_kinds_of`) also ``issued_<kind>`` and ``redeemed_<kind>`` for ``kind_names``."""
    names = list(kind_names)
    iss = issuances.where(F.col("coupon_id").isNotNull()).withColumn("day", known_day("issued_at"))
    red = redemptions.withColumn("day", known_day("redeemed_at"))
    if kinds is not None and names:
        iss = iss.join(F.broadcast(kinds), on="coupon_id", how="left")
        red = red.join(F.broadcast(kinds), on="coupon_id", how="left")
    per_kind = lambda prefix: [  # noqa: E731
        _count_if(F.col("kind") == k).alias(f"{prefix}_{_slug(k)}") for k in names
    ] if kinds is not None else []  # fmt: skip
    issued = iss.groupBy("user_id", "day").agg(F.count("*").alias("issued"), *per_kind("issued"))
    redeemed = red.groupBy("user_id", "day").agg(
        F.count("*").alias("redeemed"),
        F.sum(cents(F.coalesce(F.col("discount_eur"), F.lit(0)))).alias("discount_taken"),
        *per_kind("redeemed"),
    )
    return issued.join(redeemed, on=["user_id", "day"], how="full_outer")


DAILY_METRICS_ORDERS = ["orders", "spend", "discount_orders"]
DAILY_METRICS_EVENTS = ["views", "carts", "sessions", "viewed_price_sum", "viewed_priced"]
DAILY_METRICS_COUPONS = ["issued", "redeemed", "discount_taken"]
MONEY_METRICS = {"spend": 100.0, "spend_sq": 10_000.0, "viewed_price_sum": 100.0, "discount_taken": 100.0}
"""Daily metrics in cents (cents^2), and what divides them back to euros; ``spend_cat_*`` are cents too."""


def scale_of(metric: str) -> float:
    return 100.0 if metric.startswith("spend_cat_") else MONEY_METRICS.get(metric, 1.0)


def response_metrics(kind_names: Iterable[str]) -> list[str]:
    """Daily metrics of the coupon-response features: per kind issued, redeemed, and issued on a purchase day;
    the same for all coupons together (``issued``, ``redeemed``, ``issued_buy``)."""
    out = ["issued_buy"]
    for k in kind_names:
        out += [f"issued_{_slug(k)}", f"redeemed_{_slug(k)}", f"issued_buy_{_slug(k)}"]
    return out


def combine_daily(frames: Iterable[DataFrame], metrics: list[str]) -> DataFrame:
    """Union of daily aggregates (missing metrics as 0), summed per (user_id, day)."""
    zero = F.lit(0).cast("long")
    aligned = []
    for f in frames:
        aligned.append(
            f.select(
                "user_id",
                F.col("day").cast("date").alias("day"),
                *[(F.coalesce(F.col(m).cast("long"), zero) if m in f.columns else zero).alias(m) for m in metrics],
            )
        )
    out = aligned[0]
    for f in aligned[1:]:
        out = out.unionByName(f)
    return out.groupBy("user_id", "day").agg(*[F.sum(m).alias(m) for m in metrics])


@dataclass(frozen=True)
class SumPlan:
    """The window sums a snapshot needs: every ``base`` metric over every short window, every ``long`` metric over
    the history window; a snapshot of D looks at known days ``[D - reach, D - 1]`` (the longest window, and one
    day more for the recency)."""

    windows: tuple[int, ...]
    hist: int
    base: tuple[str, ...]
    long: tuple[str, ...]

    @property
    def pairs(self) -> list[tuple[str, int]]:
        out = [(m, w) for w in self.windows for m in self.base]
        return out + [(m, self.hist) for m in self.long if (m, self.hist) not in out]

    @property
    def columns(self) -> list[str]:
        return [f"{m}_{w}d" for m, w in self.pairs]

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys([*self.base, *self.long]))

    @property
    def reach(self) -> int:
        return max(*self.windows, self.hist) + 1


def sum_plan(cfg: FeaturesConfig, categories: list[str]) -> SumPlan:
    cat_metrics = [f"spend_cat_{_slug(c)}" for c in categories]
    base = DAILY_METRICS_ORDERS + cat_metrics + DAILY_METRICS_EVENTS + DAILY_METRICS_COUPONS
    long = ["orders", "spend", "spend_sq", "buy_day", "issued", "redeemed", *response_metrics(cfg.coupon_kinds)]
    return SumPlan(tuple(sorted(set(cfg.windows_days))), int(cfg.history_window_days), tuple(base), tuple(long))


def daily_metrics(
    orders: DataFrame,
    events: DataFrame,
    issuances: DataFrame,
    redemptions: DataFrame,
    first: dt.date,
    last: dt.date,
    categories: list[str],
    cfg: FeaturesConfig,
    coupons: DataFrame | None = None,
) -> DataFrame:
    """``(user_id, day, *plan metrics)``: every source's daily aggregates on the known days ``[first, last]``
    (a record known on a day arrived on or before it: ``ingest_date <= last``), whole numbers (see above)."""
    plan = sum_plan(cfg, categories)

    def known(df: DataFrame, ts: str) -> DataFrame:
        day = known_day(ts)
        return df.where((F.col("ingest_date") <= F.lit(last)) & day.between(F.lit(first), F.lit(last)))

    kinds = [_slug(k) for k in cfg.coupon_kinds]
    combined = combine_daily(
        [
            daily_orders(known(orders, "ordered_at"), categories),
            daily_events(known(events, "event_time")),
            daily_coupons(
                known(issuances, "issued_at"),
                known(redemptions, "redeemed_at"),
                coupon_kinds_of(coupons) if coupons is not None else None,
                cfg.coupon_kinds,
            ),
        ],
        [m for m in plan.metrics if m not in ("buy_day", "issued_buy") and not m.startswith("issued_buy_")],
    )
    # a purchase day, and the coupons that arrived on one (a coupon acts on its issue day)
    buy_day = F.when(F.col("orders") > 0, 1).otherwise(0).cast("long")
    derived = {"buy_day": buy_day, "issued_buy": F.col("issued") * buy_day}
    derived.update({f"issued_buy_{k}": F.col(f"issued_{k}") * buy_day for k in kinds})
    return combined.select("user_id", "day", *[derived.get(m, F.col(m)).alias(m) for m in plan.metrics])


# ---- window sums: by a window over many snapshots, by a group-by for one, or from yesterday's ------------------
STATE_COLUMNS = ("last_order_dn",)


def window_sums(daily: DataFrame, probes: DataFrame, plan: SumPlan) -> DataFrame:
    """Window sums of every (metric, window) of ``plan`` over each probe's preceding known days, and its last
    order day within the reach, for many as-of dates in one sort (no fact is replicated per date).

    Args:
        daily: (user_id, day, *metrics) daily aggregates (:func:`daily_metrics`).
        probes: (user_id, as_of_date) rows to compute the sums for.

    Returns:
        (user_id, as_of_date, ``<metric>_<w>d`` for every pair of the plan, ``last_order_dn``).
    """
    metrics = plan.metrics
    rows = daily.select(
        "user_id",
        day_number(F.col("day")).alias("dn"),
        F.lit(False).alias("probe"),
        F.lit(None).cast("date").alias("as_of_date"),
        *metrics,
    ).unionByName(
        probes.select(
            "user_id",
            day_number(F.col("as_of_date")).alias("dn"),
            F.lit(True).alias("probe"),
            "as_of_date",
            *[F.lit(0).cast("long").alias(m) for m in metrics],
        )
    )
    by_user = Window.partitionBy("user_id").orderBy("dn")
    sums = [F.sum(m).over(by_user.rangeBetween(-w, -1)).alias(f"{m}_{w}d") for m, w in plan.pairs]
    last_order = F.max(F.when(F.col("orders") > 0, F.col("dn"))).over(by_user.rangeBetween(-plan.reach, -1))
    return (
        rows.select("user_id", "probe", "as_of_date", *sums, last_order.alias("last_order_dn"))
        .where(F.col("probe"))
        .select("user_id", "as_of_date", *[F.coalesce(F.col(c), F.lit(0).cast("long")).alias(c) for c in plan.columns],
                "last_order_dn")
    )  # fmt: skip


def _kept(sums: DataFrame, plan: SumPlan) -> DataFrame:
    """The rows that say something: a user whose sums are all 0 and who ordered on no day of the reach has the
    same features as one without a row (both paths drop them alike, so their states stay equal)."""
    any_sum = F.lit(False)
    for c in plan.columns:
        any_sum = any_sum | (F.col(c) != 0)
    return sums.where(any_sum | F.col("last_order_dn").isNotNull())


def state_sums(daily: DataFrame, as_of: dt.date, plan: SumPlan) -> DataFrame:
    """The window sums of one snapshot for every user with a known day in its reach, by one group-by (no sort):
    ``(user_id, *plan columns, last_order_dn)``, as :func:`window_sums` gives them."""
    dn = day_number(F.col("day"))
    at = day_number(F.lit(as_of).cast("date"))
    age = at - dn
    rows = daily.where((age >= 1) & (age <= plan.reach))
    return _kept(
        rows.groupBy("user_id").agg(
            *[F.sum(F.when(age <= w, F.col(m)).otherwise(0)).cast("long").alias(f"{m}_{w}d") for m, w in plan.pairs],
            F.max(F.when(F.col("orders") > 0, dn)).alias("last_order_dn"),
        ),
        plan,
    )


def advance_sums(
    previous: DataFrame, entering: DataFrame, leaving: DataFrame, as_of: dt.date, plan: SumPlan
) -> DataFrame:
    """The window sums of ``as_of`` from those of the day before: each window adds the day entering
    (``as_of - 1``) and subtracts the day leaving it (``as_of - 1 - w``). Whole numbers, so the result is the
    full recomputation's exactly (``tests/test_features.py`` checks it row for row).

    Args:
        previous: (user_id, *plan columns, last_order_dn) of ``as_of - 1``.
        entering: Daily aggregates (:func:`daily_metrics`) of day ``as_of - 1``.
        leaving: Daily aggregates holding (at least) the days ``as_of - 1 - w`` of every window ``w``.
    """
    yesterday = as_of - dt.timedelta(days=1)
    zero = F.lit(0).cast("long")
    parts = [
        previous.select("user_id", *plan.columns, "last_order_dn"),
        entering.where(F.col("day") == F.lit(yesterday)).select(
            "user_id",
            *[F.col(m).alias(f"{m}_{w}d") for m, w in plan.pairs],
            F.when(F.col("orders") > 0, day_number(F.col("day"))).alias("last_order_dn"),
        ),
    ]
    for w in sorted({w for _, w in plan.pairs}):
        gone = leaving.where(F.col("day") == F.lit(yesterday - dt.timedelta(days=w)))
        parts.append(
            gone.select(
                "user_id",
                *[(-F.col(m) if pw == w else zero).alias(f"{m}_{pw}d") for m, pw in plan.pairs],
                F.lit(None).cast("int").alias("last_order_dn"),
            )
        )
    rows = parts[0]
    for p in parts[1:]:
        rows = rows.unionByName(p)
    first_known = day_number(F.lit(as_of).cast("date")) - plan.reach
    summed = rows.groupBy("user_id").agg(
        *[F.sum(c).cast("long").alias(c) for c in plan.columns], F.max("last_order_dn").alias("last_order_dn")
    )
    return _kept(
        summed.select(
            "user_id",
            *plan.columns,
            F.when(F.col("last_order_dn") >= first_known, F.col("last_order_dn")).alias("last_order_dn"),
        ),
        plan,
    )


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
    """(as_of_date, user profile) for each date: the versions of the users dimension (silver ``users``, type 2:
    :mod:`coupon_spark.dimension`) in force on the ingest date before it, users signed up before it.
    ``earliest_fallback``: a date before the dimension's first ingest date takes the versions of that date (an
    imported past, whose users were landed once, at its end); otherwise such a date has none."""
    spark = users.sparkSession
    dates = spark.createDataFrame([(d,) for d in as_of_dates], StructType([StructField("as_of_date", DateType())]))
    seen = F.date_sub(F.col("as_of_date"), 1)
    if earliest_fallback:
        first = users.agg(F.min(VALID_FROM).alias("_first"))
        dates = dates.crossJoin(first).select("as_of_date", F.greatest(seen, F.col("_first")).alias("_seen"))
    else:
        dates = dates.select("as_of_date", seen.alias("_seen"))
    return (
        in_force(users.join(F.broadcast(dates), F.col(VALID_FROM) <= F.col("_seen"), "inner"), F.col("_seen"))
        .where(F.col("signup_date").isNull() | (F.col("signup_date") < F.col("as_of_date")))
        .select("as_of_date", "user_id", "signup_date", "region", "device", "segment")
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
    """The ``user_features`` snapshots of ``as_of_dates``, recomputed from the silver tables (see the module
    docstring for the time semantics).

    The silver inputs may hold any dates: each source is cut to what was known before the latest as-of date,
    and the windows do the rest. ``coupons`` (the silver catalogue) gives each issued coupon its kind for the
    per-kind response features; without it those count no coupon. ``earliest_users``: a date before the first
    users snapshot takes that snapshot (the snapshots of an imported past, :func:`users_as_of`).
    """
    plan = sum_plan(cfg, categories)
    first = min(as_of_dates) - dt.timedelta(days=plan.reach)
    last = max(as_of_dates) - dt.timedelta(days=1)
    daily = daily_metrics(orders, events, issuances, redemptions, first, last, categories, cfg, coupons)
    profiles = users_as_of(users, as_of_dates, earliest_fallback=earliest_users)
    if len(set(as_of_dates)) == 1:
        sums = state_sums(daily, as_of_dates[0], plan).withColumn("as_of_date", F.lit(as_of_dates[0]).cast("date"))
    else:
        sums = window_sums(daily, profiles.select("user_id", "as_of_date"), plan)
    return features_of_sums(profiles, sums, plan, cfg)


def features_of_sums(profiles: DataFrame, sums: DataFrame, plan: SumPlan, cfg: FeaturesConfig) -> DataFrame:
    """The ``user_features`` rows of ``profiles`` (:func:`users_as_of`) from their window sums
    (``(user_id, as_of_date, *plan columns, last_order_dn)``; a user without a row has none of it)."""
    windows = list(plan.windows)
    hist = plan.hist
    kinds = [_slug(k) for k in cfg.coupon_kinds]
    cat_metrics = [m for m in plan.base if m.startswith("spend_cat_")]
    big = max(windows)
    mid = sorted(w for w in windows if w <= 30)[-1] if any(w <= 30 for w in windows) else big
    short = windows[0]
    cap = float(cfg.recency_cap_days)

    def col(m: str, w: int) -> Column:
        value = F.coalesce(F.col(f"{m}_{w}d"), F.lit(0)).cast("double")
        return value / F.lit(scale_of(m)) if scale_of(m) != 1.0 else value

    days_since = day_number(F.col("as_of_date")) - F.col("last_order_dn")
    feats = [
        F.datediff(F.col("as_of_date"), F.col("signup_date")).cast("double").alias("uf_tenure_days"),
        F.least(F.coalesce(days_since.cast("double"), F.lit(cap)), F.lit(cap)).alias("uf_recency_days"),
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
    h = lambda m: col(m, hist)  # noqa: E731
    joined = profiles.join(sums, on=["user_id", "as_of_date"], how="left")
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
    # only the facts inside some window: the joins below ask for no other (a daily run's few issue dates
    # otherwise shuffled every order of the shop's history)
    if issue_dates:
        start = F.to_timestamp(F.lit(min(issue_dates)))
        stop = F.to_timestamp(F.lit(max(issue_dates) + dt.timedelta(days=int(window_days))))
        orders = orders.where((F.col("ordered_at") >= start) & (F.col("ordered_at") < stop))
        redemptions = redemptions.where(F.col("redeemed_at") < stop)
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


FIXED_BITS = 60
""":func:`exact_moments` adds ``x / max|x|`` (in [-1, 1]) as whole multiples of 2^-60 (rounding costs < 1e-18)."""
_HALF = 30


def _fixed_sum(z: Column, name: str) -> list[Column]:
    """The exact sum of ``z`` (in [-1, 1]) in units of 2^-60, as two sums of longs (Spark adds longs fast and
    exactly, decimal(38, 18) slowly): ``q = hi * 2^30 + lo`` with ``0 <= lo < 2^30``, each below 2^30 in size,
    so neither sum can overflow below 2^33 rows."""
    q = (z * F.lit(float(2**FIXED_BITS))).cast("long")
    return [
        F.sum(F.shiftright(q, _HALF)).alias(f"{name}__hi"),
        F.sum(q.bitwiseAND(F.lit((1 << _HALF) - 1))).alias(f"{name}__lo"),
    ]


def exact_moments(df: DataFrame, columns: dict[str, Column]) -> dict[str, tuple[float, float]]:
    """Mean and population standard deviation of each column (nulls skipped; none: 0, 0), the same bits
    whatever order Spark adds the rows in (:func:`exact_sum`). Two passes: the largest ``|x|`` of each column,
    then the exact sums of ``x / max|x|`` and its square, which lie in [-1, 1], in whole multiples of 2^-60
    (:func:`_fixed_sum`); the variance ``E[x^2] - E[x]^2`` is then worked out in the driver with 50 digits, so the
    rounding of each row costs at most ~1e-18 of the scale, also for a nearly constant column."""
    if not columns:
        return {}
    top = df.agg(*[F.max(F.abs(x)).alias(c) for c, x in columns.items()]).first()
    assert top is not None
    scale = {c: float(top[c] or 0.0) or 1.0 for c in columns}
    aggs = []
    for c, x in columns.items():
        z = x / F.lit(scale[c])
        aggs += [F.count(x).alias(f"{c}__n"), *_fixed_sum(z, f"{c}__s1"), *_fixed_sum(z * z, f"{c}__s2")]
    sums = df.agg(*aggs).first()
    assert sums is not None
    out = {}
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        unit = decimal.Decimal(2**FIXED_BITS)

        def total(name: str) -> decimal.Decimal:
            return decimal.Decimal((int(sums[f"{name}__hi"]) << _HALF) + int(sums[f"{name}__lo"])) / unit

        for c in columns:
            n = sums[f"{c}__n"]
            if not n:
                out[c] = (0.0, 0.0)
                continue
            m1, m2 = total(f"{c}__s1") / n, total(f"{c}__s2") / n
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


# ---- the incremental daily run -------------------------------------------------------------------------------
FACT_TABLES = (tables.ORDERS, tables.EVENTS, tables.ISSUANCES, tables.REDEMPTIONS)
FINGERPRINT = "source_fingerprint"


def ingest_dates_of(first: dt.date, last: dt.date, cfg: Config) -> tuple[dt.date, dt.date]:
    """The ingest dates that can hold a record known on the days ``[first, last]``. A record is known on
    ``greatest(its day, ingest date)`` and the cleanse refuses times after the ingest date's end plus
    ``cleanse.future_tolerance_minutes``, so its ingest date is at most 1 + that tolerance (in days, rounded up)
    before its known day."""
    slack = 1 + -(-int(cfg.cleanse.future_tolerance_minutes) // 1440)
    return first - dt.timedelta(days=slack), last


def source_fingerprint(lake: Lake, plan: SumPlan, first: dt.date, last: dt.date, cfg: Config) -> str:
    """A digest of the window-sum columns and of the data files of every fact table's ingest partitions that can
    hold a record known on ``[first, last]``: a rerun of the cleanse of one of those dates writes new files, so
    the digest changes and sums built before it are not advanced from (a compaction does too: one full build)."""
    lo, hi = ingest_dates_of(first, last, cfg)
    digest = hashlib.sha256(repr(plan.columns).encode())
    for t in FACT_TABLES:
        paths = []
        for path, part in lake.files(t):
            day = part.get("ingest_date")
            day = dt.date.fromisoformat(day) if isinstance(day, str) else day
            if day is not None and lo <= day <= hi:
                paths.append(path)
        digest.update(f"\n{t.name}\n".encode() + "\n".join(sorted(paths)).encode())
    return digest.hexdigest()


STATE_KEEP_DAYS = 7
"""Run dates whose window sums stay (a rerun of one of them, or of the day after, can advance from them)."""


def prune_state(lake: Lake, plan: SumPlan, run_date: dt.date) -> None:
    """Drop the window sums older than :data:`STATE_KEEP_DAYS` before ``run_date`` and the daily aggregates no
    kept sums can need (each a partition overwrite with no rows: one commit, files left for ``vacuum``), so the
    state stays a week of snapshots plus a reach of days, whatever the lake's age."""
    keep_from = run_date - dt.timedelta(days=STATE_KEEP_DAYS)
    for table, keep in (
        (tables.USER_WINDOW_SUMS, keep_from),
        (tables.USER_DAILY, keep_from - dt.timedelta(days=plan.reach + 1)),
    ):
        old = [d for d in lake.dates(table) if d < keep]
        if old:
            empty = lake.read(table, where={table.partition_by[0]: old}).limit(0)
            lake.write(empty, table, mode="overwrite", replace_where={table.partition_by[0]: old})


def previous_sums(lake: Lake, plan: SumPlan, run_date: dt.date, cfg: Config) -> DataFrame | None:
    """The window sums of ``run_date - 1`` when the run of ``run_date`` can advance them: they exist, have the
    plan's columns, and every fact partition they were built from is the same today; else None (full build)."""
    before = run_date - dt.timedelta(days=1)
    if before not in lake.dates(tables.USER_WINDOW_SUMS) or not lake.exists(tables.USER_DAILY):
        return None
    prev = lake.read(tables.USER_WINDOW_SUMS, where={"as_of_date": before})
    if set(prev.columns) != {"as_of_date", FINGERPRINT, "user_id", *plan.columns, *STATE_COLUMNS}:
        return None
    stored = prev.select(FINGERPRINT).limit(1).collect()
    first = before - dt.timedelta(days=plan.reach)
    want = source_fingerprint(lake, plan, first, before - dt.timedelta(days=1), cfg)
    if not stored or stored[0][0] != want:
        log.info("window sums of %s were built from other silver files: a full build", before)
        return None
    return prev


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
    incremental: bool = False  # the run date's window sums advanced from the day before's


def build_features(
    spark: SparkSession, lake: Lake, cfg: Config, run_date: dt.date, full: bool = False
) -> FeatureRunSummary:
    """Write the feature tables for ``run_date``: snapshots (plus missing issue-date snapshots), the training
    examples of every issue date whose outcome window closed within the look-back, and the feature stats.
    ``full``: build the window sums over their whole reach even where the day before's could be advanced."""
    fcfg = cfg.features
    for t in tables.SILVER:
        if not lake.exists(t):
            raise MissingInputError(
                f"silver table {t.name!r} ({lake.location(t)}) does not exist: run `coupon-spark cleanse` first"
            )
    if is_snapshot_layout(lake.read(tables.USERS)):
        raise MissingInputError(
            f"silver table 'users' ({lake.location(tables.USERS)}) is in the snapshot layout of earlier releases: "
            "run `coupon-spark cleanse` for the next ingest date (or with --force for the last one) first; it "
            "converts the table to a type-2 dimension once. Nothing was written"
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

    def replace(df: DataFrame, table: tables.Table, label: str = "", dates: list[dt.date] | None = None) -> None:
        """Replace the partitions present in ``df`` (or exactly those of ``dates``, also when ``df`` has no row
        in some); note the version, the rows and the time (under ``label``)."""
        started = time.perf_counter()
        if dates is None:
            res = lake.write(df, table)  # the catalog's replace_partitions by its date column
        elif lake.exists(table) and set(lake.read(table).columns) != set(df.columns):
            # the configuration's metrics changed: the table takes the new columns (a full build follows)
            res = lake.write(df, table, mode="overwrite", schema_mode="overwrite")
        else:
            res = lake.write(df, table, mode="overwrite", replace_where={table.partition_by[0]: dates})
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

    def since(facts: DataFrame, day: dt.date) -> DataFrame:
        """The ingest partitions of ``facts`` that can hold a record of ``day`` or later (a record's ingest date is
        at most :func:`ingest_dates_of`'s slack before its day): Delta skips the older ones."""
        return facts.where(F.col("ingest_date") >= F.lit(ingest_dates_of(day, day, cfg)[0]))

    trainable = iss.where(~is_import)
    wanted = sorted(
        r[0]
        for r in since(trainable, closed_from)
        .select(F.to_date("issued_at").alias("d"))
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
    # the run date's window sums: advanced from the day before's (add the day entering, subtract the days
    # leaving), or built from the daily aggregates of its whole reach; both kept for the next day's run
    splan = sum_plan(fcfg, categories)
    yesterday = run_date - dt.timedelta(days=1)
    first_known = run_date - dt.timedelta(days=splan.reach)
    facts = (orders, events, iss, redemptions)
    previous = None if full else previous_sums(lake, splan, run_date, cfg)
    if previous is not None:
        lo, hi = ingest_dates_of(yesterday, yesterday, cfg)
        o, e, i, r = (f.where(F.col("ingest_date").between(F.lit(lo), F.lit(hi))) for f in facts)
        entering = daily_metrics(o, e, i, r, yesterday, yesterday, categories, fcfg, coupons)
        replace(entering, tables.USER_DAILY, dates=[yesterday])
        leaving = sorted({yesterday - dt.timedelta(days=w) for _, w in splan.pairs})
        daily = lake.read(tables.USER_DAILY, where={"day": [yesterday, *leaving]})
        sums = advance_sums(previous, daily, daily, run_date, splan)
        daily_all = None
    else:  # one pass over silver for the reach of every snapshot: the state's days and the earlier snapshots'
        reach = [first_known + dt.timedelta(days=i) for i in range(splan.reach)]
        start = min(snapshots) - dt.timedelta(days=splan.reach)
        daily_all = daily_metrics(*facts, start, yesterday, categories, fcfg, coupons)
        daily_all = daily_all.persist(StorageLevel.MEMORY_AND_DISK)
        replace(daily_all.where(F.col("day") >= F.lit(first_known)), tables.USER_DAILY, dates=reach)
        sums = state_sums(daily_all, run_date, splan)
    # kept in memory, committed last: sums on the lake say that this run's other tables are written too
    sums = sums.select(F.lit(run_date).cast("date").alias("as_of_date"), "user_id", *splan.columns, *STATE_COLUMNS)
    sums = sums.persist(StorageLevel.MEMORY_AND_DISK)
    fingerprint = source_fingerprint(lake, splan, first_known, yesterday, cfg)
    profiles = users_as_of(users, snapshots)
    all_sums = sums
    others = [d for d in snapshots if d != run_date]
    if others:  # missing snapshots of earlier issue dates: recomputed from silver, in one window pass
        first, last = min(others) - dt.timedelta(days=splan.reach), max(others) - dt.timedelta(days=1)
        probes = profiles.where(F.col("as_of_date").isin(others)).select("user_id", "as_of_date")
        daily_before = (
            daily_metrics(*facts, first, last, categories, fcfg, coupons)
            if daily_all is None
            else daily_all.where(F.col("day") <= F.lit(last))
        )
        all_sums = all_sums.unionByName(window_sums(daily_before, probes, splan))
    uf = features_of_sums(profiles, all_sums, splan, fcfg)
    replace(uf, tables.USER_FEATURES)
    if daily_all is not None:
        daily_all.unpersist()
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

    # the examples to (re)write: all of the look-back, or after a run whose sums this one advanced (no fact
    # partition in their reach changed since), those it lacks and those the newest ingest date can change
    redo = wanted
    if previous is not None and wanted:
        have = set(lake.dates(tables.TRAINING_EXAMPLES))
        touched = yesterday - dt.timedelta(days=cfg.cleanse.max_lateness_days + win)
        redo = [d for d in wanted if d not in have or d >= touched]
    if redo:
        ex = training_examples(
            since(trainable, min(redo)),
            since(orders, min(redo)),
            redemptions,
            coupons,
            lake.read(tables.USER_FEATURES, where={"as_of_date": redo}),
            lake.read(tables.COUPON_FEATURES, where={"as_of_date": redo}),
            redo,
            win,
        )
        replace(ex, tables.TRAINING_EXAMPLES)
    replace(sums.withColumn(FINGERPRINT, F.lit(fingerprint)), tables.USER_WINDOW_SUMS, dates=[run_date])
    sums.unpersist()
    prune_state(lake, splan, run_date)
    return FeatureRunSummary(run_date, snapshots, redo, plan, versions, counts, seconds, previous is not None)


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
    how = "advanced from the day before's" if s.incremental else "built over the whole reach"
    print(f"features as of {s.as_of}: snapshots {[str(d) for d in s.snapshots]} (window sums {how})")
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
