"""``coupon-spark doctor``: is this machine ready? Java, Spark, the Delta backend, a real lake round trip."""

from __future__ import annotations

import datetime as dt
import platform

from pyspark.sql import functions as F

from coupon_spark.lake import Txn
from coupon_spark.runner import Context
from coupon_spark.session import java_version

DOCTOR_TABLE = "ops/doctor"


def run(ctx: Context, run_date: dt.date) -> int:
    """Print the environment, write and read back a small Delta table, list the configured tables."""
    spark, cfg, lake = ctx.spark, ctx.cfg, ctx.lake
    print(f"python        {platform.python_version()}")
    print(f"java          {java_version()}")
    print(f"spark         {spark.version} ({spark.sparkContext.master}, {spark.sparkContext.defaultParallelism} cores)")
    print(f"config        {cfg.source}")
    print(f"lakehouse     {cfg.lake.root}")
    print(f"landing       {cfg.lake.landing}")
    print(f"delta backend {lake.backend.name} (requested: {cfg.lake.backend})")

    n = 1000
    df = spark.range(n).select(
        F.col("id"),
        F.lit(run_date).alias("run_date"),
        (F.col("id") % 7).cast("int").alias("bucket"),
        (F.col("id") * 0.5).alias("value"),
    )
    stamp = int(run_date.strftime("%Y%m%d"))
    res = lake.write(df, DOCTOR_TABLE, mode="replace_partitions", partition_by=["run_date"], txn=Txn("doctor", stamp))
    back = (
        lake.read(DOCTOR_TABLE, where={"run_date": run_date})
        .agg(F.count("*").alias("n"), F.sum("value").alias("s"))
        .first()
    )
    assert back is not None
    expected_sum = 0.5 * n * (n - 1) / 2
    ok = back["n"] == n and abs(back["s"] - expected_sum) < 1e-9
    print(f"round trip    {'ok' if ok else 'FAILED'}: wrote {n} rows ({res}), read {back['n']} rows back")

    print("tables:")
    for name in sorted(cfg.lake.tables):
        if lake.exists(name):
            info = lake.info(name)
            rows = "?" if info.num_rows is None else info.num_rows
            print(f"  {name:<20} version {info.version:<4} {rows:>10} rows  {info.num_files:>5} files")
        else:
            print(f"  {name:<20} (not written yet)")
    return 0 if ok else 1
