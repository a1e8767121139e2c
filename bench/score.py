"""Scoring throughput, as ratios against baselines measured in the same run.

- ``score_job_vs_numpy_kernel``: the Spark job's users/s (mapInPandas over a cached DataFrame, all cores) over
  the bare numpy kernel's users/s on the same users and cores (one process per core; goal >= 0.5).
- ``score_job_vs_row_udf``: the job's users/s over a row-at-a-time Python UDF doing the same work for each
  user, timed on a sample (goal >= 30).
- ``--big``: a run with 10M users x 200 coupons: users/s/core, peak memory (driver JVM + Python workers,
  sampled), and the extrapolated time for 300M users on a cluster of a given number of cores.

    python bench/score.py [--users 1000000] [--coupons 200] [--big] [--cluster-cores 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Spark starts each Python worker with OMP_NUM_THREADS = spark.task.cpus (1): the kernel baseline gets the same
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pandas as pd
import psutil
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType

from coupon_spark.config import ScoreConfig, SparkConfig
from coupon_spark.model.network import build_model, export_weights
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.policy import prepare_coupons
from coupon_spark.scoring import score_chunk, score_users, top_candidates
from coupon_spark.session import build_spark_session

N_NUMERIC = 24
SEGMENTS = ["new", "regular", "vip", "dormant"]


def make_scorer(n_coupons: int) -> NumpyScorer:
    stats = [
        {"feature": f"uf_x{i:02d}", "kind": "numeric", "transform": "standard", "center": 0.0, "scale": 1.0}
        for i in range(N_NUMERIC)
    ]
    stats += [
        {"feature": "uf_avg_basket_90d", "kind": "numeric", "transform": "log1p_standard", "center": 3.5, "scale": 1},
        {"feature": "uc_segment", "kind": "categorical", "transform": "onehot", "vocabulary": SEGMENTS},
        {"feature": "cf_face_value", "kind": "numeric", "transform": "standard", "center": 10.0, "scale": 5.0},
        {"feature": "cf_min_spend", "kind": "numeric", "transform": "standard", "center": 40.0, "scale": 20.0},
        {"feature": "cf_cost", "kind": "numeric", "transform": "standard", "center": 10.0, "scale": 5.0},
    ]
    t = FeatureTransform.from_stats(stats)
    spec = ModelSpec(
        user_dim=t.user_dim,
        coupon_dim=t.coupon_dim,
        embedding_dim=16,
        hidden_units=[64],
        id_embedding_dim=8,
        user_id_buckets=16384,
        coupon_ids=[f"c{j:04d}" for j in range(n_coupons)],
    )
    return NumpyScorer(spec, t, export_weights(build_model(spec, seed=1)))


def coupons_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    face = rng.choice([5.0, 10.0, 15.0, 20.0], n)
    return pd.DataFrame(
        {
            "coupon_id": [f"c{j:04d}" for j in range(n)],
            "campaign_id": [f"camp{j % 10}" for j in range(n)],
            "cf_face_value": face,
            "cf_min_spend": face * rng.choice([2.0, 3.0, 4.0], n),
            "cf_cost": face,
        }
    )


def users_frame(spark: SparkSession, n: int, partitions: int) -> DataFrame:
    i = F.col("id")
    cols = [F.concat(F.lit("u"), i.cast("string")).alias("user_id")]
    cols += [(F.hash(i, F.lit(k)) % 1000 / 500.0).alias(f"uf_x{k:02d}") for k in range(N_NUMERIC)]
    cols += [
        (F.abs(F.hash(i, F.lit("b"))) % 120 + 5).cast("double").alias("uf_avg_basket_90d"),
        F.element_at(F.array(*[F.lit(s) for s in SEGMENTS]), (F.abs(F.hash(i)) % 4 + 1).cast("int")).alias(
            "uc_segment"
        ),
    ]
    return spark.range(0, n, numPartitions=partitions).select(*cols)


class PeakMemory:
    """Samples the RSS of this process tree (driver JVM and Python workers) every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_KERNEL: tuple = ()


def _init_kernel(scorer: NumpyScorer, coupons, cfg: ScoreConfig) -> None:  # type: ignore[no-untyped-def]
    global _KERNEL
    _KERNEL = (scorer, coupons, cfg)


def _kernel(pdf: pd.DataFrame) -> int:
    scorer, coupons, cfg = _KERNEL
    rows = 0
    for s in range(0, len(pdf), cfg.batch_rows):
        rows += len(top_candidates(pdf.iloc[s : s + cfg.batch_rows], scorer, coupons, cfg).rows)
    return rows


def time_job(df: DataFrame, scorer: NumpyScorer, coupons, cfg: ScoreConfig) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = score_users(df, scorer, coupons, cfg)
    rows = out.agg(F.count("*")).first()[0]  # type: ignore[index]
    return time.perf_counter() - started, int(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--coupons", type=int, default=200)
    ap.add_argument("--row-sample", type=int, default=2000, help="users timed through the row-at-a-time UDF")
    ap.add_argument("--big", action="store_true", help="also run 10M users")
    ap.add_argument("--big-users", type=int, default=10_000_000)
    ap.add_argument("--cluster-cores", type=int, default=512, help="cluster size for the 300M extrapolation")
    args = ap.parse_args()

    spark = build_spark_session(
        SparkConfig(
            master="local[*]",
            shuffle_partitions=4,
            driver_memory="4g",
            arrow_batch_size=10000,
            conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        )
    )
    cores = spark.sparkContext.defaultParallelism
    scorer = make_scorer(args.coupons)
    cfg = ScoreConfig(top_k=10, frequency_cap=10**9, batch_rows=4096)
    coupons = prepare_coupons(coupons_frame(args.coupons), scorer, cfg)
    users = users_frame(spark, args.users, cores * 4).cache()
    n = users.count()
    print(f"users: {n:,}, coupons: {args.coupons}, top_k: {cfg.top_k}, cores: {cores}")

    # 1. the bare numpy kernel on the same cores: one process per core, users pulled to pandas first (untimed)
    pdf = users.limit(min(n, 100_000 * cores)).toPandas()
    parts = np.array_split(np.arange(len(pdf)), cores)
    with ProcessPoolExecutor(cores, initializer=_init_kernel, initargs=(scorer, coupons, cfg)) as pool:
        list(pool.map(_kernel, [pdf.iloc[:100]] * cores))  # warm up: the processes hold the weights
        started = time.perf_counter()
        list(pool.map(_kernel, [pdf.iloc[p] for p in parts]))
        kernel_ups = len(pdf) / (time.perf_counter() - started)

    # 2. the Spark job (best of two; the first also warms the Python workers)
    job_secs = min(time_job(users, scorer, coupons, cfg)[0] for _ in range(2))
    job_ups = n / job_secs

    # 3. a row-at-a-time Python UDF doing the same work per user
    bscorer = spark.sparkContext.broadcast((scorer, coupons, cfg))
    feature_cols = [c for c in users.columns if c != "user_id"]

    @F.udf(ArrayType(StringType()))
    def per_row(user_id, *vals):  # type: ignore[no-untyped-def]
        sc, cp, c = bscorer.value
        row = pd.DataFrame([[user_id, *vals]], columns=["user_id", *feature_cols])
        return score_chunk(row, sc, cp, c)["coupon_id"].tolist()

    sample = users.limit(args.row_sample).cache()
    sample.count()
    started = time.perf_counter()
    sample.select(per_row("user_id", *feature_cols).alias("top")).agg(F.count("*")).first()
    row_ups = args.row_sample / (time.perf_counter() - started)

    print(f"numpy_kernel_users_per_s ({cores} processes): {kernel_ups:,.0f}")
    print(f"score_job_users_per_s ({cores} cores): {job_ups:,.0f}  ({job_ups / cores:,.0f} per core)")
    print(f"row_udf_users_per_s ({cores} cores): {row_ups:,.0f}")
    print(f"score_job_vs_numpy_kernel: {job_ups / kernel_ups:.2f}")
    print(f"score_job_vs_row_udf: {job_ups / row_ups:.1f}")
    users.unpersist()

    if args.big:
        big = users_frame(spark, args.big_users, cores * 40)
        with PeakMemory() as mem:
            started = time.perf_counter()
            out = score_users(big, scorer, coupons, cfg)
            with tempfile.TemporaryDirectory() as tmp:
                out.write.format("noop").mode("overwrite").save(tmp)
            secs = time.perf_counter() - started
        ups_core = args.big_users / secs / cores
        hours = 300e6 / (ups_core * args.cluster_cores) / 3600
        print(
            f"big_run: {args.big_users:,} users x {args.coupons} coupons in {secs:.0f}s: "
            f"{ups_core:,.0f} users/s/core, peak memory {mem.peak / 2**30:.2f} GiB (driver + workers)"
        )
        print(
            f"extrapolated: 300M users on {args.cluster_cores} cores: {hours * 60:.1f} min "
            "(scoring only; linear in users, no shuffle)"
        )
    spark.stop()


if __name__ == "__main__":
    main()
