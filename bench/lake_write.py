"""Bridge write vs plain Spark Parquet write of the same DataFrame, in one run.

Prints ``bridge_write_vs_parquet: <ratio>`` (bridge time / Parquet time, median of the repeats; goal <= 1.15)
for the default writer (Spark's Parquet writer, footers read by the driver), ``arrow_bridge_write_vs_parquet``
for the pyarrow-in-the-tasks writer it replaced, ``native_write_vs_parquet`` for the Delta Spark connector
where ``make setup`` fetched it (the native backend), and the rows/s of each. The DataFrame (~5M rows, 20 columns
of mixed types) is cached first, so all writers are timed on the same in-memory rows and none pays for
generating them.

    python bench/lake_write.py [--rows 5000000] [--repeats 3] [--partitioned]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark.config import LakeConfig, SparkConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.session import build_spark_session, delta_connector_available


def make_frame(spark: SparkSession, rows: int) -> DataFrame:
    """20 columns: ids, counts, amounts, scores, flags, categories, dates and timestamps."""
    i = F.col("id")
    return spark.range(rows).select(
        i.alias("order_id"),
        (i % 1_000_003).alias("user_id"),
        (i % 977).cast("int").alias("coupon_id"),
        (i % 13).cast("int").alias("campaign_id"),
        F.concat(F.lit("cat_"), (i % 37).cast("string")).alias("category"),
        F.concat(F.lit("region_"), (i % 7).cast("string")).alias("region"),
        F.element_at(F.array(F.lit("ios"), F.lit("android"), F.lit("web")), (i % 3 + 1).cast("int")).alias("device"),
        ((i * 7919) % 100000 / 100).cast("decimal(12,2)").alias("amount"),
        ((i * 104729) % 5000 / 100).cast("decimal(12,2)").alias("discount"),
        F.sin(i.cast("double")).alias("score"),
        F.cos(i.cast("double")).alias("p_purchase"),
        (F.sin(i.cast("double") * 3) / 2 + 0.5).alias("p_redeem"),
        ((i % 11) == 0).alias("is_holdout"),
        ((i % 5) == 0).alias("redeemed"),
        (i % 50).cast("int").alias("quantity"),
        F.date_add(F.lit("2026-01-01").cast("date"), (i % 300).cast("int")).alias("order_date"),
        F.timestamp_seconds(F.lit(1_790_000_000) + i % 10_000_000).alias("ts"),
        F.sha2(i.cast("string"), 256).substr(1, 16).alias("session_id"),
        (i % 90).cast("int").alias("days_since_signup"),
        F.date_add(F.lit("2026-11-01").cast("date"), (i % 10).cast("int")).alias("ingest_date"),
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitioned", action="store_true", help="also time a write partitioned by ingest_date")
    ap.add_argument("--arrow-batch", type=int, default=20000, help="spark.sql.execution.arrow.maxRecordsPerBatch")
    args = ap.parse_args()

    spark = build_spark_session(
        SparkConfig(
            master="local[*]",
            shuffle_partitions=4,
            driver_memory="6g",
            arrow_batch_size=args.arrow_batch,
            conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        )
    )
    work = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    cfg = LakeConfig(root=str(work), landing=str(work / "landing"))
    lakes = {
        "": Lake(spark, cfg, BridgeBackend(spark, 2_000_000, writer="spark")),
        "arrow_": Lake(spark, cfg, BridgeBackend(spark, 2_000_000, writer="arrow")),
    }
    if delta_connector_available(spark):  # the Delta Spark connector (make setup's .jars/) writes natively
        from coupon_spark.lake.native import NativeBackend

        lakes["native_"] = Lake(spark, cfg, NativeBackend(spark))
    else:
        print("native: the Delta Spark connector is not on the classpath (make setup fetches it): not timed")
    df = make_frame(spark, args.rows).repartition(spark.sparkContext.defaultParallelism * 2).cache()
    n = df.count()
    print(
        f"rows: {n}, columns: {len(df.columns)}, tasks: {df.rdd.getNumPartitions()}, "
        f"cores: {spark.sparkContext.defaultParallelism}"
    )

    variants = [("", None)] + ([("partitioned_", ["ingest_date"])] if args.partitioned else [])
    for label, parts in variants:
        plain: list[float] = []
        bridge: dict[str, list[float]] = {w: [] for w in lakes}
        for r in range(args.repeats):  # interleaved, so that a noisy moment hits every writer alike
            out = work / f"plain{r}"
            writer = df.write.mode("overwrite")
            if parts:
                writer = writer.partitionBy(*parts)
            plain.append(timed(lambda: writer.parquet(str(out))))  # noqa: B023
            shutil.rmtree(out, ignore_errors=True)
            for w, lake in lakes.items():
                table = f"bridge{label}{w}{r}"
                bridge[w].append(timed(lambda: lake.write(df, table, mode="overwrite", partition_by=parts)))  # noqa: B023
                shutil.rmtree(work / table, ignore_errors=True)
        tp = statistics.median(plain)
        print(f"{label}parquet_rows_per_s: {n / tp:,.0f}  (median {tp:.2f}s of {[round(t, 2) for t in plain]})")
        for w, times in bridge.items():
            tb = statistics.median(times)
            name = f"{label}{w}write" if w == "native_" else f"{label}{w}bridge_write"
            print(f"{name}_rows_per_s: {n / tb:,.0f}  (median {tb:.2f}s of {[round(t, 2) for t in times]})")
            print(f"{name}_vs_parquet: {tb / tp:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    spark.stop()


if __name__ == "__main__":
    main()
