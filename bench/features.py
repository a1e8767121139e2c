"""Feature build throughput: silver tables of a shop of ~200k users over 30 days -> the feature tables.

The silver tables are made directly with Spark expressions in the silver schemas (the generator + cleansing
path is measured by bench/cleanse.py). The first build runs as of the day after ``--days`` days (it also
backfills the snapshots of every issue date whose outcome window has closed); then the daily run of the next
day, whose window sums advance the first build's by the day entering (one more day of silver rows), and the
same daily run again built over the whole reach (``full=True``: what every daily run did before). Prints the
time per stage of each and, against a plain Spark aggregation over the same silver rows measured in the same
run: ``features_vs_plain_aggregation`` (first build), ``features_daily_vs_plain_aggregation`` (the daily
run) and ``features_daily_full_build_vs_plain_aggregation``.

    python bench/features.py [--users 200000] [--days 30] [--views 1.0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark.config import Config, SparkConfig
from coupon_spark.features import build_features
from coupon_spark.lake import Lake
from coupon_spark.schemas import COUPONS, EVENTS, ISSUANCES, ORDERS, REDEMPTIONS, USERS
from coupon_spark.session import build_spark_session

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2026, 10, 1)
CATS = ["grocery", "fashion", "electronics", "home", "beauty", "sports", "toys", "books"]


def _cast(df: DataFrame, schema) -> DataFrame:  # type: ignore[no-untyped-def]
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _day_ts(day: F.Column, salt: str) -> F.Column:
    secs = F.pmod(F.xxhash64(F.lit(salt), F.col("id")), F.lit(86400))
    return F.timestamp_seconds(F.unix_timestamp(day.cast("timestamp")) + secs)


def silver(spark: SparkSession, users: int, days: int, views: float) -> dict[str, DataFrame]:
    """``days`` days of silver rows from START, and one more (the day the daily run takes in)."""
    days += 1
    last = START + dt.timedelta(days=days - 1)
    u = spark.range(users).select(
        F.format_string("U%08d", "id").alias("user_id"),
        F.date_sub(F.lit(START), (F.col("id") % 400).cast("int")).alias("signup_date"),
        F.element_at(F.array(*[F.lit(x) for x in ["DE", "FR", "GB", "US"]]), (F.col("id") % 4 + 1).cast("int")).alias(
            "region"
        ),
        F.lit("city").alias("city"),
        F.element_at(F.array(F.lit("ios"), F.lit("android"), F.lit("web")), (F.col("id") % 3 + 1).cast("int")).alias(
            "device"
        ),
        F.element_at(F.array(F.lit("new"), F.lit("regular"), F.lit("vip")), (F.col("id") % 3 + 1).cast("int")).alias(
            "segment"
        ),
        F.current_timestamp().alias("updated_at"),
        # one version per user (the type-2 dimension), known before every as-of date
        F.lit(START - dt.timedelta(days=1)).alias("valid_from"),
        F.lit(None).cast("date").alias("valid_to"),
    )
    day_of = lambda n: F.date_add(F.lit(START), (F.col("id") % n).cast("int"))  # noqa: E731
    n_orders = int(users * days * 0.05)
    o = spark.range(n_orders).select(
        F.format_string("O%010d", "id").alias("order_id"),
        F.format_string("U%08d", F.pmod(F.xxhash64(F.col("id")), F.lit(users))).alias("user_id"),
        _day_ts(day_of(days), "o").alias("ordered_at"),
        F.element_at(F.array(*[F.lit(c) for c in CATS]), (F.col("id") % 8 + 1).cast("int")).alias("category"),
        (F.pmod(F.col("id") * 7919, F.lit(20000)) / 100 + 5).alias("amount_eur"),
        F.lit(0).alias("discount_eur"),
        F.lit(None).cast("string").alias("coupon_id"),
        F.lit(1).alias("n_items"),
        F.lit("EUR").alias("source_currency"),
        F.lit(None).cast("timestamp").alias("updated_at"),
        day_of(days).alias("ingest_date"),
    )
    n_events = int(users * days * views)
    e = spark.range(n_events).select(
        F.format_string("E%011d", "id").alias("event_id"),
        F.element_at(F.array(F.lit("view"), F.lit("view"), F.lit("cart")), (F.col("id") % 3 + 1).cast("int")).alias(
            "event_type"
        ),
        F.format_string("U%08d", F.pmod(F.xxhash64(F.col("id"), F.lit(1)), F.lit(users))).alias("user_id"),
        _day_ts(day_of(days), "e").alias("event_time"),
        F.format_string("S%d", (F.col("id") / 5).cast("long")).alias("session_id"),
        F.lit("p").alias("product_id"),
        F.lit("grocery").alias("category"),
        F.lit(9.99).alias("price_eur"),
        F.lit(None).cast("string").alias("order_id"),
        day_of(days).alias("ingest_date"),
    )
    n_iss = int(users * days * 0.3)
    i = spark.range(n_iss).select(
        F.format_string("I%010d", "id").alias("issuance_id"),
        F.format_string("U%08d", F.pmod(F.xxhash64(F.col("id"), F.lit(2)), F.lit(users))).alias("user_id"),
        F.when(F.col("id") % 4 == 0, F.lit(None))
        .otherwise(F.format_string("C%02d", F.col("id") % 12))
        .alias("coupon_id"),
        _day_ts(day_of(days), "i").alias("issued_at"),
        F.lit("random_v1").alias("policy"),
        F.when(F.col("id") % 4 == 0, F.lit(0.25)).otherwise(F.lit(0.75 / 12)).alias("propensity"),
        day_of(days).alias("ingest_date"),
    )
    r = i.where(F.col("coupon_id").isNotNull() & (F.col("issuance_id").substr(-1, 1) == "3")).select(
        F.concat(F.lit("R"), F.col("issuance_id")).alias("redemption_id"),
        "issuance_id",
        "user_id",
        "coupon_id",
        F.lit(None).cast("string").alias("order_id"),
        (F.col("issued_at") + F.expr("INTERVAL 2 HOURS")).alias("redeemed_at"),
        F.lit(5).alias("discount_eur"),
        "ingest_date",
    )
    c = spark.range(12).select(
        F.format_string("C%02d", "id").alias("coupon_id"),
        F.format_string("K%d", F.col("id") % 4).alias("campaign_id"),
        F.lit("price_off").alias("kind"),
        F.element_at(F.array(*[F.lit(c) for c in CATS]), (F.col("id") % 8 + 1).cast("int")).alias("category"),
        F.lit(5).alias("face_value_eur"),
        F.lit(20).alias("min_spend_eur"),
        F.lit(5).alias("cost_eur"),
        F.lit(START).alias("valid_from"),
        F.lit(last + dt.timedelta(days=30)).alias("valid_to"),
        F.lit(100000).alias("campaign_budget_eur"),
        F.current_timestamp().alias("updated_at"),
        F.lit(START).alias("ingest_date"),
    )
    return {
        "users": _cast(u, USERS),
        "orders": _cast(o, ORDERS),
        "events": _cast(e, EVENTS),
        "issuances": _cast(i, ISSUANCES),
        "redemptions": _cast(r, REDEMPTIONS),
        "coupons": _cast(c, COUPONS),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--views", type=float, default=1.0, help="events per user and day")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={work}", "spark.shuffle_partitions=8"])
    spark = build_spark_session(
        SparkConfig(master="local[*]", shuffle_partitions=8, driver_memory="6g",
                    conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    )  # fmt: skip
    lake = Lake.from_config(spark, cfg.lake)
    started = time.perf_counter()
    rows_in = 0
    for name, df in silver(spark, args.users, args.days, args.views).items():
        res = lake.write(df, name, partition_by=[] if name == "users" else ["ingest_date"])
        rows_in += res.num_rows
        print(f"silver {name}: {res.num_rows:,} rows")
    print(f"silver tables written in {time.perf_counter() - started:.0f}s ({rows_in:,} rows)")

    # baseline: one plain aggregation per source over the same silver rows (read + group by user)
    started = time.perf_counter()
    for name in ("orders", "events", "issuances", "redemptions"):
        lake.read(name).groupBy("user_id").count().agg(F.sum("count")).first()
    plain = time.perf_counter() - started

    def build(label: str, run_date: dt.date, full: bool = False) -> float:
        started = time.perf_counter()
        summary = build_features(spark, lake, cfg, run_date, full=full)
        secs = time.perf_counter() - started
        how = "advanced from the day before" if summary.incremental else "built over the whole reach"
        print(
            f"{label} as of {run_date} ({secs:.0f}s): {len(summary.snapshots)} snapshots, window sums {how}, "
            f"training examples for {len(summary.issue_dates)} issue dates"
        )
        for stage, s in summary.seconds.items():
            print(f"  {stage:<18} {s:>7.1f}s  {summary.rows[stage]:>12,} rows written")
        return secs

    run_date = START + dt.timedelta(days=args.days)
    first = build("first build", run_date)
    daily = build("daily run", run_date + dt.timedelta(days=1))
    daily_full = build("daily run, full build", run_date + dt.timedelta(days=1), full=True)
    print(f"features_rows_per_s: {rows_in / first:,.0f} silver rows/s ({first:.0f}s)")
    print(f"plain_aggregation: {plain:.1f}s")
    print(f"features_vs_plain_aggregation: {first / plain:.2f}")
    print(f"features_daily_vs_plain_aggregation: {daily / plain:.2f}")
    print(f"features_daily_full_build_vs_plain_aggregation: {daily_full / plain:.2f}")
    spark.stop()


if __name__ == "__main__":
    main()
