"""The synthetic shop's truth as the evaluation's plug-in: the true value of the run's allocation, the oracle's
and two baselines'.

The evaluation stage (:mod:`coupon_spark.evaluation.job`) never imports this module at load: its
``find_truth`` builds a :class:`ShopTruth` only where the lake holds the shop's hidden truth
(``<lake.root>/<shop.truth_dir>``), and passes the plug-in to the truth section; on a real shop's lake there is
none and the section says so.

Everything here works on pandas frames on the driver, with the hidden response model
(:mod:`coupon_spark.datagen.response`) as the judge. The options are the run's candidates (the same users and
the same eligible coupons the allocator could choose from), each valued with the truth:

- ``true_uplift`` = p(purchase | coupon) - p(purchase | none), ``true_p_redeem``, ``true_expected_cost`` =
  ``true_p_redeem * coupon_cost``, and ``true_incremental_profit`` = expected profit with the coupon less the
  expected profit without it (the quantity the allocator tries to maximise, net of the coupon's cost).

Policies, all at the same budgets and per-user cap:

- ``oracle``: the allocator itself (:func:`coupon_spark.allocation.allocate_in_memory`) run on the options with
  their true values and true expected costs, without holdout or exploration.
- ``random``: a uniformly random candidate per user, users in random order, each accepted while every budget
  it counts against has room (on the candidates' estimated cost: what a shop could actually run).
- ``redeem``: (user, coupon) pairs by decreasing estimated ``p_redeem``, accepted greedily on the same terms
  (targeting by redemption probability alone).

Policy values are sums of ``true_incremental_profit`` over the coupons a policy issues (one coupon acts per
user and day; with ``max_per_user > 1`` the coupons' increments are added, an approximation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from coupon_spark.allocation import POLICY_MODEL, AllocationParams, Budget, allocate_in_memory
from coupon_spark.config import Config
from coupon_spark.datagen.response import UPLIFT_TYPES, CouponParams, UserTraits, response_matrix, uplift_type
from coupon_spark.datagen.shop import truth_table
from coupon_spark.datagen.world import season_logit
from coupon_spark.lake import Lake

TRUE_COLUMNS = ("true_uplift", "true_p_redeem", "true_expected_cost", "true_incremental_profit", "uplift_type")


def with_true_values(options: pd.DataFrame, traits: pd.DataFrame, coupons: pd.DataFrame, season: float) -> pd.DataFrame:
    """Adds the true response of each (user, coupon) option: :data:`TRUE_COLUMNS`.

    Args:
        options: Rows with ``user_id``, ``coupon_id`` (null = no coupon) and ``coupon_cost``.
        traits: The hidden traits of (at least) the options' users (``USER_TRUTH`` columns).
        coupons: The truth catalogue (``COUPON_TRUTH`` columns).
        season: The day's purchase-logit shift (:func:`coupon_spark.datagen.world.season_logit`).

    Raises:
        KeyError: A user or coupon of the options is not in the truth.
    """
    out = options.copy()
    if out.empty:
        for c in TRUE_COLUMNS:
            out[c] = pd.Series(dtype=object if c == "uplift_type" else np.float64)
        return out
    users = traits.drop_duplicates("user_id").set_index("user_id")
    missing = set(out["user_id"]) - set(users.index)
    if missing:
        raise KeyError(
            f"{len(missing)} users of the allocation are not in the shop's truth, e.g. {sorted(missing)[:3]}"
        )
    uids = pd.unique(out["user_id"])
    params = CouponParams.from_pandas(coupons)
    r = response_matrix(UserTraits.from_pandas(users.loc[list(uids)].reset_index()), params, season)
    row = pd.Index(uids).get_indexer(pd.Index(out["user_id"]))
    col = params.index_of(out["coupon_id"].to_numpy(object)) + 1  # 0 = no coupon
    unknown = out["coupon_id"].notna().to_numpy() & (col == 0)
    if unknown.any():
        raise KeyError(f"coupons not in the shop's truth: {sorted(set(out['coupon_id'][unknown]))[:5]}")
    p, p0 = r.p_purchase[row, col], r.p_purchase[row, 0]
    out["true_uplift"] = p - p0
    out["true_p_redeem"] = r.p_redeem[row, col]
    cost = out["coupon_cost"].fillna(0.0).to_numpy(np.float64) if "coupon_cost" in out else 0.0
    out["true_expected_cost"] = out["true_p_redeem"] * cost
    out["true_incremental_profit"] = r.expected_profit[row, col] - r.expected_profit[row, 0]
    out["uplift_type"] = pd.Series(uplift_type(p0, p), index=out.index, dtype=object).mask(col == 0, None)
    return out


def budget_spend(issued: pd.DataFrame, budgets: Sequence[Budget], cost: str) -> np.ndarray:
    """Spend of the issued rows on each budget (money: the sum of ``cost``; count: coupons)."""
    out = np.zeros(len(budgets))
    for i, b in enumerate(budgets):
        rows = issued if b.campaign_id is None else issued[issued["campaign_id"] == b.campaign_id]
        out[i] = float(rows[cost].sum()) if b.kind == "amount" else float(len(rows))
    return out


def greedy_within_budgets(options: pd.DataFrame, budgets: Sequence[Budget], cost: str, max_per_user: int) -> np.ndarray:
    """Accept options in the given order while the user has fewer than ``max_per_user`` coupons and every
    budget the option counts against has room; returns the accepted rows' positions.

    Args:
        options: Rows with ``user_id``, ``campaign_id`` and the ``cost`` column, in priority order.
        budgets: Money budgets count ``cost``, count budgets one per coupon.
        cost: The cost column.
        max_per_user: Per-user cap.
    """
    left = np.array([b.limit for b in budgets], np.float64)
    is_amount = np.array([b.kind == "amount" for b in budgets])
    camp = options["campaign_id"].to_numpy(object)
    costs = options[cost].to_numpy(np.float64)
    campaigns = pd.unique(camp)
    applies = {c: np.array([b.campaign_id is None or b.campaign_id == c for b in budgets], bool) for c in campaigns}
    taken: dict[str, int] = {}
    accepted = []
    eps = 1e-9
    for i, (u, c, x) in enumerate(zip(options["user_id"].to_numpy(object), camp, costs, strict=True)):
        if taken.get(u, 0) >= max_per_user:
            continue
        need = np.where(is_amount, x, 1.0) * applies[c]
        if np.all(need <= left + eps):
            left -= need
            taken[u] = taken.get(u, 0) + 1
            accepted.append(i)
    return np.array(accepted, dtype=np.int64)


def random_targeting(
    options: pd.DataFrame, budgets: Sequence[Budget], cost: str, max_per_user: int, seed: int
) -> pd.DataFrame:
    """The random baseline: one random candidate per user, users in random order, within the budgets."""
    if options.empty:
        return options.iloc[:0]
    rng = np.random.default_rng(seed)
    shuffled = options.assign(_u=rng.random(len(options))).sort_values("_u", kind="stable")
    one = shuffled.drop_duplicates("user_id", keep="first")  # a uniform candidate of each user, users shuffled
    picked = one.iloc[greedy_within_budgets(one, budgets, cost, max_per_user)]
    return picked.drop(columns="_u")


def redeem_targeting(options: pd.DataFrame, budgets: Sequence[Budget], cost: str, max_per_user: int) -> pd.DataFrame:
    """The redemption baseline: pairs by decreasing estimated ``p_redeem``, accepted greedily within budgets."""
    ordered = options.sort_values(["p_redeem", "user_id", "coupon_id"], ascending=[False, True, True], kind="stable")
    return ordered.iloc[greedy_within_budgets(ordered, budgets, cost, max_per_user)]


def oracle_allocation(
    options: pd.DataFrame, budgets: Sequence[Budget], params: AllocationParams, run_date: str = "1970-01-01"
) -> pd.DataFrame:
    """The allocator on the options valued with the truth (:data:`TRUE_COLUMNS` needed), without holdout or
    exploration; returns the issued options (with their true columns)."""
    if options.empty:
        return options.iloc[:0]
    cand = pd.DataFrame(
        {
            "user_id": options["user_id"].to_numpy(object),
            "coupon_id": options["coupon_id"].to_numpy(object),
            "campaign_id": options["campaign_id"].to_numpy(object),
            "uplift": options["true_uplift"].to_numpy(np.float64),
            "coupon_cost": options["coupon_cost"].to_numpy(np.float64),
            "expected_cost": options["true_expected_cost"].to_numpy(np.float64),
            "expected_profit": options["true_incremental_profit"].to_numpy(np.float64),
            "model_version": "oracle",
        }
    )
    oracle_params = AllocationParams(
        max_per_user=params.max_per_user,
        cost_basis=params.cost_basis,
        holdout_share=0.0,
        exploration_share=0.0,
        seed=params.seed,
        solver=params.solver,
        fill_moves=params.fill_moves,
    )
    rows, _ = allocate_in_memory(cand, budgets, oracle_params, run_date=run_date)
    issued = rows[rows["coupon_id"].notna() & (rows["policy"] == POLICY_MODEL)][["user_id", "coupon_id"]]
    return options.merge(issued, on=["user_id", "coupon_id"], how="inner")


# ---- the plug-in ---------------------------------------------------------------------------------------------


def _sample_users(df: DataFrame, share: float, seed: int) -> DataFrame:
    if share >= 1.0:
        return df
    bucket = F.pmod(F.xxhash64(F.lit(f"evaluate:{seed}"), F.col("user_id")), F.lit(1_000_000))
    return df.where(bucket < F.lit(round(share * 1_000_000)))


@dataclass
class TruthSample:
    """The run's allocation and the model users' options on a sample of users, with their true values."""

    allocations: pd.DataFrame  # every arm's rows of the sampled users
    issued: pd.DataFrame  # the coupons issued, with their true values
    options: pd.DataFrame  # the model users' candidates, with their true values
    share: float  # users sampled (evaluate.truth_sample_share)

    @property
    def note(self) -> str | None:
        return f"users sampled at {self.share:g}" if self.share < 1 else None


def truth_sample(
    lake: Lake, cfg: Config, run_date: dt.date, allocations: DataFrame, candidates: DataFrame
) -> TruthSample:
    """The run's allocation and the model users' candidates on ``evaluate.truth_sample_share`` of the users, valued
    with the hidden truth of ``run_date``."""
    users_t, coupons_t = truth_table(cfg, "user_traits"), truth_table(cfg, "coupons")
    share, seed = cfg.evaluate.truth_sample_share, cfg.evaluate.seed
    alloc = _sample_users(allocations, share, seed)
    traits = lake.read(users_t).join(alloc.select("user_id").distinct(), on="user_id", how="left_semi").toPandas()
    coupons = lake.read(coupons_t).toPandas()
    a = alloc.toPandas()
    model_users = alloc.where(F.col("policy") == POLICY_MODEL).select("user_id").distinct()
    options = candidates.join(model_users, on="user_id", how="left_semi").toPandas()
    season = season_logit(run_date)
    issued = with_true_values(a[a["coupon_id"].notna()], traits, coupons, season)
    return TruthSample(a, issued, with_true_values(options, traits, coupons, season), share)


def truth_policies(
    sample: TruthSample, budgets: list[Budget], params: AllocationParams, run_date: dt.date, seed: int
) -> dict[str, pd.DataFrame]:
    """The coupons each policy issues to the sample at the sample's share of the budgets: the model's (as the
    run allocated them), the oracle's (the same solver on the true values), random and redemption-propensity
    targeting."""
    basis_cost = "expected_cost" if params.cost_basis == "expected" else "coupon_cost"
    issued, options = sample.issued, sample.options
    return {
        "model": issued[issued["policy"] == POLICY_MODEL],
        "oracle": oracle_allocation(options, budgets, params, run_date=run_date.isoformat()),
        "random": random_targeting(options, budgets, basis_cost, params.max_per_user, seed),
        "redeem": redeem_targeting(options, budgets, basis_cost, params.max_per_user),
    }


def uplift_curve(options: pd.DataFrame, points: int = 200) -> dict[str, np.ndarray]:
    """Cumulative true incremental profit when users are targeted (with their best candidate by the model)
    in the order of the model's expected profit, against random order and the true (perfect) order."""
    if options.empty:
        return {}
    best = options.sort_values(["user_id", "expected_profit"], ascending=[True, False]).drop_duplicates("user_id")
    true = best["true_incremental_profit"].to_numpy(np.float64)
    n = len(true)
    order = np.argsort(-best["expected_profit"].to_numpy(np.float64), kind="stable")
    model = np.concatenate([[0.0], np.cumsum(true[order])])
    perfect_true = options.groupby("user_id")["true_incremental_profit"].max().to_numpy(np.float64)
    perfect = np.concatenate([[0.0], np.cumsum(np.sort(perfect_true)[::-1])])
    idx = np.unique(np.linspace(0, n, min(points, n + 1)).round().astype(int))
    frac = idx / n
    return {"fraction": frac, "model": model[idx], "random": frac * true.sum(), "perfect": perfect[idx]}


# ---- policy from logs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopTruth:
    """The plug-in the evaluation's truth section takes (:class:`coupon_spark.evaluation.job.TruthPlugin`)."""

    lake: Lake
    cfg: Config
    uplift_types: tuple[str, ...] = tuple(UPLIFT_TYPES)

    def sample(self, run_date: dt.date, allocations: DataFrame, candidates: DataFrame) -> TruthSample:
        return truth_sample(self.lake, self.cfg, run_date, allocations, candidates)

    def policies(
        self, sample: TruthSample, budgets: list[Budget], params: AllocationParams, run_date: dt.date
    ) -> dict[str, pd.DataFrame]:
        return truth_policies(sample, budgets, params, run_date, self.cfg.evaluate.seed)

    def uplift_curve(self, options: pd.DataFrame) -> dict[str, np.ndarray]:
        return uplift_curve(options)

    def spend(self, issued: pd.DataFrame, budgets: Sequence[Budget]) -> np.ndarray:
        """What ``issued`` truly costs each budget (its true expected cost)."""
        return budget_spend(issued.assign(_c=issued["true_expected_cost"]), budgets, "_c")
