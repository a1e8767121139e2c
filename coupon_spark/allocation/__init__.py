"""Budget-constrained coupon allocation through the Lagrangian dual (``coupon-spark allocate``).

- :mod:`~coupon_spark.allocation.core`: the numpy core (packed blocks, the dual step, the dual search, the
  repair and fill), the same on the driver and in Spark tasks.
- :mod:`~coupon_spark.allocation.plan`: from blocks to a plan with its certificate; ``allocate_in_memory``.
- :mod:`~coupon_spark.allocation.job`: the Spark passes, the tables, the channel export and the stage.
"""

from __future__ import annotations

from coupon_spark.allocation.core import (
    POLICY_EXPLORATION,
    POLICY_HOLDOUT,
    POLICY_MODEL,
    AllocationError,
    Budget,
    BudgetExceededError,
    InvalidBudgetError,
    SolverSettings,
    holdout_flags,
    make_budget,
    unit_hash,
)
from coupon_spark.allocation.job import (
    AllocationResult,
    MissingColumnsError,
    NoCandidatesError,
    allocate,
    budgets_from_config,
    budgets_from_frame,
    export_frame,
    params_from_config,
    run,
    with_channel,
)
from coupon_spark.allocation.plan import AllocationParams, Plan, allocate_in_memory

__all__ = [
    "POLICY_EXPLORATION",
    "POLICY_HOLDOUT",
    "POLICY_MODEL",
    "AllocationError",
    "AllocationParams",
    "AllocationResult",
    "Budget",
    "BudgetExceededError",
    "InvalidBudgetError",
    "MissingColumnsError",
    "NoCandidatesError",
    "Plan",
    "SolverSettings",
    "allocate",
    "allocate_in_memory",
    "budgets_from_config",
    "budgets_from_frame",
    "export_frame",
    "holdout_flags",
    "make_budget",
    "params_from_config",
    "run",
    "unit_hash",
    "with_channel",
]
