"""``coupon-spark pipeline``: the daily loop, stage by stage, for one or more days."""

from __future__ import annotations

import argparse
import datetime as dt
import time

from pyspark.sql import SparkSession

from coupon_spark.cli import PIPELINE_ORDER, STAGES, NotBuiltError, resolve
from coupon_spark.config import Config


def run(spark: SparkSession, cfg: Config, run_date: dt.date, args: argparse.Namespace) -> int:
    """Run every built stage in order for ``args.days`` days starting at ``run_date``.

    Stages that are not built yet are reported, never simulated.
    """
    days = getattr(args, "days", 1)
    built = [s for s in PIPELINE_ORDER if STAGES[s].target is not None]
    missing = [s for s in PIPELINE_ORDER if STAGES[s].target is None]
    if missing:
        print(f"pipeline: not built yet, skipped: {', '.join(missing)}")
    if not built:
        print("pipeline: no stage of the loop is built yet; nothing was run.")
        return 0
    for day in range(days):
        date = run_date + dt.timedelta(days=day)
        for i, name in enumerate(built, 1):
            started = time.perf_counter()
            print(f"[{date}] {i}/{len(built)} {name} ...", flush=True)
            try:
                rc = resolve(STAGES[name])(spark, cfg, date, args)
            except NotBuiltError:  # pragma: no cover - filtered above
                continue
            print(f"[{date}] {name} done in {time.perf_counter() - started:.1f}s", flush=True)
            if rc:
                print(f"[{date}] {name} failed with code {rc}; stopping")
                return int(rc)
    return 0
