"""The allocator's constants (policies, cost bases, margins) and errors."""

from __future__ import annotations

from typing import Literal

from coupon_spark.errors import InputError

CostBasis = Literal["expected", "face"]
BudgetKind = Literal["amount", "count"]

POLICY_MODEL = "model"
POLICY_EXPLORATION = "exploration"
POLICY_HOLDOUT = "holdout"

#: Exploration users are ordered by their hash into this many buckets; trimming drops whole buckets.
EXPLORE_BUCKETS = 64
#: Relative safety margin on money budgets, against float sums taken in a different order on another pass.
MONEY_MARGIN = 1e-12


class AllocationError(RuntimeError):
    """Base class of the allocator's errors."""


class BudgetExceededError(AllocationError):
    """An allocation would spend more than a budget allows; nothing was written."""


class InvalidBudgetError(InputError, ValueError):
    """A budget definition is wrong (negative, empty, duplicated); the message names it."""
