"""A user's basket, and order amounts as a log-normal around it: what a minimum spend adds to a redeeming order.

One formula for two owners: the synthetic shop's truth (:func:`coupon_spark.datagen.response.expected_top_up`,
with the generator's own spread) and the score job's cost of a redemption
(:func:`coupon_spark.policy.redemption_cost`, with each user's spread estimated from their orders).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.special import ndtr

HISTORY_BASKET = "uf_hist_basket"
"""The year's average basket (``features.history_window_days``)."""
_WINDOW_BASKET = re.compile(r"uf_avg_basket_(\d+)d")


def basket_columns(columns: Iterable[str]) -> list[str]:
    """The basket columns among ``columns``, best first: the year's average basket, then the window averages
    ``uf_avg_basket_<w>d`` longest first (whatever ``features.windows_days`` made)."""
    cols = list(columns)
    windows = sorted(((int(m.group(1)), c) for c in cols if (m := _WINDOW_BASKET.fullmatch(c))), reverse=True)
    return ([HISTORY_BASKET] if HISTORY_BASKET in cols else []) + [c for _, c in windows]


def basket_of(users: pd.DataFrame, default_eur: float) -> np.ndarray:
    """Each user's basket (EUR): the first of :func:`basket_columns` that is positive for the user, else
    ``default_eur``."""
    out = np.full(len(users), np.nan)
    for c in basket_columns(users.columns):
        b = users[c].to_numpy(dtype=np.float64, na_value=0.0)
        out = np.where(np.isnan(out) & (b > 0), b, out)
    return np.where(np.isnan(out), float(default_eur), out)


def log_normal_top_up(mean: np.ndarray, sd_log: np.ndarray | float, level: np.ndarray) -> np.ndarray:
    """``E[max(A, s)] - E[A]`` for ``A`` log-normal with mean ``mean`` and log-sd ``sd_log``, ``s = level``
    (broadcast): ``s Phi(d) - b Phi(d - sd)`` with ``d = (ln s - ln b) / sd + sd / 2``, the value of a put on
    ``A`` struck at ``s``. 0 where ``level <= 0``."""
    b = np.maximum(np.asarray(mean, np.float64), 1e-9)
    sd = np.asarray(sd_log, np.float64)
    s = np.asarray(level, np.float64)
    with np.errstate(divide="ignore"):
        d = (np.log(np.maximum(s, 1e-300)) - np.log(b)) / sd + sd / 2
    return np.where(s > 0, s * ndtr(d) - b * ndtr(d - sd), 0.0)
