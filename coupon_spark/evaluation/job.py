"""``coupon-spark evaluate --run-date D``: every figure of the run, in the metrics table and in a report.

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

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.allocation import POLICY_EXPLORATION, POLICY_HOLDOUT, POLICY_MODEL, Budget, make_budget
from coupon_spark.allocation.job import budgets_from_config, params_from_config
from coupon_spark.allocation.plan import AllocationParams
from coupon_spark.config import Config, join_uri
from coupon_spark.errors import UpstreamNotReady
from coupon_spark.evaluation import estimators as est
from coupon_spark.lake import Lake
from coupon_spark.runner import Context
from coupon_spark.schemas import EVALUATION_METRICS

log = logging.getLogger(__name__)

METRICS_TABLE = tables.EVALUATION_METRICS
SECTIONS = ("model", "policy_truth", "policy_logs", "holdout", "budget", "fairness")


@dataclass(frozen=True)
class Metric:
    """One row of ``evaluation_metrics`` (without run_date, run_id and evaluated_at)."""

    section: str
    metric: str
    value: float | None
    dimension: str | None = None
    dimension_value: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    note: str | None = None


@dataclass
class PlotData:
    """What the report draws, one typed field per plot (empty: no data for it, the report says so)."""

    model_version: str | None = None  # "<name> v<version>" of the evaluated model
    calibration: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # curve -> bins
    uplift_curve: dict[str, np.ndarray] = field(default_factory=dict)  # fraction, model, random, perfect
    policy_values: dict[str, float] = field(default_factory=dict)  # policy -> true incremental profit
    budgets: list[tuple[str, float, float, float]] = field(default_factory=list)  # name, limit, spend, exploration
    fairness: dict[str, list[tuple[Any, int, int, float]]] = field(default_factory=dict)  # dimension -> groups


@dataclass
class Evaluation:
    """What :func:`evaluate` found: the metric rows, what could not be computed and why, and plot data."""

    run_date: dt.date
    metrics: list[Metric] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    plots: PlotData = field(default_factory=PlotData)

    def add(self, section: str, metric: str, value: float | None, **kw: Any) -> None:
        v = None if value is None or not np.isfinite(value) else float(value)
        clean = {k: (None if isinstance(x, float) and not np.isfinite(x) else x) for k, x in kw.items()}
        self.metrics.append(Metric(section, metric, v, **clean))

    def add_estimate(self, section: str, metric: str, e: est.Estimate, **kw: Any) -> None:
        self.add(section, metric, e.value, ci_low=e.ci_low, ci_high=e.ci_high, n=e.n, **kw)

    def say(self, text: str) -> None:
        log.info(text)
        self.messages.append(text)

    def value(self, section: str, metric: str, dimension_value: str | None = None) -> float | None:
        """The value of the first matching row (None when absent)."""
        for m in self.metrics:
            if (
                m.section == section
                and m.metric == metric
                and (dimension_value is None or m.dimension_value == dimension_value)
            ):
                return m.value
        return None


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


# ---- inputs -------------------------------------------------------------------------------------------------


def _margin(cfg: Config) -> float:
    return cfg.evaluate.margin_rate or cfg.score.margin_rate


def run_budgets(lake: Lake, cfg: Config, run_date: dt.date) -> tuple[list[Budget], list[dict[str, Any]]]:
    """The run's budgets for the model arm (limit less the exploration spend) and the raw budget rows of
    ``allocation_runs`` (empty when the table has no row for the date: the configured budgets then)."""
    rows: list[dict[str, Any]] = []
    if lake.exists(tables.ALLOCATION_RUNS):
        got = (
            lake.read(tables.ALLOCATION_RUNS, where={"run_date": run_date}).orderBy(F.col("started_at").desc()).first()
        )
        if got is not None:
            rows = [b.asDict() for b in got["budgets"] or []]
    if not rows:
        return budgets_from_config(cfg.allocation), []
    budgets = [
        make_budget(r["campaign_id"], r["kind"], max(float(r["limit"]) - float(r["exploration_spend"] or 0.0), 0.0))
        for r in rows
    ]
    return budgets, rows


# ---- model --------------------------------------------------------------------------------------------------


def _registry_version(registry: Any, name: str, label: str | None) -> int:
    """The version of a ``"<name>/<version>"`` label as the allocations carry it; the latest without one."""
    tail = (label or "").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else int(registry.latest(name))


def model_section(ev: Evaluation, lake: Lake, cfg: Config, model_version: str | None) -> None:
    """Registry validation metrics of the run's model, and out-of-time metrics recomputed with the scorer."""
    from coupon_spark.model.registry import ModelNotFoundError, Registry

    registry = Registry.from_config(cfg)
    name = cfg.train.model_name
    try:
        version = _registry_version(registry, name, model_version)
        metrics = registry.read_json(name, version, "metrics.json")
        manifest = registry.manifest(name, version)
    except (ModelNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        ev.say(f"model: no registry metrics ({exc})")
        return
    note = f"{name} v{version}"
    calibration: dict[str, list[dict[str, Any]]] = {}
    for target, m in (metrics.get("validation") or {}).items():
        if not isinstance(m, dict):  # e.g. the scalar validation_loss beside the per-target metrics
            continue
        _add_binary(ev, m, target, "registry_validation", note)
        calibration[f"{target} (validation)"] = m.get("calibration", [])
    ev.plots.model_version = note
    if metrics.get("decision"):  # the decision gate (coupon_spark.model.gate) the version was published with
        from coupon_spark.model.gate import Gate

        gate = Gate.from_json(metrics["decision"])
        ev.add("model", "decision_gate.open", float(gate.is_open), n=gate.rows, note=f"{note}: {gate.describe()}")
        ev.add("model", "decision_gate.threshold", gate.threshold, n=gate.rows, note="EUR; null: closed")
        ev.add("model", "decision_gate.gain_lower_bound", gate.lower, n=gate.rows, note="EUR per decision")
        ev.say(f"model {note}: decision gate {gate.describe()}")
    trained = manifest.get("run_date")
    if cfg.evaluate.out_of_time_max_rows and trained and lake.exists(tables.TRAINING_EXAMPLES):
        since = dt.date.fromisoformat(str(trained)[:10])
        oot = _out_of_time(
            lake, registry.local_dir(name, version), since, ev.run_date, cfg.evaluate.out_of_time_max_rows
        )
        if oot is None:
            ev.say(
                f"model: no closed example issued on or after the model's training date {since} yet: "
                "out-of-time metrics not available"
            )
        else:
            for target, m in oot.items():
                _add_binary(ev, m, target, "out_of_time", note + f", issued {since}..{ev.run_date - dt.timedelta(1)}")
                calibration[f"{target} (out of time)"] = m.get("calibration", [])
    ev.plots.calibration = calibration


def _add_binary(ev: Evaluation, m: dict[str, Any], target: str, source: str, note: str) -> None:
    for key in ("auc", "log_loss", "mean_prediction", "observed_rate", "expected_calibration_error"):
        if key in m:
            ev.add(
                "model", f"{source}.{key}", m[key], dimension="target", dimension_value=target, n=m.get("n"), note=note
            )
    for b in m.get("calibration", []):
        for key in ("mean_prediction", "observed_rate"):
            ev.add(
                "model",
                f"{source}.calibration.{target}.{key}",
                b[key],
                dimension="bin",
                dimension_value=b["bin"],
                n=b["n"],
                note=note,
            )


def _out_of_time(lake: Lake, model_dir: Any, since: dt.date, run_date: dt.date, max_rows: int) -> dict | None:
    from coupon_spark.model.data import make_examples
    from coupon_spark.model.metrics import binary_summary, summary_metrics
    from coupon_spark.model.scorer import NumpyScorer

    df = lake.read(tables.TRAINING_EXAMPLES).where(
        (F.col("issue_date") >= F.lit(since)) & (F.col("issue_date") < F.lit(run_date))
    )
    pdf = df.limit(max_rows).toPandas()
    if pdf.empty:
        return None
    scorer = NumpyScorer.load(model_dir)
    ex = make_examples(pdf, scorer.transform, scorer.spec, 0.0, 0)
    keys = ("user_x", "user_bucket", "coupon_x", "coupon_index", "pair_x")
    out = scorer.predict_rows({k: getattr(ex, k) for k in keys})
    treated = pdf["coupon_id"].notna().to_numpy()
    return {
        "purchase": summary_metrics(binary_summary(ex.purchased, out["p_purchase"])),
        "redeem": summary_metrics(binary_summary(ex.redeemed[treated], out["p_redeem"][treated])),
    }


# ---- policy on the synthetic shop -------------------------------------------------------------------------------


class TruthSampleLike(Protocol):
    allocations: pd.DataFrame
    issued: pd.DataFrame
    options: pd.DataFrame
    share: float

    @property
    def note(self) -> str | None: ...


class TruthPlugin(Protocol):
    """Where a truth exists (the synthetic shop: :class:`coupon_spark.datagen.truth.ShopTruth`), what the truth
    section asks of it: a valued sample of the run, each policy's coupons at the sample's budgets, the uplift
    curve and the true spend. The evaluation itself never imports the simulator."""

    @property
    def uplift_types(self) -> tuple[str, ...]: ...

    def sample(self, run_date: dt.date, allocations: DataFrame, candidates: DataFrame) -> TruthSampleLike: ...

    def policies(
        self, sample: Any, budgets: list[Budget], params: AllocationParams, run_date: dt.date
    ) -> dict[str, pd.DataFrame]: ...

    def uplift_curve(self, options: pd.DataFrame) -> dict[str, np.ndarray]: ...

    def spend(self, issued: pd.DataFrame, budgets: Sequence[Budget]) -> np.ndarray: ...


def truth_section(
    ev: Evaluation, truth: TruthPlugin | None, lake: Lake, cfg: Config, allocations: DataFrame, candidates: DataFrame
) -> None:
    """True value of the run's allocation against the oracle and the baselines, where a truth exists: the
    plug-in's sample and policies, then each policy's value, cost and coupons by uplift type."""
    if truth is None:
        ev.say("policy (synthetic shop): no hidden truth in this lake (a real shop): true policy value skipped")
        return
    sample = truth.sample(ev.run_date, allocations, candidates)
    budgets, _ = run_budgets(lake, cfg, ev.run_date)
    budgets = [dataclasses.replace(b, limit=b.limit * sample.share) for b in budgets]
    policies = truth.policies(sample, budgets, params_from_config(cfg.allocation), ev.run_date)
    note = sample.note
    oracle_value = float(policies["oracle"]["true_incremental_profit"].sum())
    values = {}
    for name, rows in policies.items():
        v = float(rows["true_incremental_profit"].sum())
        values[name] = v
        per_policy = {"dimension": "policy", "dimension_value": name, "n": len(rows), "note": note}
        ev.add("policy_truth", "true_incremental_profit", v, **per_policy)
        ev.add("policy_truth", "ratio_to_oracle", v / oracle_value if oracle_value > 0 else float("nan"), **per_policy)
        ev.add("policy_truth", "true_expected_cost", float(rows["true_expected_cost"].sum()), **per_policy)
        for t in truth.uplift_types:
            ev.add("policy_truth", f"coupons_to_{t}", float((rows["uplift_type"] == t).sum()), **per_policy)
    ev.add(
        "policy_truth",
        "predicted_incremental_profit",
        float(policies["model"]["expected_profit"].sum()),
        dimension="policy",
        dimension_value="model",
        note="the model's own estimate of the same coupons",
    )
    explore = sample.issued[sample.issued["policy"] == POLICY_EXPLORATION]
    ev.add(
        "policy_truth",
        "true_incremental_profit",
        float(explore["true_incremental_profit"].sum()),
        dimension="policy",
        dimension_value="exploration",
        n=len(explore),
        note=note,
    )
    ev.add(
        "policy_truth",
        "true_incremental_profit",
        0.0,
        dimension="policy",
        dimension_value="holdout",
        n=int((sample.allocations["policy"] == POLICY_HOLDOUT).sum()),
        note="the holdout gets no coupon: no increment by construction",
    )
    model_true_spend = truth.spend(policies["model"], budgets)
    for b, s in zip(budgets, model_true_spend, strict=True):
        if b.kind == "amount":
            ev.add(
                "policy_truth",
                "model_true_expected_spend",
                s,
                dimension="budget",
                dimension_value=b.name,
                note=f"model-arm limit {b.limit:.2f} on the model's estimated cost",
            )
    ev.plots.policy_values = values
    ev.plots.uplift_curve = truth.uplift_curve(sample.options)


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
        (F.col("revenue_eur") * F.lit(_margin(cfg)) - F.col("coupon_cost_eur")).alias("reward"),
        seg.alias("segment"),
    )  # fmt: skip


def target_actions(allocations: DataFrame) -> DataFrame:
    """The run's decision per user: its (first) coupon, or null for none (holdout and untreated users)."""
    return allocations.groupBy("user_id").agg(F.min("coupon_id").alias("target_coupon"))


def ope_frame(logged: DataFrame, allocations: DataFrame) -> pd.DataFrame:
    """Logged decisions with the run's action for their user and whether the logs support it (the target
    coupon was logged on that day by the randomised policies); users without a decision get none."""
    live = logged.where(F.col("coupon_id").isNotNull()).select("issue_date", F.col("coupon_id").alias("_c")).distinct()
    t = target_actions(allocations)
    joined = (
        logged.alias("l")
        .join(t.alias("t"), on="user_id", how="left")
        .join(live.alias("v"), how="left",
              on=(F.col("l.issue_date") == F.col("v.issue_date")) & (F.col("t.target_coupon") == F.col("v._c")))
        .select("l.*", F.col("t.target_coupon").alias("target_coupon"),
                (F.col("t.target_coupon").isNull() | F.col("v._c").isNotNull()).alias("supported"))
    )  # fmt: skip
    return joined.toPandas()


def ope_estimates(pdf: pd.DataFrame, confidence: float, seed: int) -> dict[str, est.Estimate]:
    """IPS, SNIPS and DR of the target policy (``target_coupon``), of "no coupon", and DR/IPS of their
    difference, on the supported rows of :func:`ope_frame`; the logging policy's mean reward."""
    d = pdf[pdf["supported"]].reset_index(drop=True)
    r, p = d["reward"].to_numpy(np.float64), d["propensity"].to_numpy(np.float64)
    same = (d["coupon_id"].fillna("\x00") == d["target_coupon"].fillna("\x00")).to_numpy(np.float64)
    none = d["coupon_id"].isna().to_numpy(np.float64)
    folds = pd.util.hash_pandas_object(d["issuance_id"].astype(str) + f":{seed}", index=False).to_numpy() % 2
    q_log, q_pi = (
        est.cross_fitted_cell_means(d.assign(_none=None), folds, ["segment"], "coupon_id", "reward", "target_coupon")
        if len(d)
        else (np.zeros(0), np.zeros(0))
    )
    _, q_none = (
        est.cross_fitted_cell_means(d.assign(_none=None), folds, ["segment"], "coupon_id", "reward", "_none")
        if len(d)
        else (np.zeros(0), np.zeros(0))
    )
    out = {
        "ips.policy": est.ips(r, same, p, confidence),
        "snips.policy": est.snips(r, same, p, confidence),
        "dr.policy": est.doubly_robust(r, same, p, q_log, q_pi, confidence),
        "ips.no_coupon": est.ips(r, none, p, confidence),
        "snips.no_coupon": est.snips(r, none, p, confidence),
        "dr.no_coupon": est.doubly_robust(r, none, p, q_log, q_none, confidence),
        "logging_policy": est.mean_estimate(r, confidence),
    }
    if len(d):
        w_pi, w_0 = same / p, none / p
        out["ips.policy_minus_no_coupon"] = est.mean_estimate((w_pi - w_0) * r, confidence)
        out["dr.policy_minus_no_coupon"] = est.mean_estimate(
            est.dr_terms(r, same, p, q_log, q_pi) - est.dr_terms(r, none, p, q_log, q_none), confidence
        )
    return out


def held_out(pdf: pd.DataFrame, cfg: Config, model_version: str | None) -> tuple[pd.DataFrame, str]:
    """The logged decisions the run's model did not fit: of the issue dates it trained on, only its validation
    split (the same hash of ``issuance_id``); later dates all. Evaluating a policy on the rows its model was
    fitted to is optimistic (it favours the coupons that happened to pay for those users), so those rows go.

    Returns:
        The rows kept and a note saying which (all rows, with a warning, when the model's training range or
        settings are not in the registry).
    """
    from coupon_spark.model.data import validation_mask
    from coupon_spark.model.registry import ModelNotFoundError, Registry

    registry, name = Registry.from_config(cfg), cfg.train.model_name
    try:
        version = _registry_version(registry, name, model_version)
        until = registry.manifest(name, version)["training_table"]["until"]
        tc = registry.read_json(name, version, "train_config.json")
        share, seed = float(tc["validation_share"]), int(tc["seed"])
    except (ModelNotFoundError, FileNotFoundError, OSError, ValueError, KeyError, TypeError) as exc:
        return pdf, f"all logged rows (the model's training rows are unknown: {exc}); optimistic if it trained on them"
    trained = pd.to_datetime(pdf["issue_date"]).dt.date < dt.date.fromisoformat(str(until)[:10])
    keep = ~trained.to_numpy() | validation_mask(pdf["issuance_id"], share, seed)
    note = f"rows {name} v{version} did not fit: its {share:.0%} validation split before {until}, all after"
    return pdf[keep].reset_index(drop=True), note


def logs_section(ev: Evaluation, lake: Lake, cfg: Config, allocations: DataFrame, model_version: str | None) -> None:
    logged = logged_decisions(lake, cfg, ev.run_date)
    if logged is None:
        ev.say("policy (logs): no training_examples table: off-policy estimates not available")
        return
    pdf, rows_note = held_out(ope_frame(logged, allocations), cfg, model_version)
    ev.say(f"policy (logs): {len(pdf)} logged randomised decisions: {rows_note}")
    if pdf.empty:
        ev.say(
            f"policy (logs): no closed randomised issuance ({', '.join(cfg.evaluate.ope_policies)}) in the "
            f"{cfg.evaluate.ope_lookback_days} days before {ev.run_date}: off-policy estimates not available"
        )
        return
    support = float(pdf["supported"].mean())
    ev.add(
        "policy_logs",
        "support_share",
        support,
        n=len(pdf),
        note="share of logged decisions whose run action was available to the logging policy that day",
    )
    note = f"EUR per decision; reward = revenue * {_margin(cfg):g} - coupon cost"
    for key, e in ope_estimates(pdf, cfg.evaluate.confidence, cfg.evaluate.seed).items():
        estimator, _, target = key.partition(".")
        ev.add_estimate(
            "policy_logs",
            estimator if target else "mean_reward",
            e,
            dimension="target",
            dimension_value=target or "logging_policy",
            note=note,
        )


# ---- realised uplift against the holdout ------------------------------------------------------------------------


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
        (F.coalesce("revenue", F.lit(0.0)) * F.lit(_margin(cfg)) - F.coalesce("coupon_cost", F.lit(0.0)))
        .alias("reward"),
    ).toPandas()  # fmt: skip


def holdout_section(ev: Evaluation, lake: Lake, cfg: Config) -> None:
    """Realised uplift of the latest played allocation (up to the run date) against its holdout."""
    dates = [d for d in lake.dates(tables.ALLOCATIONS) if d <= ev.run_date][-3:]
    for alloc_date in reversed(dates):
        allocations = lake.read(tables.ALLOCATIONS, where={"run_date": alloc_date})
        day = played_day(lake, allocations, alloc_date, ev.run_date)
        if day is None or not lake.exists(tables.ORDERS) or not [d for d in lake.dates(tables.ORDERS) if d >= day]:
            continue
        pdf = realised_rewards(lake, cfg, allocations, day)
        e = cfg.evaluate
        note = f"allocation of {alloc_date}, outcomes of {day}; reward = revenue * {_margin(cfg):g} - coupon cost"
        arms = {a: g for a, g in pdf.groupby("arm")}
        for arm, g in arms.items():
            ev.add(
                "holdout",
                "mean_reward",
                float(g["reward"].mean()),
                dimension="arm",
                dimension_value=arm,
                n=len(g),
                note=note,
            )
            ev.add(
                "holdout",
                "purchase_rate",
                float(g["purchased"].mean()),
                dimension="arm",
                dimension_value=arm,
                n=len(g),
                note=note,
            )
        model, hold = arms.get(POLICY_MODEL), arms.get(POLICY_HOLDOUT)
        if model is None or hold is None:
            ev.say(f"holdout: the allocation of {alloc_date} has no {'model' if model is None else 'holdout'} arm")
            return
        up = est.bootstrap_mean_difference(
            model["reward"].to_numpy(), hold["reward"].to_numpy(), e.bootstrap_samples, e.confidence, e.seed
        )
        ev.add_estimate(
            "holdout",
            "uplift_per_user",
            up,
            dimension="allocation_date",
            dimension_value=alloc_date.isoformat(),
            note=note + "; model arm minus holdout, bootstrap",
        )
        pr = est.bootstrap_mean_difference(
            model["purchased"].to_numpy(), hold["purchased"].to_numpy(), e.bootstrap_samples, e.confidence, e.seed + 1
        )
        ev.add_estimate(
            "holdout",
            "purchase_rate_uplift",
            pr,
            dimension="allocation_date",
            dimension_value=alloc_date.isoformat(),
            note=note,
        )
        ev.add(
            "holdout",
            "incremental_profit",
            up.value * len(model),
            ci_low=up.ci_low * len(model),
            ci_high=up.ci_high * len(model),
            n=len(model),
            dimension="allocation_date",
            dimension_value=alloc_date.isoformat(),
            note=note + "; per-user uplift times model-arm users",
        )
        return
    ev.say(
        f"holdout: no allocation up to {ev.run_date} has been played yet (no issuance of its coupons in "
        "silver): realised uplift not available"
    )


# ---- budgets and fairness ----------------------------------------------------------------------------------------


def budget_section(ev: Evaluation, lake: Lake, cfg: Config) -> None:
    if not lake.exists(tables.ALLOCATION_RUNS):
        ev.say("budget: no allocation_runs table")
        return
    row = lake.read(tables.ALLOCATION_RUNS, where={"run_date": ev.run_date}).orderBy(F.col("started_at").desc()).first()
    if row is None:
        ev.say(f"budget: no allocation run for {ev.run_date}")
        return
    for key in ("primal_value", "dual_bound", "gap", "n_users", "n_holdout", "n_exploration", "n_model"):
        ev.add("budget", key, float(row[key]) if row[key] is not None else None, note=row["run_id"])
    spend = []
    for b in row["budgets"] or []:
        for key in ("limit", "spend", "exploration_spend", "use", "multiplier"):
            ev.add("budget", key, b[key], dimension="budget", dimension_value=b["name"], note=b["campaign_id"])
        spend.append((b["name"], float(b["limit"]), float(b["spend"]), float(b["exploration_spend"] or 0.0)))
    ev.plots.budgets = spend


def fairness_section(ev: Evaluation, spark: SparkSession, lake: Lake, allocations: DataFrame) -> None:
    """Coupons, spend and expected value by segment and region (the silver users snapshot of the run date)."""
    dates = [d for d in lake.dates(tables.USERS) if d <= ev.run_date]
    if not dates:
        ev.say("fairness: no silver users snapshot up to the run date")
        return
    users = lake.read(tables.USERS, where={"ingest_date": dates[-1]}).select("user_id", "segment", "region")
    a = allocations.where(F.col("policy") != POLICY_HOLDOUT).join(users, on="user_id", how="left")
    groups = {}
    for dim in ("segment", "region"):
        rows = (
            a.groupBy(F.coalesce(F.col(dim), F.lit("unknown")).alias("g"))
            .agg(F.countDistinct("user_id").alias("users"), F.count("coupon_id").alias("coupons"),
                 F.sum("expected_cost").alias("expected_cost"), F.sum("coupon_cost").alias("face_cost"),
                 F.sum("expected_profit").alias("expected_profit"))
            .orderBy("g").collect()
        )  # fmt: skip
        total_users = sum(r["users"] for r in rows) or 1
        total_cost = sum(r["expected_cost"] or 0.0 for r in rows) or float("nan")
        for r in rows:
            g = r["g"]
            for key in ("users", "coupons", "expected_cost", "face_cost", "expected_profit"):
                ev.add("fairness", key, float(r[key] or 0.0), dimension=dim, dimension_value=g)
            ev.add(
                "fairness",
                "coupon_rate",
                r["coupons"] / r["users"] if r["users"] else None,
                dimension=dim,
                dimension_value=g,
                n=r["users"],
            )
            ev.add(
                "fairness",
                "spend_share_over_user_share",
                ((r["expected_cost"] or 0.0) / total_cost) / (r["users"] / total_users),
                dimension=dim,
                dimension_value=g,
                n=r["users"],
                note="1 = spend in proportion to users",
            )
        groups[dim] = [(r["g"], r["users"], r["coupons"], float(r["expected_cost"] or 0.0)) for r in rows]
    ev.plots.fairness = groups


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
        model_section(ev, lake, cfg, model_version)
        if lake.exists(tables.CANDIDATES):
            candidates = lake.read(tables.CANDIDATES, where={"run_date": run_date})
            truth_section(ev, truth, lake, cfg, allocations, candidates)
        else:
            ev.say("policy (synthetic shop): no candidates table")
        logs_section(ev, lake, cfg, allocations, model_version)
        holdout_section(ev, lake, cfg)
        budget_section(ev, lake, cfg)
        fairness_section(ev, spark, lake, allocations)
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
