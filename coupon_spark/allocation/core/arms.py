"""The arms: holdout, exploration and the model users, and each block's statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coupon_spark.allocation.core.base import EXPLORE_BUCKETS, CostBasis
from coupon_spark.allocation.core.blocks import Block


def explore_bucket(block: Block, share: float) -> np.ndarray:
    """Exploration bucket of each user (0..EXPLORE_BUCKETS-1), EXPLORE_BUCKETS for users who do not explore."""
    if share <= 0:
        return np.full(block.n, EXPLORE_BUCKETS, dtype=np.int64)
    b = np.floor(block.u_explore / share * EXPLORE_BUCKETS).astype(np.int64)
    b = np.minimum(b, EXPLORE_BUCKETS)
    b[block.holdout] = EXPLORE_BUCKETS
    return b


def explore_pick(block: Block) -> np.ndarray:
    """The option an exploring user gets (uniform over its options and "none"); -1 for none."""
    pick = np.minimum(np.floor(block.u_pick * (block.width + 1)).astype(np.int64), block.width)
    return np.where(pick == block.width, -1, pick)


@dataclass(frozen=True)
class Arms:
    """How users are split: the exploration share and how many exploration buckets are kept after trimming."""

    explore_share: float
    explore_buckets: int = EXPLORE_BUCKETS

    @property
    def effective_share(self) -> float:
        return self.explore_share * self.explore_buckets / EXPLORE_BUCKETS

    def exploring(self, block: Block) -> np.ndarray:
        return explore_bucket(block, self.explore_share) < self.explore_buckets

    def model_rows(self, block: Block) -> np.ndarray:
        return ~block.holdout & ~self.exploring(block)


@dataclass
class BlockStats:
    """Per-block facts gathered once: sizes, exploration spend by bucket, the largest value-to-cost ratios."""

    n_users: int
    n_options: int
    n_holdout: int
    explore_users: np.ndarray  # (K,)
    explore_amount: np.ndarray  # (K, C)
    explore_count: np.ndarray  # (K, C)
    explore_value: np.ndarray  # (K,)
    max_ratio: np.ndarray  # (C,) max value/cost over options with positive value and cost
    max_value: np.ndarray  # (C,) max positive value

    def __add__(self, other: BlockStats) -> BlockStats:
        return BlockStats(
            self.n_users + other.n_users,
            self.n_options + other.n_options,
            self.n_holdout + other.n_holdout,
            self.explore_users + other.explore_users,
            self.explore_amount + other.explore_amount,
            self.explore_count + other.explore_count,
            self.explore_value + other.explore_value,
            np.maximum(self.max_ratio, other.max_ratio),
            np.maximum(self.max_value, other.max_value),
        )

    @classmethod
    def zero(cls, n_campaigns: int) -> BlockStats:
        k = EXPLORE_BUCKETS
        z = np.zeros
        return cls(0, 0, 0, z(k), z((k, n_campaigns)), z((k, n_campaigns)), z(k), z(n_campaigns), z(n_campaigns))


def block_stats(block: Block, basis: CostBasis, explore_share: float, n_campaigns: int) -> BlockStats:
    """The facts the driver needs before the dual search (one pass)."""
    k = EXPLORE_BUCKETS
    bucket = explore_bucket(block, explore_share)
    pick = explore_pick(block)
    rows = np.flatnonzero((bucket < k) & (pick >= 0))
    cost = block.cost(basis)
    camp = block.campaign[rows, pick[rows]]
    c = cost[rows, pick[rows]]
    b = bucket[rows]
    flat = b * n_campaigns + camp
    amount = np.bincount(flat, weights=c, minlength=k * n_campaigns).reshape(k, n_campaigns)
    count = np.bincount(flat, minlength=k * n_campaigns).reshape(k, n_campaigns).astype(np.float64)
    value = np.bincount(b, weights=block.value[rows, pick[rows]], minlength=k)
    users = np.bincount(bucket[bucket < k], minlength=k).astype(np.float64)
    pos = block.value > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(pos & (cost > 0), block.value / np.where(cost > 0, cost, 1.0), 0.0)
    max_ratio = np.zeros(n_campaigns)
    np.maximum.at(max_ratio, block.campaign.ravel(), ratio.ravel())
    max_value = np.zeros(n_campaigns)
    np.maximum.at(max_value, block.campaign.ravel(), np.where(pos, block.value, 0.0).ravel())
    return BlockStats(
        block.n, block.value.size, int(block.holdout.sum()), users, amount, count, value, max_ratio, max_value
    )
