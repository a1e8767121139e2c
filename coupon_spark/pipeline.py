"""``coupon-spark pipeline``: the daily loop, day by day, with the synthetic shop playing each day forward.

For the first run date R the shop's history is made first, if the lake does not have it: ``pipeline.history_days``
days before R under the shop's randomised logging policy (landing files, then cleansing), so that there are
logged issuances whose outcome windows have closed. Then, for each day D = R, R+1, ...:

1. ``features``  as of D (data known before D);
2. ``train``     on every closed example (every ``pipeline.train_every_days`` days, else the latest model);
3. ``score``     every user against every live coupon;
4. ``allocate``  under the budgets, with holdout and exploration;
5. the shop plays D forward: the day's allocations are the day's issuances (the feedback loop), its purchases
   and redemptions come from the hidden response model, and D's landing folder is written and cleansed;
6. ``evaluate``  the allocation of D (where the stage is built).

Each stage is the same function the CLI and ``spark-submit jobs/<stage>.py`` run; nothing is simulated that a
real deployment would do differently, except step 5, which a real shop does by itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.config import Config
from coupon_spark.lake import Lake
from coupon_spark.runner import Context, resolve
from coupon_spark.stages import LOOP

log = logging.getLogger(__name__)

ISSUED_HOUR_UTC = 8  # the allocations of a day go out from 08:00 UTC, spread over three hours
POLICY_PREFIX = "coupon-spark/"


def issuances_from_allocations(allocations: DataFrame, day: dt.date) -> DataFrame:
    """The issuances a shop logs when it sends the allocations of ``day`` (every decision, "no coupon" ones
    included, so that later runs learn from the control decisions too).

    Returns:
        Rows of :data:`coupon_spark.datagen.simulate.ISSUANCE_COLUMNS`: ``policy`` is
        ``coupon-spark/<model|exploration|holdout>`` and ``propensity`` the allocation's.
    """
    start = int(dt.datetime(day.year, day.month, day.day, ISSUED_HOUR_UTC, tzinfo=dt.timezone.utc).timestamp())
    spread = F.pmod(F.xxhash64(F.lit(str(day)), "user_id"), F.lit(3 * 3600))
    return allocations.select(
        F.concat_ws("-", F.lit(f"A{day:%Y%m%d}"), "user_id", F.coalesce("coupon_id", F.lit("none"))).alias(
            "issuance_id"
        ),
        "user_id",
        "coupon_id",
        F.timestamp_seconds(F.lit(start) + spread).alias("issued_at"),
        F.concat(F.lit(POLICY_PREFIX), F.col("policy")).alias("policy"),
        F.coalesce(F.col("propensity"), F.lit(1.0)).cast("double").alias("propensity"),
    )


@dataclass
class Progress:
    """Stage-by-stage progress lines and the time of each stage."""

    seconds: dict[str, float] = field(default_factory=dict)

    def stage(self, label: str, fn: Callable[[], object]) -> object:
        print(f"{label} ...", flush=True)
        started = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - started
        self.seconds[label] = secs
        print(f"{label} done in {secs:.1f}s", flush=True)
        return out

    def by_stage(self) -> list[tuple[str, int, float]]:
        """``(stage, times run, seconds in all)`` in the order the stages first ran: the labels without their
        dates and counters (``[2026-11-12] day 1/3 2/6 train`` is the loop's ``train``, ``[history
        2026-11-01] 4/14 cleanse`` the history's ``cleanse``)."""
        out: dict[str, list[float]] = {}
        for label, secs in self.seconds.items():
            m = _LABEL.match(label)
            phase, name = (m.group(1).split()[0], m.group(2)) if m else ("", label)
            phase = "loop" if phase[:1].isdigit() else phase
            key = f"{phase} {name.split(' (')[0]}".strip()
            out.setdefault(key, []).append(secs)
        return [(k, len(v), sum(v)) for k, v in out.items()]


_LABEL = re.compile(r"^\[([^\]]*)\]\s*(?:\d+ days\s+)?(?:day \d+/\d+\s+)?(?:\d+/\d+\s+)?(.*)$")


def ensure_history(
    spark: SparkSession, lake: Lake, cfg: Config, world, run_date: dt.date, progress: Progress
) -> list[dt.date]:  # type: ignore[no-untyped-def]
    """Generate and cleanse the shop's history days before ``run_date`` that the lake does not have yet."""
    from coupon_spark.cleanse import cleanse_day
    from coupon_spark.datagen.backfill import backfill_period, write_backfill
    from coupon_spark.datagen.shop import generate_day

    days = [run_date - dt.timedelta(days=i) for i in range(cfg.pipeline.history_days, 0, -1)]
    if cfg.shop.backfill_days > 0 and days:
        # the shop's past before its first logged day: one bulk import (its cleanse's run metrics mark it done)
        first, last = backfill_period(cfg.shop, days[0])
        if last not in lake.dates(tables.RUN_METRICS):
            label = f"[past {first} .. {last}] {cfg.shop.backfill_days} days"
            progress.stage(
                f"{label} generate (orders, the {cfg.shop.backfill_issue_rate:.0%}/day randomised promotion)",
                partial(write_backfill, spark, cfg, world.users, days[0]),
            )
            progress.stage(f"{label} cleanse (bulk import)", partial(cleanse_day, spark, lake, cfg, last))
    have = set(lake.dates(tables.ISSUANCES))
    missing = [d for d in days if d not in have]
    for i, day in enumerate(missing, 1):
        label = f"[history {day}] {i}/{len(missing)}"
        progress.stage(f"{label} generate (random logging policy)", partial(generate_day, spark, lake, cfg, world, day))
        progress.stage(f"{label} cleanse", partial(cleanse_day, spark, lake, cfg, day))
    return missing


def run(ctx: Context, run_date: dt.date) -> int:
    """Run the loop for ``ctx.options.days`` days from ``run_date`` (see the module docstring)."""
    from coupon_spark.cleanse import cleanse_day
    from coupon_spark.datagen.shop import World, generate_day, write_truth

    spark, cfg, lake = ctx.spark, ctx.cfg, ctx.lake
    days = max(int(ctx.options.days), 1)
    progress = Progress()
    started = time.perf_counter()
    world = World.build(spark, cfg)
    try:
        progress.stage("[setup] the synthetic shop's hidden truth", lambda: write_truth(lake, cfg, world))
        ensure_history(spark, lake, cfg, world, run_date, progress)
        for n in range(days):
            day = run_date + dt.timedelta(days=n)
            head = f"[{day}] day {n + 1}/{days}"
            for i, name in enumerate(LOOP, 1):
                if name == "train" and not _train_today(ctx, run_date, day):
                    print(f"{head} {i}/6 train: reusing the latest model (pipeline.train_every_days)")
                    continue
                rc = progress.stage(f"{head} {i}/6 {name}", partial(resolve(name), ctx, day))
                if rc:
                    print(f"{head} {name} failed with code {rc}; stopping")
                    return int(rc)  # type: ignore[call-overload]
            issued = issuances_from_allocations(lake.read(tables.ALLOCATIONS, where={"run_date": day}), day)
            progress.stage(
                f"{head} 5/6 the shop plays the day forward (allocations -> outcomes -> landing)",
                partial(generate_day, spark, lake, cfg, world, day, issuances=issued),
            )
            progress.stage(f"{head} 5/6 cleanse", partial(cleanse_day, spark, lake, cfg, day))
            progress.stage(f"{head} 6/6 evaluate", partial(resolve("evaluate"), ctx, day))
    finally:
        world.close()
    print(f"pipeline: {days} day(s) from {run_date} in {time.perf_counter() - started:.0f}s; wall time per stage:")
    for name, n, secs in progress.by_stage():
        print(f"  {name:<48} {secs:8.1f}s" + (f"  ({n} runs, {secs / n:.1f}s each)" if n > 1 else ""))
    print_policy_summary(lake, cfg, [run_date + dt.timedelta(days=n) for n in range(days)])
    print("tables:")
    for name in sorted(cfg.lake.tables):
        if lake.exists(name):
            info = lake.info(name)
            print(
                f"  {name:<20} version {info.version:<4} {info.num_rows if info.num_rows is not None else '?':>10} rows"
            )
    return 0


def print_policy_summary(lake: Lake, cfg: Config, days: list[dt.date]) -> None:
    """Day by day: the true incremental profit of each policy as a share of the oracle's, the budget use, and
    where the report is (from ``evaluation_metrics``, as the evaluate stage wrote it)."""
    if not lake.exists(tables.EVALUATION_METRICS):
        return
    rows = (
        lake.read(tables.EVALUATION_METRICS, where={"run_date": days})
        .where(
            ((F.col("section") == "policy_truth") & F.col("metric").isin("ratio_to_oracle", "true_incremental_profit"))
            | ((F.col("section") == "budget") & (F.col("metric") == "use"))
            | ((F.col("section") == "model") & (F.col("metric") == "registry_validation.auc"))
            | ((F.col("section") == "model") & (F.col("metric") == "decision_gate.open"))
        )
        .select("run_date", "section", "metric", "dimension_value", "value")
        .collect()
    )
    if not rows:
        return
    print("policy value (true incremental profit, EUR; share of the oracle's at the same budgets):")
    for day in days:
        got = [r for r in rows if r["run_date"] == day]
        if not got:
            continue
        ratio = {
            r["dimension_value"]: r["value"]
            for r in got
            if r["metric"] == "ratio_to_oracle" and r["value"] is not None and r["value"] == r["value"]
        }
        profit = {r["dimension_value"]: r["value"] for r in got if r["metric"] == "true_incremental_profit"}
        parts = [f"{k} {profit.get(k) or 0:,.0f} ({ratio[k]:.1%})" for k in sorted(ratio, key=ratio.__getitem__)[::-1]]
        use = [
            f"{r['dimension_value']} {r['value']:.1%}" for r in got if r["metric"] == "use" and r["value"] is not None
        ]
        auc = [
            r["value"] for r in got if r["metric"] == "registry_validation.auc" and r["dimension_value"] == "purchase"
        ]
        gate = [r["value"] for r in got if r["metric"] == "decision_gate.open"]
        if "exploration" in profit:
            parts.append(f"exploration arm {profit['exploration'] or 0:,.0f}")
        print(f"  {day}: " + ", ".join(parts))
        print(
            f"  {'':10}  budget use: {', '.join(use) or '-'}"
            + (f"; model AUC {auc[0]:.3f}" if auc else "")
            + (f"; decision gate {'open' if gate[0] else 'closed'}" if gate else "")
        )
    from coupon_spark.evaluation.job import report_dir

    print(f"report: {report_dir(cfg, days[-1])}/index.html")


def _train_today(ctx: Context, first_day: dt.date, day: dt.date) -> bool:
    """Train on the first day, then every ``pipeline.train_every_days`` days (0: only while no model exists)."""
    from coupon_spark.model.registry import ModelNotFoundError

    try:
        ctx.registry.latest(ctx.cfg.train.model_name)
    except ModelNotFoundError:
        return True
    every = ctx.cfg.pipeline.train_every_days
    return every > 0 and (day - first_day).days % every == 0
