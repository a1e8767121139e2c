"""``coupon-spark evaluate --run-date D``: every figure of the run, in the metrics table and in a report.

This module is the stage's driver, the only part of the evaluation that touches the lake and the registry: it
reads what each section needs (or the sentence saying why it is not there) and passes it to the sections of
:mod:`coupon_spark.evaluation.sections`, which return typed results (:mod:`coupon_spark.evaluation.results`).

Sections (the ``section`` column of ``evaluation_metrics``):

- ``model``: the registry's validation metrics of the run's model (AUC, log loss, calibration), and the same
  recomputed with the numpy scorer on closed examples issued on or after the model's training date.
- ``policy_truth`` (synthetic shop only): the true incremental profit of the run's allocation (model arm;
  exploration apart; the holdout gets nothing by design) against the oracle, random targeting and targeting
  by redemption probability at the same budgets, as ratios to the oracle; uplift types reached; the uplift
  curve of the model's ranking (the simulator's plug-in, :mod:`coupon_spark.datagen.truth`).
- ``policy_logs`` (what a real shop can measure): IPS, self-normalised IPS and doubly robust estimates of the
  run's policy's value per decision, from the randomised logged issuances of the last
  ``evaluate.ope_lookback_days`` (reward ``revenue_eur * margin_rate - coupon_cost_eur``), of the
  "no coupon" policy, and of the difference (see :mod:`coupon_spark.evaluation.estimators`).
- ``holdout``: the realised reward per user of each arm of the latest allocation whose day has been played
  (its issuances found in silver), and the uplift of the model arm against the holdout with a bootstrap
  interval.
- ``budget``: limit, spend, use, exploration spend and multiplier of every budget; the run's certificate.
- ``fairness``: users, coupons, coupon rate, spend and value by segment and by region.

Nothing is made up: a section without its inputs says so (``messages``) and writes no rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.allocation import POLICY_MODEL, Budget, make_budget
from coupon_spark.allocation.job import budgets_from_config, params_from_config
from coupon_spark.config import Config, join_uri
from coupon_spark.dimension import in_force
from coupon_spark.errors import UpstreamNotReady
from coupon_spark.evaluation.results import SECTIONS, Evaluation, Metric, PlotData, Section
from coupon_spark.evaluation.sections import (
    HeldOutLogs,
    ModelEvidence,
    PlayedAllocation,
    TruthPlugin,
    TruthSampleLike,
    budget_section,
    fairness_section,
    holdout_section,
    logs_section,
    margin_rate,
    model_section,
    ope_frame,
    truth_section,
)
from coupon_spark.lake import Lake
from coupon_spark.model.data import validation_mask
from coupon_spark.model.registry import ModelNotFoundError, Registry
from coupon_spark.model.scorer import NumpyScorer
from coupon_spark.runner import Context
from coupon_spark.schemas import EVALUATION_METRICS

__all__ = [
    "METRICS_TABLE",
    "SECTIONS",
    "Evaluation",
    "Metric",
    "NoAllocationError",
    "PlotData",
    "TruthPlugin",
    "evaluate",
    "find_truth",
    "held_out",
    "metrics_frame",
    "report_dir",
    "run",
    "summary_lines",
    "write",
]

METRICS_TABLE = tables.EVALUATION_METRICS


def metrics_frame(spark: SparkSession, ev: Evaluation, run_id: str | None = None) -> DataFrame:
    """The rows of ``evaluation_metrics`` (:data:`coupon_spark.schemas.EVALUATION_METRICS`)."""
    run_id = run_id or uuid.uuid4().hex
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        (
            ev.run_date,
            m.section,
            m.metric,
            m.dimension,
            m.dimension_value,
            m.value,
            m.ci_low,
            m.ci_high,
            None if m.n is None else int(m.n),
            m.note,
            run_id,
            now,
        )
        for m in ev.metrics
    ]
    return spark.createDataFrame(rows, EVALUATION_METRICS)


# ---- what the sections read ----------------------------------------------------------------------------------


def allocation_run(lake: Lake, run_date: dt.date) -> dict[str, Any] | str:
    """The latest ``allocation_runs`` row of ``run_date`` as a dict (budgets as a list of dicts); else why not."""
    if not lake.exists(tables.ALLOCATION_RUNS):
        return "budget: no allocation_runs table"
    row = lake.read(tables.ALLOCATION_RUNS, where={"run_date": run_date}).orderBy(F.col("started_at").desc()).first()
    return f"budget: no allocation run for {run_date}" if row is None else row.asDict(recursive=True)


def run_budgets(run: dict[str, Any] | str, cfg: Config) -> list[Budget]:
    """The run's budgets for the model arm (limit less the exploration spend) from its ``allocation_runs`` row;
    the configured budgets where there is no row or it holds none."""
    rows = [] if isinstance(run, str) else run.get("budgets") or []
    if not rows:
        return budgets_from_config(cfg.allocation)
    return [
        make_budget(r["campaign_id"], r["kind"], max(float(r["limit"]) - float(r["exploration_spend"] or 0.0), 0.0))
        for r in rows
    ]


@dataclass(frozen=True)
class RunModel:
    """The run's model in the registry, resolved once per evaluation (:func:`run_model`) and read by the model
    section and the off-policy rows."""

    registry: Registry
    name: str
    version: int

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def run_model(cfg: Config, model_version: str | None, run_date: dt.date) -> RunModel | str:
    """The version of a ``"<name>/<version>"`` label as the allocations carry it (without one: the version the
    score job of ``run_date`` takes, :meth:`Registry.latest_as_of`); else why there is none."""
    registry, name = Registry.from_config(cfg), cfg.train.model_name
    tail = (model_version or "").rsplit("/", 1)[-1]
    try:
        return RunModel(registry, name, int(tail) if tail.isdigit() else registry.latest_as_of(name, run_date))
    except (ModelNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        return str(exc)


def model_evidence(lake: Lake, cfg: Config, run_date: dt.date, model: RunModel | str) -> ModelEvidence | str:
    """The run's model from the registry, with the closed examples issued since its training date (for
    out-of-time metrics, where ``evaluate.out_of_time_max_rows`` asks for them); else why not."""
    try:
        if isinstance(model, str):
            raise ModelNotFoundError(model)
        metrics = model.registry.read_json(model.name, model.version, "metrics.json")
        manifest = model.registry.manifest(model.name, model.version)
    except (ModelNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        return f"model: no registry metrics ({exc})"
    trained = dt.date.fromisoformat(str(manifest["run_date"])[:10]) if manifest.get("run_date") else None
    max_rows = cfg.evaluate.out_of_time_max_rows
    if not (max_rows and trained and lake.exists(tables.TRAINING_EXAMPLES)):
        return ModelEvidence(model.label, metrics, trained)
    rows = (
        lake.read(tables.TRAINING_EXAMPLES)
        .where((F.col("issue_date") >= F.lit(trained)) & (F.col("issue_date") < F.lit(run_date)))
        .limit(max_rows)
        .toPandas()
    )
    scorer = None if rows.empty else NumpyScorer.load(model.registry.local_dir(model.name, model.version))
    return ModelEvidence(model.label, metrics, trained, rows, scorer)


def logged_decisions(lake: Lake, cfg: Config, run_date: dt.date) -> DataFrame | None:
    """Randomised logged decisions of the look-back window with the reward (None without training examples)."""
    if not lake.exists(tables.TRAINING_EXAMPLES):
        return None
    e = cfg.evaluate
    since = run_date - dt.timedelta(days=e.ope_lookback_days)
    df = lake.read(tables.TRAINING_EXAMPLES).where(
        (F.col("issue_date") >= F.lit(since))
        & (F.col("issue_date") < F.lit(run_date))
        & F.col("policy").isin(list(e.ope_policies))
    )
    seg = F.col("uc_segment") if "uc_segment" in df.columns else F.lit("all")
    return df.select(
        "issuance_id", "issue_date", "user_id", "coupon_id", "propensity",
        (F.col("revenue_eur") * F.lit(margin_rate(cfg)) - F.col("coupon_cost_eur")).alias("reward"),
        seg.alias("segment"),
    )  # fmt: skip


def held_out(pdf: pd.DataFrame, model: RunModel | str) -> tuple[pd.DataFrame, str]:
    """The logged decisions the run's model did not fit: of the issue dates it trained on, only its validation
    split (the same hash of ``issuance_id``); later dates all. Evaluating a policy on the rows its model was
    fitted to is optimistic (it favours the coupons that happened to pay for those users), so those rows go.

    Returns:
        The rows kept and a note saying which (all rows, with a warning, when the model's training range or
        settings are not in the registry).
    """
    try:
        if isinstance(model, str):
            raise ModelNotFoundError(model)
        until = model.registry.manifest(model.name, model.version)["training_table"]["until"]
        tc = model.registry.read_json(model.name, model.version, "train_config.json")
        share, seed = float(tc["validation_share"]), int(tc["seed"])
    except (ModelNotFoundError, FileNotFoundError, OSError, ValueError, KeyError, TypeError) as exc:
        return pdf, f"all logged rows (the model's training rows are unknown: {exc}); optimistic if it trained on them"
    trained = pd.to_datetime(pdf["issue_date"]).dt.date < dt.date.fromisoformat(str(until)[:10])
    keep = ~trained.to_numpy() | validation_mask(pdf["issuance_id"], share, seed)
    note = f"rows {model.label} did not fit: its {share:.0%} validation split before {until}, all after"
    return pdf[keep].reset_index(drop=True), note


def held_out_logs(
    lake: Lake, cfg: Config, run_date: dt.date, allocations: DataFrame, model: RunModel | str
) -> HeldOutLogs | str:
    """The look-back window's randomised logged decisions with the run's action per user (:func:`ope_frame`),
    less the rows the run's model fitted (:func:`held_out`); else why not."""
    logged = logged_decisions(lake, cfg, run_date)
    if logged is None:
        return "policy (logs): no training_examples table: off-policy estimates not available"
    return HeldOutLogs(*held_out(ope_frame(logged, allocations), model))


def played_day(lake: Lake, allocations: DataFrame, alloc_date: dt.date, until: dt.date) -> dt.date | None:
    """The day the allocation of ``alloc_date`` was issued: the date of the silver issuances that carry its
    model arm's decisions, coupons and "no coupon" alike (so that an allocation whose model issued nothing is
    found too; logged with a policy ending in ``model``), the earliest from ``alloc_date`` to two days later,
    not after ``until``; else None."""
    if not lake.exists(tables.ISSUANCES):
        return None
    dates = [d for d in lake.dates(tables.ISSUANCES) if alloc_date <= d <= min(until, alloc_date + dt.timedelta(2))]
    if not dates:
        return None
    decided = allocations.where(F.col("policy") == POLICY_MODEL).select("user_id", "coupon_id").alias("a")
    same = (F.col("i.user_id") == F.col("a.user_id")) & F.col("i.coupon_id").eqNullSafe(F.col("a.coupon_id"))
    # the model arm's logged decisions ("<prefix>/model"); the earliest day that has them: later days hold the
    # decisions of later allocations, which match this one's "no coupon" rows too
    logged = lake.read(tables.ISSUANCES, where={"ingest_date": dates}).where(
        F.col("policy").endswith(f"/{POLICY_MODEL}") | (F.col("policy") == POLICY_MODEL)
    )
    hits = (
        logged.alias("i").join(decided, on=same, how="left_semi")
        .groupBy(F.to_date("issued_at").alias("d")).count().orderBy("d").first()
    )  # fmt: skip
    return None if hits is None else hits["d"]


def realised_rewards(lake: Lake, cfg: Config, allocations: DataFrame, day: dt.date) -> pd.DataFrame:
    """Per user of the allocation: arm, purchased on ``day`` (0/1) and reward ``amount * margin - coupon cost of
    the day's redemptions`` (amounts at list price: a discount is the coupon's cost, counted once), from the
    silver orders and redemptions."""
    late = dt.timedelta(days=cfg.cleanse.max_lateness_days)
    ingest = {"ingest_date": [d for d in lake.dates(tables.ORDERS) if day <= d <= day + late]}
    orders = (
        lake.read(tables.ORDERS, where=ingest).where(F.to_date("ordered_at") == F.lit(day))
        .groupBy("user_id").agg(F.sum("amount_eur").cast("double").alias("revenue"))
    )  # fmt: skip
    users = allocations.groupBy("user_id").agg(F.first("policy").alias("arm"))
    out = users.join(orders, on="user_id", how="left")
    if lake.exists(tables.REDEMPTIONS) and lake.exists(tables.COUPONS):
        r_ingest = {"ingest_date": [d for d in lake.dates(tables.REDEMPTIONS) if day <= d <= day + late]}
        cost = lake.read(tables.COUPONS).groupBy("coupon_id").agg(F.max(F.col("cost_eur").cast("double")).alias("unit"))
        red = (
            lake.read(tables.REDEMPTIONS, where=r_ingest).where(F.to_date("redeemed_at") == F.lit(day))
            .join(cost, on="coupon_id", how="left").groupBy("user_id").agg(F.sum("unit").alias("coupon_cost"))
        ) if r_ingest["ingest_date"] else None  # fmt: skip
        if red is not None:
            out = out.join(red, on="user_id", how="left")
    if "coupon_cost" not in out.columns:
        out = out.withColumn("coupon_cost", F.lit(0.0))
    return out.select(
        "user_id", "arm", F.col("revenue").isNotNull().cast("int").alias("purchased"),
        (F.coalesce("revenue", F.lit(0.0)) * F.lit(margin_rate(cfg)) - F.coalesce("coupon_cost", F.lit(0.0)))
        .alias("reward"),
    ).toPandas()  # fmt: skip


def played_allocation(lake: Lake, cfg: Config, run_date: dt.date) -> PlayedAllocation | str:
    """The latest of the last three allocations up to ``run_date`` whose day has been played and has orders in
    silver, with each user's realised reward; else why not."""
    for alloc_date in reversed([d for d in lake.dates(tables.ALLOCATIONS) if d <= run_date][-3:]):
        allocations = lake.read(tables.ALLOCATIONS, where={"run_date": alloc_date})
        day = played_day(lake, allocations, alloc_date, run_date)
        if day is None or not lake.exists(tables.ORDERS) or not [d for d in lake.dates(tables.ORDERS) if d >= day]:
            continue
        return PlayedAllocation(alloc_date, day, realised_rewards(lake, cfg, allocations, day))
    return (
        f"holdout: no allocation up to {run_date} has been played yet (no issuance of its coupons in "
        "silver): realised uplift not available"
    )


def users_snapshot(lake: Lake, run_date: dt.date) -> DataFrame | str:
    """``user_id``, ``segment`` and ``region`` of the users as silver's dimension has them on ``run_date``."""
    if not lake.exists(tables.USERS):
        return "fairness: no silver users up to the run date"
    return in_force(lake.read(tables.USERS), run_date).select("user_id", "segment", "region")


def truth_sample(
    lake: Lake, run_date: dt.date, allocations: DataFrame, truth: TruthPlugin | None
) -> TruthSampleLike | str:
    """The truth plug-in's sample of the run's candidates (what :func:`truth_section` values); else why not."""
    if not lake.exists(tables.CANDIDATES):
        return "policy (synthetic shop): no candidates table"
    if truth is None:
        return "policy (synthetic shop): no hidden truth in this lake (a real shop): true policy value skipped"
    return truth.sample(run_date, allocations, lake.read(tables.CANDIDATES, where={"run_date": run_date}))


# ---- the whole evaluation ----------------------------------------------------------------------------------------


def evaluate(
    spark: SparkSession, cfg: Config, run_date: dt.date, lake: Lake | None = None, truth: TruthPlugin | None = None
) -> Evaluation:
    """Every section for ``run_date``; writes nothing (see :func:`write` and :func:`run`). ``truth``: the
    synthetic shop's plug-in where the lake has one (:func:`find_truth`), for the true policy values.

    Raises:
        NoAllocationError: The allocations table has no row for ``run_date``.
    """
    lake = lake or Lake.from_config(spark, cfg.lake)
    ev = Evaluation(run_date)
    if not lake.exists(tables.ALLOCATIONS) or run_date not in lake.dates(tables.ALLOCATIONS):
        raise NoAllocationError(
            f"no allocation for {run_date}: run `coupon-spark allocate --run-date {run_date}` first"
        )
    allocations = lake.read(tables.ALLOCATIONS, where={"run_date": run_date}).cache()
    try:
        version = allocations.where(F.col("model_version").isNotNull()).select("model_version").first()
        model_version = None if version is None else version[0]
        run, model = allocation_run(lake, run_date), run_model(cfg, model_version, run_date)
        ev.include(model_section(model_evidence(lake, cfg, run_date, model), run_date))
        sample = truth_sample(lake, run_date, allocations, truth)
        if truth is None or isinstance(sample, str):
            ev.include(Section.missing("policy_truth", str(sample)))
        else:
            ev.include(
                truth_section(truth, sample, run_budgets(run, cfg), params_from_config(cfg.allocation), run_date)
            )
        ev.include(logs_section(held_out_logs(lake, cfg, run_date, allocations, model), cfg, run_date))
        ev.include(holdout_section(played_allocation(lake, cfg, run_date), cfg))
        ev.include(budget_section(run))
        ev.include(fairness_section(allocations, users_snapshot(lake, run_date)))
    finally:
        allocations.unpersist()
    return ev


class NoAllocationError(UpstreamNotReady, RuntimeError):
    """The run date has no allocation to evaluate."""


def history(lake: Lake, run_date: dt.date, days: int) -> pd.DataFrame:
    """Headline metrics of the last ``days`` run dates up to ``run_date`` from ``evaluation_metrics``."""
    if not lake.exists(METRICS_TABLE):
        return pd.DataFrame(columns=["run_date", "section", "metric", "dimension_value", "value"])
    since = run_date - dt.timedelta(days=days)
    wanted = (
        ((F.col("section") == "policy_truth") & F.col("metric").isin("true_incremental_profit", "ratio_to_oracle"))
        | ((F.col("section") == "policy_logs") & (F.col("metric") == "dr"))
        | ((F.col("section") == "holdout") & (F.col("metric") == "incremental_profit"))
    )
    return (
        lake.read(METRICS_TABLE).where((F.col("run_date") > F.lit(since)) & (F.col("run_date") <= F.lit(run_date)))
        .where(wanted).select("run_date", "section", "metric", "dimension_value", "value", "ci_low", "ci_high")
        .toPandas()
    )  # fmt: skip


def report_dir(cfg: Config, run_date: dt.date) -> str:
    d = cfg.evaluate.report_dir
    base = d if ("://" in d or d.startswith("/")) else join_uri(cfg.lake.root, d)
    return join_uri(base, run_date.isoformat())


def write(spark: SparkSession, cfg: Config, ev: Evaluation, lake: Lake | None = None) -> tuple[Any, str]:
    """Replace the run date's rows of ``evaluation_metrics`` and write the report; returns (write result, path
    of ``index.html``)."""
    from coupon_spark.report import write_report

    lake = lake or Lake.from_config(spark, cfg.lake)
    result = lake.write(
        metrics_frame(spark, ev),
        METRICS_TABLE,  # the catalog's overwrite by run_date
        replace_where={"run_date": ev.run_date},
        description=f"evaluate {ev.run_date}",
    )
    hist = history(lake, ev.run_date, cfg.evaluate.history_days)
    path = write_report(ev, hist, report_dir(cfg, ev.run_date))
    return result, path


def summary_lines(ev: Evaluation) -> list[str]:
    """The short summary the stage prints."""
    lines = [f"evaluation of {ev.run_date}: {len(ev.metrics)} metrics"]
    auc = ev.value("model", "registry_validation.auc", "purchase")
    if auc is not None:
        lines.append(
            f"  model {ev.plots.model_version or ''}: validation purchase AUC {auc:.4f}, log loss "
            f"{ev.value('model', 'registry_validation.log_loss', 'purchase') or float('nan'):.4f}"
        )
    values = ev.plots.policy_values
    if values:
        o = values.get("oracle", float("nan"))
        parts = [f"{k} {v:,.2f} ({v / o:.1%})" if o > 0 else f"{k} {v:,.2f}" for k, v in values.items()]
        lines.append("  true incremental profit (ratio to oracle): " + ", ".join(parts))
    dr = [m for m in ev.metrics if m.section == "policy_logs" and m.metric == "dr"]
    for m in dr:
        if m.value is not None:
            lines.append(
                f"  DR value per decision, {m.dimension_value}: {m.value:.4f} [{m.ci_low:.4f}, {m.ci_high:.4f}]"
            )
    up = [m for m in ev.metrics if m.section == "holdout" and m.metric == "uplift_per_user"]
    for m in up:
        lines.append(
            f"  realised uplift vs holdout ({m.dimension_value}): {m.value:.4f} EUR/user "
            f"[{m.ci_low:.4f}, {m.ci_high:.4f}]"
        )
    for name, limit, spend, _ in ev.plots.budgets:
        lines.append(
            f"  budget {name}: {spend:,.2f} of {limit:,.2f} ({spend / limit:.1%})"
            if limit
            else f"  budget {name}: {spend:,.2f}"
        )
    lines += [f"  note: {m}" for m in ev.messages]
    return lines


TRUTH_PLUGIN_NEEDS = ("user_traits", "coupons")
"""The hidden-truth tables (``shop.truth_dir``) whose presence marks a lake as the synthetic shop's."""


def find_truth(lake: Lake, cfg: Config) -> TruthPlugin | None:
    """The synthetic shop's truth plug-in where the lake holds its hidden truth (``shop.truth_dir`` under the
    root), else None; the simulator is imported only then."""
    if not all(lake.exists(cfg.shop.truth_table(t)) for t in TRUTH_PLUGIN_NEEDS):
        return None
    from coupon_spark.datagen.truth import ShopTruth

    return ShopTruth(lake, cfg)


def run(ctx: Context, run_date: dt.date) -> int:
    """``coupon-spark evaluate``: evaluate the run date's allocation, write the metrics and the report.

    Raises:
        NoAllocationError: Nothing allocated for ``run_date`` yet (the command line exits with 75: retry later).
    """
    ev = evaluate(ctx.spark, ctx.cfg, run_date, ctx.lake, find_truth(ctx.lake, ctx.cfg))
    result, path = write(ctx.spark, ctx.cfg, ev, ctx.lake)
    print("\n".join(summary_lines(ev)))
    print(f"  {result}\n  report {path}")
    return 0
