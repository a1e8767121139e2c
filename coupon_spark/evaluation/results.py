"""What an evaluation finds, as typed values: metric rows, the messages of what could not be computed, and the
data of each plot. Every section returns a :class:`Section`; :class:`Evaluation` is their union for one run date,
the one thing the metrics table, the printed summary and the report (:mod:`coupon_spark.report`) read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coupon_spark.evaluation import estimators as est

log = logging.getLogger("coupon_spark.evaluation")

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
    uplift_curve: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)  # fraction, model, random, perfect
    policy_values: dict[str, float] = field(default_factory=dict)  # policy -> true incremental profit
    budgets: list[tuple[str, float, float, float]] = field(default_factory=list)  # name, limit, spend, exploration
    fairness: dict[str, list[tuple[Any, int, int, float]]] = field(default_factory=dict)  # dimension -> groups


@dataclass(kw_only=True)
class Findings:
    """Metric rows, messages and plot data (the common part of a section and of the whole evaluation)."""

    metrics: list[Metric] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    plots: PlotData = field(default_factory=PlotData)

    def row(self, section: str, metric: str, value: float | None, **kw: Any) -> None:
        """Append a metric row; a non-finite value or interval bound is stored as null."""
        v = None if value is None or not np.isfinite(value) else float(value)
        clean = {k: (None if isinstance(x, float) and not np.isfinite(x) else x) for k, x in kw.items()}
        self.metrics.append(Metric(section, metric, v, **clean))

    def say(self, text: str) -> None:
        """Record what could not be computed, or which rows a figure stands on (printed and in the report)."""
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


@dataclass
class Section(Findings):
    """What one section found; its rows carry its name (one of :data:`SECTIONS`)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in SECTIONS:
            raise ValueError(f"unknown evaluation section {self.name!r}; known: {', '.join(SECTIONS)}")

    @classmethod
    def missing(cls, name: str, text: str) -> Section:
        """A section whose inputs are not there: no rows, one message saying so."""
        s = cls(name)
        s.say(text)
        return s

    def add(self, metric: str, value: float | None, **kw: Any) -> None:
        self.row(self.name, metric, value, **kw)

    def add_estimate(self, metric: str, e: est.Estimate, **kw: Any) -> None:
        self.add(metric, e.value, ci_low=e.ci_low, ci_high=e.ci_high, n=e.n, **kw)


@dataclass
class Evaluation(Findings):
    """What :func:`coupon_spark.evaluation.job.evaluate` found for ``run_date``: the union of its sections."""

    run_date: dt.date

    def include(self, section: Section) -> None:
        """Add a section's rows and messages, and the plot fields it filled (a field it left empty is kept)."""
        self.metrics += section.metrics
        self.messages += section.messages
        for f in dataclasses.fields(PlotData):
            got = getattr(section.plots, f.name)
            if got is not None and (not hasattr(got, "__len__") or len(got)):
                setattr(self.plots, f.name, got)
