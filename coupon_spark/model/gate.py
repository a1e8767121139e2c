"""The decision gate: does the model's targeting beat issuing nothing, on randomised logs it never trained on?

A model can rank users well and still lose money: the allocator picks the largest estimates, and where the
uplift is small next to its estimation noise those are mostly the noisiest ones. So before a model version
may issue coupons, its own policy is evaluated off-policy. Policy ``pi_t``: each user gets the eligible coupon
with the largest expected incremental profit ``S`` if ``S > t``, else nothing. On the held-out rows (the
training job's validation split) that randomised logging policies chose, with known propensities ``p_i``,
the doubly robust estimate (Dudik, Langford and Li, 2011) of its gain over issuing nothing is the mean of::

    G_i(t) = 1[S_i > t] * ( mu(x_i, c_i) - mu(x_i, none)
                            + 1[a_i = c_i]  * (r_i - mu(x_i, c_i))  / p_i
                            - 1[a_i = none] * (r_i - mu(x_i, none)) / p_i )

where ``c_i`` is the model's best coupon for the user, ``a_i`` the logged arm, ``r_i = revenue * margin -
coupon cost`` the logged reward and ``mu`` the model's own reward prediction (``p(purchase | c) * margin *
basket - p(redeem | c) * cost``; no cost without a coupon). The estimate is unbiased whatever ``mu`` is,
because the propensities are known and the logging policy could have chosen ``c_i`` (rows of coupon-spark's
own exploration arm, which draws among the user's candidates of the day, count only where ``c_i`` was one of
them); ``mu`` only lowers its variance.

The threshold is the candidate (0, then quantiles of the positive ``S``) with the largest lower confidence
bound of the mean gain (one-sided, Bonferroni over the candidates), if that bound is positive. Otherwise the
gate stays closed (``threshold = inf``): the model has not shown that any of its coupons pays, so the scores
keep ranking coupons but none is worth issuing on the model's behalf; the holdout and the exploration arm go
on, so the next models get new randomised data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from coupon_spark.config import ScoreConfig

DECISION_FILE = "decision.json"
THRESHOLD_QUANTILES = (0.5, 0.75, 0.9, 0.95)
"""Candidate thresholds besides 0: these quantiles of the positive best scores."""
MIN_ROWS = 100
"""Fewer held-out decisions than this and the gate stays closed."""


@dataclass(frozen=True)
class Gate:
    """The gate of a model version.

    Attributes:
        threshold: EUR; the model issues a coupon only where its expected incremental profit is above it
            (``inf``: closed, 0.0: no gate -- every positive estimate counts).
        gain: Estimated gain over issuing nothing at that threshold, EUR per decision (NaN when closed).
        lower: Its lower confidence bound (the best bound over the candidates when closed).
        share_issued: Share of the held-out decisions the policy would give a coupon at that threshold.
        rows: Held-out randomised decisions the estimate rests on.
        confidence: Level of the (Bonferroni-corrected, one-sided) bounds.
        curve: Every candidate threshold with its gain, standard error, bound and issued share.
    """

    threshold: float
    gain: float
    lower: float
    share_issued: float
    rows: int
    confidence: float
    curve: list[dict[str, float]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return math.isfinite(self.threshold)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become null (a null threshold means closed)."""

        def safe(x: Any) -> Any:
            return x if not isinstance(x, float) or math.isfinite(x) else None

        out = asdict(self)
        out["curve"] = [{k: safe(v) for k, v in c.items()} for c in self.curve]
        return {k: safe(v) for k, v in out.items()} | {"open": self.is_open}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Gate:
        num = lambda k: math.nan if obj.get(k) is None else float(obj[k])  # noqa: E731
        threshold = math.inf if obj.get("threshold") is None else float(obj["threshold"])
        return cls(
            threshold=threshold,
            gain=num("gain"),
            lower=num("lower"),
            share_issued=num("share_issued"),
            rows=int(obj.get("rows") or 0),
            confidence=float(obj.get("confidence") or 0.0),
            curve=list(obj.get("curve") or []),
        )

    def describe(self) -> str:
        if self.rows < MIN_ROWS:
            return f"{self.rows} held-out randomised decisions to test the model on (fewer than {MIN_ROWS}): closed"
        if not self.is_open:
            return (
                f"closed: on {self.rows} held-out randomised decisions no threshold shows a gain over issuing "
                f"nothing (best {self.confidence:.0%} lower bound {self.lower:+.3f} EUR/decision)"
            )
        return (
            f"open above {self.threshold:.3f} EUR: gain {self.gain:+.3f} EUR/decision (lower bound "
            f"{self.lower:+.3f}) on {self.rows} held-out randomised decisions, coupons to {self.share_issued:.1%}"
        )


NO_GATE = Gate(threshold=0.0, gain=math.nan, lower=math.nan, share_issued=math.nan, rows=0, confidence=0.0)
"""Models published before the gate existed, or trained with ``train.decision_confidence: 0``."""


def dr_gain(
    mu_best: np.ndarray,
    mu_none: np.ndarray,
    reward: np.ndarray,
    propensity: np.ndarray,
    logged_best: np.ndarray,
    logged_none: np.ndarray,
) -> np.ndarray:
    """Per decision, the doubly robust estimate of (value of the best coupon) - (value of none); see the module
    docstring. ``logged_best``/``logged_none``: whether the logged arm was the model's best coupon / none."""
    p = np.asarray(propensity, np.float64)
    return (
        (mu_best - mu_none)
        + np.where(logged_best, (reward - mu_best) / p, 0.0)
        - np.where(logged_none, (reward - mu_none) / p, 0.0)
    )


def choose_threshold(
    best_score: np.ndarray,
    gain: np.ndarray,
    confidence: float,
    quantiles: Sequence[float] = THRESHOLD_QUANTILES,
    min_rows: int = MIN_ROWS,
) -> Gate:
    """The threshold with the best lower confidence bound of the mean gain, if that bound is positive.

    Args:
        best_score: Per held-out decision, the model's largest expected incremental profit (EUR).
        gain: Per decision, :func:`dr_gain` of that best coupon.
        confidence: One-sided level of the bounds, before the Bonferroni correction over the candidates.
        quantiles: Quantiles of the positive best scores tried as thresholds besides 0.
        min_rows: Fewer held-out decisions than this: closed.
    """
    s, g = np.asarray(best_score, np.float64), np.asarray(gain, np.float64)
    n = len(s)
    if n < min_rows:  # too few for a normal-approximation bound to mean anything
        return Gate(math.inf, math.nan, math.nan, 0.0, n, confidence)
    pos = s[s > 0]
    candidates = sorted({0.0, *(float(np.quantile(pos, q)) for q in quantiles)} if len(pos) else {0.0})
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / len(candidates))
    curve = []
    for t in candidates:
        gi = np.where(s > t, g, 0.0)
        mean, se = float(gi.mean()), float(gi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        lower, share = mean - z * se, float(np.mean(s > t))
        curve.append({"threshold": t, "gain": mean, "se": se, "lower": lower, "share_issued": share})
    best = max(curve, key=lambda c: c["lower"])
    if not best["lower"] > 0:
        return Gate(math.inf, math.nan, best["lower"], 0.0, n, confidence, curve)
    return Gate(best["threshold"], best["gain"], best["lower"], best["share_issued"], n, confidence, curve)


def best_option_gains(
    scorer,  # type: ignore[no-untyped-def]
    rows: pd.DataFrame,
    coupons_by_date: Mapping[Any, pd.DataFrame],
    cfg: ScoreConfig,
    options: Mapping[tuple[Any, str], frozenset[str]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For held-out logged decisions: the model's best expected incremental profit and :func:`dr_gain`.

    Args:
        scorer: A :class:`coupon_spark.model.scorer.NumpyScorer`.
        rows: Logged decisions with the user's ``uf_*``/``uc_*`` features as of the issue date, ``issue_date``,
            ``coupon_id`` (null: the control arm), ``propensity``, ``revenue_eur`` and ``coupon_cost_eur``.
        coupons_by_date: Per issue date, the coupons live then (``coupon_features`` rows of that date).
        cfg: Scoring settings (margin, basket default, eligibility): the score job's own rules.
        options: For rows whose logging policy chose among a subset of the coupons (coupon-spark's own
            exploration arm draws among the user's candidates of the day), ``(issue_date, user_id) -> coupon
            ids`` it could draw; rows whose model-best coupon is not among them are left out, since the logs
            cannot tell what that coupon would have done (the estimate would fall back on the model's own
            optimism). Rows not in the mapping could draw any live coupon.

    Returns:
        ``(best_score, gain)``, one entry per row whose issue date had a live coupon, whose user had an
        eligible one, and whose logging policy could have chosen the model's best coupon.
    """
    from coupon_spark.scoring import mask_ineligible, prepare_coupons, user_basket

    scores, gains = [], []
    for day, part in rows.groupby("issue_date", sort=True):
        frame = coupons_by_date.get(day)
        if frame is None or frame.empty:
            continue
        part = part.reset_index(drop=True)
        coupons = prepare_coupons(frame, scorer, cfg)
        out = scorer.predict(scorer.user_embed(part), coupons.embeddings)
        value = (cfg.margin_rate * user_basket(part, cfg))[:, None]
        mu = out["p_purchase"] * value - out["p_redeem"] * coupons.cost[None, :]
        mu_none = out["p_purchase_none"] * value[:, 0]
        profit = mask_ineligible((mu - mu_none[:, None]).astype(np.float64), part, coupons, cfg)
        n = np.arange(len(part))
        best = profit.argmax(axis=1)
        logged = part["coupon_id"].to_numpy(object)
        revenue, cost = part["revenue_eur"].to_numpy(np.float64), part["coupon_cost_eur"].to_numpy(np.float64)
        reward = revenue * cfg.margin_rate - cost
        g = dr_gain(
            mu[n, best],
            mu_none,
            reward,
            part["propensity"].to_numpy(np.float64),
            logged == coupons.frame["coupon_id"].to_numpy(object)[best],
            pd.isna(logged),
        )
        ok = np.isfinite(profit[n, best])  # users with no eligible coupon are not decisions of the model
        if options:
            ids = coupons.frame["coupon_id"].to_numpy(object)[best]
            users = part["user_id"].to_numpy(object)
            ok &= np.array(
                [options.get((day, u)) is None or c in options[(day, u)] for u, c in zip(users, ids, strict=True)]
            )
        scores.append(profit[n, best][ok])
        gains.append(g[ok])
    if not scores:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(scores), np.concatenate(gains)


def live_on(frame: pd.DataFrame) -> pd.Series:
    """Coupon feature rows valid on their snapshot date (the rule of ``coupon_spark.scoring.live_coupons``)."""
    return (frame["cf_days_left"] >= 1) & (frame["cf_days_since_start"] >= 0)
