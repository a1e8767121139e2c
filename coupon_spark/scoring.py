"""``coupon-spark score``: every user against every live coupon, in a pandas UDF with broadcast weights.

The model's numpy weights (:class:`coupon_spark.model.scorer.NumpyScorer`) and the live coupons' tower outputs
are broadcast once; each task unpacks them once (iterator-form ``mapInArrow``) and, per chunk of
``score.batch_rows`` users, runs the user tower as vectorised numpy and one matrix product against all live
coupons and the "no coupon" arm. Eligibility is applied in the same pass, and only the top-K candidates per
user (by expected incremental profit) leave the task; nothing is collected to the driver.

Candidates are ranked by the expected incremental profit of :mod:`coupon_spark.policy` (the one place of the
formula, the eligibility rules and the live-coupon rule)::

    expected_profit = uplift * margin_rate * basket_u - p_redeem * (coupon_cost_c - margin_rate * top_up_uc)

Positive values at or below the
model's decision threshold (:mod:`coupon_spark.model.gate`: what held-out randomised logs could not show to
pay) are written as 0, so the allocator issues none of them on the model's behalf; the candidates stay, for
the exploration arm and for analysts (``uplift``, ``p_redeem`` and ``expected_cost`` keep the raw estimates).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.config import Config, ScoreConfig
from coupon_spark.errors import CouponSparkError, UpstreamNotReady
from coupon_spark.lake import Lake
from coupon_spark.policy import (
    LIVE_MIN_DAYS_LEFT,
    LIVE_MIN_DAYS_SINCE_START,
    RECENT_COLUMN,
    LiveCoupons,
    mask_ineligible,
    prepare_coupons,
    purchase_value,
    redemption_cost,
)
from coupon_spark.runner import Context
from coupon_spark.schemas import CANDIDATES_SCHEMA, USER_FEATURE_PREFIXES

log = logging.getLogger(__name__)


# what a task emits (run_date and model_version are added as literals afterwards)
_TASK_DDL = (
    "user_id string, coupon_id string, campaign_id string, p_purchase double, p_purchase_none double, "
    "uplift double, p_redeem double, coupon_cost double, expected_cost double, expected_profit double, rank int"
)


class NoLiveCouponsError(CouponSparkError, ValueError):
    """No coupon can be issued on the run date (none valid, or every campaign out of budget)."""


class NoUserFeaturesError(UpstreamNotReady, ValueError):
    """The user feature snapshot of the run date is missing: run ``coupon-spark features`` first."""


def valid_today() -> Column:
    """True on the ``coupon_features`` rows whose coupon is live on the snapshot date (the rule of
    :func:`coupon_spark.policy.live_on`, as a Spark column)."""
    return (F.col("cf_days_left") >= LIVE_MIN_DAYS_LEFT) & (F.col("cf_days_since_start") >= LIVE_MIN_DAYS_SINCE_START)


def campaign_spend(redemptions: DataFrame, coupons: DataFrame, before: dt.date) -> DataFrame:
    """``(campaign_id, spent)``: what each campaign's redeemed coupons have cost the shop (EUR), counting the
    redemptions ingested before ``before``.

    A run of day D counts what was known before D, as the features do: a rerun of a past day so sees the
    budget that day saw, not one shrunk by redemptions that came later.

    Args:
        redemptions: silver ``redemptions`` (``coupon_id`` and ``ingest_date`` per redemption).
        coupons: silver ``coupons`` (``campaign_id`` and ``cost_eur`` of each coupon; one row per coupon and
            ingest date is fine).
        before: The run date.
    """
    cost = coupons.groupBy("coupon_id").agg(
        F.max("campaign_id").alias("campaign_id"), F.max(F.col("cost_eur").cast("double")).alias("unit_cost")
    )
    return (
        redemptions.where(F.col("ingest_date") < F.lit(before))
        .select("coupon_id")
        .join(cost, on="coupon_id", how="inner")
        .groupBy("campaign_id")
        .agg(F.sum("unit_cost").alias("spent"))
    )


def live_coupons(
    coupon_features: DataFrame, redemptions: DataFrame | None, coupons: DataFrame | None, run_date: dt.date
) -> DataFrame:
    """Coupons valid on the snapshot date whose campaign still had budget left before ``run_date``.

    Args:
        coupon_features: The ``coupon_features`` snapshot of the run date.
        redemptions: silver ``redemptions`` (the cost of those ingested before ``run_date`` is charged to the
            campaign), or None to skip the budget check.
        coupons: silver ``coupons`` (the cost of each redeemed coupon).
        run_date: The run date.
    """
    valid = coupon_features.where(valid_today())
    if redemptions is None or coupons is None:
        return valid
    spent = campaign_spend(redemptions, coupons, run_date).withColumnRenamed("campaign_id", "r_campaign")
    return (
        valid.join(spent, valid["campaign_id"] == spent["r_campaign"], how="left")
        .where(
            (F.col("cf_campaign_budget") <= 0) | (F.coalesce(F.col("spent"), F.lit(0.0)) < F.col("cf_campaign_budget"))
        )
        .select(*valid.columns)
    )


def with_recent_coupons(users: DataFrame, issuances: DataFrame, run_date: dt.date, days: int) -> DataFrame:
    """Add ``recent_coupons``: coupons issued to the user in the ``days`` days before ``run_date``, as known before
    it (ingested before ``run_date``: a late-arriving issuance does not change a rerun of that day)."""
    start = dt.datetime.combine(run_date - dt.timedelta(days=days), dt.time(), dt.timezone.utc)
    end = dt.datetime.combine(run_date, dt.time(), dt.timezone.utc)
    recent = (
        issuances.where(
            F.col("coupon_id").isNotNull()
            & (F.col("issued_at") >= F.lit(start))
            & (F.col("issued_at") < F.lit(end))
            & (F.col("ingest_date") < F.lit(run_date))
        )
        .groupBy("user_id")
        .agg(F.count("*").cast("int").alias(RECENT_COLUMN))
    )
    return users.join(recent, on="user_id", how="left").withColumn(
        RECENT_COLUMN, F.coalesce(F.col(RECENT_COLUMN), F.lit(0))
    )


@dataclass(frozen=True)
class TopK:
    """The candidates of a chunk as flat arrays: user ``rows[i]`` gets coupon ``cols[i]`` at ``rank[i]``."""

    rows: np.ndarray
    cols: np.ndarray
    rank: np.ndarray
    columns: dict[str, np.ndarray]  # the float64 value columns of _TASK_DDL, aligned with rows/cols


def top_candidates(users: pd.DataFrame, scorer, coupons: LiveCoupons, cfg: ScoreConfig) -> TopK:  # type: ignore[no-untyped-def]
    """The numpy kernel: towers, every user x every live coupon, eligibility, top-K per user.

    The ``[n_users, n_coupons]`` matrices stay float32; only the K kept per user are widened to float64.
    """
    n, m = len(users), len(coupons.cost)
    k = min(cfg.top_k, m)
    if k == 0 or n == 0:
        empty = np.zeros(0, np.int64)
        return TopK(empty, empty, empty.astype(np.int32), {c: np.zeros(0) for c in _VALUE_COLUMNS})
    value = purchase_value(users, cfg).astype(np.float32)
    # decisions on a lower bound (score.uncertainty_z): the ensemble's disagreement counts against an estimate
    out, profit = scorer.score_profit(
        users, coupons.frame, coupons.embeddings, value, redemption_cost(users, coupons, cfg), cfg.uncertainty_z
    )
    p, p_none, p_redeem, uplift = out["p_purchase"], out["p_purchase_none"], out["p_redeem"], out["uplift"]
    gate = scorer.decision_threshold
    if gate > 0:  # the model's decision gate: positive estimates it could not show to pay are worth nothing
        profit[(profit > 0) & (profit <= gate)] = 0.0
    ranked = mask_ineligible(profit.copy(), users, coupons, cfg)
    top = np.argpartition(-ranked, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (n, 1))
    order = np.argsort(-np.take_along_axis(ranked, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    rows = np.repeat(np.arange(n), k)
    cols = top.ravel()
    keep = np.isfinite(ranked[rows, cols])
    rows, cols = rows[keep], cols[keep]
    cost = coupons.cost[cols]
    p_r = p_redeem[rows, cols].astype(np.float64)
    return TopK(
        rows,
        cols,
        np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep],
        {
            "p_purchase": p[rows, cols].astype(np.float64),
            "p_purchase_none": p_none[rows].astype(np.float64),
            "uplift": uplift[rows, cols].astype(np.float64),
            "p_redeem": p_r,
            "coupon_cost": cost,
            "expected_cost": p_r * cost,
            "expected_profit": profit[rows, cols].astype(np.float64),
        },
    )


_VALUE_COLUMNS = [
    "p_purchase",
    "p_purchase_none",
    "uplift",
    "p_redeem",
    "coupon_cost",
    "expected_cost",
    "expected_profit",
]


def score_chunk(users: pd.DataFrame, scorer, coupons: LiveCoupons, cfg: ScoreConfig) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """:func:`top_candidates` as a pandas frame (the task output's columns, without run_date/model_version)."""
    t = top_candidates(users, scorer, coupons, cfg)
    return pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy(object)[t.rows],
            "coupon_id": coupons.frame["coupon_id"].to_numpy(object)[t.cols],
            "campaign_id": coupons.frame["campaign_id"].to_numpy(object)[t.cols],
            **t.columns,
            "rank": t.rank,
        }
    )


def _arrow_chunk(batch: pa.RecordBatch, scorer, coupons: LiveCoupons, cfg: ScoreConfig) -> pa.RecordBatch:  # type: ignore[no-untyped-def]
    """:func:`top_candidates` on an Arrow batch, answered as an Arrow batch: the string columns are gathered
    with Arrow's ``take``, so no Python string object is made per candidate."""
    t = top_candidates(batch.to_pandas(), scorer, coupons, cfg)
    ids = pa.array(coupons.frame["coupon_id"].to_numpy(object), pa.string())
    campaigns = pa.array(coupons.frame["campaign_id"].to_numpy(object), pa.string())
    rows, cols = pa.array(t.rows), pa.array(t.cols)
    return pa.RecordBatch.from_arrays(
        [
            batch.column(batch.schema.get_field_index("user_id")).take(rows),
            ids.take(cols),
            campaigns.take(cols),
            *[pa.array(t.columns[c], pa.float64()) for c in _VALUE_COLUMNS],
            pa.array(t.rank, pa.int32()),
        ],
        names=_TASK_DDL_COLUMNS,
    )


_TASK_DDL_COLUMNS = [c.strip().split(" ")[0] for c in _TASK_DDL.split(",")]


def score_users(users: DataFrame, scorer, coupons: LiveCoupons, cfg: ScoreConfig) -> DataFrame:  # type: ignore[no-untyped-def]
    """The scoring UDF over a DataFrame of users (``user_id``, ``uf_*``/``uc_*``, optional ``recent_coupons``).

    The scorer and coupons are broadcast; the iterator form unpacks them once per task.
    """
    spark = users.sparkSession
    payload = spark.sparkContext.broadcast((scorer, coupons, cfg))
    cols = ["user_id", *[c for c in users.columns if c.startswith(USER_FEATURE_PREFIXES)]]
    if RECENT_COLUMN in users.columns:
        cols.append(RECENT_COLUMN)

    def udf(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        sc, cp, c = payload.value  # once per task
        for batch in batches:
            for start in range(0, batch.num_rows, c.batch_rows):
                yield _arrow_chunk(batch.slice(start, c.batch_rows), sc, cp, c)

    return users.select(*cols).mapInArrow(udf, _TASK_DDL)


def load_scorer(cfg: Config, run_date: dt.date):  # type: ignore[no-untyped-def]
    """The registry's scorer for ``score.model_version`` (0: the newest version trained by ``run_date``, see
    :meth:`~coupon_spark.model.registry.Registry.latest_as_of`) and its version label."""
    from coupon_spark.model.registry import Registry
    from coupon_spark.model.scorer import NumpyScorer

    registry = Registry.from_config(cfg)
    name = cfg.train.model_name
    version = cfg.score.model_version or registry.latest_as_of(name, run_date)
    return NumpyScorer.load(registry.local_dir(name, version), cfg.score.pool_fold_models), f"{name}/{version}"


def build_candidates(spark: SparkSession, lake: Lake, cfg: Config, run_date: dt.date) -> tuple[DataFrame, str, int]:
    """The candidates of ``run_date`` (a lazy DataFrame), the model version and the number of live coupons."""
    if run_date not in lake.dates(tables.USER_FEATURES):
        raise NoUserFeaturesError(
            f"no user_features snapshot as of {run_date} in {lake.location(tables.USER_FEATURES)}: "
            f"run `coupon-spark features --run-date {run_date}` first"
        )
    scorer, version = load_scorer(cfg, run_date)
    if scorer.decision_threshold > 0:
        log.info(
            "model %s: decision gate %s",
            version,
            f"open above {scorer.decision_threshold:.3f} EUR"
            if np.isfinite(scorer.decision_threshold)
            else "closed (held-out logs showed no gain): no coupon is worth issuing on the model's behalf",
        )
    cf = lake.read(tables.COUPON_FEATURES, where={"as_of_date": run_date})
    live = live_coupons(
        cf,
        lake.read(tables.REDEMPTIONS) if lake.exists(tables.REDEMPTIONS) else None,
        lake.read(tables.COUPONS) if lake.exists(tables.COUPONS) else None,
        run_date,
    ).toPandas()
    if live.empty:
        raise NoLiveCouponsError(f"no coupon is valid and funded on {run_date}: nothing to score")
    coupons = prepare_coupons(live, scorer, cfg.score)
    users = lake.read(tables.USER_FEATURES, where={"as_of_date": run_date})
    if lake.exists(tables.ISSUANCES):
        users = with_recent_coupons(users, lake.read(tables.ISSUANCES), run_date, cfg.score.frequency_cap_days)
    scored = score_users(users, scorer, coupons, cfg.score)
    out = scored.withColumn("run_date", F.lit(run_date)).withColumn("model_version", F.lit(version))
    return out.select(*[F.col(f.name).cast(f.dataType) for f in CANDIDATES_SCHEMA.fields]), version, len(live)


def run(ctx: Context, run_date: dt.date) -> int:
    """``coupon-spark score``: write the candidates of the run date (a rerun replaces them)."""
    spark, cfg, lake = ctx.spark, ctx.cfg, ctx.lake
    started = time.perf_counter()
    candidates, version, n_live = build_candidates(spark, lake, cfg, run_date)
    res = lake.write(candidates, tables.CANDIDATES)
    secs = time.perf_counter() - started
    print(
        f"score {run_date}: model {version}, {n_live} live coupons, {res.num_rows} candidates "
        f"(top {cfg.score.top_k} per user) -> candidates version {res.version} in {secs:.1f}s"
    )
    return 0
