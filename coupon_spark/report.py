"""The evaluation report: one HTML page with PNG plots, written next to each other in a folder.

``write_report(evaluation, history, folder)`` writes ``index.html`` and the plots (calibration, uplift curve,
spend per campaign, policy value against the baselines, value over days) that have data; a plot without data
is replaced by a sentence saying why. Works on a local folder or an object store (pyarrow filesystems).
"""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from coupon_spark.model.registry import write_bytes

if TYPE_CHECKING:
    from coupon_spark.evaluation.results import Evaluation


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_calibration(calibration: dict[str, list[dict[str, Any]]]) -> bytes | None:
    if not any(calibration.values()):
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, bins in calibration.items():
        if bins:
            ax.plot([b["mean_prediction"] for b in bins], [b["observed_rate"] for b in bins], marker="o", label=name)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed rate")
    ax.set_title("Calibration")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_uplift_curve(curve: dict[str, np.ndarray]) -> bytes | None:
    if not curve:
        return None
    fig, ax = _figure()
    x = 100 * np.asarray(curve["fraction"])
    ax.plot(x, curve["perfect"], label="true order (best coupon)", color="grey", linestyle="--")
    ax.plot(x, curve["model"], label="model order", color="C0")
    ax.plot(x, curve["random"], label="random order", color="C3", linestyle=":")
    ax.set_xlabel("users targeted (%), best candidate by the model")
    ax.set_ylabel("cumulative true incremental profit (EUR)")
    ax.set_title("Uplift curve (synthetic shop truth)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_budgets(budgets: list[tuple[str, float, float, float]]) -> bytes | None:
    if not budgets:
        return None
    fig, ax = _figure()
    names = [b[0] for b in budgets]
    y = np.arange(len(names))
    ax.barh(y, [b[1] for b in budgets], color="lightgrey", label="limit")
    ax.barh(y, [b[2] - b[3] for b in budgets], color="C0", label="model spend")
    ax.barh(y, [b[3] for b in budgets], left=[b[2] - b[3] for b in budgets], color="C1", label="exploration spend")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("spend (run's cost basis; coupons for count budgets)")
    ax.set_title("Budget use")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_policy_values(values: dict[str, float]) -> bytes | None:
    if not values:
        return None
    fig, ax = _figure()
    names = list(values)
    ax.bar(names, [values[n] for n in names], color=["C2" if n == "oracle" else "C0" for n in names])
    oracle = values.get("oracle", 0.0)
    for i, n in enumerate(names):
        if oracle > 0:
            ax.annotate(f"{values[n] / oracle:.0%}", (i, values[n]), ha="center", va="bottom", fontsize=9)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("true incremental profit (EUR)")
    ax.set_title("Policy value at the same budgets (ratio to the oracle)")
    return _png(fig)


def plot_history(hist: pd.DataFrame) -> bytes | None:
    if hist.empty:
        return None
    fig, ax = _figure()
    h = hist.sort_values("run_date")
    truth = h[(h["section"] == "policy_truth") & (h["metric"] == "true_incremental_profit")]
    for policy in ("model", "oracle", "random", "redeem"):
        s = truth[truth["dimension_value"] == policy]
        if not s.empty:
            ax.plot(s["run_date"], s["value"], marker="o", label=f"{policy} (truth)")
    hold = h[(h["section"] == "holdout") & (h["metric"] == "incremental_profit")]
    if not hold.empty:
        v = hold["value"].to_numpy(np.float64)
        ax.errorbar(
            list(hold["run_date"]),
            v,
            yerr=np.vstack([v - hold["ci_low"].to_numpy(np.float64), hold["ci_high"].to_numpy(np.float64) - v]),
            marker="s",
            linestyle="--",
            label="realised vs holdout",
        )
    if not ax.lines and not ax.containers:
        return None
    ax.set_ylabel("incremental profit (EUR)")
    ax.set_title("Value over days")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def _table(ev: Evaluation, section: str) -> str:
    rows = [m for m in ev.metrics if m.section == section and ".calibration." not in m.metric]
    if not rows:
        return "<p><i>No figures.</i></p>"

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"

    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            m.metric, m.dimension or "", m.dimension_value or "", fmt(m.value),
            "" if m.ci_low is None else f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]", "" if m.n is None else m.n,
            m.note or "",
        )) + "</tr>"
        for m in rows
    )  # fmt: skip
    head = "".join(f"<th>{h}</th>" for h in ("metric", "dimension", "value of", "value", "interval", "n", "note"))
    return f"<table><tr>{head}</tr>{body}</table>"


_TITLES = {
    "model": "Model (held-out issuances)",
    "policy_truth": "Policy value on the synthetic shop (true response)",
    "policy_logs": "Policy value from the logs only (off-policy estimates)",
    "holdout": "Realised uplift against the holdout",
    "budget": "Budget use",
    "fairness": "Fairness: coupons and spend by segment and region",
}


def write_report(ev: Evaluation, hist: pd.DataFrame, folder: str) -> str:
    """Write ``<folder>/index.html`` and its PNG plots; returns the path of ``index.html``."""
    plots = {
        "calibration.png": ("Calibration", plot_calibration(ev.plots.calibration)),
        "uplift_curve.png": ("Uplift curve", plot_uplift_curve(ev.plots.uplift_curve)),
        "budgets.png": ("Spend per campaign", plot_budgets(ev.plots.budgets)),
        "policy_value.png": (
            "Policy value against the baselines",
            plot_policy_values(ev.plots.policy_values),
        ),
        "value_over_days.png": ("Value over days", plot_history(hist)),
    }
    figures = []
    for file, (title, png) in plots.items():
        if png is None:
            figures.append(f"<figure><figcaption>{title}</figcaption><p><i>No data for this plot.</i></p></figure>")
            continue
        write_bytes(f"{folder}/{file}", png)
        figures.append(f'<figure><figcaption>{title}</figcaption><img src="{file}" alt="{title}"></figure>')
    notes = "".join(f"<li>{html.escape(m)}</li>" for m in ev.messages) or "<li>none</li>"
    sections = "".join(f"<h2>{_TITLES[s]}</h2>{_table(ev, s)}" for s in _TITLES)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>coupon-spark evaluation {ev.run_date}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}} figure{{display:inline-block;margin:1em}}</style>
</head><body>
<h1>coupon-spark evaluation, run date {ev.run_date}</h1>
<h2>What could not be computed</h2><ul>{notes}</ul>
<div>{"".join(figures)}</div>
{sections}
</body></html>
"""
    path = f"{folder}/index.html"
    write_bytes(path, page.encode("utf-8"))
    return path
