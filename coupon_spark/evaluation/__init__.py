"""Evaluation of a run (``coupon-spark evaluate``): model metrics, policy value (true and off-policy), realised
uplift against the holdout, budget use, fairness; the metrics table and the report.

- :mod:`~coupon_spark.evaluation.estimators`: IPS, self-normalised IPS, doubly robust, bootstrap (numpy).
- :mod:`~coupon_spark.evaluation.uplift_metrics`: Qini and uplift curves, Qini coefficient, AUUC from randomised
  logs (numpy).
- the true value of allocations on the synthetic shop (oracle, baselines) is the simulator's plug-in,
  :mod:`coupon_spark.datagen.truth`, passed to the evaluation only where the lake holds the shop's truth.
- :mod:`~coupon_spark.evaluation.results`: the typed findings (metric rows, messages, plot data) of a section
  and of the whole evaluation, which the metrics table, the summary and the report read.
- :mod:`~coupon_spark.evaluation.sections`: the sections, each a function of frames and config returning a
  typed section; none touches the lake.
- :mod:`~coupon_spark.evaluation.job`: the stage's driver (reads what each section needs, writes the metrics
  table and the report).
"""

from __future__ import annotations

from coupon_spark.evaluation.estimators import (
    Estimate,
    bootstrap_mean_difference,
    cross_fitted_cell_means,
    doubly_robust,
    ips,
    snips,
)
from coupon_spark.evaluation.job import (
    METRICS_TABLE,
    NoAllocationError,
    evaluate,
    metrics_frame,
    report_dir,
    run,
    summary_lines,
    write,
)
from coupon_spark.evaluation.results import Evaluation, Metric, PlotData, Section
from coupon_spark.evaluation.sections import TruthPlugin
from coupon_spark.evaluation.uplift_metrics import UpliftCurves, auuc, qini_coefficient, uplift_curves

__all__ = [
    "METRICS_TABLE",
    "Estimate",
    "Evaluation",
    "Metric",
    "NoAllocationError",
    "PlotData",
    "Section",
    "TruthPlugin",
    "UpliftCurves",
    "auuc",
    "bootstrap_mean_difference",
    "cross_fitted_cell_means",
    "doubly_robust",
    "evaluate",
    "ips",
    "metrics_frame",
    "qini_coefficient",
    "report_dir",
    "run",
    "snips",
    "summary_lines",
    "uplift_curves",
    "write",
]
