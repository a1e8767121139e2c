"""The decision gate: does the model's targeting beat issuing nothing, on randomised logs it never trained on?

A model can rank users well and still lose money: the allocator picks the largest estimates, and where the
uplift is small next to its estimation noise those are mostly the noisiest ones. So before a model version
may issue coupons, its own policy is evaluated off-policy. Policy ``pi_t``: each user gets the eligible coupon
with the largest expected incremental profit ``S`` if ``S > t``, else nothing (``S`` as the score job ranks it:
with ``score.uncertainty_z`` > 0, the estimate less that many standard deviations of the fold models'
estimates, see :meth:`coupon_spark.model.scorer.NumpyScorer.profit_spread`). On held-out rows that
randomised logging policies chose, with known propensities ``p_i``, the doubly robust estimate (Dudik,
Langford and Li, 2011) of its gain over issuing nothing is the mean of::

    G_i(t) = 1[S_i > t] * ( mu(x_i, c_i) - mu(x_i, none)
                            + 1[a_i = c_i]  * (r_i - mu(x_i, c_i))  / p_i
                            - 1[a_i = none] * (r_i - mu(x_i, none)) / p_i )

where ``c_i`` is the model's best coupon for the user, ``a_i`` the logged arm, ``r_i = revenue * margin -
coupon cost`` the logged reward and ``mu`` the model's own reward prediction (``p(purchase | c) * margin *
basket - p(redeem | c) * cost``, the cost net of the margin on the top-up to the coupon's minimum spend:
:func:`coupon_spark.policy.redemption_cost`; no cost without a coupon). The estimate is unbiased whatever ``mu`` is,
because the propensities are known and the logging policy could have chosen ``c_i`` (rows of coupon-spark's
own exploration arm, which draws among the user's candidates of the day, count only where ``c_i`` was one of
them); ``mu`` only lowers its variance.

**Cross-fitting (power).** With ``train.gate_folds = K >= 2`` the training job trains, besides the published
model, K fold models with the same architecture, transformation, shards and hyper-parameters, model ``k`` on
the training rows outside fold ``k`` (folds by a stable hash of ``issuance_id``: :func:`fold_ids`). Every
randomised row is scored (``S_i``, ``mu``) by the one fold model that did not see it, so the gate rests on
every randomised row instead of the published model's validation split (about ten times the rows at
``validation_share: 0.1``). What it then estimates is the value of the training procedure on (K-1)/K of
the data, applied with a threshold in EUR; the published model, trained on all of it, is taken to be at least
as good (the usual cross-fitting argument). To save time the fold models train for at most the published
model's best epoch count (an integer chosen on its validation rows: a negligible reuse). The rows are
out-of-fold, not out-of-time: a fold model knows a user's other days, later ones included. With ``K`` 0 or 1
the published model is scored on its own validation split, as before cross-fitting.

**The out-of-bag pool (``train.gate_out_of_bag``).** The published policy decides on the mean of every head:
the published model's and its fold models' (``score.pool_fold_models``). The gate scores each row with the
same pool, less the heads that saw the row: every head of the fold model that held the row's fold out, and,
of the published model and the other fold models, the heads whose Poisson bootstrap weight for the row is 0
(:func:`coupon_spark.model.data.bootstrap_weights`: a head with weight 0 takes no gradient from the row;
:func:`oob_head_mask`). That is about 10.5 of the 20 heads of 5-head models with 3 folds, never fewer than the
5 of the row's fold model: the out-of-bag estimate of random forests (Breiman, 2001), here of a policy. On the
demo's day-3 lake it raised the gain at threshold 0 from +0.026 (z 2.11, the row's fold model alone) to +0.033
EUR/decision (z 2.85), and it tests a policy that is what is published, not one fold model of it.

**Threshold selection without reuse: an online test.** The out-of-fold rows are put in a random order by another
hash of ``issuance_id`` and cut into ``train.gate_chunks`` chunks (:func:`chunk_ids`, independent of the folds).
The rows of chunk ``j >= 1`` are judged at the threshold chosen on chunks ``0 .. j-1`` only: of the candidates
(0, then quantiles of the positive ``S``), the one with the largest gain among those whose bound is positive
there, else the one with the largest test statistic (gain / standard error: the power of the test it will face;
:func:`best_threshold`). Each row's term ``1[S_i > t_j] G_i`` then has a conditional mean
given the earlier chunks that is the true gain at ``t_j``, at most 0 when no threshold pays, so their sum is a
martingale under the null and the self-normalised sum (each chunk's terms centred on its own mean) is
asymptotically normal: the gate opens iff the one-sided lower bound of the mean term is positive. This is the
online estimator of Luedtke and van der Laan (2016, Ann. Statist. 44(2)) for the value of a rule chosen from the
data, here with the rule a threshold. No row is judged at a threshold chosen on it, so no correction for the
number of candidates is needed and the gain is not the winner of a maximum (which is biased upwards); all rows
but the first chunk's are tested (90% at 10 chunks). The published threshold is the same choice on every row,
as the published model is the training procedure on every row. Before this, the gate chose on half the rows
and tested on the other half only; judging each half at the other's choice uses every row but is not valid:
when both halves favour the same threshold by chance, their sums rise together (a null simulation opened 7%
of the time at a stated 2.5%). Choosing by the best lower bound, where every bound is negative, picks the
threshold that issues least and throws the gain away (on the demo's day-3 lake one half chose the top 1% and
the gate saw +0.009 EUR/decision where threshold 0 had +0.026), hence the test statistic where no bound is
positive; where some are, the one of them with the largest gain (on the demo's day-1 lake the statistic chose
the top 11% of the scores, +0.085 EUR/decision, z 7.5, where threshold 0 showed +0.119, z 6.6: the rule is
the procedure's either way, chosen on earlier chunks only, so the test stays valid). The exactness is that
of cross-fitting: a fold model that scored a chunk was trained on rows of other chunks in other folds, a
dependence of one row among hundreds of thousands that the theory of cross-fitting (stable learners) neglects.

**Day-to-day reuse (alpha spending over the loop).** The loop retrains and re-tests every day, on logs that
are mostly those of the day before: were each test run at level ``alpha = 1 - train.decision_confidence``,
a model that does not pay would get a new chance to slip through every day, and the chance that the gate
ever opened wrongly would grow towards 1 with the days. So the level is the loop's: the ``j``-th test of a
model name (counted over its published versions in the registry: :func:`next_test_index`; every forced
retrain is a test too, a rerun that publishes nothing is not) is run at ``alpha_j = alpha / (j (j + 1))``.
These sum to ``alpha * j / (j + 1) < alpha`` over any number of tests, so by the union bound, which holds
however dependent the tests are (and on overlapping logs they are very dependent), the probability that any
test of the loop opens the gate for a policy that does not pay is below ``alpha``. Tests that had too few
rows to compute a bound spend nothing. The price is power: at ``alpha = 0.05`` the bound's z is 1.96 on the
first test, 2.39 on the second, 2.94 on the 5th, 3.32 on the 10th, 3.87 on the 30th, 4.42 on the 100th;
against the 2.33 of the gate before cross-fitting (Bonferroni over 5 candidates) on a fifth of the
confirmation rows (its standard error 2.2 times larger), the cross-fitted gate needs a smaller gain to open
up to about the 700th test (z 5.2), and more so while the randomised logs keep growing
(``train.history_days: 0``). A new ``train.model_name`` starts a new count.
``decision.json`` records the folds, the rows of each part, the test's index, its ``alpha_j`` and the total
spent so far.

**A confirmed procedure is monitored, not re-tested (``train.gate_monitor``).** Once a test of the model name
opened the gate, the next versions (the same procedure, retrained on a day more of logs) do not spend a new
test: each keeps the gate open iff its own cross-fitted gain is positive, and closes it otherwise; a closed gate
is reopened only by a new test at the next ``alpha_j``. The gate is then open on a day only if some test
``k`` <= ``j`` of the loop opened it, so the probability that it ever opens while the procedure does not pay
(the null for every version) stays below ``alpha * j / (j + 1)`` as above: the union bound covers the
monitored days. What monitoring gives up is the version-by-version guarantee: a version worse than the
confirmed ones is kept while its estimate is still positive (a version whose estimate turned negative is
not). Without it every version would be re-tested at an ever smaller ``alpha_j`` (z 2.39 on the 2nd test,
2.64 on the 3rd) on logs that grow by a few percent a day, and a procedure that pays would rarely stay open.

What the level does not cover: the bound is a normal approximation, and inverse-propensity terms are heavy
tailed where propensities are small; and the logs are the past, while the policy acts on the next days. Against
the first, the gate opens only where the tested terms' Kish effective number is at least
:data:`MIN_EFFECTIVE_ROWS`: a sum that a few dozen large terms decide is not approximately normal, however many
rows are zero or small beside them.

When the confirmation bound is not positive the gate stays closed (``threshold = inf``): the model has not
shown that any of its coupons pays, so the scores keep ranking coupons but none is worth issuing on the
model's behalf; the holdout and the exploration arm go on, so the next models get new randomised data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from coupon_spark.config import ScoreConfig
from coupon_spark.model.spec import hash_buckets
from coupon_spark.policy import logged_reward, mask_ineligible, prepare_coupons, purchase_value, redemption_cost

DECISION_FILE = "decision.json"
THRESHOLD_QUANTILES = (0.5, 0.75, 0.9, 0.95)
"""Candidate thresholds besides 0: these quantiles of the positive best scores (of the chunks chosen on)."""
MIN_ROWS = 100
"""Fewer randomised decisions than this in the first chunk or in the tested ones and the gate stays closed."""
MIN_EFFECTIVE_ROWS = 1000.0
"""The normal bound needs many comparable terms: where the Kish effective number of the tested terms,
``(sum |x|)^2 / sum x^2``, is below this, a few large inverse-propensity terms decide the sum and the gate stays
closed. ``bench/gate_replay.py`` prints it: 29,209 / 26,921 / 22,614 on the three gates of the demo's lake; on a
1,500-user shop of another world (``tests/test_second_world.py``, a one-off diagnosis) it was 57 to 187, 1% of
the rows carried 59-88% of ``sum |x|``, and a bound of +0.014 EUR/decision had opened a gate whose policy truly
lost money."""
_HASH_SHARE = 1_000_000


@dataclass(frozen=True)
class Gate:
    """The gate of a model version.

    Attributes:
        threshold: EUR; the model issues a coupon only where its expected incremental profit is above it
            (``inf``: closed, 0.0: no gate -- every positive estimate counts).
        gain: Estimated gain over issuing nothing, EUR per decision, every tested row judged at the threshold chosen
            on the chunks before its own (also when closed; NaN when nothing was tested).
        lower: Its one-sided lower confidence bound at level ``1 - alpha``; a test opens the gate iff it is > 0.
        share_issued: Share of the decisions the policy gives a coupon at the threshold (0 when closed).
        rows: Held-out randomised decisions the gate rests on (every chunk).
        confidence: ``train.decision_confidence``: the level over every test of the loop (see ``alpha``).
        curve: The candidate thresholds with their gain, standard error, bound (at ``1 - alpha``) and issued
            share on all the rows (the published threshold is this curve's :func:`best_threshold`).
        folds: Cross-fitting folds (0: the published model on its validation split).
        rows_selection: Decisions of the first chunk (thresholds were chosen on them, none tested).
        rows_confirmation: Decisions tested (every later chunk, each at the threshold of the chunks before it).
        se: Standard error of ``gain``.
        selected_threshold: The threshold the procedure chooses on all the rows (also when the gate is closed).
        test_index: This test's number ``j`` among the tested gates of the model name (0: a gate from before
            alpha spending).
        alpha: This test's one-sided error, ``(1 - confidence) / (j (j + 1))``.
        alpha_spent: The error spent by tests 1..j together, ``(1 - confidence) * j / (j + 1)``.
        mode: ``"test"``, or ``"monitor"``: a version of a confirmed procedure, open iff its gain is positive
            (spends nothing; ``test_index`` is then the confirming test's).
        part_thresholds: The threshold each tested chunk was judged at (chosen on the chunks before it).
        effective_rows: Kish effective number of the tested terms (:data:`MIN_EFFECTIVE_ROWS`).
    """

    threshold: float
    gain: float
    lower: float
    share_issued: float
    rows: int
    confidence: float
    curve: list[dict[str, float]] = field(default_factory=list)
    folds: int = 0
    rows_selection: int = 0
    rows_confirmation: int = 0
    se: float = math.nan
    selected_threshold: float = math.nan
    test_index: int = 0
    alpha: float = math.nan
    alpha_spent: float = math.nan
    mode: str = "test"
    part_thresholds: list[float] = field(default_factory=list)
    effective_rows: float = math.nan

    @property
    def is_open(self) -> bool:
        return math.isfinite(self.threshold)

    @property
    def tested(self) -> bool:
        """Whether a bound was computed, i.e. the test could have opened the gate (and spent its alpha); a
        monitored version spends nothing."""
        if self.mode == "monitor":
            return False
        if self.test_index == 0:  # a gate from before alpha spending: one test at its own confidence
            return self.confidence > 0 and self.rows >= MIN_ROWS
        return min(self.rows_selection, self.rows_confirmation) >= MIN_ROWS

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become null (a null threshold means closed)."""

        def safe(x: Any) -> Any:
            return x if not isinstance(x, float) or math.isfinite(x) else None

        out = asdict(self)
        out["curve"] = [{k: safe(v) for k, v in c.items()} for c in self.curve]
        out["part_thresholds"] = [safe(t) for t in self.part_thresholds]
        return {k: safe(v) for k, v in out.items()} | {"open": self.is_open}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Gate:
        """From :meth:`to_json`, or a ``decision.json`` written before cross-fitting (the new keys default)."""
        num = lambda k: math.nan if obj.get(k) is None else float(obj[k])  # noqa: E731
        threshold = math.inf if obj.get("threshold") is None else float(obj["threshold"])
        return cls(
            threshold=threshold,
            gain=num("gain"),
            lower=num("lower"),
            share_issued=num("share_issued"),
            rows=int(obj.get("rows") or 0),
            confidence=float(obj.get("confidence") or 0.0),
            curve=list(obj.get("curve") or []),
            folds=int(obj.get("folds") or 0),
            rows_selection=int(obj.get("rows_selection") or 0),
            rows_confirmation=int(obj.get("rows_confirmation") or 0),
            se=num("se"),
            selected_threshold=num("selected_threshold"),
            test_index=int(obj.get("test_index") or 0),
            alpha=num("alpha"),
            alpha_spent=num("alpha_spent"),
            mode=str(obj.get("mode") or "test"),
            part_thresholds=[math.nan if t is None else float(t) for t in obj.get("part_thresholds") or []],
            effective_rows=num("effective_rows"),
        )

    def describe(self) -> str:
        if self.test_index == 0:
            return self._describe_before_spending()
        where = (
            f"{self.folds}-fold out-of-fold randomised decisions"
            if self.folds >= 2
            else "held-out randomised decisions"
        )
        if self.mode == "monitor":
            state = f"open above {self.threshold:.3f} EUR" if self.is_open else "closed"
            return (
                f"{state}: monitoring the procedure confirmed by test {self.test_index} of the loop: gain "
                f"{self.gain:+.3f} EUR/decision (se {self.se:.3f}; kept open while positive) on "
                f"{self.rows_selection} + {self.rows_confirmation} {where}"
                + (f"; coupons to {self.share_issued:.1%}" if self.is_open else "")
            )
        if not self.tested:
            return (
                f"{self.rows_selection} + {self.rows_confirmation} {where} to choose and confirm a threshold on "
                f"(fewer than {MIN_ROWS} in the first chunk or the others): closed"
            )
        test = (
            f"{1 - self.alpha:.4%} bound, test {self.test_index} of the loop: {self.alpha_spent:.3g} of its "
            f"{1 - self.confidence:.3g} error spent"
        )
        if not self.part_thresholds and not self.is_open:  # a gate before the online test: chosen on one half
            return (
                f"closed: the threshold {self.selected_threshold:.3f} EUR chosen on {self.rows_selection} {where} "
                f"shows on {self.rows_confirmation} others a gain of {self.gain:+.3f} EUR/decision, lower bound "
                f"{self.lower:+.3f} ({test})"
            )
        if not self.is_open and self.effective_rows < MIN_EFFECTIVE_ROWS:
            return (
                f"closed: {self.rows_confirmation} {where} show a gain of {self.gain:+.3f} EUR/decision (lower bound "
                f"{self.lower:+.3f}), but a few large terms decide it: {self.effective_rows:.0f} effective rows, fewer "
                f"than the {MIN_EFFECTIVE_ROWS:.0f} a normal bound needs ({test})"
            )
        if not self.is_open:
            return (
                f"closed: {self.rows_confirmation} {where}, each judged at the threshold chosen on the chunks "
                f"before its own, show a gain of {self.gain:+.3f} EUR/decision, lower bound {self.lower:+.3f} ({test})"
            )
        return (
            f"open above {self.threshold:.3f} EUR: gain {self.gain:+.3f} EUR/decision (lower bound {self.lower:+.3f}; "
            f"{test}) on {self.rows_confirmation} {where}, each judged at the threshold chosen on the chunks before "
            f"its own; coupons to {self.share_issued:.1%}"
        )

    def _describe_before_spending(self) -> str:
        if self.rows < MIN_ROWS:
            return f"{self.rows} held-out randomised decisions to test the model on (fewer than {MIN_ROWS}): closed"
        if not self.is_open:
            return (
                f"closed: on {self.rows} held-out randomised decisions no threshold shows a gain over issuing "
                f"nothing (best {self.confidence:.0%} lower bound {self.lower:+.3f} EUR/decision)"
            )
        return (
            f"open above {self.threshold:.3f} EUR: gain {self.gain:+.3f} EUR/decision (lower bound "
            f"{self.lower:+.3f}) on {self.rows} held-out randomised decisions, coupons to {self.share_issued:.1%}"
        )


NO_GATE = Gate(threshold=0.0, gain=math.nan, lower=math.nan, share_issued=math.nan, rows=0, confidence=0.0)
"""Models published before the gate existed, or trained with ``train.decision_confidence: 0``."""


# ---- folds, parts and the error budget ----------------------------------------------------------------------
def fold_ids(issuance_ids: pd.Series | np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The cross-fitting fold (``0 .. folds-1``) of each row, by a hash of (seed, issuance_id): stable however
    the data is sharded, and independent of the validation split (another hash key). ``folds < 2``: all 0."""
    ids = pd.Series(issuance_ids, dtype=object).astype(str)
    if folds < 2:
        return np.zeros(len(ids), np.int64)
    return hash_buckets(f"{seed}:fold:" + ids, folds)


def oob_head_mask(
    issuance_ids: pd.Series | np.ndarray, fold: np.ndarray, heads: int, folds: int, seed: int
) -> np.ndarray:
    """``[heads * (folds + 1), n]`` bool: for each row, the heads of the pool (the published model's ``heads``,
    then each fold model's, in order) that never trained on it: all of the fold model that held the row's fold
    out, and the heads whose bootstrap weight for the row is 0 (module docstring)."""
    from coupon_spark.model.data import bootstrap_weights

    zero = (bootstrap_weights(issuance_ids, heads, seed) == 0).T  # [heads, n]
    fold = np.asarray(fold)
    return np.concatenate([zero, *((zero | (fold == k)[None, :]) for k in range(folds))], axis=0)


def chunk_ids(issuance_ids: pd.Series | np.ndarray, chunks: int, seed: int) -> np.ndarray:
    """The online test's chunk (``0 .. chunks-1``) of each row, by a hash of (seed, issuance_id) independent of
    the folds and of the validation split."""
    ids = pd.Series(issuance_ids, dtype=object).astype(str)
    return hash_buckets(f"{seed}:chunk:" + ids, max(int(chunks), 1))


def alpha_of_test(confidence: float, test_index: int) -> float:
    """The one-sided error of the ``test_index``-th test of the loop: ``(1 - confidence) / (j (j + 1))``."""
    j = max(int(test_index), 1)
    return (1.0 - confidence) / (j * (j + 1))


def alpha_spent(confidence: float, test_index: int) -> float:
    """The error spent by tests ``1 .. j`` together: ``(1 - confidence) * j / (j + 1)`` (< ``1 - confidence``)."""
    j = max(int(test_index), 1)
    return (1.0 - confidence) * j / (j + 1)


def next_test_index(previous: Iterable[Gate]) -> int:
    """The index of the next test, from the gates of the model name's earlier versions: one more than the
    tests they made (the larger of their count and their highest index, so that a deleted old version
    does not give an error back)."""
    tested = [g for g in previous if g.tested]
    return 1 + max(len(tested), max((g.test_index for g in tested), default=0))


# ---- the decision -------------------------------------------------------------------------------------------
def threshold_curve(
    best_score: np.ndarray, gain: np.ndarray, z: float, quantiles: Sequence[float] = THRESHOLD_QUANTILES
) -> list[dict[str, float]]:
    """Each candidate threshold (0, then ``quantiles`` of the positive ``best_score``) with the mean of
    ``1[best_score > t] * gain``, its standard error, the bound ``mean - z * se`` and the share issued."""
    s, g = np.asarray(best_score, np.float64), np.asarray(gain, np.float64)
    n = len(s)
    pos = s[s > 0]
    candidates = sorted({0.0, *(float(np.quantile(pos, q)) for q in quantiles)} if len(pos) else {0.0})
    curve = []
    for t in candidates:
        gi = np.where(s > t, g, 0.0)
        mean, se = float(gi.mean()), float(gi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        curve.append(
            {"threshold": t, "gain": mean, "se": se, "lower": mean - z * se, "share_issued": float(np.mean(s > t))}
        )
    return curve


def best_threshold(curve: Sequence[Mapping[str, float]]) -> float:
    """Of the candidates whose lower bound is positive, the one with the largest gain (the most profit the rows
    can vouch for); where none is, the one with the largest test statistic ``gain / se`` (the power of the test
    it will face; a threshold that issues nothing has none)."""
    shown = [c for c in curve if c["se"] > 0 and c["lower"] > 0]
    if shown:
        return float(max(shown, key=lambda c: c["gain"])["threshold"])
    stat = [c["gain"] / c["se"] if c["se"] > 0 else -math.inf for c in curve]
    return float(curve[int(np.argmax(stat))]["threshold"])


def decide(
    best_score: np.ndarray,
    gain: np.ndarray,
    chunk: np.ndarray,
    confidence: float,
    test_index: int = 1,
    folds: int = 0,
    quantiles: Sequence[float] = THRESHOLD_QUANTILES,
    min_rows: int = MIN_ROWS,
    monitor: bool = False,
    min_effective_rows: float = MIN_EFFECTIVE_ROWS,
) -> Gate:
    """The online test (module docstring): each chunk judged at the threshold chosen on the chunks before it.

    Args:
        best_score: Per held-out decision, the model's largest expected incremental profit (EUR).
        gain: Per decision, :func:`dr_gain` of that best coupon.
        chunk: Per decision, its chunk (:func:`chunk_ids`; a bool array: ``True`` is chunk 0, ``False`` 1).
        confidence: ``train.decision_confidence``: the level over every test of the loop.
        test_index: This test's number among the model name's tests (:func:`next_test_index`); when
            monitoring, the number of the test that confirmed the procedure.
        folds: Cross-fitting folds the scores came from (recorded).
        quantiles: Quantiles of the positive best scores tried as thresholds besides 0.
        min_rows: Fewer decisions than this in the first chunk or in the tested ones: closed.
        monitor: The procedure was confirmed by an earlier test and its last version kept the gate open: open
            iff the gain is positive, spending nothing (``train.gate_monitor``).
        min_effective_rows: Closed, test or monitor, where the tested terms' Kish effective number is below it.
    """
    s, g = np.asarray(best_score, np.float64), np.asarray(gain, np.float64)
    c = np.asarray(chunk)
    c = np.where(c, 0, 1) if c.dtype == bool else c.astype(np.int64)
    alpha = alpha_of_test(confidence, test_index)
    z = NormalDist().inv_cdf(1.0 - alpha)
    first = c == 0
    n_first, n_test = int(first.sum()), int((~first).sum())
    record: dict[str, Any] = {
        "rows": len(s),
        "confidence": confidence,
        "folds": folds,
        "rows_selection": n_first,
        "rows_confirmation": n_test,
        "test_index": test_index,
        "alpha": alpha,
        "alpha_spent": alpha_spent(confidence, test_index),
        "mode": "monitor" if monitor else "test",
    }
    if min(n_first, n_test) < min_rows:  # too few for a normal-approximation bound to mean anything
        return Gate(math.inf, math.nan, math.nan, 0.0, **record)
    terms, centred, thresholds = [], [], []
    for j in sorted(set(np.unique(c[~first]).tolist())):
        past, now = c < j, c == j
        t_j = best_threshold(threshold_curve(s[past], g[past], z, quantiles))
        x = np.where(s[now] > t_j, g[now], 0.0)
        thresholds.append(t_j)
        terms.append(x)
        centred.append(x - x.mean())
    x, d = np.concatenate(terms), np.concatenate(centred)
    mean, se = float(x.mean()), float(math.sqrt(float(np.sum(d * d))) / len(x))
    lower = mean - z * se
    squares = float(np.sum(x * x))
    effective = float(np.sum(np.abs(x))) ** 2 / squares if squares > 0 else 0.0
    curve = threshold_curve(s, g, z, quantiles)
    t = best_threshold(curve)  # the procedure on every row: published
    record |= {"curve": curve, "se": se, "selected_threshold": t, "part_thresholds": thresholds}
    record["effective_rows"] = effective
    if effective < min_effective_rows or not (mean > 0 if monitor else lower > 0):
        return Gate(math.inf, mean, lower, 0.0, **record)
    return Gate(t, mean, lower, float(np.mean(s > t)), **record)


def monitors(previous: Sequence[Gate], enabled: bool = True) -> tuple[bool, int]:
    """Whether the next version is monitored (the model name's latest version kept an open gate: confirmed
    by a test, module docstring) and the index of the test that confirmed it; ``(False, 0)`` otherwise.
    ``previous`` in version order."""
    if not enabled or not previous or not previous[-1].is_open or previous[-1].test_index < 1:
        return False, 0
    return True, previous[-1].test_index


# ---- the per-decision estimate -----------------------------------------------------------------------------
def dr_gain(
    mu_best: np.ndarray,
    mu_none: np.ndarray,
    reward: np.ndarray,
    propensity: np.ndarray,
    logged_best: np.ndarray,
    logged_none: np.ndarray,
) -> np.ndarray:
    """Per decision, the doubly robust estimate of (value of the best coupon) - (value of none); see the module
    docstring. ``logged_best``/``logged_none``: whether the logged arm was the model's best coupon / none."""
    p = np.asarray(propensity, np.float64)
    return (
        (mu_best - mu_none)
        + np.where(logged_best, (reward - mu_best) / p, 0.0)
        - np.where(logged_none, (reward - mu_none) / p, 0.0)
    )


def best_option_gains(
    scorer,  # type: ignore[no-untyped-def]
    rows: pd.DataFrame,
    coupons_by_date: Mapping[Any, pd.DataFrame],
    cfg: ScoreConfig,
    options: Mapping[tuple[Any, str], frozenset[str]] | None = None,
    head_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For held-out logged decisions: the model's best expected incremental profit and :func:`dr_gain`.

    Args:
        scorer: A :class:`coupon_spark.model.scorer.NumpyScorer`.
        rows: Logged decisions with the user's ``uf_*``/``uc_*`` features as of the issue date, ``issue_date``,
            ``coupon_id`` (null: the control arm), ``propensity``, ``revenue_eur`` and ``coupon_cost_eur``.
        coupons_by_date: Per issue date, the coupons live then (``coupon_features`` rows of that date).
        cfg: Scoring settings (margin, basket default, eligibility): the score job's own rules.
        options: For rows whose logging policy chose among a subset of the coupons (coupon-spark's own
            exploration arm draws among the user's candidates of the day), ``(issue_date, user_id) -> coupon
            ids`` it could draw; rows whose model-best coupon is not among them are left out, since the logs
            cannot tell what that coupon would have done (the estimate would fall back on the model's own
            optimism). Rows not in the mapping could draw any live coupon.
        head_mask: ``[len(scorer.heads), len(rows)]``: the heads that count for each row (:func:`oob_head_mask`
            of a pooled scorer); None: the scorer as it is.

    Returns:
        ``(best_score, gain, row)``, one entry per row whose issue date had a live coupon, whose user had an
        eligible one, and whose logging policy could have chosen the model's best coupon; ``row`` is its position
        in ``rows``. Rows are scored one issue date at a time (every row of a date in one batch, in date order,
        then row order), so a caller scores all its rows at once and splits the result afterwards (the gate's
        chunks) instead of paying the per-date work -- live coupons, their embeddings -- once per part.
    """
    scores, gains, where = [], [], []
    rows = rows.reset_index(drop=True)
    for day, part in rows.groupby("issue_date", sort=True):
        frame = coupons_by_date.get(day)
        if frame is None or frame.empty:
            continue
        at = part.index.to_numpy()
        part = part.reset_index(drop=True)
        coupons = prepare_coupons(frame, scorer, cfg)
        value = purchase_value(part, cfg)[:, None]
        cost = redemption_cost(part, coupons, cfg)  # [n, m]: the score job's cost of a redemption
        if head_mask is not None:  # the out-of-bag pool: each row's own heads, their mean and spread
            z, mask = cfg.uncertainty_z, head_mask[:, at]
            out, lowered = scorer.score_profit(part, coupons.frame, coupons.embeddings, value[:, 0], cost, z, mask)
        else:
            out = scorer.score_frames(part, coupons.frame, coupons.embeddings)
        mu = out["p_purchase"] * value - out["p_redeem"] * cost
        mu_none = out["p_purchase_none"] * value[:, 0]
        spread_of = getattr(scorer, "profit_spread", None)  # a scorer without an ensemble has no spread
        if head_mask is not None:
            profit = lowered.astype(np.float64)
        else:
            profit = (mu - mu_none[:, None]).astype(np.float64)
            if cfg.uncertainty_z > 0 and spread_of is not None:  # the score job's lower bound (the fold models)
                spread = spread_of(part, coupons.frame, value, cost)
                if spread is not None:
                    profit -= cfg.uncertainty_z * spread
        profit = mask_ineligible(profit, part, coupons, cfg)
        n = np.arange(len(part))
        best = profit.argmax(axis=1)
        logged = part["coupon_id"].to_numpy(object)
        reward = logged_reward(part["revenue_eur"], part["coupon_cost_eur"], cfg.margin_rate)
        g = dr_gain(
            mu[n, best],
            mu_none,
            reward,
            part["propensity"].to_numpy(np.float64),
            logged == coupons.frame["coupon_id"].to_numpy(object)[best],
            pd.isna(logged),
        )
        ok = np.isfinite(profit[n, best])  # users with no eligible coupon are not decisions of the model
        if options:
            ids = coupons.frame["coupon_id"].to_numpy(object)[best]
            users = part["user_id"].to_numpy(object)
            ok &= np.array(
                [options.get((day, u)) is None or c in options[(day, u)] for u, c in zip(users, ids, strict=True)]
            )
        scores.append(profit[n, best][ok])
        gains.append(g[ok])
        where.append(at[ok])
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(scores), np.concatenate(gains), np.concatenate(where).astype(np.int64)
