"""The in-memory core of the allocator: packed user blocks, the vectorised dual step, the dual search, the fill.

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

import hashlib
import math
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# ---- budgets ------------------------------------------------------------------------------------------------


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


# ---- stable hashes ------------------------------------------------------------------------------------------


def unit_hash(keys: Iterable[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per key, stable across runs, machines and versions.

    ``blake2b(f"{salt}:{key}", digest_size=8)`` read big-endian, top 53 bits divided by 2**53. The evaluation
    (or anyone) recomputes it from the user id and the salt alone.
    """
    blake = hashlib.blake2b
    out = np.fromiter(
        (int.from_bytes(blake(f"{salt}:{k}".encode(), digest_size=8).digest(), "big") >> 11 for k in keys),
        dtype=np.float64,
    )
    return out * (1.0 / (1 << 53))


def holdout_flags(user_ids: Sequence[str], share: float, salt: str) -> np.ndarray:
    """Whether each user is in the holdout: ``unit_hash(user_id, salt) < share`` (no run date: stable)."""
    if share <= 0:
        return np.zeros(len(user_ids), dtype=bool)
    return unit_hash(user_ids, salt) < share


def exploration_salts(seed: int, run_date: str) -> tuple[str, str]:
    """The salts of the exploration draw (who explores, which option) for one run: new each day and seed."""
    return f"explore:{seed}:{run_date}", f"pick:{seed}:{run_date}"


# ---- packed blocks ------------------------------------------------------------------------------------------

CANDIDATE_COLUMNS = (
    "user_id",
    "coupon_id",
    "campaign_id",
    "uplift",
    "coupon_cost",
    "expected_cost",
    "expected_profit",
    "model_version",
)


@dataclass(frozen=True)
class Dictionaries:
    """Run-wide codes of the string columns, so blocks carry small integers."""

    coupons: tuple[str, ...]
    campaigns: tuple[str, ...]
    model_versions: tuple[str | None, ...]


@dataclass
class Block:
    """Users that each have exactly ``L`` valid options, as dense ``(n, L)`` arrays (options by coupon id)."""

    block_id: int
    value: np.ndarray  # expected_profit
    exp_cost: np.ndarray
    face_cost: np.ndarray
    uplift: np.ndarray
    campaign: np.ndarray  # int32 codes
    coupon: np.ndarray  # int32 codes
    model_version: np.ndarray  # int32 codes
    holdout: np.ndarray  # (n,) bool
    u_explore: np.ndarray  # (n,) uniform: exploration membership and trimming order
    u_pick: np.ndarray  # (n,) uniform: which option an exploring user gets
    user_ids: pa.Array | None = None

    @property
    def n(self) -> int:
        return int(self.value.shape[0])

    @property
    def width(self) -> int:
        return int(self.value.shape[1])

    def cost(self, basis: CostBasis) -> np.ndarray:
        return self.exp_cost if basis == "expected" else self.face_cost

    def payload(self) -> bytes:
        """The numeric arrays, pickled (protocol 5: raw buffers); user ids travel separately."""
        d = {k: v for k, v in self.__dict__.items() if k != "user_ids"}
        return pickle.dumps(d, protocol=5)

    @classmethod
    def from_payload(cls, data: bytes, user_ids: pa.Array | None = None) -> Block:
        return cls(**pickle.loads(data), user_ids=user_ids)

    def slim(self, basis: CostBasis) -> Block:
        """What the solver's passes read (value, the cost on ``basis``, campaign, the per-user draws), without
        the output-only columns: the form kept in the Spark workers' block cache. Not for :func:`decide_block`.
        """
        cost = self.cost(basis)
        empty = np.zeros((self.n, 0), dtype=np.int32)
        return Block(
            block_id=self.block_id,
            value=self.value,
            exp_cost=cost,
            face_cost=cost,
            uplift=np.zeros((self.n, 0)),
            campaign=self.campaign,
            coupon=empty,
            model_version=empty,
            holdout=self.holdout,
            u_explore=self.u_explore,
            u_pick=self.u_pick,
        )


@dataclass(frozen=True)
class PackSettings:
    """What packing needs to know: hashing salts and shares, and the block size."""

    holdout_share: float
    holdout_salt: str
    explore_salt: str
    pick_salt: str
    block_rows: int = 500_000


def valid_rows(table: pa.Table) -> pa.Array:
    """Rows the allocator can use: ids present, finite profit, finite non-negative costs."""
    ok = pc.and_(pc.is_valid(table["user_id"]), pc.is_valid(table["coupon_id"]))
    ok = pc.and_(ok, pc.is_valid(table["campaign_id"]))
    for name in ("expected_profit", "expected_cost", "coupon_cost"):
        col = table[name]
        ok = pc.and_(ok, pc.fill_null(pc.is_finite(col), False))
    ok = pc.and_(ok, pc.greater_equal(table["expected_cost"], 0.0))
    ok = pc.and_(ok, pc.greater_equal(table["coupon_cost"], 0.0))
    return pc.fill_null(ok, False)


def _codes(col: pa.ChunkedArray, values: Sequence[str | None]) -> np.ndarray:
    idx = pc.index_in(col, value_set=pa.array(list(values), type=pa.string()))
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int32)


def pack_table(
    table: pa.Table, dicts: Dictionaries, settings: PackSettings, block_id_base: int = 0
) -> tuple[list[Block], int]:
    """Pack candidate rows sorted by (user_id, coupon_id) into blocks; every user's rows must all be here.

    Returns:
        The blocks (one or more per distinct number of options) and the number of invalid rows dropped.
    """
    mask = valid_rows(table)
    n_invalid = table.num_rows - pc.sum(mask.cast(pa.int64())).as_py() if table.num_rows else 0
    if n_invalid:
        table = table.filter(mask)
    if table.num_rows == 0:
        return [], int(n_invalid)
    users = table["user_id"].combine_chunks()
    change = np.asarray(pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False), dtype=bool)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
    counts = np.diff(np.concatenate([starts, [table.num_rows]]))
    first_ids = users.take(pa.array(starts))
    id_list = first_ids.to_pylist()
    holdout = holdout_flags(id_list, settings.holdout_share, settings.holdout_salt)
    u_explore = unit_hash(id_list, settings.explore_salt)
    u_pick = unit_hash(id_list, settings.pick_salt)
    cols = {
        "value": np.asarray(table["expected_profit"].to_numpy(), dtype=np.float64),
        "exp_cost": np.asarray(table["expected_cost"].to_numpy(), dtype=np.float64),
        "face_cost": np.asarray(table["coupon_cost"].to_numpy(), dtype=np.float64),
        "uplift": np.asarray(pc.fill_null(table["uplift"], float("nan")).to_numpy(), dtype=np.float64),
        "campaign": _codes(table["campaign_id"], dicts.campaigns),
        "coupon": _codes(table["coupon_id"], dicts.coupons),
        "model_version": _codes(table["model_version"], dicts.model_versions),
    }
    blocks: list[Block] = []
    for width in np.unique(counts):
        sel = np.flatnonzero(counts == width)
        per_block = max(1, settings.block_rows // int(width))
        for lo in range(0, len(sel), per_block):
            part = sel[lo : lo + per_block]
            rows = starts[part][:, None] + np.arange(width)[None, :]
            blocks.append(
                Block(
                    block_id=block_id_base + len(blocks),
                    **{k: v[rows] for k, v in cols.items()},
                    holdout=holdout[part],
                    u_explore=u_explore[part],
                    u_pick=u_pick[part],
                    user_ids=first_ids.take(pa.array(part)),
                )
            )
    return blocks, int(n_invalid)


# ---- arms: holdout, exploration, model ----------------------------------------------------------------------


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


# ---- the dual step -------------------------------------------------------------------------------------------


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


# ---- the dual search ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverSettings:
    """How hard the dual search works.

    Attributes:
        tolerance: Stop when ``(dual bound - primal) / dual bound`` is at most this.
        max_rounds: Most sweeps over the budgets (coordinate descent rounds).
        max_passes: Most evaluation passes over the data, all rounds together.
        grid_points: Multiplier values tried per budget in one pass (a pass evaluates them all at once).
        coordinate_passes: Most refinement passes per budget per round.
    """

    tolerance: float = 1e-3
    max_rounds: int = 20
    max_passes: int = 200
    grid_points: int = 8
    coordinate_passes: int = 8


@dataclass
class SolveResult:
    """What the dual search found: the multipliers of the best feasible allocation and the certificate."""

    lam: np.ndarray  # (B,) multipliers whose allocation is feasible and best among those tried
    primal: float  # model-arm value of that allocation (before the fill)
    spend: np.ndarray  # (B,) its spend
    dual: float  # best (lowest) dual bound seen
    dual_lam: np.ndarray  # multipliers of the best dual bound
    passes: int
    rounds: int
    evaluations: int
    converged: bool
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (pass, best primal, best dual)
    dual_value: float = 0.0  # model-arm value of the choice under dual_lam (it may overspend)
    dual_spend: np.ndarray | None = None  # (B,) its spend
    finished: float = -np.inf  # best value the finisher reached (a repaired and filled allocation)

    @property
    def gap(self) -> float:
        return relative_gap(self.primal, self.dual)


def relative_gap(primal: float, dual: float) -> float:
    """``(dual - primal) / |dual|``; 0 when both are 0."""
    if dual <= 0 and primal >= dual:
        return 0.0
    return max(0.0, (dual - primal) / max(abs(dual), 1e-12))


Evaluator = Callable[[np.ndarray], Agg]
#: ``(lam, value, spend)`` of a choice -> value of the feasible allocation made from it (repair + fill), or None.
Finisher = Callable[[np.ndarray, float, np.ndarray], "float | None"]


def solve_dual(
    evaluate: Evaluator,
    budgets: BudgetMatrix,
    residual: np.ndarray,
    lam_hi: np.ndarray,
    settings: SolverSettings,
    finisher: Finisher | None = None,
) -> SolveResult:
    """Coordinate descent on the multipliers, each coordinate by a grid bisection evaluated in whole passes.

    For budget ``b`` (others fixed) the dual is minimised by the smallest ``lam_b >= 0`` whose allocation keeps
    ``b``'s spend within ``residual[b]`` (spend on ``b`` never rises with ``lam_b``); each pass tries
    ``grid_points`` values of the bracket at once (log-spaced while it is wide, then evenly). Every evaluated
    multiplier vector gives a dual bound, and every one whose allocation fits all budgets gives a primal
    candidate: the best of each are kept, so the certificate never gets worse. The search stops as soon as
    their gap is within the tolerance (even mid-round, mid-bisection): each pass costs a pass over the data.

    Args:
        evaluate: ``(m, B)`` multipliers -> :class:`Agg` over the model users (one distributed pass).
        budgets: The budgets against the campaign dictionary.
        residual: ``(B,)`` what the model arm may spend (limits less exploration spend), all >= 0.
        lam_hi: ``(B,)`` multipliers at which budget ``b`` spends nothing.
        settings: Tolerance and limits.
        finisher: Turns the choice of the best dual multipliers into a feasible allocation (one pass: the
            repair and fill) and returns its value; called at the end of each round whose bound improved. With
            several budgets the choices the search evaluates rarely fit every budget at once, so without it the
            certificate would only close at the very end; with it the search stops as soon as a finished
            allocation is within the tolerance of the bound.
    """
    inc = Incumbent.start(evaluate, budgets, residual)
    run, certified = inc.run, lambda: inc.certified(settings.tolerance)
    lam = np.zeros(len(residual))
    step = np.ones(len(residual))  # last relative change of each multiplier: the width of its next search window
    spend0 = run(lam[None, :])[0]
    rounds = 0
    converged = bool(np.all(spend0 <= residual))
    g = max(2, settings.grid_points)
    while not converged and rounds < settings.max_rounds and inc.passes < settings.max_passes:
        rounds += 1
        before, dual_before = lam.copy(), inc.dual
        for b in range(len(residual)):
            if inc.passes >= settings.max_passes or certified():
                break
            new = _coordinate(run, lam, b, residual[b], lam_hi[b], g, step[b], settings, certified)
            step[b] = abs(new - lam[b]) / max(new, lam[b], 1e-300)
            lam[b] = new
        if finisher is not None and not certified() and inc.dual < dual_before:
            value = finisher(inc.dual_lam, inc.dual_value, inc.dual_spend)
            inc.passes += 1
            if value is not None:
                inc.finished = max(inc.finished, value)
        converged = certified()
        stalled = dual_before - inc.dual <= 0.01 * settings.tolerance * abs(inc.dual)
        if rounds > 1 and (np.allclose(lam, before, rtol=1e-6, atol=0.0) or stalled):
            break
    if not np.isfinite(inc.primal):  # nothing feasible was seen: issue nothing from the model arm
        inc.lam = lam_hi * 2.0 + 1.0
        inc.primal = 0.0
    return SolveResult(
        lam=inc.lam,
        primal=float(inc.primal),
        spend=inc.spend,
        dual=float(inc.dual),
        dual_lam=inc.dual_lam,
        passes=int(inc.passes),
        rounds=rounds,
        evaluations=int(inc.evaluations),
        converged=certified(),
        trace=inc.trace,
        dual_value=inc.dual_value,
        dual_spend=inc.dual_spend,
        finished=inc.finished,
    )


@dataclass
class Incumbent:
    """The dual search's state: the best feasible allocation seen (the primal), the best bound (the dual) and
    what it took. :meth:`run` evaluates a batch of multiplier vectors in one pass and keeps the best of each,
    so the certificate never gets worse."""

    evaluate: Evaluator
    budgets: BudgetMatrix
    residual: np.ndarray
    lam: np.ndarray  # (B,) multipliers of the best feasible allocation (inf until one is seen)
    spend: np.ndarray  # (B,) its spend
    dual_lam: np.ndarray  # (B,) multipliers of the best bound
    dual_spend: np.ndarray  # (B,) the spend of the choice under dual_lam (it may overspend)
    primal: float = -np.inf
    dual: float = np.inf
    dual_value: float = 0.0  # model-arm value of the choice under dual_lam
    finished: float = -np.inf  # best value the finisher reached
    passes: int = 0
    evaluations: int = 0
    trace: list[tuple[int, float, float]] = field(default_factory=list)

    @classmethod
    def start(cls, evaluate: Evaluator, budgets: BudgetMatrix, residual: np.ndarray) -> Incumbent:
        n_b = len(residual)
        return cls(evaluate, budgets, residual, np.full(n_b, np.inf), np.zeros(n_b), np.zeros(n_b), np.zeros(n_b))

    def run(self, points: np.ndarray) -> np.ndarray:
        """Evaluate ``(m, B)`` multipliers in one pass; keep the best bound and the best feasible choice among
        them; return their ``(m, B)`` spend."""
        agg = self.evaluate(points)
        self.passes += 1
        self.evaluations += len(points)
        spend = self.budgets.spend(agg.amount, agg.count)
        dual = points @ self.residual + agg.lagr
        i = int(np.argmin(dual))
        if dual[i] < self.dual:
            self.dual, self.dual_lam = float(dual[i]), points[i].copy()
            self.dual_value, self.dual_spend = float(agg.value[i]), spend[i].copy()
        feasible = np.all(spend <= self.residual, axis=1)
        if feasible.any():
            vals = np.where(feasible, agg.value, -np.inf)
            j = int(np.argmax(vals))
            if vals[j] > self.primal:
                self.primal, self.lam, self.spend = float(vals[j]), points[j].copy(), spend[j].copy()
        self.trace.append((self.passes, self.primal, self.dual))
        return spend

    def certified(self, tolerance: float) -> bool:
        """The best allocation seen (feasible, or finished) is within ``tolerance`` of the best bound."""
        return relative_gap(max(self.primal, self.finished), self.dual) <= tolerance


def _coordinate(
    run: Callable[[np.ndarray], np.ndarray],
    lam: np.ndarray,
    b: int,
    limit: float,
    hi: float,
    g: int,
    step: float,
    settings: SolverSettings,
    certified: Callable[[], bool] = lambda: False,
) -> float:
    """Smallest grid-resolved ``lam_b`` keeping budget ``b`` within ``limit`` (others fixed).

    The first pass tries 0, ``hi`` (where ``b`` spends nothing) and, when warm, a window around the current
    value as wide as its last change; later passes split the bracket found (log-spaced while its ends are
    more than 1.5x apart, evenly after). Stops when the bracket is within 1e-4 (relative), or the spend at its
    upper end is within a quarter of the tolerance of the limit, or when ``certified()`` says the search as a
    whole is done (the gap is within the tolerance).
    """
    hi = float(hi) * (1 + 1e-6) + 1e-12
    cur = float(lam[b])
    if cur > 0:
        w = min(max(2.0 * step, 1e-3), 0.9)
        grid = [0.0, hi, *np.linspace(cur * (1 - w), cur * (1 + w), g - 2).tolist()]
    else:
        grid = [0.0, *np.geomspace(hi * 1e-9, hi, g - 1).tolist()]
    grid_arr = np.unique(np.array(grid))
    lo_v, up_v = 0.0, hi
    for p in range(settings.coordinate_passes):
        if p > 0:
            wide = lo_v <= 0 or up_v / lo_v > 1.5
            inner = np.geomspace(max(lo_v, up_v * 1e-12), up_v, g + 2) if wide else np.linspace(lo_v, up_v, g + 2)
            grid_arr = inner[1:-1]
        pts = np.repeat(lam[None, :], len(grid_arr), axis=0)
        pts[:, b] = grid_arr
        spend = run(pts)[:, b]
        feas = spend <= limit
        if p == 0 and feas[0] and grid_arr[0] == 0.0:
            return 0.0
        up_spend = -1.0
        if feas.any():
            i = int(np.argmax(feas))
            up_v, up_spend = float(grid_arr[i]), float(spend[i])
            if i > 0:
                lo_v = float(grid_arr[i - 1])
        else:
            lo_v = float(grid_arr[-1])
        if up_spend >= 0 and limit - up_spend <= 0.25 * settings.tolerance * max(limit, 1e-12):
            break
        if up_v - lo_v <= 1e-4 * up_v or certified():
            break
    return up_v


# ---- the fill: spend what the multipliers left ---------------------------------------------------------------


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


# ---- decisions ------------------------------------------------------------------------------------------------


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
