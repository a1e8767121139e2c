"""Budgets and the budget matrix: what each option costs on each budget's basis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coupon_spark.allocation.core.base import MONEY_MARGIN, BudgetKind, InvalidBudgetError


@dataclass(frozen=True)
class Budget:
    """One constraint: the money or the number of coupons issued by some campaigns.

    Attributes:
        name: Human name, e.g. ``overall:amount`` or ``campaign c7:count``.
        kind: ``amount`` (money on the run's cost basis) or ``count`` (coupons issued).
        limit: The most that may be spent / issued.
        campaign_id: The campaign it covers, or ``None`` for every campaign (the overall budget).
    """

    name: str
    kind: BudgetKind
    limit: float
    campaign_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("amount", "count"):
            raise InvalidBudgetError(f"budget {self.name!r}: kind must be 'amount' or 'count', not {self.kind!r}")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise InvalidBudgetError(f"budget {self.name!r}: the limit must be a finite number >= 0, not {self.limit}")


def make_budget(campaign_id: str | None, kind: BudgetKind, limit: float) -> Budget:
    """A :class:`Budget` with its conventional name (``overall:amount``, ``campaign X:count``)."""
    name = f"overall:{kind}" if campaign_id is None else f"campaign {campaign_id}:{kind}"
    return Budget(name=name, kind=kind, limit=float(limit), campaign_id=campaign_id)


@dataclass(frozen=True)
class BudgetMatrix:
    """Budgets against the run's campaign dictionary: who covers what, and the effective limits."""

    budgets: tuple[Budget, ...]
    member: np.ndarray  # (B, C) float: 1 where budget b covers campaign c
    is_amount: np.ndarray  # (B,) bool
    limit: np.ndarray  # (B,) the limits less the safety margin (money budgets only)

    @classmethod
    def build(cls, budgets: Sequence[Budget], campaigns: Sequence[str]) -> BudgetMatrix:
        names = [b.name for b in budgets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidBudgetError(f"budgets defined twice: {dup}; give each campaign one amount and one count")
        index = {c: i for i, c in enumerate(campaigns)}
        member = np.zeros((len(budgets), len(campaigns)))
        for i, b in enumerate(budgets):
            if b.campaign_id is None:
                member[i, :] = 1.0
            elif b.campaign_id in index:
                member[i, index[b.campaign_id]] = 1.0
        is_amount = np.array([b.kind == "amount" for b in budgets], dtype=bool)
        raw = np.array([b.limit for b in budgets], dtype=np.float64)
        limit = np.where(is_amount, raw - MONEY_MARGIN * np.abs(raw), np.floor(raw))
        return cls(tuple(budgets), member, is_amount, limit)

    def spend(self, amount: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Per-budget use from per-campaign aggregates (``(..., C)`` -> ``(..., B)``)."""
        return np.where(self.is_amount, amount @ self.member.T, count @ self.member.T)

    def coefficients(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-campaign price of a unit of cost (alpha) and of one coupon (beta) for multipliers ``(m, B)``."""
        lam = np.atleast_2d(lam)
        alpha = (lam * self.is_amount) @ self.member
        beta = (lam * ~self.is_amount) @ self.member
        return alpha, beta
