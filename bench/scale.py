"""Scale run: features -> score -> allocate for millions of users on this machine, and an extrapolation.

The silver tables are made directly with Spark expressions in the silver schemas (not through the landing files
and the cleansing job, which bench/cleanse.py measures) and written to a real Delta lake under ``--out``: one
users snapshot, a 200-coupon catalogue of 10 campaigns, ``--days`` days of events and orders, and one day of
logged issuances (the previous day's decisions) with their redemptions. Then the project's stages run as the
daily job runs them, each timed, with the peak memory of the process tree sampled every 0.5 s:

1. ``features`` for the run date (:func:`coupon_spark.features.build_features`): the user snapshot of every
   user, the coupon snapshot, the feature statistics and the training examples of yesterday's issuances; it also
   backfills yesterday's snapshot, which those examples need (one window pass computes both). With
   ``--prev-day`` yesterday's build runs first (``features_prev``) and the run date's is the steady state of a
   daily job: one snapshot.
2. A model is published to the registry untrained (freshly initialised weights of the architecture ``train.*``
   describes: ``train.heads`` heads, pair features, and ``--fold-models`` fold models that
   ``score.pool_fold_models`` pools, as a trained version with its decision gate has), so that
   ``score`` runs its real path: every user against every live coupon, top ``score.top_k``
   (:func:`coupon_spark.scoring.run`, the ``coupon-spark score`` stage, candidates written to Delta).
3. ``allocate`` (:func:`coupon_spark.allocation.run`, the ``coupon-spark allocate`` stage: Lagrangian dual
   over the candidates, allocations and run summary written to Delta, channel export) at each overall budget
   of ``--budgets`` (shares of the unconstrained expected spend: every user's best candidate), with the
   catalogue's paced budgets of two of the 10 campaigns and a coupon-count budget on a third beside it.

Printed per stage: wall seconds, users/s/core (users / seconds / local cores) and the peak memory (RSS; PSS
for the Python workers, so the pages the forks share are counted once) of the JVM (driver and executor in local
mode), this Python driver and the Python workers together; then the extrapolation to ``--target-users`` on the
stated cluster, and machine-readable lines ``scale_<stage>_users_per_s_per_core: <x>``.

Extrapolation assumptions (printed with the figures): every stage scales linearly in users per core (the
features' shuffles and window sort are per user, scoring is a map over users, the allocator's passes are maps
over candidate blocks with a fixed number of passes), at ``--efficiency`` of this machine's per-core rate (the
network shuffle, skew, stragglers and the allocator's per-pass driver round trips); the history per user is as
here (``--days`` days: a year of history makes the features' per-user work larger, not the other stages');
memory fits when the peak per core here, with ``users / cores`` users per core, is below the cluster's
memory per core.

    python bench/scale.py [--users 200000] [--days 3] [--views 1.0] [--budgets 0.1,0.3,0.6]
    python bench/scale.py --users 2000000     # 42 min on this 2-core machine, loaded (README, Benchmarks)

The whole daily job runs at ~500 users/s/core here (features ~1,100, score ~1,000 with the default model of 5
heads x 4 pooled models, allocate ~9,000), so ``--users 10000000`` takes ~3 h on 2 cores; its allocation would
hold ~5 GiB in the Python workers' block caches (~0.04 GiB per million candidates) beside the JVM's heap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from coupon_spark import tables
from coupon_spark.allocation import run as allocate_stage
from coupon_spark.config import AllocationConfig, Config
from coupon_spark.features import build_features
from coupon_spark.lake import Lake
from coupon_spark.model.registry import Registry, write_npz
from coupon_spark.model.scorer import FOLD_WEIGHTS_FILE, WEIGHTS_FILE
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.train import load_transform, model_spec
from coupon_spark.runner import Context
from coupon_spark.schemas import COUPONS, EVENTS, ISSUANCES, ORDERS, REDEMPTIONS, USERS
from coupon_spark.scoring import run as score_stage
from coupon_spark.session import build_spark_session

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2026, 10, 1)
CATS = ["grocery", "fashion", "electronics", "home", "beauty", "sports", "toys", "books"]
KINDS = ["price_off", "free_shipping", "bonus_points"]
N_CAMPAIGNS = 10
GIB = 2**30


# ---- silver tables, generated in the silver schemas -----------------------------------------------------------


def _cast(df: DataFrame, schema: StructType) -> DataFrame:
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _pick(values: list[str], index: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (index % len(values) + 1).cast("int"))


def _user(salt: int, users: int) -> Column:
    return F.format_string("U%09d", F.pmod(F.xxhash64(F.col("id"), F.lit(salt)), F.lit(users)))


def _at(day: Column, salt: str) -> Column:
    """A timestamp on ``day`` (UTC), its second of the day a hash of the row."""
    secs = F.pmod(F.xxhash64(F.lit(salt), F.col("id")), F.lit(86400))
    return F.timestamp_seconds(F.unix_timestamp(day.cast("timestamp")) + secs)


def silver(
    spark: SparkSession, users: int, days: int, views: float, order_rate: float, issue_rate: float, coupons: int
) -> dict[tables.Table, DataFrame]:
    """The six silver tables: ``days`` days of events and orders from ``START``, issuances (a quarter of them the
    control arm) and their redemptions on the last of those days, one users snapshot before ``START``, one
    catalogue snapshot of ``coupons`` coupons valid over the whole run."""
    last = START + dt.timedelta(days=days - 1)

    def spread(n: int) -> Column:  # the day of row ``id``, spreading rows evenly over the history
        return F.date_add(F.lit(START), (F.col("id") % n).cast("int"))

    u = spark.range(users).select(
        F.format_string("U%09d", "id").alias("user_id"),
        F.date_sub(F.lit(START), (F.col("id") % 700).cast("int")).alias("signup_date"),
        _pick(["DE", "FR", "GB", "US"], F.col("id")).alias("region"),
        F.lit("city").alias("city"),
        _pick(["ios", "android", "web"], F.col("id")).alias("device"),
        _pick(["new", "regular", "vip"], F.col("id")).alias("segment"),
        F.lit(dt.datetime(2026, 9, 30)).alias("updated_at"),
        F.lit(START - dt.timedelta(days=1)).alias("valid_from"),  # one version per user: the type-2 dimension
        F.lit(None).cast("date").alias("valid_to"),
    )
    n_orders = int(users * days * order_rate)
    o = spark.range(n_orders).select(
        F.format_string("O%011d", "id").alias("order_id"),
        _user(0, users).alias("user_id"),
        _at(spread(days), "o").alias("ordered_at"),
        _pick(CATS, F.col("id")).alias("category"),
        (F.pmod(F.col("id") * 7919, F.lit(15000)) / 100 + 5).alias("amount_eur"),
        F.lit(0).alias("discount_eur"),
        F.lit(None).cast("string").alias("coupon_id"),
        (F.col("id") % 4 + 1).alias("n_items"),
        F.lit("EUR").alias("source_currency"),
        F.lit(None).cast("timestamp").alias("updated_at"),
        spread(days).alias("ingest_date"),
    )
    n_events = int(users * days * views)
    e = spark.range(n_events).select(
        F.format_string("E%012d", "id").alias("event_id"),
        _pick(["view", "view", "view", "cart"], F.col("id")).alias("event_type"),
        _user(1, users).alias("user_id"),
        _at(spread(days), "e").alias("event_time"),
        F.format_string("S%d", (F.col("id") / 4).cast("long")).alias("session_id"),
        F.format_string("P%d", F.col("id") % 5000).alias("product_id"),
        _pick(CATS, F.col("id") / 7).alias("category"),
        (F.pmod(F.col("id") * 31, F.lit(9000)) / 100 + 1).alias("price_eur"),
        F.lit(None).cast("string").alias("order_id"),
        spread(days).alias("ingest_date"),
    )
    n_iss = int(users * issue_rate)
    control = F.col("id") % 4 == 0
    i = spark.range(n_iss).select(
        F.format_string("I%011d", "id").alias("issuance_id"),
        _user(2, users).alias("user_id"),
        F.when(control, F.lit(None)).otherwise(F.format_string("C%03d", F.col("id") % coupons)).alias("coupon_id"),
        _at(F.lit(last), "i").alias("issued_at"),
        F.lit("random_v1").alias("policy"),
        F.when(control, F.lit(0.25)).otherwise(F.lit(0.75 / coupons)).alias("propensity"),
        F.lit(last).alias("ingest_date"),
    )
    # a tenth of the coupons issued are redeemed, two hours later, on an order of the same day
    r = i.where(F.col("coupon_id").isNotNull() & (F.pmod(F.xxhash64("issuance_id"), F.lit(10)) == 0)).select(
        F.concat(F.lit("R"), F.col("issuance_id")).alias("redemption_id"),
        "issuance_id",
        "user_id",
        "coupon_id",
        F.lit(None).cast("string").alias("order_id"),
        F.least(F.col("issued_at") + F.expr("INTERVAL 2 HOURS"), F.lit(dt.datetime.combine(last, dt.time(23, 59))))
        .cast("timestamp")
        .alias("redeemed_at"),
        F.lit(5).alias("discount_eur"),
        "ingest_date",
    )
    face = _pick(["5", "10", "15", "20"], F.col("id")).cast("double")
    c = spark.range(coupons).select(
        F.format_string("C%03d", "id").alias("coupon_id"),
        F.format_string("K%02d", F.col("id") % N_CAMPAIGNS).alias("campaign_id"),
        _pick(KINDS, F.col("id") / N_CAMPAIGNS).alias("kind"),
        _pick(CATS, F.col("id") / 3).alias("category"),
        face.alias("face_value_eur"),
        (face * (F.col("id") / 4 % 3 + 2).cast("int")).alias("min_spend_eur"),
        face.alias("cost_eur"),
        F.lit(START - dt.timedelta(days=5)).alias("valid_from"),
        F.lit(last + dt.timedelta(days=30)).alias("valid_to"),
        # the last two campaigns have a catalogue budget of 0.3 EUR per user (paced over their 30 days left: ~10
        # EUR per 1,000 users a day); the others none
        F.when(F.col("id") % N_CAMPAIGNS >= N_CAMPAIGNS - 2, F.lit(round(users * 0.3, 2)))
        .otherwise(F.lit(0))
        .alias("campaign_budget_eur"),
        F.lit(dt.datetime(2026, 9, 25)).alias("updated_at"),
        F.lit(START).alias("ingest_date"),
    )
    return {
        tables.USERS: _cast(u, USERS),
        tables.COUPONS: _cast(c, COUPONS),
        tables.EVENTS: _cast(e, EVENTS),
        tables.ORDERS: _cast(o, ORDERS),
        tables.ISSUANCES: _cast(i, ISSUANCES),
        tables.REDEMPTIONS: _cast(r, REDEMPTIONS),
    }


# ---- memory of the process tree -------------------------------------------------------------------------------


class MemorySampler:
    """Samples, every ``interval`` seconds in a thread, the memory of this process and its descendants: the JVM
    (``java``: driver and executor in local mode), this Python driver, and the rest (the Python workers Spark
    forks: ``pyspark.daemon`` and its children). The workers' PSS (the pages a fork shares with the daemon
    counted once), the JVM's and the driver's RSS (reading a 10 GiB JVM's ``smaps_rollup`` takes ~0.2 s of
    kernel time, too much to sample every 0.5 s on 2 cores; they share next to nothing). :meth:`stage` records
    the peaks of each group, and of their sum, while a stage runs."""

    GROUPS = ("jvm", "driver", "workers", "total")

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peaks: dict[str, dict[str, int]] = {}
        self._current: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._me = psutil.Process()

    def sample(self) -> dict[str, int]:
        out = dict.fromkeys(self.GROUPS, 0)
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                group = "driver" if p.pid == self._me.pid else "jvm" if "java" in p.name() else "workers"
                size = _pss(p) if group == "workers" else int(p.memory_info().rss)
            except psutil.Error:
                continue  # a worker that just exited
            out[group] += size
        out["total"] = out["jvm"] + out["driver"] + out["workers"]
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            current = self._current
            if current is not None:
                for k, v in self.sample().items():
                    current[k] = max(current[k], v)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peaks = self.peaks.setdefault(name, dict.fromkeys(self.GROUPS, 0))
        for k, v in self.sample().items():
            peaks[k] = max(peaks[k], v)
        self._current = peaks
        try:
            yield
        finally:
            self._current = None

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pss(p: psutil.Process) -> int:
    """Proportional set size from ``/proc/<pid>/smaps_rollup`` (cheap, unlike the full ``smaps``), else RSS."""
    try:
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(p.memory_info().rss)


# ---- an untrained model in the registry ------------------------------------------------------------------------


def _initial_weights(spec_json: str, seeds: list[int]) -> list[dict[str, np.ndarray]]:
    """Freshly initialised weights of ``spec`` for each seed (in a child process: TensorFlow stays out of the
    driver whose memory is measured)."""
    from coupon_spark.model.network import build_model, export_weights

    spec = ModelSpec.from_json(spec_json)
    return [export_weights(build_model(spec, seed=s)) for s in seeds]


def publish_untrained(ctx: Context, run_date: dt.date, coupon_ids: list[str], folds: int) -> str:
    """Publish a version of ``train.model_name`` trained for ``run_date`` with initial weights: the
    architecture of ``train.*`` over the run date's feature statistics, and ``folds`` fold models (the decision
    gate's ensemble, which ``score.pool_fold_models`` pools). Returns what it published."""
    cfg = ctx.cfg
    transform, _ = load_transform(ctx.lake, run_date)
    spec = model_spec(cfg, transform, coupon_ids)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        weights = pool.submit(_initial_weights, spec.to_json(), list(range(1 + folds))).result()
    registry, name = Registry.from_config(cfg), cfg.train.model_name
    version = registry.new_version(name)
    uri = registry.version_uri(name, version)
    write_npz(f"{uri}/{WEIGHTS_FILE}", weights[0])
    if folds:
        write_npz(
            f"{uri}/{FOLD_WEIGHTS_FILE}", {f"{k}/{n}": a for k, w in enumerate(weights[1:]) for n, a in w.items()}
        )
    registry.write_json(name, version, "spec.json", json.loads(spec.to_json()))
    registry.write_json(name, version, "transform.json", json.loads(transform.to_json()))
    registry.write_json(name, version, "manifest.json", {"version": version, "run_date": run_date, "untrained": 1})
    registry.advance_latest(name, version)
    return (
        f"{name}/{version}: untrained, {spec.heads} head(s) x {1 + folds} model(s) pooled, hidden {spec.hidden_units}, "
        f"embedding {spec.embedding_dim}, pair features {spec.pair_dim}, user dim {spec.user_dim}, "
        f"{len(coupon_ids)} coupon ids"
    )


# ---- the run ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    name: str
    users: int
    seconds: float
    note: str = ""


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=3, help="days of events and orders before the run date")
    ap.add_argument("--views", type=float, default=1.0, help="events per user and day")
    ap.add_argument("--orders", type=float, default=0.1, help="orders per user and day")
    ap.add_argument("--issue-rate", type=float, default=0.3, help="issuances per user on the day before the run")
    ap.add_argument("--coupons", type=int, default=200, help="live coupons")
    ap.add_argument(
        "--fold-models", type=int, default=-1, help="fold models pooled by the scorer (-1: train.gate_folds)"
    )
    ap.add_argument(
        "--budgets", default="0.1,0.3,0.6", help="overall budgets to allocate at, as shares of the unconstrained spend"
    )
    ap.add_argument(
        "--prev-day",
        action="store_true",
        help="build the day before's features first (untimed in the daily figure): the run date's build is then "
        "the steady state (1 snapshot); without it, it also backfills the day before's snapshot",
    )
    ap.add_argument("--driver-memory", default="8g", help="the local JVM's heap (driver and executor)")
    ap.add_argument("--users-per-partition", type=int, default=250_000, help="sets spark.sql.shuffle.partitions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"), help="the lake (and Spark's scratch) go under it")
    ap.add_argument("--keep", action="store_true", help="keep the lake")
    ap.add_argument("--target-users", type=int, default=300_000_000)
    ap.add_argument("--executors", type=int, default=50)
    ap.add_argument("--executor-cores", type=int, default=16)
    ap.add_argument("--executor-memory-gib", type=int, default=64)
    ap.add_argument("--efficiency", type=float, default=0.6, help="cluster per-core rate / this machine's")
    args = ap.parse_args()

    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"scale-{args.users}-", dir=args.out))
    partitions = max(4, math.ceil(args.users / args.users_per_partition))
    cfg = Config.from_file(
        ROOT / "conf" / "local.yaml",
        overrides=[f"lake.root={work / 'lake'}", f"spark.shuffle_partitions={partitions}"],
    )
    folds = cfg.train.gate_folds if args.fold_models < 0 else args.fold_models
    folds = folds if folds > 1 and cfg.score.pool_fold_models else 0
    spark_cfg = dataclasses.replace(
        cfg.spark,
        driver_memory=args.driver_memory,
        conf={**cfg.spark.conf, "spark.local.dir": str(work / "spark-local")},
    )
    spark = build_spark_session(spark_cfg, cfg.lake)
    spark.sparkContext.setLogLevel("ERROR")
    cores = spark.sparkContext.defaultParallelism
    ctx = Context(spark, cfg)
    lake: Lake = ctx.lake
    run_date = START + dt.timedelta(days=args.days)
    yesterday = run_date - dt.timedelta(days=1)
    print(
        f"scale run: {args.users:,} users, {args.days} days of history, {args.coupons} coupons, run date {run_date}; "
        f"local[{cores}], driver memory {args.driver_memory}, shuffle partitions {partitions}, "
        f"backend {type(lake.backend).__name__}; lake {work / 'lake'}"
    )
    stages: list[Stage] = []
    try:
        with MemorySampler() as mem:
            started = time.perf_counter()
            built = silver(spark, args.users, args.days, args.views, args.orders, args.issue_rate, args.coupons).items()
            with mem.stage("silver"):
                rows = {t.name: lake.write(df, t, mode="overwrite").num_rows for t, df in built}
            secs = time.perf_counter() - started
            print(f"silver tables written in {secs:.0f}s: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
            stages.append(Stage("silver", args.users, secs, f"{sum(rows.values()):,} rows (setup, not a stage)"))

            days = [yesterday, run_date] if args.prev_day else [run_date]
            for day in days:
                name = "features" if day == run_date else "features_prev"
                with mem.stage(name):
                    started = time.perf_counter()
                    summary = build_features(spark, lake, cfg, day)
                    secs = time.perf_counter() - started
                print(f"features {day}: snapshots {[str(d) for d in summary.snapshots]}, {secs:.0f}s")
                for t, s in summary.seconds.items():
                    print(f"  {t:<26} {s:>7.1f}s  {summary.rows[t]:>12,} rows")
                what = "training examples" if summary.issue_dates else "no training examples"
                n_snap = len(summary.snapshots)
                stages.append(Stage(name, args.users, secs, f"{n_snap} snapshot{'s' if n_snap > 1 else ''}, {what}"))

            coupon_ids = sorted(r[0] for r in lake.read(tables.COUPONS).select("coupon_id").collect())
            print("model:", publish_untrained(ctx, run_date, coupon_ids, folds))

            with mem.stage("score"):
                started = time.perf_counter()
                score_stage(ctx, run_date)
                secs = time.perf_counter() - started
            cand = lake.read(tables.CANDIDATES, where={"run_date": run_date})
            # the budgets' scale: what giving every user their best candidate with a positive profit would cost
            n_cand, free = cand.agg(
                F.count("*"),
                F.sum(F.when((F.col("rank") == 1) & (F.col("expected_profit") > 0), F.col("expected_cost"))),
            ).first()  # type: ignore[misc]
            free = float(free or 0.0)
            print(f"unconstrained expected spend (every user's best positive candidate): {free:,.0f} EUR")
            stages.append(Stage("score", args.users, secs, f"{n_cand:,} candidates"))

            for level in [float(b) for b in args.budgets.split(",")]:
                amount = round(level * free, 2)
                acfg = dataclasses.replace(
                    cfg.allocation,
                    budget=AllocationConfig.Limit(amount=amount),
                    campaign_budgets={"K00": AllocationConfig.Limit(count=args.users // 1000)},
                )
                name = f"allocate_{level * 100:.0f}pct"
                with mem.stage(name):
                    started = time.perf_counter()
                    allocate_stage(Context(spark, dataclasses.replace(cfg, allocation=acfg)), run_date)
                    secs = time.perf_counter() - started
                stages.append(Stage(name, args.users, secs, f"overall budget {amount:,.0f} EUR"))
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    report(args, cores, stages, mem.peaks)


def report(args: argparse.Namespace, cores: int, stages: list[Stage], peaks: dict[str, dict[str, int]]) -> None:
    cluster_cores = args.executors * args.executor_cores
    per_core_gib = args.executor_memory_gib / args.executor_cores
    print(
        f"\n{'stage':<16} {'seconds':>8} {'users/s/core':>13} {'JVM':>6} {'py drv':>6} {'py wrk':>6} {'total':>6}  GiB"
    )
    for s in stages:
        p = peaks[s.name]
        ups = s.users / s.seconds / cores
        print(
            f"{s.name:<16} {s.seconds:>8.0f} {ups:>13,.0f} {_gib(p['jvm']):>6} {_gib(p['driver']):>6} "
            f"{_gib(p['workers']):>6} {_gib(p['total']):>6}  {s.note}"
        )
    pipeline = [s for s in stages if s.name in ("features", "score") or s.name.startswith("allocate")]
    allocs = [s for s in pipeline if s.name.startswith("allocate")]
    daily = [s for s in pipeline if s.name in ("features", "score")] + allocs[:1]
    total = sum(s.seconds for s in daily)
    peak = max(peaks[s.name]["total"] for s in pipeline)
    print(
        f"daily job (features, score, one allocation): {total:.0f}s, {args.users / total / cores:,.0f} users/s/core; "
        f"peak memory {_gib(peak)} GiB ({_gib(peak // cores)} GiB per core, {args.users // cores:,} users per core)"
    )

    rate = args.efficiency * cluster_cores
    print(
        f"\nextrapolation to {args.target_users:,} users on {args.executors} executors x {args.executor_cores} cores x "
        f"{args.executor_memory_gib} GiB ({cluster_cores} cores, {per_core_gib:.0f} GiB per core), efficiency "
        f"{args.efficiency:g}:"
    )
    minutes = 0.0
    for s in daily:
        m = args.target_users / (s.users / s.seconds / cores * rate) / 60
        minutes += m
        print(f"  {s.name:<16} {m:6.1f} min")
    print(f"  {'daily job':<16} {minutes:6.1f} min")
    users_per_core = args.target_users / cluster_cores
    print(
        f"  memory: {users_per_core:,.0f} users per core there vs {args.users / cores:,.0f} here; here the peak was "
        f"{_gib(peak // cores)} GiB per core, the cluster has {per_core_gib:.0f} GiB per core (the JVM's part grows "
        f"to the heap it is given, {args.driver_memory} here, before it collects: an upper bound of its need)"
    )
    print(
        "  assumptions: linear in users per core at the given efficiency of this machine's per-core rate "
        "(shuffles over the network, skew, stragglers, the allocator's per-pass driver round trips); the same "
        f"history per user ({args.days} days here: a year makes the features' per-user work larger); a partition "
        "size like here (memory per task stays as here; more users per executor means more partitions, not larger "
        "ones); the allocator's passes as here (their number does not grow with users)"
    )
    print()
    for s in stages:
        if s.name != "silver":
            print(f"scale_{s.name}_users_per_s_per_core: {s.users / s.seconds / cores:.0f}")
    print(f"scale_daily_users_per_s_per_core: {args.users / total / cores:.0f}")
    print(f"scale_peak_memory_gib: {peak / GIB:.2f}")
    print(f"scale_extrapolated_{args.target_users // 1_000_000}m_minutes: {minutes:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    main()
