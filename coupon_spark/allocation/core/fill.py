"""The fill: repair an over-spending choice and spend what the multipliers left, greedily."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coupon_spark.allocation.core.arms import Arms
from coupon_spark.allocation.core.base import CostBasis
from coupon_spark.allocation.core.blocks import Block
from coupon_spark.allocation.core.budgets import BudgetMatrix
from coupon_spark.allocation.core.step import _adjusted, _choose


@dataclass
class Moves:
    """Candidate improvements, at most one per user: swap option ``rem`` (-1: none) for option ``add``."""

    block_id: np.ndarray
    row: np.ndarray
    add: np.ndarray
    rem: np.ndarray
    gain: np.ndarray  # value gained
    adj_gain: np.ndarray  # adjusted value gained (<= 0): how close the dual was to choosing it
    camp_add: np.ndarray
    cost_add: np.ndarray
    camp_rem: np.ndarray
    cost_rem: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Moves]) -> Moves:
        names = [f for f in cls.__dataclass_fields__]
        if not parts:
            return cls(*[np.zeros(0) for _ in names])
        return cls(*[np.concatenate([getattr(p, f) for p in parts]) for f in names])

    def subset(self, mask: np.ndarray) -> Moves:
        return Moves(*[getattr(self, f)[mask] for f in self.__dataclass_fields__])

    def top(self, limit: int) -> Moves:
        """The ``limit`` moves of largest adjusted gain, ties by (block, row, add, rem): a total order, so the
        result does not depend on the order the parts were concatenated in (Spark tasks, cache misses)."""
        if len(self.row) <= limit:
            return self
        keep = np.lexsort((self.rem, self.add, self.row, self.block_id, -self.adj_gain))[:limit]
        return Moves(*[getattr(self, f)[keep] for f in self.__dataclass_fields__])


def block_choice(
    block: Block, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model arm's choice on one block for one multiplier vector: (model row indices, chosen mask, adj)."""
    rows = np.flatnonzero(arms.model_rows(block))
    cost = block.cost(basis)[rows]
    adj = _adjusted(block.value[rows], cost, block.campaign[rows], alpha, beta)
    return rows, _choose(adj, k), adj


def block_moves(
    block: Block, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, limit: int
) -> tuple[Moves, Moves]:
    """Each model user's best single improvement and its cheapest drop, under the multipliers' choice.

    Improvement: add an option when under the cap, else swap out the weakest chosen one (value gained > 0);
    ranked by adjusted gain (<= 0: how close the dual came to choosing it). Drop: give up the chosen option
    with the smallest adjusted value (for the repair of an over-spent choice). Each kind is cut to ``limit``.
    """
    rows, chosen, adj = block_choice(block, basis, alpha, beta, arms, k)
    value = block.value[rows]
    cost = block.cost(basis)[rows]
    camp = block.campaign[rows]
    n = len(rows)
    if n == 0:
        return Moves.concat([]), Moves.concat([])
    r = np.arange(n)
    full = chosen.sum(axis=1) >= k
    weakest = np.where(chosen, value, np.inf).argmin(axis=1)
    rem = np.where(full, weakest, -1)
    safe = np.maximum(rem, 0)
    v_rem = np.where(rem >= 0, value[r, safe], 0.0)
    a_rem = np.where(rem >= 0, adj[r, safe], 0.0)
    gain = value - v_rem[:, None]
    adj_gain = np.where(~chosen & (gain > 0), adj - a_rem[:, None], -np.inf)
    j = adj_gain.argmax(axis=1)
    best = adj_gain[r, j]
    ok = np.flatnonzero(np.isfinite(best))
    j, rem_ok, safe_ok = j[ok], rem[ok], safe[ok]
    fill = Moves(
        block_id=np.full(len(ok), block.block_id, dtype=np.int64),
        row=rows[ok],
        add=j,
        rem=rem_ok,
        gain=gain[ok, j],
        adj_gain=best[ok],
        camp_add=camp[ok, j],
        cost_add=cost[ok, j],
        camp_rem=np.where(rem_ok >= 0, camp[ok, safe_ok], 0),
        cost_rem=np.where(rem_ok >= 0, cost[ok, safe_ok], 0.0),
    )
    # Drop: the chosen option with the least adjusted value goes, replaced by the best option not chosen
    # (when its adjusted value is positive and it is in another campaign) or by nothing.
    low = np.where(chosen, adj, np.inf).argmin(axis=1)
    has = np.flatnonzero(chosen.any(axis=1))
    d = low[has]
    other = np.where(chosen[has] | (camp[has] == camp[has, d][:, None]), -np.inf, adj[has])
    alt = other.argmax(axis=1)
    alt_ok = other[np.arange(len(has)), alt] > 0
    add = np.where(alt_ok, alt, -1)
    safe_alt = np.maximum(add, 0)
    drop = Moves(
        block_id=np.full(len(has), block.block_id, dtype=np.int64),
        row=rows[has],
        add=add,
        rem=d,
        gain=np.where(alt_ok, value[has, safe_alt], 0.0) - value[has, d],
        adj_gain=np.where(alt_ok, adj[has, safe_alt], 0.0) - adj[has, d],
        camp_add=np.where(alt_ok, camp[has, safe_alt], 0),
        cost_add=np.where(alt_ok, cost[has, safe_alt], 0.0),
        camp_rem=camp[has, d],
        cost_rem=cost[has, d],
    )
    plain = Moves(
        block_id=drop.block_id,
        row=drop.row,
        add=np.full(len(has), -1),
        rem=d,
        gain=-value[has, d],
        adj_gain=-adj[has, d],
        camp_add=np.zeros(len(has), dtype=np.int64),
        cost_add=np.zeros(len(has)),
        camp_rem=drop.camp_rem,
        cost_rem=drop.cost_rem,
    )
    return fill.top(limit), Moves.concat([drop.subset(alt_ok), plain]).top(2 * limit)


def _deltas(moves: Moves, budgets: BudgetMatrix) -> np.ndarray:
    """``(B, n)`` change of each budget's spend if each move is made."""
    member, amount = budgets.member, budgets.is_amount[:, None]
    w_add = np.where(amount, moves.cost_add[None, :], 1.0) * member[:, moves.camp_add.astype(int)]
    w_rem = np.where(amount, moves.cost_rem[None, :], 1.0) * member[:, moves.camp_rem.astype(int)]
    return np.where((moves.add >= 0)[None, :], w_add, 0.0) - np.where((moves.rem >= 0)[None, :], w_rem, 0.0)


def greedy_repair(
    drops: Moves, budgets: BudgetMatrix, spend: np.ndarray, residual: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Drop chosen options, least adjusted value first, that relieve a budget still over its limit.

    Returns:
        The accepted mask, the spend after the drops, and whether every budget now fits.
    """
    n = len(drops.row)
    accepted = np.zeros(n, dtype=bool)
    cur = spend.astype(np.float64).copy()
    if np.all(cur <= residual) or n == 0:
        return accepted, cur, bool(np.all(cur <= residual))
    delta = _deltas(drops, budgets)
    over0 = cur > residual
    # least adjusted loss per unit of overspend relieved first
    relief = (np.maximum(-delta[over0], 0.0) / np.maximum(cur[over0] - residual[over0], 1e-12)[:, None]).sum(axis=0)
    ratio = np.where(relief > 0, -drops.adj_gain / np.maximum(relief, 1e-300), np.inf)
    order = np.lexsort((drops.row, drops.block_id, ratio))
    touched: set[tuple[int, int]] = set()
    for swap in (True, False):  # first swaps to another campaign's option, then plain drops
        for i in order:
            over = cur > residual
            if not over.any():
                break
            key = (int(drops.block_id[i]), int(drops.row[i]))
            if accepted[i] or key in touched or (drops.add[i] >= 0) != swap:
                continue
            nxt = cur + delta[:, i]
            if np.any(delta[over, i] < 0) and np.all((nxt <= residual) | over | (delta[:, i] <= 0)):
                cur = nxt
                accepted[i] = True
                touched.add(key)
    return accepted, cur, bool(np.all(cur <= residual))


def greedy_fill(
    moves: Moves, budgets: BudgetMatrix, spend: np.ndarray, residual: np.ndarray, skip: np.ndarray | None = None
) -> np.ndarray:
    """Accept moves in order of adjusted gain (then block, row) while every budget still fits; returns a mask.

    Args:
        skip: Moves not to consider (users already changed by a repair).
    """
    n = len(moves.row)
    accepted = np.zeros(n, dtype=bool)
    if n == 0:
        return accepted
    delta = _deltas(moves, budgets)
    order = np.lexsort((moves.row, moves.block_id, -moves.adj_gain))
    cur = spend.astype(np.float64).copy()
    for i in order:
        if moves.gain[i] <= 0 or (skip is not None and skip[i]):
            continue
        nxt = cur + delta[:, i]
        if np.all((nxt <= residual) | (delta[:, i] <= 0)):
            cur = nxt
            accepted[i] = True
    return accepted
