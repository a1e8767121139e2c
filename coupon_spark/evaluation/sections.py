"""The sections of an evaluation, each a function of frames and config that returns a typed
:class:`~coupon_spark.evaluation.results.Section` (metric rows, messages, plot data).

None of them touches the lake or the registry: the stage's driver (:mod:`coupon_spark.evaluation.job`) reads
what each needs and passes it in, or passes the sentence saying why it is not there (a ``str``), which the
section returns as its only message. A test checks that this module imports neither the lake nor the registry.

- :func:`model_section`: the registry's validation metrics of the run's model and its decision gate, and the
  same metrics recomputed with the numpy scorer on closed examples issued since the model was trained.
- :func:`truth_section` (synthetic shop only): the true value of the run's allocation against the oracle and
  the baselines, from the simulator's plug-in (:class:`TruthPlugin`).
- :func:`logs_section`: IPS, SNIPS and DR estimates of the run's policy from the randomised logs.
- :func:`holdout_section`: the realised reward of each arm of the latest played allocation, uplift vs holdout.
- :func:`budget_section`: limit, spend, use and multiplier of every budget; the run's certificate.
- :func:`fairness_section`: users, coupons, spend and value by segment and by region.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from coupon_spark.allocation import POLICY_EXPLORATION, POLICY_HOLDOUT, POLICY_MODEL, Budget
from coupon_spark.allocation.plan import AllocationParams
from coupon_spark.config import Config, EvaluateConfig
from coupon_spark.evaluation import estimators as est
from coupon_spark.evaluation.results import Section


def margin_rate(cfg: Config) -> float:
    """The margin the evaluation values revenue at (``evaluate.margin_rate``, else the scoring one)."""
    return cfg.evaluate.margin_rate or cfg.score.margin_rate


# ---- model --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEvidence:
    """The run's model as the registry holds it, and the closed examples issued since it was trained.

    Attributes:
        label: ``"<name> v<version>"``.
        metrics: The version's ``metrics.json`` (``validation`` per target; ``decision``: its gate).
        trained: The run date it was trained on (None when the manifest does not say).
        out_of_time: ``training_examples`` rows issued from ``trained`` to the day before the run date (at most
            ``evaluate.out_of_time_max_rows``); None where not asked for or not available.
        scorer: The version's :class:`~coupon_spark.model.scorer.NumpyScorer` (needed with ``out_of_time`` rows).
    """

    label: str
    metrics: Mapping[str, Any]
    trained: dt.date | None = None
    out_of_time: pd.DataFrame | None = None
    scorer: Any = None


def model_section(evidence: ModelEvidence | str, run_date: dt.date) -> Section:
    """Registry validation metrics of the run's model, its decision gate, and out-of-time metrics."""
    if isinstance(evidence, str):
        return Section.missing("model", evidence)
    s, note = Section("model"), evidence.label
    calibration: dict[str, list[dict[str, Any]]] = {}
    for target, m in (evidence.metrics.get("validation") or {}).items():
        if not isinstance(m, dict):  # e.g. the scalar validation_loss beside the per-target metrics
            continue
        _add_binary(s, m, target, "registry_validation", note)
        calibration[f"{target} (validation)"] = m.get("calibration", [])
    s.plots.model_version = note
    if evidence.metrics.get("decision"):  # the decision gate (coupon_spark.model.gate) the version was published with
        from coupon_spark.model.gate import Gate

        gate = Gate.from_json(evidence.metrics["decision"])
        s.add("decision_gate.open", float(gate.is_open), n=gate.rows, note=f"{note}: {gate.describe()}")
        s.add("decision_gate.threshold", gate.threshold, n=gate.rows, note="EUR; null: closed")
        s.add("decision_gate.gain_lower_bound", gate.lower, n=gate.rows, note="EUR per decision")
        s.say(f"model {note}: decision gate {gate.describe()}")
    if evidence.out_of_time is not None and evidence.trained is not None:
        since = evidence.trained
        if evidence.out_of_time.empty:
            s.say(
                f"model: no closed example issued on or after the model's training date {since} yet: "
                "out-of-time metrics not available"
            )
        else:
            for target, m in out_of_time_metrics(evidence.out_of_time, evidence.scorer).items():
                _add_binary(s, m, target, "out_of_time", note + f", issued {since}..{run_date - dt.timedelta(1)}")
                calibration[f"{target} (out of time)"] = m.get("calibration", [])
    s.plots.calibration = calibration
    return s


def _add_binary(s: Section, m: Mapping[str, Any], target: str, source: str, note: str) -> None:
    for key in ("auc", "log_loss", "mean_prediction", "observed_rate", "expected_calibration_error"):
        if key in m:
            s.add(f"{source}.{key}", m[key], dimension="target", dimension_value=target, n=m.get("n"), note=note)
    for b in m.get("calibration", []):
        for key in ("mean_prediction", "observed_rate"):
            s.add(
                f"{source}.calibration.{target}.{key}",
                b[key],
                dimension="bin",
                dimension_value=b["bin"],
                n=b["n"],
                note=note,
            )


def out_of_time_metrics(pdf: pd.DataFrame, scorer: Any) -> dict[str, dict[str, Any]]:
    """AUC, log loss and calibration of ``scorer`` on closed training examples (purchase on all rows, redeem on
    the treated ones)."""
    from coupon_spark.model.data import make_examples
    from coupon_spark.model.metrics import binary_summary, summary_metrics

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

    def uplift_curve(self, options: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]: ...

    def spend(self, issued: pd.DataFrame, budgets: Sequence[Budget]) -> np.ndarray[Any, Any]: ...


def truth_section(
    truth: TruthPlugin,
    sample: TruthSampleLike,
    budgets: Sequence[Budget],
    params: AllocationParams,
    run_date: dt.date,
) -> Section:
    """True value of the run's allocation against the oracle and the baselines: the plug-in's policies on its
    valued ``sample`` at the run's model-arm ``budgets`` (scaled to the sample), then each policy's value, cost and
    coupons by uplift type."""
    s = Section("policy_truth")
    scaled = [dataclasses.replace(b, limit=b.limit * sample.share) for b in budgets]
    policies = truth.policies(sample, scaled, params, run_date)
    note = sample.note
    oracle_value = float(policies["oracle"]["true_incremental_profit"].sum())
    values = {}
    for name, rows in policies.items():
        v = float(rows["true_incremental_profit"].sum())
        values[name] = v
        per_policy = {"dimension": "policy", "dimension_value": name, "n": len(rows), "note": note}
        s.add("true_incremental_profit", v, **per_policy)
        s.add("ratio_to_oracle", v / oracle_value if oracle_value > 0 else float("nan"), **per_policy)
        s.add("true_expected_cost", float(rows["true_expected_cost"].sum()), **per_policy)
        for t in truth.uplift_types:
            s.add(f"coupons_to_{t}", float((rows["uplift_type"] == t).sum()), **per_policy)
    s.add(
        "predicted_incremental_profit",
        float(policies["model"]["expected_profit"].sum()),
        dimension="policy",
        dimension_value="model",
        note="the model's own estimate of the same coupons",
    )
    explore = sample.issued[sample.issued["policy"] == POLICY_EXPLORATION]
    s.add(
        "true_incremental_profit",
        float(explore["true_incremental_profit"].sum()),
        dimension="policy",
        dimension_value="exploration",
        n=len(explore),
        note=note,
    )
    s.add(
        "true_incremental_profit",
        0.0,
        dimension="policy",
        dimension_value="holdout",
        n=int((sample.allocations["policy"] == POLICY_HOLDOUT).sum()),
        note="the holdout gets no coupon: no increment by construction",
    )
    for b, spent in zip(scaled, truth.spend(policies["model"], scaled), strict=True):
        if b.kind == "amount":
            s.add(
                "model_true_expected_spend",
                spent,
                dimension="budget",
                dimension_value=b.name,
                note=f"model-arm limit {b.limit:.2f} on the model's estimated cost",
            )
    s.plots.policy_values = values
    s.plots.uplift_curve = truth.uplift_curve(sample.options)
    return s


# ---- policy from the randomised logs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutLogs:
    """Logged randomised decisions (:func:`ope_frame`) the run's model did not fit, and a note saying which."""

    rows: pd.DataFrame
    note: str


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


def logs_section(logs: HeldOutLogs | str, cfg: Config, run_date: dt.date) -> Section:
    """Off-policy estimates of the run's policy (and of "no coupon") on the held-out randomised logs."""
    if isinstance(logs, str):
        return Section.missing("policy_logs", logs)
    s, pdf, e = Section("policy_logs"), logs.rows, cfg.evaluate
    s.say(f"policy (logs): {len(pdf)} logged randomised decisions: {logs.note}")
    if pdf.empty:
        s.say(
            f"policy (logs): no closed randomised issuance ({', '.join(e.ope_policies)}) in the "
            f"{e.ope_lookback_days} days before {run_date}: off-policy estimates not available"
        )
        return s
    s.add(
        "support_share",
        float(pdf["supported"].mean()),
        n=len(pdf),
        note="share of logged decisions whose run action was available to the logging policy that day",
    )
    note = f"EUR per decision; reward = revenue * {margin_rate(cfg):g} - coupon cost"
    for key, estimate in ope_estimates(pdf, e.confidence, e.seed).items():
        estimator, _, target = key.partition(".")
        s.add_estimate(
            estimator if target else "mean_reward",
            estimate,
            dimension="target",
            dimension_value=target or "logging_policy",
            note=note,
        )
    return s


# ---- realised uplift against the holdout ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayedAllocation:
    """The latest allocation whose day has been played: its date, the day it was issued on, and per user of it
    the arm, whether they purchased that day (0/1) and the realised reward (``revenue * margin - coupon cost``)."""

    allocation_date: dt.date
    day: dt.date
    rewards: pd.DataFrame


def holdout_section(played: PlayedAllocation | str, cfg: Config) -> Section:
    """Realised reward and purchase rate per arm of the played allocation, and the model arm's uplift against
    the holdout with bootstrap intervals."""
    if isinstance(played, str):
        return Section.missing("holdout", played)
    s, e, pdf = Section("holdout"), cfg.evaluate, played.rewards
    alloc_date, day = played.allocation_date, played.day
    note = f"allocation of {alloc_date}, outcomes of {day}; reward = revenue * {margin_rate(cfg):g} - coupon cost"
    arms = {a: g for a, g in pdf.groupby("arm")}
    for arm, g in arms.items():
        per_arm = {"dimension": "arm", "dimension_value": arm, "n": len(g), "note": note}
        s.add("mean_reward", float(g["reward"].mean()), **per_arm)
        s.add("purchase_rate", float(g["purchased"].mean()), **per_arm)
    model, hold = arms.get(POLICY_MODEL), arms.get(POLICY_HOLDOUT)
    if model is None or hold is None:
        s.say(f"holdout: the allocation of {alloc_date} has no {'model' if model is None else 'holdout'} arm")
        return s
    per_date = {"dimension": "allocation_date", "dimension_value": alloc_date.isoformat()}
    up = _difference(model["reward"], hold["reward"], e, e.seed)
    s.add_estimate("uplift_per_user", up, note=note + "; model arm minus holdout, bootstrap", **per_date)
    pr = _difference(model["purchased"], hold["purchased"], e, e.seed + 1)
    s.add_estimate("purchase_rate_uplift", pr, note=note, **per_date)
    s.add(
        "incremental_profit",
        up.value * len(model),
        ci_low=up.ci_low * len(model),
        ci_high=up.ci_high * len(model),
        n=len(model),
        note=note + "; per-user uplift times model-arm users",
        **per_date,
    )
    return s


def _difference(a: pd.Series, b: pd.Series, e: EvaluateConfig, seed: int) -> est.Estimate:
    return est.bootstrap_mean_difference(a.to_numpy(), b.to_numpy(), e.bootstrap_samples, e.confidence, seed)


# ---- budgets and fairness ----------------------------------------------------------------------------------------

BUDGET_RUN_FIELDS = ("primal_value", "dual_bound", "gap", "n_users", "n_holdout", "n_exploration", "n_model")
BUDGET_FIELDS = ("limit", "spend", "exploration_spend", "use", "multiplier")


def budget_section(run: Mapping[str, Any] | str) -> Section:
    """The run's certificate and every budget's limit, spend and use, from its ``allocation_runs`` row."""
    if isinstance(run, str):
        return Section.missing("budget", run)
    s = Section("budget")
    for key in BUDGET_RUN_FIELDS:
        s.add(key, float(run[key]) if run[key] is not None else None, note=run["run_id"])
    spend = []
    for b in run["budgets"] or []:
        for key in BUDGET_FIELDS:
            s.add(key, b[key], dimension="budget", dimension_value=b["name"], note=b["campaign_id"])
        spend.append((b["name"], float(b["limit"]), float(b["spend"]), float(b["exploration_spend"] or 0.0)))
    s.plots.budgets = spend
    return s


FAIRNESS_TOTALS = ("users", "coupons", "expected_cost", "face_cost", "expected_profit")


def fairness_section(allocations: DataFrame, users: DataFrame | str) -> Section:
    """Coupons, spend and expected value by segment and region (``users``: the silver users snapshot of the run
    date, with ``user_id``, ``segment`` and ``region``)."""
    if isinstance(users, str):
        return Section.missing("fairness", users)
    s = Section("fairness")
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
            per_group = {"dimension": dim, "dimension_value": r["g"]}
            for key in FAIRNESS_TOTALS:
                s.add(key, float(r[key] or 0.0), **per_group)
            s.add("coupon_rate", r["coupons"] / r["users"] if r["users"] else None, n=r["users"], **per_group)
            s.add(
                "spend_share_over_user_share",
                ((r["expected_cost"] or 0.0) / total_cost) / (r["users"] / total_users),
                n=r["users"],
                note="1 = spend in proportion to users",
                **per_group,
            )
        groups[dim] = [(r["g"], r["users"], r["coupons"], float(r["expected_cost"] or 0.0)) for r in rows]
    s.plots.fairness = groups
    return s
