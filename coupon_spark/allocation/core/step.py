"""The dual step: each user's best options under given multipliers, aggregated per block."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coupon_spark.allocation.core.arms import Arms
from coupon_spark.allocation.core.base import CostBasis
from coupon_spark.allocation.core.blocks import Block


@dataclass
class Agg:
    """Sums over users for ``m`` multiplier vectors at once."""

    amount: np.ndarray  # (m, C) cost of the chosen options per campaign
    count: np.ndarray  # (m, C) number of chosen options per campaign
    value: np.ndarray  # (m,) primal value of the choices
    lagr: np.ndarray  # (m,) sum over users of the best adjusted value (the dual's user part)
    options: int = 0  # user-options evaluated (for throughput figures)

    def __add__(self, other: Agg) -> Agg:
        return Agg(
            self.amount + other.amount,
            self.count + other.count,
            self.value + other.value,
            self.lagr + other.lagr,
            self.options + other.options,
        )

    @classmethod
    def zero(cls, m: int, n_campaigns: int) -> Agg:
        return cls(np.zeros((m, n_campaigns)), np.zeros((m, n_campaigns)), np.zeros(m), np.zeros(m))


def _adjusted(value: np.ndarray, cost: np.ndarray, camp: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    adj = value.copy()
    if alpha.any():
        adj -= cost * alpha[camp]
    if beta.any():
        adj -= beta[camp]
    return adj


def _choose(adj: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` options with positive adjusted value per row, as an ``(n, L)`` boolean mask.

    Ties go to the lower option index (coupon id order), so the same data always gives the same choice.
    """
    n, width = adj.shape
    if k == 1:
        j = adj.argmax(axis=1)
        best = adj[np.arange(n), j]
        chosen = np.zeros(adj.shape, dtype=bool)
        rows = np.flatnonzero(best > 0)
        chosen[rows, j[rows]] = True
        return chosen
    if width <= k:
        return adj > 0
    idx = np.argsort(-adj, axis=1, kind="stable")[:, :k]
    chosen = np.zeros(adj.shape, dtype=bool)
    np.put_along_axis(chosen, idx, True, axis=1)
    return chosen & (adj > 0)


def evaluate_block(
    block: Block, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, n_campaigns: int
) -> Agg:
    """The dual step on one block for ``m`` multiplier vectors (as per-campaign ``alpha``/``beta``, ``(m, C)``)."""
    m = alpha.shape[0]
    rows = arms.model_rows(block)
    if not rows.all():
        value, cost, camp = block.value[rows], block.cost(basis)[rows], block.campaign[rows]
    else:
        value, cost, camp = block.value, block.cost(basis), block.campaign
    out = Agg.zero(m, n_campaigns)
    out.options = value.size * m
    if value.size == 0:
        return out
    for i in range(m):
        adj = _adjusted(value, cost, camp, alpha[i], beta[i])
        if k == 1:
            j = adj.argmax(axis=1)
            r = np.arange(adj.shape[0])
            best = adj[r, j]
            take = best > 0
            rr, jj = r[take], j[take]
            cc = camp[rr, jj]
            out.amount[i] = np.bincount(cc, weights=cost[rr, jj], minlength=n_campaigns)
            out.count[i] = np.bincount(cc, minlength=n_campaigns)
            out.value[i] = value[rr, jj].sum()
            out.lagr[i] = best[take].sum()
        else:
            chosen = _choose(adj, k)
            cc = camp[chosen]
            out.amount[i] = np.bincount(cc, weights=cost[chosen], minlength=n_campaigns)
            out.count[i] = np.bincount(cc, minlength=n_campaigns)
            out.value[i] = value[chosen].sum()
            out.lagr[i] = adj[chosen].sum()
    return out
