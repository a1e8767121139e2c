"""The decision policy, in one place and in numpy alone (no Spark, no TensorFlow): what a coupon is worth to the
shop, who may get which coupon, which coupons are live, and the reward a logged decision earned.

Expected incremental profit of coupon c for user u, against giving nothing (the synthetic shop's definition)::

    expected_profit = uplift * margin_rate * basket_u - p_redeem * (coupon_cost_c - margin_rate * top_up_uc)

with ``basket_u`` the user's basket (:func:`user_basket`; ``score.default_basket_eur`` without history),
``margin_rate`` the shop's gross margin (``score.margin_rate``) and ``top_up_uc`` what a redeeming order adds to
reach the coupon's minimum spend (:func:`redemption_cost`, ``score.top_up``). The reward of a logged decision is
``revenue_eur * margin_rate - coupon_cost_eur`` (:func:`logged_reward`).

Its users: the score job (:mod:`coupon_spark.scoring`, inside its pandas UDF), the model's decision gate
(:mod:`coupon_spark.model.gate`), the evaluation and ``bench/model_quality.py``; :func:`effect` is the
causalml-like surface (users x coupons -> incremental profit) over a scorer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from coupon_spark.basket import basket_of, log_normal_top_up
from coupon_spark.config import ScoreConfig

COUPON_FEATURE_PREFIXES = ("cf_", "cc_")  # coupon_spark.schemas' (a test keeps them equal; no pyspark here)
SEGMENT_COLUMN = "uc_segment"
RECENT_COLUMN = "recent_coupons"

LIVE_MIN_DAYS_LEFT = 1
LIVE_MIN_DAYS_SINCE_START = 0
"""A coupon is live on a snapshot date when ``cf_days_left >= 1`` and ``cf_days_since_start >= 0`` (valid that
day); the score job adds its campaign's remaining budget (:func:`coupon_spark.scoring.live_coupons`)."""


def live_on(frame: pd.DataFrame) -> pd.Series:
    """Coupon feature rows live on their snapshot date (:data:`LIVE_MIN_DAYS_LEFT`)."""
    return (frame["cf_days_left"] >= LIVE_MIN_DAYS_LEFT) & (frame["cf_days_since_start"] >= LIVE_MIN_DAYS_SINCE_START)


@dataclass(frozen=True)
class LiveCoupons:
    """The coupons that can be issued on the run date, as the scoring tasks need them (small: driver side)."""

    frame: pd.DataFrame  # coupon_id, campaign_id, cf_*/cc_* columns
    embeddings: NDArray[Any]  # [m, 2d + 2], the coupon tower's output
    cost: NDArray[Any]  # [m] money per redemption
    min_spend: NDArray[Any]  # [m]
    allowed_segments: list[frozenset[str] | None]  # per coupon: None = every segment


def prepare_coupons(frame: pd.DataFrame, scorer: Any, cfg: ScoreConfig) -> LiveCoupons:
    """Run the coupon tower on the live coupons (driver side, once per job)."""
    frame = frame.sort_values("coupon_id").reset_index(drop=True)
    targeting = {k: frozenset(v) for k, v in cfg.targeting.items()}
    return LiveCoupons(
        frame=frame[["coupon_id", "campaign_id", *[c for c in frame.columns if c.startswith(COUPON_FEATURE_PREFIXES)]]],
        embeddings=scorer.coupon_embed(frame),
        cost=frame["cf_cost"].to_numpy(np.float64),
        min_spend=frame["cf_min_spend"].to_numpy(np.float64),
        allowed_segments=[targeting.get(c) for c in frame["campaign_id"]],
    )


def mask_ineligible(values: NDArray[Any], users: pd.DataFrame, coupons: LiveCoupons, cfg: ScoreConfig) -> NDArray[Any]:
    """Set ``values[i, j]`` to -inf where user i may not get coupon j: frequency cap, segment targeting,
    minimum-spend plausibility. In place; returns ``values``."""
    if RECENT_COLUMN in users:
        values[users[RECENT_COLUMN].to_numpy() >= cfg.frequency_cap, :] = -np.inf
    basket = user_basket(users, cfg)
    values[coupons.min_spend[None, :] > cfg.min_spend_factor * basket[:, None]] = -np.inf
    if any(a is not None for a in coupons.allowed_segments):
        n = len(users)
        seg = users[SEGMENT_COLUMN].astype(object).to_numpy() if SEGMENT_COLUMN in users else np.full(n, None)
        for j, allowed in enumerate(coupons.allowed_segments):
            if allowed is not None:
                values[~np.isin(seg, list(allowed)), j] = -np.inf
    return values


CV_PRIOR_ORDERS = 4.0
"""A user's coefficient of variation of order amounts is shrunk toward ``score.basket_cv`` as if that had been
seen on this many more orders."""


def basket_cv(users: pd.DataFrame, cfg: ScoreConfig) -> NDArray[Any]:
    """Each user's coefficient of variation of order amounts: from the year's orders (``uf_hist_basket_sd`` /
    ``uf_hist_basket`` on ``uf_hist_orders_*``) shrunk toward ``score.basket_cv``; that alone where the
    history has fewer than two orders or the columns are missing."""
    prior = np.full(len(users), float(cfg.basket_cv))
    counts = [c for c in users.columns if c.startswith("uf_hist_orders_")]
    if not counts or "uf_hist_basket_sd" not in users or "uf_hist_basket" not in users:
        return prior
    n = users[counts[0]].to_numpy(np.float64, na_value=0.0)
    mean = users["uf_hist_basket"].to_numpy(np.float64, na_value=0.0)
    sd = users["uf_hist_basket_sd"].to_numpy(np.float64, na_value=0.0)
    own = np.divide(sd, mean, out=np.zeros_like(sd), where=mean > 0)
    w = np.clip(n - 1.0, 0.0, None)  # degrees of freedom of the user's own variance
    cv2 = (w * own**2 + CV_PRIOR_ORDERS * prior**2) / (w + CV_PRIOR_ORDERS)
    return np.where((n >= 2) & (mean > 0), np.sqrt(cv2), prior)


def expected_top_up(basket: NDArray[Any], cv: NDArray[Any], min_spend: NDArray[Any]) -> NDArray[Any]:
    """``[n, m]`` EUR: what a redeeming order adds to reach each minimum spend ``[m]``, for amounts log-normal
    with mean ``basket`` and coefficient of variation ``cv`` (per user, ``[n]``; log-sd ``sqrt(ln(1 + cv^2))``):
    :func:`coupon_spark.basket.log_normal_top_up`. 0 without a minimum spend."""
    sd = np.sqrt(np.log1p(np.asarray(cv, np.float64) ** 2))
    return log_normal_top_up(np.asarray(basket)[:, None], sd[:, None], np.asarray(min_spend)[None, :])


def redemption_cost(users: pd.DataFrame, coupons: LiveCoupons, cfg: ScoreConfig) -> NDArray[Any]:
    """``[n, m]`` float32: what a redemption of each coupon by each user costs the shop, net of the margin on
    the spend it adds. A redeeming order reaches the coupon's minimum spend by the coupon's terms, so a user
    whose basket would fall short tops it up (:func:`expected_top_up`; ``score.top_up``); the cost of the
    coupon itself is ``coupons.cost``. Used wherever an expected profit is computed from the model's
    probabilities: ``uplift * margin * basket - p_redeem * redemption_cost``."""
    cost = np.broadcast_to(coupons.cost[None, :], (len(users), len(coupons.cost))).astype(np.float64)
    if cfg.top_up and len(users) and len(coupons.cost):
        basket = user_basket(users, cfg)
        cost = cost - cfg.margin_rate * expected_top_up(basket, basket_cv(users, cfg), coupons.min_spend)
    return cost.astype(np.float32)


def user_basket(users: pd.DataFrame, cfg: ScoreConfig) -> NDArray[Any]:
    """Each user's basket (EUR): :func:`coupon_spark.basket.basket_of` with ``cfg.default_basket_eur`` for a
    user without orders."""
    return basket_of(users, cfg.default_basket_eur)


def purchase_value(users: pd.DataFrame, cfg: ScoreConfig) -> NDArray[Any]:
    """``[n]`` EUR a purchase by each user is worth to the shop: ``margin_rate * basket`` (float64)."""
    return cfg.margin_rate * user_basket(users, cfg)


def expected_profit(
    uplift: NDArray[Any], p_redeem: NDArray[Any], value: NDArray[Any], cost: NDArray[Any]
) -> NDArray[Any]:
    """``uplift * value - p_redeem * cost``: the expected incremental profit of each (user, coupon) against no
    coupon, with ``value`` ``[n, 1]`` (:func:`purchase_value`) and ``cost`` ``[n, m]`` (:func:`redemption_cost`)."""
    return np.asarray(uplift * value - p_redeem * cost)


def logged_reward(revenue_eur: ArrayLike, coupon_cost_eur: ArrayLike, margin_rate: float) -> NDArray[Any]:
    """What a logged decision earned the shop: the margin on its revenue (at list price) less the coupon's cost."""
    return np.asarray(revenue_eur, np.float64) * margin_rate - np.asarray(coupon_cost_eur, np.float64)


def effect(scorer: Any, users: pd.DataFrame, coupons: pd.DataFrame, cfg: ScoreConfig) -> NDArray[Any]:
    """``[n, m]`` float64: the model's expected incremental profit of each live coupon for each user, as the
    score job computes it before its lower bound, gate and eligibility (the causalml-like ``effect`` surface).

    Args:
        scorer: A :class:`coupon_spark.model.scorer.NumpyScorer`.
        users: Raw user features (``uf_*``, ``uc_*``).
        coupons: The live coupons' ``coupon_features`` rows (any order; columns come back sorted by
            ``coupon_id``, as :func:`prepare_coupons` orders them).
        cfg: The score settings (margin, basket default, top-up).
    """
    live = prepare_coupons(coupons, scorer, cfg)
    out = scorer.score_frames(users, live.frame, live.embeddings)
    value = purchase_value(users, cfg)[:, None]
    return np.asarray(
        expected_profit(out["uplift"], out["p_redeem"], value, redemption_cost(users, live, cfg)), np.float64
    )
