"""Training throughput with 1 and 2 Horovod ranks on this machine, and the time spent in allreduce.

Writes a synthetic ``training_examples`` table (the contract's columns, random features) to a temporary
lakehouse on a local Spark, then for each rank count runs, through ``horovod.spark.run``:

1. the real training loop (:func:`coupon_spark.model.loop.fit`) on each rank's shard: global examples/s
   over the epochs after the first (the first one traces the step function);
2. a step micro-benchmark on the same model: a step with ``hvd.DistributedGradientTape`` (gradient +
   allreduce + update), a step with a plain tape (no allreduce), and the allreduce of the gradients alone
   (``hvd.grouped_allreduce``), each the median over ``--steps`` steps. "tape - plain" is the time the
   allreduce adds to a step, and its share of the step.

Usage:
    python bench/train.py                     # 60k examples, batch 512 per rank, 1 and 2 ranks
    python bench/train.py --rows 5000 --epochs 2 --steps 20   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np
import pandas as pd

from coupon_spark.config import LakeConfig, SparkConfig, TrainConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.model.data import make_examples, read_files, snapshot_files, split_files
from coupon_spark.model.spec import ModelSpec
from coupon_spark.model.train import RANK_ENV, RankTask
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.schemas import TRAINING_EXAMPLES_KEYS
from coupon_spark.session import build_spark_session

N_NUMERIC = 24
COUPONS = [f"c{k:02d}" for k in range(12)]


def synthetic_examples(n: int, seed: int = 0) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Random rows of the training-examples contract with 24 numeric user features, one categorical user
    feature and two coupon features, and their feature statistics."""
    rng = np.random.default_rng(seed)
    day0 = dt.date(2026, 11, 1)
    control = rng.random(n) < 0.25
    coupon = np.where(control, None, rng.choice(COUPONS, n))
    pdf = pd.DataFrame(
        {
            "issue_date": [day0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 4, n)],
            "issuance_id": [f"i{k}" for k in range(n)],
            "user_id": [f"u{k}" for k in rng.integers(0, n // 3 + 1, n)],
            "coupon_id": coupon,
            "campaign_id": np.where(control, None, "k1"),
            "issued_at": [dt.datetime(2026, 11, 1, 9)] * n,
            "policy": "random",
            "propensity": np.where(control, 0.25, 0.75 / len(COUPONS)),
            "purchased": (rng.random(n) < 0.3).astype(int),
            "redeemed": (rng.random(n) < 0.1).astype(int) * (~control),
            "revenue_eur": 0.0,
            "coupon_cost_eur": 0.0,
            "outcome_window_days": 7,
        }
    )
    for j in range(N_NUMERIC):
        pdf[f"uf_x{j:02d}"] = rng.normal(size=n)
    pdf["uc_segment"] = rng.choice(["a", "b", "c", "d"], n)
    pdf["cf_value"] = np.where(control, 0.0, rng.choice([5.0, 10.0, 20.0], n))
    pdf["cc_kind"] = np.where(control, "none", rng.choice(["abs", "pct"], n))
    stats: list[dict[str, Any]] = [
        {"feature": f"uf_x{j:02d}", "transform": "standard", "center": 0.0, "scale": 1.0} for j in range(N_NUMERIC)
    ]
    stats += [
        {"feature": "uc_segment", "transform": "onehot", "vocabulary": ["a", "b", "c"]},
        {"feature": "cf_value", "transform": "standard", "center": 10.0, "scale": 5.0},
        {"feature": "cc_kind", "transform": "onehot", "vocabulary": ["abs", "pct"]},
    ]
    return pdf, stats


def bench_rank(task: RankTask, steps: int) -> dict[str, Any]:
    """One Horovod rank: the real loop, then the step micro-benchmark."""
    import horovod.tensorflow as hvd

    hvd.init()
    import tensorflow as tf

    from coupon_spark.model.loop import HorovodComm, batch_tensors, fit, make_optimizer
    from coupon_spark.model.network import build_model

    tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 2) // hvd.size()))
    comm = HorovodComm()
    spec = ModelSpec.from_json(task.spec_json)
    transform = FeatureTransform.from_json(task.transform_json)
    shard = make_examples(
        read_files(task.groups[comm.rank], task.columns), transform, spec, task.train.validation_share, task.train.seed
    )
    result = fit([shard], spec, task.train, comm)
    later = result.history[1:] or result.history
    loop_eps = sum(h["examples_per_second"] * h["seconds"] for h in later) / sum(h["seconds"] for h in later)

    model = build_model(spec, seed=0)
    opt = make_optimizer(task.train, task.train.learning_rate)
    b = task.train.batch_size
    idx = np.arange(b) % len(shard)
    batch = batch_tensors([shard.take(idx)], [np.ones(b)])
    var = model.trainable_variables

    @tf.function
    def local_step(x: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, normalizer=b * hvd.size())
        opt.apply_gradients(zip(tape.gradient(loss, var), var, strict=True))
        return loss

    @tf.function
    def dist_step(x: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, normalizer=b * hvd.size())
        grads = hvd.DistributedGradientTape(tape, op=hvd.Sum, sparse_as_dense=True).gradient(loss, var)
        opt.apply_gradients(zip(grads, var, strict=True))
        return loss

    @tf.function
    def allreduce_only(grads: list[tf.Tensor]) -> list[tf.Tensor]:
        return hvd.grouped_allreduce(grads, op=hvd.Sum)

    grads = [tf.convert_to_tensor(tf.zeros_like(v)) for v in var]

    def timed(fn: Any, arg: Any) -> float:
        fn(arg)  # trace / warm up
        hvd.allreduce(tf.constant(0.0), name="bench.sync")  # start together
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            out = fn(arg)
            (out[0] if isinstance(out, list) else out).numpy()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    t_local = timed(local_step, batch)
    t_dist = timed(dist_step, batch)
    t_ar = timed(allreduce_only, grads)
    return {
        "rank": comm.rank,
        "loop_examples_per_s": loop_eps,
        "step_local_s": t_local,
        "step_dist_s": t_dist,
        "allreduce_s": t_ar,
        "gradient_floats": int(sum(int(np.prod(v.shape)) for v in var)),
        "global_batch": b * hvd.size(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=60000, help="training examples")
    p.add_argument("--ranks", default="1,2", help="rank counts to run")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512, help="per rank")
    p.add_argument("--steps", type=int, default=50, help="steps per micro-benchmark")
    p.add_argument("--buckets", type=int, default=16384, help="user-id hash buckets")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import horovod.spark

    spark = build_spark_session(
        SparkConfig(
            master="local[2]",
            app_name="bench-train",
            conf={
                "spark.ui.enabled": "false",
                "spark.default.parallelism": "2",
                "spark.ui.showConsoleProgress": "false",
            },
        )
    )
    spark.sparkContext.setLogLevel("ERROR")
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    lake = Lake(
        spark,
        LakeConfig(root=f"{tmp}/lake", landing=f"{tmp}/landing", backend="bridge"),
        BridgeBackend(spark, target_file_rows=max(args.rows // 8, 1000)),
    )
    pdf, stats = synthetic_examples(args.rows)
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    extra = [
        StructField(c, StringType() if c.startswith(("uc_", "cc_")) else DoubleType())
        for c in pdf.columns
        if c.startswith(("uf_", "uc_", "cf_", "cc_"))
    ]
    schema = StructType([*TRAINING_EXAMPLES_KEYS.fields, *extra])
    cols = [
        [t.to_pydatetime() for t in pdf[f.name]] if f.name == "issued_at" else pdf[f.name].astype(object).tolist()
        for f in schema.fields
    ]
    version = lake.write(
        spark.createDataFrame(list(zip(*cols, strict=True)), schema).repartition(8),
        "training_examples",
        partition_by=["issue_date"],
    ).version
    files = snapshot_files(lake.location("training_examples"), version)
    transform = FeatureTransform.from_stats(stats)
    print(
        f"bench/train.py: {args.rows:,} examples in {len(files)} files; {os.cpu_count()} CPU cores; "
        f"batch {args.batch_size} per rank; user-id buckets {args.buckets}"
    )
    rows = []
    for n in [int(x) for x in args.ranks.split(",")]:
        tc = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=0.001,
            user_id_buckets=args.buckets,
            early_stopping_patience=args.epochs,
        )
        spec = ModelSpec(
            transform.user_dim,
            transform.coupon_dim,
            tc.embedding_dim,
            list(tc.hidden_units),
            tc.id_embedding_dim,
            tc.user_id_buckets,
            COUPONS,
        )
        task = RankTask(split_files(files, n), True, spec.to_json(), transform.to_json(), tc)
        t0 = time.perf_counter()
        res = horovod.spark.run(
            bench_rank, args=(task, args.steps), num_proc=n, use_gloo=True, env=dict(RANK_ENV), verbose=0
        )
        wall = time.perf_counter() - t0
        r0 = res[0]
        rows.append((n, r0, wall))
    print(
        f"model: {r0['gradient_floats']:,} trainable floats ({r0['gradient_floats'] * 4 / 1e6:.2f} MB of gradients "
        "per step)"
    )
    print(
        f"{'ranks':>5} {'global batch':>12} {'loop ex/s':>10} {'step (no allreduce)':>20} {'step (hvd tape)':>16} "
        f"{'allreduce only':>15} {'tape - plain':>13} {'share of step':>14} {'job wall s':>11}"
    )
    base = rows[0][1]["loop_examples_per_s"]
    for n, r, wall in rows:
        extra = r["step_dist_s"] - r["step_local_s"]  # what the allreduce adds to a training step
        share = extra / r["step_dist_s"] if r["step_dist_s"] else float("nan")
        print(
            f"{n:>5} {r['global_batch']:>12} {r['loop_examples_per_s']:>10,.0f} {r['step_local_s'] * 1e3:>17.2f} ms "
            f"{r['step_dist_s'] * 1e3:>13.2f} ms {r['allreduce_s'] * 1e3:>12.2f} ms {extra * 1e3:>10.2f} ms "
            f"{share:>14.0%} {wall:>11.1f}"
        )
    if len(rows) > 1:
        print(f"speed-up of {rows[-1][0]} ranks over {rows[0][0]}: {rows[-1][1]['loop_examples_per_s'] / base:.2f}x")
    spark.stop()


if __name__ == "__main__":
    main()
