"""Benchmark: generate shop days (``generate_day``) against a plain Spark write of the same lines and bytes.

    PYTHONPATH=. .venv/bin/python bench/generate.py [--users 100000] [--days 3] [--backfill]

Builds the world and writes the hidden truth (timed apart as ``setup``: it runs once per run), then generates
``--days`` ordinary days, each in its own Spark job group, and counts the Spark jobs of each day. The baseline,
measured in the same run after each day: one plain Spark text write of as many lines, of the same total bytes,
as the day's landing files (``spark.range`` -> fixed-width lines -> ``write.text``). Prints per day the
seconds, the CPU seconds (driver, JVM and Python workers: what a day costs whatever else shares the cores),
the jobs and the lines, then ``generate_s_per_day``, ``generate_cpu_s_per_day``, ``generate_jobs_per_day``,
``generate_vs_plain_write: <ratio>`` (wall time, summed over the days) and ``generate_vs_plain_write_cpu``.
``--backfill`` also times the shop's past (:func:`coupon_spark.datagen.backfill.write_backfill`, one bulk
import folder) apart, as the pipeline writes it before its first logged day. ``PYTHONPATH=.``: the venv's
editable install may point at another checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark.config import Config
from coupon_spark.datagen.landing import day_folder
from coupon_spark.datagen.shop import World, generate_day, write_truth
from coupon_spark.lake import Lake
from coupon_spark.session import build_spark_session

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2026, 11, 2)


def cpu_seconds(spark: SparkSession) -> float:
    """CPU seconds (user + system) used so far by this driver, its JVM and every process under the JVM (the
    Python workers, their reaped children included): what a day costs whatever else shares the cores."""
    ticks = os.sysconf("SC_CLK_TCK")
    jvm = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())  # type: ignore[union-attr]
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [jvm]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += sum(int(x) for x in stats[pid][11:15])  # utime, stime, cutime, cstime
        todo.extend(children.get(pid, []))
    return total / ticks + time.process_time()


def timed_jobs(spark: SparkSession, group: str, fn):  # type: ignore[no-untyped-def]
    """``(result, seconds, cpu_seconds, spark_jobs)`` of ``fn()`` run in its own job group."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    cpu = cpu_seconds(spark)
    started = time.perf_counter()
    try:
        out = fn()
    finally:
        secs = time.perf_counter() - started
        cpu = cpu_seconds(spark) - cpu
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    return out, secs, cpu, len(sc.statusTracker().getJobIdsForGroup(group))


def folder_size(folder: Path) -> tuple[int, int]:
    """``(files, bytes)`` of the landing files in ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    return len(files), sum(p.stat().st_size for p in files)


def plain_write(spark: SparkSession, lines: int, size: int, target: str, partitions: int) -> None:
    """``lines`` text lines of ``size`` bytes in all (newlines included), written by Spark as text."""
    width = max(size // max(lines, 1) - 1, 1)
    df = spark.range(0, lines, numPartitions=partitions).select(
        F.rpad(F.format_string("%d,%d", "id", F.xxhash64("id")), width, "x").alias("value")
    )
    df.write.mode("overwrite").text(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--backfill", action="store_true", help="also time the shop's past (one bulk import folder)")
    ap.add_argument("--out", default=None, help="keep the lake here (default: a temporary folder, removed)")
    ap.add_argument(
        "--codegen-cache", type=int, default=0,
        help="spark.sql.codegen.cache.maxEntries (0: the session's default, 100); a day's queries generate more "
        "classes than 100, so by default none is reused the next day",
    )  # fmt: skip
    args = ap.parse_args()
    work = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench-generate-"))
    shutil.rmtree(work, ignore_errors=True)
    cfg = Config.from_file(
        ROOT / "conf" / "local.yaml",
        overrides=[f"lake.root={work}/lake", f"lake.landing={work}/landing", f"shop.users={args.users}"],
    )
    conf = dict(cfg.spark.conf)
    if args.codegen_cache:
        conf["spark.sql.codegen.cache.maxEntries"] = str(args.codegen_cache)
    spark = build_spark_session(dataclasses.replace(cfg.spark, master=args.master, conf=conf))
    lake = Lake.from_config(spark, cfg.lake)
    try:
        world = World.build(spark, cfg)
        _, setup_s, setup_cpu, setup_jobs = timed_jobs(spark, "setup", lambda: write_truth(lake, cfg, world))
        print(f"setup (world + hidden truth): {setup_s:.1f}s, {setup_cpu:.1f} CPU s, {setup_jobs} Spark jobs")
        if args.backfill:
            from coupon_spark.datagen.backfill import write_backfill

            counts, secs, cpu, jobs = timed_jobs(
                spark, "backfill", lambda: write_backfill(spark, cfg, world.users, DAY)
            )
            print(
                f"backfill ({cfg.shop.backfill_days} days): {secs:.1f}s, {cpu:.1f} CPU s, {jobs} Spark jobs, "
                f"{sum(counts.values()):,} lines"
            )
        gen = {"s": 0.0, "cpu": 0.0, "jobs": 0}
        plain = {"s": 0.0, "cpu": 0.0}
        for i in range(args.days):
            day = DAY + dt.timedelta(days=i)
            counts, secs, cpu, jobs = timed_jobs(
                spark, f"day{i}", lambda d=day: generate_day(spark, lake, cfg, world, d)
            )
            folder = Path(day_folder(cfg.lake.landing, day))
            lines = sum(sum(by.values()) for by in counts.values()) + len(list(folder.glob("*.csv")))  # + headers
            files, size = folder_size(folder)
            _, plain_s, plain_cpu, plain_jobs = timed_jobs(
                spark, f"plain{i}",
                lambda n=lines, size=size, i=i: plain_write(spark, n, size, f"{work}/plain/{i}", cfg.shop.partitions),
            )  # fmt: skip
            gen["s"] += secs
            gen["cpu"] += cpu
            gen["jobs"] += jobs
            plain["s"] += plain_s
            plain["cpu"] += plain_cpu
            print(
                f"{day}: generate {secs:.2f}s ({cpu:.1f} CPU s), {jobs} Spark jobs, {lines:,} lines, "
                f"{size / 1e6:.1f} MB in {files} files; plain write {plain_s:.2f}s ({plain_cpu:.1f} CPU s), "
                f"{plain_jobs} job"
            )
        n = args.days
        print(f"generate_s_per_day: {gen['s'] / n:.2f}")
        print(f"generate_cpu_s_per_day: {gen['cpu'] / n:.2f}")
        print(f"generate_jobs_per_day: {gen['jobs'] / n:.1f}")
        print(f"plain_write_s_per_day: {plain['s'] / n:.2f} ({plain['cpu'] / n:.2f} CPU s)")
        print(f"generate_vs_plain_write: {gen['s'] / plain['s']:.2f}")
        print(f"generate_vs_plain_write_cpu: {gen['cpu'] / plain['cpu']:.2f}")
        world.close()
    finally:
        spark.stop()
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
