"""``coupon-spark generate``: the synthetic shop writes landing folders and keeps its hidden truth apart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, LongType, StringType, StructField, StructType

from coupon_spark.config import Config
from coupon_spark.datagen.landing import (
    CLEAN,
    EXPECTED_REASON,
    S_FUTURE,
    S_MESSY,
    S_SIGN,
    Rendering,
    currency_of,
    day_folder,
    landing_lines,
    local_money,
    local_time,
    messy_case,
    messy_category,
    regions,
    utc_millis,
    write_landings,
)
from coupon_spark.datagen.simulate import DayOutcome, active_users, random_policy, simulate_day
from coupon_spark.datagen.world import COUPON_TRUTH, coupons_pandas, uniform, users_frame
from coupon_spark.lake import Lake
from coupon_spark.runner import Context

log = logging.getLogger(__name__)

DEFECTS = StructType(
    [
        StructField("ingest_date", DateType(), False),
        StructField("source", StringType(), False),
        StructField("defect", StringType(), False),
        StructField("expected_reason", StringType(), True),
        StructField("lines", LongType(), False),
    ]
)
"""``<truth_dir>/defects``: lines written per (date, source, defect kind); ``defect`` ``none`` = clean lines,
``expected_reason`` the quarantine reason the cleansing job must give them."""

TRUTH_TABLES = ("user_traits", "coupons", "defects")


def truth_table(cfg: Config, name: str) -> str:
    """Location of a hidden-truth table (``user_traits``, ``coupons``, ``defects``) under ``shop.truth_dir``."""
    return cfg.shop.truth_table(name)


# ---- renderings ---------------------------------------------------------------------------------------------


def _date(c: Column | str) -> Column:
    return F.date_format(c, "yyyy-MM-dd")


def _money_text(c: Column) -> Column:
    return F.format_string("%.2f", c.cast("double"))


def _day_end(day: dt.date) -> Column:
    return F.lit(dt.datetime(day.year, day.month, day.day, 23, 59, 59))


def _future(seed: int, ts: Column, key: Column) -> Column:
    """1 to 30 days later."""
    return ts + F.make_interval(days=(F.floor(uniform(seed, S_FUTURE, key) * 30) + 1).cast("int"))


def _unknown(seed: int, prefix: str, key: Column, digits: int) -> Column:
    return F.format_string(f"{prefix}%0{digits}d", (uniform(seed, S_FUTURE + 1, key) * 10**digits).cast("long"))


def render_users(users: DataFrame, day: dt.date, seed: int) -> tuple[DataFrame, Rendering]:
    """The user snapshot of ``day``: everyone signed up by then, with their device as of that day."""
    changed = (F.col("device_change_date") <= F.lit(day)) & (F.col("device_change_date") > F.col("signup_date"))
    since = F.when(changed, F.col("device_change_date")).otherwise(F.col("signup_date"))
    updated = F.timestamp_seconds(
        F.unix_timestamp(since.cast("timestamp")) + F.floor(uniform(seed, S_MESSY + 5, "user_num") * 86399)
    )
    df = active_users(users, day).select(
        "user_id", "signup_date", "region", "city", "segment",
        F.when(changed, F.col("device_later")).otherwise(F.col("device")).alias("device_now"),
        F.least(updated, _day_end(day)).alias("updated_ts"),
        uniform(seed, S_MESSY, "user_num").alias("_u"),
    )  # fmt: skip
    region = F.col("region")
    r = Rendering(
        source="users",
        fields={
            "user_id": F.col("user_id"),
            "signup_date": _date("signup_date"),
            "region": F.when(F.col("_u") < 0.1, F.lower(region)).otherwise(region),
            "city": F.col("city"),
            "device": messy_case(F.col("device_now"), F.col("_u")),
            "segment": F.col("segment"),
            "updated_at": local_time(F.col("updated_ts"), region),
        },
        key=F.col("user_id"),
        sort=F.col("user_id"),
        defects={
            "bad_type": {"signup_date": F.date_format("signup_date", "dd.MM.yyyy")},
            "missing_field": {"user_id": None},
            "future_timestamp": {"updated_at": local_time(_future(seed, _day_end(day), F.col("user_id")), region)},
        },
        near_duplicate={
            "updated_at": local_time(F.col("updated_ts") - F.expr("INTERVAL 1 DAY"), region),
            "device": F.lit("web"),
        },
    )
    return df, r


def render_coupons(coupons: DataFrame, day: dt.date, seed: int, aliases: dict[str, str]) -> tuple[DataFrame, Rendering]:
    """The coupon catalogue of ``day``: every coupon announced by then (a week before it opens)."""
    announced = F.date_sub("valid_from", 7)
    df = coupons.filter(announced <= F.lit(day)).select(
        "*",
        (announced.cast("timestamp") + F.expr("INTERVAL 9 HOURS")).alias("updated_ts"),
        uniform(seed, S_MESSY, "coupon_id").alias("_u"),
    )
    r = Rendering(
        source="coupons",
        fields={
            "coupon_id": F.col("coupon_id"),
            "campaign_id": F.col("campaign_id"),
            "kind": F.col("kind"),
            "category": F.coalesce(messy_category(F.col("category"), F.col("_u"), aliases), F.col("category")),
            "face_value": _money_text(F.col("face_value_eur")),
            "min_spend": _money_text(F.col("min_spend_eur")),
            "cost": _money_text(F.col("cost_eur")),
            "currency": F.lit("EUR"),
            "valid_from": _date("valid_from"),
            "valid_to": _date("valid_to"),
            "campaign_budget": _money_text(F.col("campaign_budget_eur")),
            "updated_at": local_time(F.col("updated_ts"), F.lit("DE")),
        },
        key=F.col("coupon_id"),
        sort=F.col("coupon_id"),
        defects={
            "bad_type": {"face_value": F.lit("five")},
            "missing_field": {"coupon_id": None},
            "bad_amount": {"face_value": F.concat(F.lit("-"), _money_text(F.col("face_value_eur")))},
            "future_timestamp": {
                "updated_at": local_time(_future(seed, _day_end(day), F.col("coupon_id")), F.lit("DE"))
            },
        },
        near_duplicate={
            "updated_at": local_time(F.col("updated_ts") - F.expr("INTERVAL 1 DAY"), F.lit("DE")),
            "cost": _money_text(F.col("cost_eur") + 1),
        },
    )
    return df, r


def _amount_defect(seed: int, amount: Column, key: Column) -> Column:
    """Negative, or absurdly large."""
    return F.when(uniform(seed, S_SIGN, key) < 0.5, -amount).otherwise(F.lit(999999.99).cast("decimal(12,2)"))


def render_events(
    events: DataFrame, seed: int, fx: dict[str, float], aliases: dict[str, str]
) -> tuple[DataFrame, Rendering]:
    region_of = regions(seed)
    df = events.select(
        "*",
        region_of(F.col("user_id")).alias("_region"),
        uniform(seed, S_MESSY, "event_id").alias("_u"),
    ).withColumn("_currency", currency_of(F.col("_region")))
    price = local_money(F.col("price_eur"), F.col("_currency"), fx)
    key = F.col("event_id")
    r = Rendering(
        source="events",
        fields={
            "event_id": key,
            "event_type": F.col("event_type"),
            "user_id": F.col("user_id"),
            "ts": local_time(F.col("event_time"), F.col("_region")),
            "session_id": F.col("session_id"),
            "product_id": F.col("product_id"),
            "category": messy_category(F.col("category"), F.col("_u"), aliases),
            "price": price,
            "currency": F.col("_currency"),
            "order_id": F.col("order_id"),
        },
        key=key,
        sort=F.col("event_time"),
        defects={
            "bad_type": {"price": F.lit("n/a")},
            "missing_field": {"user_id": None},
            "bad_amount": {"price": _amount_defect(seed, price, key)},
            "future_timestamp": {"ts": local_time(_future(seed, F.col("event_time"), key), F.col("_region"))},
            "unknown_user": {"user_id": _unknown(seed, "U9", key, 7)},
        },
        near_duplicate={"ts": utc_millis(F.col("event_time"))},
    )
    return df, r


def render_orders(
    orders: DataFrame, seed: int, fx: dict[str, float], aliases: dict[str, str]
) -> tuple[DataFrame, Rendering]:
    region_of = regions(seed)
    df = orders.select(
        "*",
        region_of(F.col("user_id")).alias("_region"),
        uniform(seed, S_MESSY, "order_id").alias("_u"),
        (F.col("ordered_at") + F.expr("INTERVAL 5 MINUTES")).alias("updated_ts"),
    ).withColumn("_currency", currency_of(F.col("_region")))
    amount = local_money(F.col("amount_eur"), F.col("_currency"), fx)
    discount = local_money(F.col("discount_eur"), F.col("_currency"), fx)
    key = F.col("order_id")
    region = F.col("_region")
    r = Rendering(
        source="orders",
        fields={
            "order_id": key,
            "user_id": F.col("user_id"),
            "ordered_at": local_time(F.col("ordered_at"), region),
            "category": messy_category(F.col("category"), F.col("_u"), aliases),
            "amount": _money_text(amount),
            "discount": _money_text(discount),
            "currency": F.col("_currency"),
            "coupon_id": F.col("coupon_id"),
            "n_items": F.col("n_items").cast("string"),
            "updated_at": local_time(F.col("updated_ts"), region),
        },
        key=key,
        sort=F.col("ordered_at"),
        defects={
            "bad_type": {"amount": F.regexp_replace(_money_text(amount), r"\.", ",")},
            "missing_field": {"user_id": None},
            "bad_amount": {"amount": _money_text(_amount_defect(seed, amount, key))},
            "future_timestamp": {"ordered_at": local_time(_future(seed, F.col("ordered_at"), key), region)},
            "unknown_user": {"user_id": _unknown(seed, "U9", key, 7)},
            "unknown_coupon": {"coupon_id": _unknown(seed, "CPN9", key, 3)},
        },
        near_duplicate={
            "updated_at": local_time(F.col("updated_ts") - F.expr("INTERVAL 1 HOUR"), region),
            "amount": _money_text(amount + 1),
        },
        near_duplicate_first=False,  # the older version comes later: only updated_at may decide
    )
    return df, r


def render_issuances(issuances: DataFrame, seed: int) -> tuple[DataFrame, Rendering]:
    df = issuances.select("*", regions(seed)(F.col("user_id")).alias("_region"))
    key = F.col("issuance_id")
    r = Rendering(
        source="issuances",
        fields={
            "issuance_id": key,
            "user_id": F.col("user_id"),
            "coupon_id": F.col("coupon_id"),
            "issued_at": local_time(F.col("issued_at"), F.col("_region")),
            "policy": F.col("policy"),
            "propensity": F.col("propensity"),
        },
        key=key,
        sort=F.col("issued_at"),
        defects={
            "bad_type": {"propensity": F.lit("high")},
            "missing_field": {"user_id": None},
            "future_timestamp": {"issued_at": local_time(_future(seed, F.col("issued_at"), key), F.col("_region"))},
            "unknown_user": {"user_id": _unknown(seed, "U9", key, 7)},
            "unknown_coupon": {"coupon_id": _unknown(seed, "CPN9", key, 3)},
        },
        near_duplicate={"issued_at": utc_millis(F.col("issued_at"))},
    )
    return df, r


def render_redemptions(redemptions: DataFrame, seed: int, fx: dict[str, float]) -> tuple[DataFrame, Rendering]:
    region_of = regions(seed)
    df = redemptions.select("*", region_of(F.col("user_id")).alias("_region")).withColumn(
        "_currency", currency_of(F.col("_region"))
    )
    discount = local_money(F.col("discount_eur"), F.col("_currency"), fx)
    key = F.col("redemption_id")
    r = Rendering(
        source="redemptions",
        fields={
            "redemption_id": key,
            "issuance_id": F.col("issuance_id"),
            "user_id": F.col("user_id"),
            "coupon_id": F.col("coupon_id"),
            "order_id": F.col("order_id"),
            "redeemed_at": local_time(F.col("redeemed_at"), F.col("_region")),
            "discount": discount,
            "currency": F.col("_currency"),
        },
        key=key,
        sort=F.col("redeemed_at"),
        defects={
            "bad_type": {"discount": F.lit("ten")},
            "missing_field": {"issuance_id": None},
            "bad_amount": {"discount": -discount},
            "future_timestamp": {"redeemed_at": local_time(_future(seed, F.col("redeemed_at"), key), F.col("_region"))},
            "unknown_user": {"user_id": _unknown(seed, "U9", key, 7)},
            "unknown_coupon": {"coupon_id": _unknown(seed, "CPN9", key, 3)},
        },
        near_duplicate={"redeemed_at": utc_millis(F.col("redeemed_at"))},
    )
    return df, r


# ---- generation ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class World:
    """The shop's population (with hidden traits) and catalogue, built once per run."""

    users: DataFrame
    coupons: pd.DataFrame

    @classmethod
    def build(cls, spark: SparkSession, cfg: Config) -> World:
        users = users_frame(spark, cfg.shop).persist(StorageLevel.MEMORY_AND_DISK)
        return cls(users=users, coupons=coupons_pandas(cfg.shop))

    def coupons_frame(self, spark: SparkSession) -> DataFrame:
        return spark.createDataFrame(self.coupons, COUPON_TRUTH)

    def close(self) -> None:
        self.users.unpersist()


def write_truth(lake: Lake, cfg: Config, world: World) -> None:
    """Save the hidden response model's inputs apart from the landing files (whole tables, replaced)."""
    lake.write(world.users, truth_table(cfg, "user_traits"), mode="overwrite", description="synthetic shop truth")
    lake.write(world.coupons_frame(lake.spark), truth_table(cfg, "coupons"), mode="overwrite")


def generate_day(
    spark: SparkSession, lake: Lake, cfg: Config, world: World, day: dt.date, issuances: DataFrame | None = None
) -> dict[str, dict[str, int]]:
    """Write the landing folder of ``day`` and its defect manifest; returns lines per source and defect kind.

    Args:
        issuances: The day's coupon decisions (:data:`coupon_spark.datagen.simulate.ISSUANCE_COLUMNS`); by
            default the randomised logging policy's. Pass a system's allocations here to close the loop.
    """
    shop, fx, aliases = cfg.shop, cfg.cleanse.fx_to_eur, cfg.cleanse.category_aliases
    if issuances is None:
        issuances = random_policy(world.users, world.coupons, day, shop)
    issuances = issuances.persist(StorageLevel.MEMORY_AND_DISK)
    orders: DataFrame | None = None
    try:
        outcome: DayOutcome = simulate_day(world.users, world.coupons, day, issuances, shop)
        # events and redemptions derive from the orders: Spark finds the persisted plan inside theirs
        orders = outcome.orders.persist(StorageLevel.MEMORY_AND_DISK)
        renderings = [
            render_users(world.users, day, shop.seed),
            render_coupons(world.coupons_frame(spark), day, shop.seed, aliases),
            render_events(outcome.events, shop.seed, fx, aliases),
            render_orders(orders, shop.seed, fx, aliases),
            render_issuances(issuances, shop.seed),
            render_redemptions(outcome.redemptions, shop.seed, fx),
        ]
        # every source's lines in one frame: computed once, counted in one job, collected in one more
        parts = [landing_lines(df, r, shop.seed, shop.dirty_rate, shop.defects, day) for df, r in renderings]
        counts = write_landings(
            functools.reduce(DataFrame.unionByName, parts),
            day_folder(cfg.lake.landing, day),
            [r.source for _, r in renderings],
            shop.single_file,
        )
    finally:
        if orders is not None:
            orders.unpersist()
        issuances.unpersist()
    rows = [
        (day, source, defect, None if defect == CLEAN else EXPECTED_REASON[defect], n)
        for source, by in counts.items()
        for defect, n in sorted(by.items())
    ]
    lake.write(
        spark.createDataFrame(rows, DEFECTS),
        truth_table(cfg, "defects"),
        mode="overwrite",
        partition_by=["ingest_date"],
        replace_where={"ingest_date": day},
    )
    return counts


def generate(
    spark: SparkSession, cfg: Config, first_day: dt.date, days: int = 1
) -> dict[dt.date, dict[str, dict[str, int]]]:
    """Write ``days`` landing folders from ``first_day`` on, and the hidden truth; returns the line counts."""
    lake = Lake.from_config(spark, cfg.lake)
    world = World.build(spark, cfg)
    try:
        write_truth(lake, cfg, world)
        out = {}
        for i in range(days):
            day = first_day + dt.timedelta(days=i)
            started = time.perf_counter()
            out[day] = generate_day(spark, lake, cfg, world, day)
            log.info("generated %s in %.1fs", day, time.perf_counter() - started)
        return out
    finally:
        world.close()


def run(ctx: Context, run_date: dt.date) -> int:
    """The ``generate`` stage: ``coupon-spark generate [--days N] [--users N]``."""
    cfg = ctx.cfg
    if ctx.options.users:
        cfg = dataclasses.replace(cfg, shop=dataclasses.replace(cfg.shop, users=int(ctx.options.users)))
    counts = generate(ctx.spark, cfg, run_date, max(int(ctx.options.days), 1))
    for day, by_source in counts.items():
        print(f"generate {day}: {day_folder(cfg.lake.landing, day)}")
        for source, by in by_source.items():
            dirty = sum(n for k, n in by.items() if k != CLEAN)
            total = sum(by.values())
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(by.items()) if k != CLEAN)
            print(f"  {source:<12} {total:>10,} lines, {dirty:>7,} dirty" + (f" ({kinds})" if kinds else ""))
    print(f"hidden truth: {cfg.lake.table_path(cfg.shop.truth_dir)}")
    return 0
