"""Decisions: each user's final options and the decision table the job writes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from coupon_spark.allocation.core.arms import Arms, explore_pick
from coupon_spark.allocation.core.base import POLICY_EXPLORATION, POLICY_HOLDOUT, POLICY_MODEL, CostBasis
from coupon_spark.allocation.core.blocks import Block, Dictionaries
from coupon_spark.allocation.core.fill import block_choice


@dataclass
class Decision:
    """The final decision on one block: per user its arm, per issued coupon its (user, option)."""

    policy: np.ndarray  # (n,) object: model / exploration / holdout
    propensity: np.ndarray  # (n,) probability of the user's logged action given its arm
    issue_user: np.ndarray  # (i,) user row of each issued coupon
    issue_opt: np.ndarray  # (i,) option index of each issued coupon
    score: np.ndarray  # (i,) adjusted value of the issued option under the final multipliers


def decide_block(
    block: Block,
    basis: CostBasis,
    alpha: np.ndarray,
    beta: np.ndarray,
    arms: Arms,
    k: int,
    moves: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Decision:
    """Every user's decision: holdout gets nothing, exploration its random pick, the model its dual choice + moves.

    Args:
        moves: Accepted fill moves for this block as (row, add, rem) arrays (rows are block rows).
    """
    n = block.n
    exploring = arms.exploring(block)
    policy = np.full(n, POLICY_MODEL, dtype=object)
    policy[exploring] = POLICY_EXPLORATION
    policy[block.holdout] = POLICY_HOLDOUT
    propensity = np.ones(n)
    propensity[exploring] = 1.0 / (block.width + 1)
    rows, chosen, _ = block_choice(block, basis, alpha, beta, arms, k)
    full = np.zeros(block.value.shape, dtype=bool)
    full[rows] = chosen
    if moves is not None and len(moves[0]):
        mr, ma, mrem = moves
        keep = mrem >= 0
        full[mr[keep], mrem[keep]] = False
        add = ma >= 0
        full[mr[add], ma[add]] = True
    pick = explore_pick(block)
    ex = np.flatnonzero(exploring & (pick >= 0))
    full[ex, pick[ex]] = True
    iu, io = np.nonzero(full)
    adj_all = (
        block.value[iu, io] - block.cost(basis)[iu, io] * alpha[block.campaign[iu, io]] - beta[block.campaign[iu, io]]
    )
    return Decision(policy, propensity, iu, io, adj_all)


def decision_table(block: Block, dec: Decision, dicts: Dictionaries) -> pa.Table:
    """The allocation rows of one block (without run_date / run_id): one per issued coupon, one per user without."""
    n = block.n
    has = np.zeros(n, dtype=bool)
    has[dec.issue_user] = True
    none_u = np.flatnonzero(~has)
    users = np.concatenate([dec.issue_user, none_u])
    opt = np.concatenate([dec.issue_opt, np.zeros(len(none_u), dtype=np.int64)])
    issued = np.concatenate([np.ones(len(dec.issue_user), dtype=bool), np.zeros(len(none_u), dtype=bool)])
    coupons = np.array(dicts.coupons, dtype=object)
    campaigns = np.array(dicts.campaigns, dtype=object)
    versions = np.array(list(dicts.model_versions) + [None], dtype=object)

    def opt_col(arr: np.ndarray) -> np.ndarray:
        return arr[users, opt]

    def masked(values: np.ndarray, kind: pa.DataType = pa.float64()) -> pa.Array:
        return pa.array(values, mask=~issued, type=kind)

    score = np.concatenate([dec.score, np.zeros(len(none_u))])
    assert block.user_ids is not None
    return pa.table(
        {
            "user_id": block.user_ids.take(pa.array(users)),
            "coupon_id": masked(coupons[opt_col(block.coupon)], pa.string()),
            "campaign_id": masked(campaigns[opt_col(block.campaign)], pa.string()),
            "policy": pa.array(dec.policy[users], type=pa.string()),
            "holdout": pa.array(block.holdout[users]),
            "score": masked(score),
            "expected_uplift": masked(opt_col(block.uplift)),
            "expected_profit": masked(opt_col(block.value)),
            "expected_cost": masked(opt_col(block.exp_cost)),
            "coupon_cost": masked(opt_col(block.face_cost)),
            "propensity": pa.array(dec.propensity[users]),
            "model_version": pa.array(versions[block.model_version[users, 0]], type=pa.string()),
        }
    )
