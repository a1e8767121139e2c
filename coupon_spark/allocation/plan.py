"""From packed blocks to a plan: exploration trimmed to fit, multipliers found, the leftover budget filled.

The plan is made against a :class:`Passes` object: each method is one pass over all blocks. The in-memory
implementation loops over a list of blocks; the Spark one (``coupon_spark.allocation.job``) runs each pass as
one ``mapInArrow`` job over the cached blocks and sums the per-task results on the driver. Both call the same
block functions of :mod:`coupon_spark.allocation.core`, so they make the same decisions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from coupon_spark.allocation.core import (
    EXPLORE_BUCKETS,
    Agg,
    Arms,
    Block,
    BlockStats,
    Budget,
    BudgetExceededError,
    BudgetMatrix,
    CostBasis,
    Dictionaries,
    Moves,
    PackSettings,
    SolveResult,
    SolverSettings,
    _deltas,
    block_moves,
    block_stats,
    decide_block,
    decision_table,
    evaluate_block,
    greedy_fill,
    greedy_repair,
    pack_table,
    relative_gap,
    solve_dual,
)


@dataclass(frozen=True)
class AllocationParams:
    """The knobs of one allocation run (the typed config's ``allocation`` section, resolved).

    Attributes:
        max_per_user: At most this many coupons per user (k).
        cost_basis: What a money budget counts: ``expected`` (p_redeem * coupon_cost, the default) or
            ``face`` (the coupon's full cost for every coupon issued: the worst case).
        holdout_share: Share of users (by a stable hash of the user id and ``holdout_salt``) who never get one.
        holdout_salt: Salt of the holdout hash; change it only to start a new holdout.
        exploration_share: Share of the other users who get a uniformly random option (a coupon or none).
        exploration_max_budget_fraction: Exploration may use at most this fraction of any budget; if it would
            use more, the exploration arm is shrunk (whole hash buckets) until it fits.
        seed: Seed of the exploration draw (with the run date): same seed, same allocation.
        solver: Tolerance and limits of the dual search.
        fill_moves: Most fill candidates kept per block (and per Spark task).
    """

    max_per_user: int = 1
    cost_basis: CostBasis = "expected"
    holdout_share: float = 0.0
    holdout_salt: str = "holdout"
    exploration_share: float = 0.0
    exploration_max_budget_fraction: float = 0.1
    seed: int = 0
    solver: SolverSettings = field(default_factory=SolverSettings)
    fill_moves: int = 20_000


class Passes(Protocol):
    """One method per kind of pass over all blocks of a run."""

    def stats(self, basis: CostBasis, explore_share: float, n_campaigns: int) -> BlockStats: ...

    def evaluate(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, n_campaigns: int
    ) -> Agg: ...

    def moves(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, limit: int
    ) -> tuple[Moves, Moves]: ...


class InMemoryPasses:
    """Passes over a list of blocks held by this process."""

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)

    def stats(self, basis: CostBasis, explore_share: float, n_campaigns: int) -> BlockStats:
        total = BlockStats.zero(n_campaigns)
        for b in self.blocks:
            total = total + block_stats(b, basis, explore_share, n_campaigns)
        return total

    def evaluate(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, n_campaigns: int
    ) -> Agg:
        total = Agg.zero(alpha.shape[0], n_campaigns)
        for b in self.blocks:
            total = total + evaluate_block(b, basis, alpha, beta, arms, k, n_campaigns)
        return total

    def moves(
        self, basis: CostBasis, alpha: np.ndarray, beta: np.ndarray, arms: Arms, k: int, limit: int
    ) -> tuple[Moves, Moves]:
        parts = [block_moves(b, basis, alpha, beta, arms, k, limit) for b in self.blocks]
        return Moves.concat([p[0] for p in parts]).top(limit), Moves.concat([p[1] for p in parts]).top(2 * limit)


@dataclass
class BudgetReport:
    """One budget's outcome."""

    budget: Budget
    spend: float
    exploration_spend: float
    multiplier: float

    @property
    def use(self) -> float:
        return self.spend / self.budget.limit if self.budget.limit > 0 else 0.0


@dataclass
class Plan:
    """Everything the output pass needs, and the run's certificate."""

    budgets: BudgetMatrix
    arms: Arms
    lam: np.ndarray
    alpha: np.ndarray  # (C,) per-campaign price of cost under lam
    beta: np.ndarray  # (C,) per-campaign price of a coupon under lam
    moves: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # block id -> (row, add, rem)
    solve: SolveResult
    stats: BlockStats
    explore_spend: np.ndarray  # (B,)
    explore_value: float
    model_spend: np.ndarray  # (B,) after the fill
    fill_gain: float
    seconds: float

    @property
    def primal(self) -> float:
        """Value of the whole allocation: the model arm after the fill, plus the exploration arm."""
        return self.solve.primal + self.fill_gain + self.explore_value

    @property
    def dual(self) -> float:
        """Upper bound on the value of any allocation of the model users within the residual budgets, plus
        the (fixed) exploration value: no budget-respecting allocation can be worth more."""
        return max(self.solve.dual + self.explore_value, self.primal)

    @property
    def gap(self) -> float:
        return relative_gap(self.primal, self.dual)

    @property
    def spend(self) -> np.ndarray:
        return self.model_spend + self.explore_spend

    def reports(self) -> list[BudgetReport]:
        return [
            BudgetReport(b, float(self.spend[i]), float(self.explore_spend[i]), float(self.lam[i]))
            for i, b in enumerate(self.budgets.budgets)
        ]


def _trim_exploration(stats: BlockStats, budgets: BudgetMatrix, max_fraction: float) -> tuple[int, np.ndarray, float]:
    """Largest number of exploration buckets whose spend fits ``max_fraction`` of every budget."""
    per_bucket = budgets.spend(stats.explore_amount, stats.explore_count)  # (K, B)
    cum = np.cumsum(per_bucket, axis=0)
    cap = np.where(budgets.is_amount, budgets.limit * max_fraction, np.floor(budgets.limit * max_fraction))
    ok = np.all(cum <= cap[None, :], axis=1) if len(cap) else np.ones(EXPLORE_BUCKETS, dtype=bool)
    keep = EXPLORE_BUCKETS if ok.all() else int(np.argmin(ok))
    spend = cum[keep - 1] if keep > 0 else np.zeros(len(cap))
    value = float(stats.explore_value[:keep].sum())
    return keep, spend, value


def make_plan(passes: Passes, budgets: BudgetMatrix, params: AllocationParams) -> Plan:
    """Trim exploration to fit, search the multipliers, fill what they leave; see the module doc."""
    started = time.perf_counter()
    n_c = budgets.member.shape[1]
    basis, k = params.cost_basis, params.max_per_user
    stats = passes.stats(basis, params.exploration_share, n_c)
    keep, explore_spend, explore_value = _trim_exploration(stats, budgets, params.exploration_max_budget_fraction)
    arms = Arms(params.exploration_share, keep)
    residual = np.maximum(budgets.limit - explore_spend, 0.0)
    per_camp = np.where(budgets.is_amount[:, None], stats.max_ratio[None, :], stats.max_value[None, :])
    lam_hi = (per_camp * budgets.member).max(axis=1) if n_c else np.zeros(len(residual))

    def evaluate(points: np.ndarray) -> Agg:
        alpha, beta = budgets.coefficients(points)
        return passes.evaluate(basis, alpha, beta, arms, k, n_c)

    finished: dict[bytes, tuple[np.ndarray, float, np.ndarray, Moves] | None] = {}

    def finish(lam: np.ndarray, value: float, spend: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, Moves] | None:
        key = np.asarray(lam, dtype=np.float64).tobytes()
        if key not in finished:
            finished[key] = _finish(passes, budgets, params, arms, lam, value, spend, residual, n_c)
        return finished[key]

    def finisher(lam: np.ndarray, value: float, spend: np.ndarray) -> float | None:
        done = finish(lam, value, spend)
        return None if done is None else done[1]

    solve = solve_dual(evaluate, budgets, residual, lam_hi, params.solver, finisher)
    # Two ways to a final allocation; the better is kept. (B) the multipliers of the best dual bound: its choice
    # may overspend a little, so drop the least valuable choices of the over-spent budgets first (the repair),
    # then fill (already done, when the search stopped on it). (A) the best feasible multipliers, filled
    # greedily: skipped when (B) alone is within the tolerance of the bound.
    options = []
    if not np.array_equal(solve.dual_lam, solve.lam) and solve.dual_spend is not None:
        options.append(finish(solve.dual_lam, solve.dual_value, solve.dual_spend))
    tol = params.solver.tolerance
    if not (options and options[0] is not None and relative_gap(options[0][1], solve.dual) <= tol):
        options.append(finish(solve.lam, solve.primal, solve.spend))
    best = max((o for o in options if o is not None), key=lambda o: o[1])
    lam, value, model_spend, chosen = best
    alpha, beta = (c[0] for c in budgets.coefficients(lam))
    by_block: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for bid in np.unique(chosen.block_id):
        sel = chosen.block_id == bid
        by_block[int(bid)] = tuple(a[sel].astype(np.int64) for a in (chosen.row, chosen.add, chosen.rem))  # type: ignore[assignment]
    return Plan(
        budgets=budgets,
        arms=arms,
        lam=lam,
        alpha=alpha,
        beta=beta,
        moves=by_block,
        solve=solve,
        stats=stats,
        explore_spend=explore_spend,
        explore_value=explore_value,
        model_spend=model_spend,
        fill_gain=value - solve.primal,
        seconds=time.perf_counter() - started,
    )


def _finish(
    passes: Passes,
    budgets: BudgetMatrix,
    params: AllocationParams,
    arms: Arms,
    lam: np.ndarray,
    value: float,
    spend: np.ndarray,
    residual: np.ndarray,
    n_c: int,
) -> tuple[np.ndarray, float, np.ndarray, Moves] | None:
    """Repair (if needed) and fill the choice of ``lam``: (lam, value, model spend, accepted moves) or None."""
    alpha, beta = (c[0] for c in budgets.coefficients(lam))
    fill, drops = passes.moves(params.cost_basis, alpha, beta, arms, params.max_per_user, params.fill_moves)
    dropped, spend, ok = greedy_repair(drops, budgets, spend, residual)
    if not ok:
        return None
    d = drops.subset(dropped)
    touched = np.isin(fill.block_id * (1 << 32) + fill.row, d.block_id * (1 << 32) + d.row)
    added = greedy_fill(fill, budgets, spend, residual, skip=touched)
    f = fill.subset(added)
    spend = spend + (_deltas(f, budgets).sum(axis=1) if len(f.row) else 0.0)
    return lam, value + float(d.gain.sum()) + float(f.gain.sum()), spend, Moves.concat([d, f])


def check_spend(budgets: BudgetMatrix, amount: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per-budget spend of an allocation from its per-campaign sums; raises if any budget is exceeded.

    Raises:
        BudgetExceededError: Naming each budget, its limit and the spend.
    """
    spend = budgets.spend(amount, count)
    raw = np.array([b.limit for b in budgets.budgets])
    over = [
        f"{b.name}: spend {spend[i]:.6f} > limit {raw[i]:.6f}"
        for i, b in enumerate(budgets.budgets)
        if spend[i] > raw[i]
    ]
    if over:
        raise BudgetExceededError("the allocation exceeds budgets; nothing was written: " + "; ".join(over))
    return spend


# ---- the whole allocation in memory (tests, small runs) ------------------------------------------------------


def dictionaries_of(table: pa.Table) -> Dictionaries:
    """Sorted distinct coupon, campaign and model-version values of a candidates table."""

    def distinct(name: str) -> list[str | None]:
        vals = set(table[name].to_pylist())
        return sorted(v for v in vals if v is not None) + ([None] if None in vals else [])

    return Dictionaries(
        tuple(v for v in distinct("coupon_id") if v is not None),
        tuple(v for v in distinct("campaign_id") if v is not None),
        tuple(distinct("model_version")),
    )


def allocate_in_memory(
    candidates: pd.DataFrame | pa.Table,
    budgets: Sequence[Budget],
    params: AllocationParams,
    run_date: str = "1970-01-01",
    block_rows: int = 500_000,
) -> tuple[pd.DataFrame, Plan]:
    """The whole allocation on this process: the allocation rows (pandas) and the plan with its certificate.

    Args:
        candidates: Rows of the candidates contract (at least the columns of ``CANDIDATE_COLUMNS``).
        budgets: The budgets.
        params: The run's knobs.
        run_date: Salts the exploration draw (as the job does with its run date).
        block_rows: Most options per block.
    """
    from coupon_spark.allocation.core import CANDIDATE_COLUMNS, exploration_salts

    table = candidates if isinstance(candidates, pa.Table) else pa.Table.from_pandas(candidates, preserve_index=False)
    table = table.select(list(CANDIDATE_COLUMNS)).sort_by([("user_id", "ascending"), ("coupon_id", "ascending")])
    dicts = dictionaries_of(table)
    ex_salt, pick_salt = exploration_salts(params.seed, run_date)
    settings = PackSettings(params.holdout_share, params.holdout_salt, ex_salt, pick_salt, block_rows)
    blocks, _ = pack_table(table, dicts, settings)
    matrix = BudgetMatrix.build(budgets, dicts.campaigns)
    plan = make_plan(InMemoryPasses(blocks), matrix, params)
    parts = []
    for b in blocks:
        dec = decide_block(
            b, params.cost_basis, plan.alpha, plan.beta, plan.arms, params.max_per_user, plan.moves.get(b.block_id)
        )
        parts.append(decision_table(b, dec, dicts))
    out = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame()
    return out, plan
