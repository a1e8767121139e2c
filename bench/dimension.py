"""Benchmark: the users dimension's daily merge against the snapshot write it replaced, in one run.

    PYTHONPATH=. .venv/bin/python bench/dimension.py [--users 1000000] [--days 3] [--change-rate 0.003]

Builds the type-2 ``users`` dimension of ``--users`` users in a real Delta lake (the configured backend), then
loads ``--days`` daily exports of every user, where ``--change-rate`` of them changed device and as many
signed up (new ``user_id``): each export is merged as ``cleanse`` merges it
(:func:`coupon_spark.dimension.merge_source` + :meth:`coupon_spark.lake.Lake.merge`), and, as the baseline of
the same run, written as the old layout wrote it (the export's rows overwrite one ``ingest_date`` partition
of a snapshot table). Prints per day the seconds and the rows each layout added, then
``users_merge_vs_snapshot_write: <ratio>`` (wall time, summed over the days), the rows per day of each layout,
and both scaled to 300M users (rows added per day grow with the users and the change rate; a snapshot adds
all of them). ``PYTHONPATH=.``: the venv's editable install may point at another checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.config import Config
from coupon_spark.dimension import merge_source
from coupon_spark.lake import Lake
from coupon_spark.session import build_spark_session

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2026, 11, 1)
TRACKED = ("signup_date", "region", "city", "device", "segment")
DEVICES = ("ios", "android", "web")


def export(spark: SparkSession, users: int, day: int, rate: float) -> DataFrame:
    """Day ``day``'s export: users 0 .. users + new - 1, where each day ``rate`` of the users moved to the next
    device (by a hash of the user and the day) and ``rate * users`` signed up."""
    n = users + int(users * rate) * day
    moves = F.lit(0)
    for d in range(1, day + 1):
        moves = moves + (F.pmod(F.xxhash64(F.col("id"), F.lit(d)), F.lit(1_000_000)) < int(rate * 1_000_000)).cast(
            "int"
        )
    device = F.element_at(
        F.array(*[F.lit(x) for x in DEVICES]), (F.pmod(F.col("id") + moves, F.lit(3)) + 1).cast("int")
    )
    return spark.range(n).select(
        F.format_string("U%09d", "id").alias("user_id"),
        F.date_sub(F.lit(START), (F.col("id") % 700).cast("int")).alias("signup_date"),
        F.element_at(F.array(*[F.lit(x) for x in ("DE", "FR", "GB", "US")]), (F.col("id") % 4 + 1).cast("int")).alias(
            "region"
        ),
        F.lit("city").alias("city"),
        device.alias("device"),
        F.element_at(F.array(*[F.lit(x) for x in ("new", "regular", "vip")]), (F.col("id") % 3 + 1).cast("int")).alias(
            "segment"
        ),
        F.lit(dt.datetime(2026, 10, 1)).cast("timestamp").alias("updated_at"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--change-rate", type=float, default=0.003)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dimension-"))
    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={work}", "spark.shuffle_partitions=8"])
    spark = build_spark_session(dataclasses.replace(cfg.spark))
    lake = Lake.from_config(spark, cfg.lake)
    snapshots = "bench/users_snapshots"
    merge_s = snap_s = 0.0
    added_merge = added_snap = 0
    try:
        first = export(spark, args.users, 0, args.change_rate)
        lake.merge(merge_source(None, first, START, "user_id", TRACKED).coalesce(4), tables.USERS)
        lake.write(first.withColumn("ingest_date", F.lit(START)), snapshots, partition_by=["ingest_date"])
        print(f"{type(lake.backend).__name__}; day 0: {lake.read(tables.USERS).count():,} users")
        for day in range(1, args.days + 1):
            date = START + dt.timedelta(days=day)
            rows = export(spark, args.users, day, args.change_rate).persist()
            n = rows.count()
            before = lake.read(tables.USERS).count()
            t0 = time.perf_counter()
            source = merge_source(lake.read(tables.USERS), rows, date, "user_id", TRACKED)
            res = lake.merge(source, tables.USERS, description=f"bench day {day}")
            merged = time.perf_counter() - t0
            added = lake.read(tables.USERS).count() - before
            t0 = time.perf_counter()
            lake.write(
                rows.withColumn("ingest_date", F.lit(date)),
                snapshots,
                mode="overwrite",
                replace_where={"ingest_date": date},
            )
            written = time.perf_counter() - t0
            rows.unpersist()
            merge_s, snap_s = merge_s + merged, snap_s + written
            added_merge, added_snap = added_merge + added, added_snap + n
            print(
                f"day {day}: export {n:,} users; merge {merged:.1f}s (+{added:,} rows, {res.num_rows:,} written, "
                f"{res.removed_files} files replaced); snapshot write {written:.1f}s (+{n:,} rows)"
            )
        per_day_merge, per_day_snap = added_merge / args.days, added_snap / args.days
        scale = 300_000_000 / args.users
        print(f"users_merge_vs_snapshot_write: {merge_s / snap_s:.3f}")
        print(f"users_rows_added_per_day: type-2 {per_day_merge:,.0f}, snapshot {per_day_snap:,.0f}")
        print(
            f"at 300M users (change rate {args.change_rate}): type-2 ~{per_day_merge * scale:,.0f} rows/day, "
            f"snapshot ~{per_day_snap * scale:,.0f} rows/day"
        )
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
