"""The dual search: coordinate descent on the multipliers, with its certificate (primal, dual bound, gap)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from coupon_spark.allocation.core.budgets import BudgetMatrix
from coupon_spark.allocation.core.step import Agg


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
