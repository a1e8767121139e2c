"""Benchmark: cleanse one generated ingest date against a plain Spark read-and-write of the same files.

    .venv/bin/python bench/cleanse.py [--users 250000] [--views 7.5] [--out bench/out/cleanse]

Generates one date (~2M events with the defaults), then times (1) a plain copy: every landing file read with
Spark (CSV with header, JSON lines with an all-string schema) and written as Parquet, and (2) the cleansing job
(typing, checks, de-duplication, references, reconciliation, Delta commits of silver + quarantine + metrics).
Prints ``cleanse_vs_plain_copy: <ratio>`` and the rows/s of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path

from coupon_spark.cleanse import SOURCE_ORDER, cleanse_day
from coupon_spark.config import Config
from coupon_spark.datagen.shop import generate
from coupon_spark.lake import Lake
from coupon_spark.schemas import LANDING_FIELDS, LANDING_FILES
from coupon_spark.session import build_spark_session

DAY = dt.date(2026, 11, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--views", type=float, default=7.5, help="shop.views_per_user_day")
    parser.add_argument("--out", default="bench/out/cleanse")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--reuse", action="store_true", help="keep an existing landing folder (skip generate)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
    for stale in ("lake", "plain"):
        shutil.rmtree(out / stale, ignore_errors=True)
    cfg = Config.from_file(
        "conf/local.yaml",
        overrides=[f"lake.root={out}/lake", f"lake.landing={out}/landing", "lake.backend=bridge",
                   f"shop.users={args.users}", f"shop.views_per_user_day={args.views}"],
    )  # fmt: skip
    spark = build_spark_session(dataclasses.replace(cfg.spark, master=args.master))
    folder = f"{cfg.lake.landing}/{DAY.isoformat()}"
    if not (args.reuse and Path(folder).is_dir()):
        t0 = time.perf_counter()
        generate(spark, cfg, DAY, days=1)
        print(f"generated {DAY} in {time.perf_counter() - t0:.1f}s")
    lines = {s: spark.read.text(f"{folder}/{LANDING_FILES[s]}").count() for s in SOURCE_ORDER}
    total = sum(lines.values())
    print(f"landing {DAY}: {total:,} lines ({lines['events']:,} events)")

    t0 = time.perf_counter()
    for source in SOURCE_ORDER:
        path = f"{folder}/{LANDING_FILES[source]}"
        schema = ", ".join(f"`{f}` string" for f in LANDING_FIELDS[source])
        reader = spark.read.schema(schema)
        df = reader.option("header", True).csv(path) if path.endswith(".csv") else reader.json(path)
        df.write.mode("overwrite").parquet(f"{out}/plain/{source}")
    plain_s = time.perf_counter() - t0

    lake = Lake.from_config(spark, cfg.lake)
    t0 = time.perf_counter()
    result = cleanse_day(spark, lake, cfg, DAY)
    cleanse_s = time.perf_counter() - t0
    for r in result.sources.values():
        print(r.summary())
    print(f"plain_copy: {plain_s:.1f}s, {total / plain_s:,.0f} rows/s")
    print(f"cleanse: {cleanse_s:.1f}s, {total / cleanse_s:,.0f} rows/s")
    print(f"cleanse_vs_plain_copy: {cleanse_s / plain_s:.2f}")
    spark.stop()


if __name__ == "__main__":
    main()
