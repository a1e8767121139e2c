"""The in-memory core of the allocator: packed user blocks, the vectorised dual step, the dual search, the fill.

One module per part: :mod:`.base` (constants, errors), :mod:`.budgets`, :mod:`.hashes` (holdout and exploration
draws), :mod:`.blocks` (packing), :mod:`.arms`, :mod:`.step` (the dual step), :mod:`.search` (the dual search and
its :class:`~.search.Incumbent`), :mod:`.fill` (repair and fill) and :mod:`.decisions`; every name is re-exported
here.

Everything here is pure numpy (plus pyarrow for packing) and runs the same on the driver (tests, small runs)
and inside Spark tasks (one block at a time), so the distributed solver and the in-memory one share every
decision rule.

The problem, for the users of the model arm (not holdout, not exploration) with options ``j`` of value
``v_j`` (``expected_profit``) and campaign ``c_j``::

    max  sum_uj x_uj v_uj
    s.t. sum_j x_uj <= k                       for every user        (the cap, "none" is always allowed)
         sum_uj x_uj a_b(j) <= R_b             for every budget b    (R_b: the limit less exploration spend)
         x_uj in {0, 1}

with ``a_b(j)`` the option's cost on the budget's basis when its campaign is in the budget (money budgets:
expected or face cost; count budgets: 1), else 0. For multipliers ``lam >= 0`` the Lagrangian dual::

    D(lam) = sum_b lam_b R_b + sum_u  max_{|S| <= k}  sum_{j in S} (v_j - sum_b lam_b a_b(j))^+

is an upper bound on the value of *every* allocation that respects the budgets (weak duality), so
``(D(lam) - primal) / D(lam)`` certifies how far an allocation can be from the optimum. Each user's inner
maximum is the top-k of its adjusted values, clipped at 0 (the "none" option): that is the dual step
(:func:`evaluate_block`).
"""

from __future__ import annotations

from coupon_spark.allocation.core.arms import (
    Arms,
    BlockStats,
    block_stats,
    explore_bucket,
    explore_pick,
)
from coupon_spark.allocation.core.base import (
    EXPLORE_BUCKETS,
    MONEY_MARGIN,
    POLICY_EXPLORATION,
    POLICY_HOLDOUT,
    POLICY_MODEL,
    AllocationError,
    BudgetExceededError,
    BudgetKind,
    CostBasis,
    InvalidBudgetError,
)
from coupon_spark.allocation.core.blocks import (
    CANDIDATE_COLUMNS,
    Block,
    Dictionaries,
    PackSettings,
    _codes,
    pack_table,
    valid_rows,
)
from coupon_spark.allocation.core.budgets import (
    Budget,
    BudgetMatrix,
    make_budget,
)
from coupon_spark.allocation.core.decisions import (
    Decision,
    decide_block,
    decision_table,
)
from coupon_spark.allocation.core.fill import (
    Moves,
    _deltas,
    block_choice,
    block_moves,
    greedy_fill,
    greedy_repair,
)
from coupon_spark.allocation.core.hashes import (
    exploration_salts,
    holdout_flags,
    unit_hash,
)
from coupon_spark.allocation.core.search import (
    Evaluator,
    Finisher,
    Incumbent,
    SolveResult,
    SolverSettings,
    _coordinate,
    relative_gap,
    solve_dual,
)
from coupon_spark.allocation.core.step import (
    Agg,
    _adjusted,
    _choose,
    evaluate_block,
)

__all__ = [
    "CANDIDATE_COLUMNS",
    "EXPLORE_BUCKETS",
    "MONEY_MARGIN",
    "POLICY_EXPLORATION",
    "POLICY_HOLDOUT",
    "POLICY_MODEL",
    "Agg",
    "AllocationError",
    "Arms",
    "Block",
    "BlockStats",
    "Budget",
    "BudgetExceededError",
    "BudgetKind",
    "BudgetMatrix",
    "CostBasis",
    "Decision",
    "Dictionaries",
    "Evaluator",
    "Finisher",
    "Incumbent",
    "InvalidBudgetError",
    "Moves",
    "PackSettings",
    "SolveResult",
    "SolverSettings",
    "_adjusted",
    "_choose",
    "_codes",
    "_coordinate",
    "_deltas",
    "block_choice",
    "block_moves",
    "block_stats",
    "decide_block",
    "decision_table",
    "evaluate_block",
    "exploration_salts",
    "explore_bucket",
    "explore_pick",
    "greedy_fill",
    "greedy_repair",
    "holdout_flags",
    "make_budget",
    "pack_table",
    "relative_gap",
    "solve_dual",
    "unit_hash",
    "valid_rows",
]
