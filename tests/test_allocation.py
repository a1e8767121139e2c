"""The allocator: optimality against HiGHS, the budget/cap/holdout properties, and the Spark job end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix

from coupon_spark.allocation import (
    AllocationParams,
    MissingColumnsError,
    allocate,
    allocate_in_memory,
    budgets_from_config,
    make_budget,
)
from coupon_spark.allocation.core import Budget
from coupon_spark.allocation.job import catalogue_budgets, merge_budgets, paced_limit
from coupon_spark.allocation.job import run as run_allocate
from coupon_spark.config import AllocationConfig, Config, ConfigError
from coupon_spark.lake import Lake
from coupon_spark.runner import Context
from coupon_spark.schemas import ALLOCATION_RUNS_SCHEMA, ALLOCATIONS_SCHEMA, CANDIDATES_SCHEMA

RUN_DATE = dt.date(2026, 11, 28)


def instance(seed: int, n_users: int, n_coupons: int = 6, n_campaigns: int = 3) -> pd.DataFrame:
    """Random candidates: each user 1..n_coupons distinct coupons, profits around 1 (some negative)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for c in sorted(rng.choice(n_coupons, rng.integers(1, n_coupons + 1), replace=False)):
            cost, p_redeem = rng.uniform(1, 10), rng.uniform(0.05, 0.5)
            rows.append(
                {
                    "run_date": RUN_DATE,
                    "user_id": f"u{u:05d}",
                    "coupon_id": f"c{c}",
                    "campaign_id": f"k{c % n_campaigns}",
                    "p_purchase": 0.2,
                    "p_purchase_none": 0.1,
                    "uplift": rng.uniform(0, 0.1),
                    "p_redeem": p_redeem,
                    "coupon_cost": cost,
                    "expected_cost": p_redeem * cost,
                    "expected_profit": rng.normal(1.0, 1.0),
                    "model_version": "m1",
                    "rank": 1,
                }
            )
    return pd.DataFrame(rows)


def basis_cost(df: pd.DataFrame, basis: str) -> np.ndarray:
    return (df["expected_cost"] if basis == "expected" else df["coupon_cost"]).to_numpy()


def milp_optimum(df: pd.DataFrame, budgets: list[Budget], k: int, basis: str = "expected") -> float:
    """The integer optimum by HiGHS, built from the rows directly (not from the allocator's structures)."""
    n = len(df)
    users = df["user_id"].astype("category").cat.codes.to_numpy()
    cap = csr_matrix((np.ones(n), (users, np.arange(n))))
    cons = [LinearConstraint(cap, -np.inf, k)]
    for b in budgets:
        inside = np.ones(n) if b.campaign_id is None else (df["campaign_id"].to_numpy() == b.campaign_id) * 1.0
        w = inside * (basis_cost(df, basis) if b.kind == "amount" else 1.0)
        cons.append(LinearConstraint(w[None, :], -np.inf, b.limit))
    res = milp(-df["expected_profit"].to_numpy(), constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1))
    assert res.success
    return float(-res.fun)


def spend_of(issued: pd.DataFrame, b: Budget, basis: str) -> float:
    rows = issued if b.campaign_id is None else issued[issued["campaign_id"] == b.campaign_id]
    return float(basis_cost(rows, basis).sum()) if b.kind == "amount" else float(len(rows))


def in_holdout(user_id: str, salt: str, share: float) -> bool:
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2.0**53 < share


# ---- a hand-worked example ------------------------------------------------------------------------------------


def test_hand_worked_single_budget() -> None:
    # Budget 10.5 on expected cost. Options (value, cost): a: x(6, 5) y(4, 2); b: x(5, 5); c: y(3, 3).
    # Everyone's best costs 13 > 10.5; a->x, b->x gives 11 (cost 10); a->y, b->x, c->y gives 12 (cost 10): the
    # optimum (a->x, c->y is 9; a->y, b->x is 9; a->x, b->x, c->y costs 13).
    rows = [("a", "x", 6.0, 5.0), ("a", "y", 4.0, 2.0), ("b", "x", 5.0, 5.0), ("c", "y", 3.0, 3.0)]
    df = pd.DataFrame(
        [
            {
                "user_id": u,
                "coupon_id": c,
                "campaign_id": "k",
                "uplift": 0.1,
                "coupon_cost": cost,
                "expected_cost": cost,
                "expected_profit": v,
                "model_version": "m",
            }
            for u, c, v, cost in rows
        ]
    )
    out, plan = allocate_in_memory(df, [make_budget(None, "amount", 10.5)], AllocationParams())
    got = dict(zip(out["user_id"], out["coupon_id"], strict=True))
    assert got == {"a": "y", "b": "x", "c": "y"}
    assert plan.primal == pytest.approx(12.0)
    assert plan.dual >= 12.0 - 1e-9
    assert set(out["policy"]) == {"model"} and (out["propensity"] == 1.0).all()


# ---- optimality against an independent MILP ------------------------------------------------------------------


@pytest.mark.parametrize("seed,k,basis", [(0, 1, "expected"), (1, 2, "expected"), (2, 1, "face"), (3, 1, "expected")])
def test_within_half_percent_of_milp_and_below_the_bound(seed: int, k: int, basis: str) -> None:
    df = instance(seed, n_users=1000)
    cost = basis_cost(df, basis)
    budgets = [
        make_budget(None, "amount", 0.25 * cost.sum() / 3.5),
        make_budget("k1", "count", 120),
        make_budget("k0", "amount", 0.08 * cost.sum() / 3.5),
    ]
    out, plan = allocate_in_memory(df, budgets, AllocationParams(max_per_user=k, cost_basis=basis))  # type: ignore[arg-type]
    optimum = milp_optimum(df, budgets, k, basis)
    issued = out[out["coupon_id"].notna()]
    value = float(issued["expected_profit"].sum())
    assert value == pytest.approx(plan.primal, rel=1e-9)
    assert value >= 0.995 * optimum
    assert optimum <= plan.dual * (1 + 1e-9)
    for b in budgets:
        assert spend_of(issued, b, basis) <= b.limit


# ---- properties ------------------------------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> tuple[pd.DataFrame, list[Budget], AllocationParams]:
    seed = draw(st.integers(0, 10_000))
    df = instance(seed, n_users=draw(st.integers(1, 60)), n_coupons=draw(st.integers(1, 5)), n_campaigns=2)
    total = float(df["expected_cost"].sum())
    budgets = [make_budget(None, "amount", draw(st.floats(0.0, 1.0)) * total)]
    if draw(st.booleans()):
        budgets.append(make_budget("k0", "count", draw(st.integers(0, 20))))
    if draw(st.booleans()):
        budgets.append(make_budget("k1", "amount", draw(st.floats(0.0, 0.5)) * total))
    params = AllocationParams(
        max_per_user=draw(st.integers(1, 3)),
        cost_basis=draw(st.sampled_from(["expected", "face"])),
        holdout_share=draw(st.sampled_from([0.0, 0.2, 0.5])),
        holdout_salt="test-salt",
        exploration_share=draw(st.sampled_from([0.0, 0.3])),
        exploration_max_budget_fraction=draw(st.sampled_from([0.0, 0.5, 1.0])),
        seed=seed,
    )
    return df, budgets, params


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_properties_of_any_allocation(problem: tuple[pd.DataFrame, list[Budget], AllocationParams]) -> None:
    df, budgets, params = problem
    out, plan = allocate_in_memory(df, budgets, params, run_date=RUN_DATE.isoformat())
    issued = out[out["coupon_id"].notna()]
    # every budget holds, exploration included
    for b in budgets:
        assert spend_of(issued, b, params.cost_basis) <= b.limit
    # nobody over the cap, every user exactly represented
    per_user = issued.groupby("user_id").size()
    assert (per_user <= params.max_per_user).all()
    assert set(out["user_id"]) == set(df["user_id"])
    # holdout by the stable hash: never a coupon
    holdout = {u for u in df["user_id"].unique() if in_holdout(u, "test-salt", params.holdout_share)}
    assert set(out.loc[out["holdout"], "user_id"]) == holdout
    assert not issued["user_id"].isin(holdout).any()
    assert (out.loc[out["holdout"], "policy"] == "holdout").all()
    # only eligible (user, coupon) pairs, each at most once
    eligible = set(zip(df["user_id"], df["coupon_id"], strict=True))
    assert set(zip(issued["user_id"], issued["coupon_id"], strict=True)) <= eligible
    assert not issued.duplicated(["user_id", "coupon_id"]).any()
    # exploration propensities: 1 / (options + 1)
    n_opts = df.groupby("user_id").size()
    ex = out[out["policy"] == "exploration"]
    assert np.allclose(ex["propensity"].to_numpy(), 1.0 / (n_opts.loc[ex["user_id"]].to_numpy() + 1))
    # the certificate
    assert float(issued["expected_profit"].sum()) <= plan.dual + 1e-9
    # same seed, same allocation
    again, _ = allocate_in_memory(df, budgets, params, run_date=RUN_DATE.isoformat())
    pd.testing.assert_frame_equal(out, again)


def test_holdout_is_stable_across_run_dates_and_seeds() -> None:
    df = instance(5, n_users=300)
    params = AllocationParams(holdout_share=0.3, holdout_salt="s", exploration_share=0.2)
    budgets = [make_budget(None, "amount", 50.0)]
    a, _ = allocate_in_memory(df, budgets, params, run_date="2026-01-01")
    b, _ = allocate_in_memory(df, budgets, dataclasses.replace(params, seed=9), run_date="2026-01-02")
    held_a = set(a.loc[a["holdout"], "user_id"])
    assert held_a == set(b.loc[b["holdout"], "user_id"])
    assert held_a == {u for u in df["user_id"].unique() if in_holdout(u, "s", 0.3)}
    # ...while the exploration arm is drawn anew
    assert set(a.loc[a["policy"] == "exploration", "user_id"]) != set(b.loc[b["policy"] == "exploration", "user_id"])


# ---- config ----------------------------------------------------------------------------------------------------


def test_budgets_from_config_and_validation(tmp_path: Path) -> None:
    cfg = AllocationConfig(
        budget=AllocationConfig.Limit(amount=100.0),
        campaign_budgets={"k1": AllocationConfig.Limit(amount=20.0, count=5)},
    )
    assert budgets_from_config(cfg) == [
        Budget("overall:amount", "amount", 100.0, None),
        Budget("campaign k1:amount", "amount", 20.0, "k1"),
        Budget("campaign k1:count", "count", 5.0, "k1"),
    ]
    conf = tmp_path / "c.yaml"
    conf.write_text(f"extends: {os.path.abspath('conf/base.yaml')}\nallocation:\n  budget: {{amount: 5, money: 3}}\n")
    with pytest.raises(ConfigError, match=r"allocation\.budget\.money"):
        Config.from_file(conf)
    with pytest.raises(ConfigError, match="holdout_share"):
        Config.from_file("conf/base.yaml", overrides=["allocation.holdout_share=1.5"])


# ---- Spark ----------------------------------------------------------------------------------------------------


def test_spark_allocation_matches_the_in_memory_core(spark: SparkSession) -> None:
    df = instance(11, n_users=400)
    budgets = [make_budget(None, "amount", 60.0), make_budget("k2", "count", 15)]
    params = AllocationParams(holdout_share=0.1, exploration_share=0.1, exploration_max_budget_fraction=0.3, seed=3)
    sdf = spark.createDataFrame(df[CANDIDATES_SCHEMA.fieldNames()], CANDIDATES_SCHEMA)
    res = allocate(spark, sdf, budgets, params, RUN_DATE, partitions=2, block_rows=100)
    assert res.allocations.schema == ALLOCATIONS_SCHEMA
    got = res.allocations.toPandas().sort_values(["user_id", "coupon_id"]).reset_index(drop=True)
    want, plan = allocate_in_memory(df, budgets, params, run_date=RUN_DATE.isoformat())
    want = want.sort_values(["user_id", "coupon_id"]).reset_index(drop=True)
    cols = ["user_id", "coupon_id", "policy", "holdout", "propensity", "expected_profit"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    row = res.summary.first()
    assert row is not None
    assert row["primal_value"] == pytest.approx(plan.primal)
    assert row["dual_bound"] >= row["primal_value"]
    issued = got[got["coupon_id"].notna()]
    for b, used in zip(budgets, row["budgets"], strict=True):
        assert used["spend"] == pytest.approx(spend_of(issued, b, "expected"))
        assert used["spend"] <= b.limit


def test_missing_columns_are_named(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u", "c")], "user_id string, coupon_id string")
    with pytest.raises(MissingColumnsError, match="expected_profit"):
        allocate(spark, df, [], AllocationParams(), RUN_DATE)


def write_candidates(spark: SparkSession, lake: Lake, df: pd.DataFrame) -> pd.DataFrame:
    """Write ``df`` as the run date's candidates (what the score stage leaves for the allocate job)."""
    sdf = spark.createDataFrame(df[CANDIDATES_SCHEMA.fieldNames()], CANDIDATES_SCHEMA)
    lake.write(sdf, "candidates", mode="replace_partitions", partition_by=["run_date"])
    return df


def test_job_writes_tables_replaces_the_date_and_exports(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    df = write_candidates(spark, lake, instance(21, n_users=200))
    base = Config.from_file("conf/base.yaml")
    cfg = dataclasses.replace(
        base,
        lake=lake.cfg,
        allocation=dataclasses.replace(
            base.allocation,
            budget=AllocationConfig.Limit(amount=40.0, count=100),
            campaign_budgets={"k1": AllocationConfig.Limit(count=10)},
            holdout_share=0.1,
            exploration_share=0.05,
            channels={"k1": "email"},
            partitions=2,
        ),
    )
    assert run_allocate(Context(spark, cfg), RUN_DATE) == 0
    first = lake.read("allocations", where={"run_date": RUN_DATE})
    assert first.schema == ALLOCATIONS_SCHEMA
    n_first = first.count()
    assert run_allocate(Context(spark, cfg), RUN_DATE) == 0  # a rerun replaces the date
    alloc = lake.read("allocations", where={"run_date": RUN_DATE}).toPandas()
    assert len(alloc) == n_first
    assert alloc["user_id"].nunique() == df["user_id"].nunique()
    issued = alloc[alloc["coupon_id"].notna()]
    assert issued["expected_cost"].sum() <= 40.0 and len(issued) <= 100
    assert (issued["campaign_id"] == "k1").sum() <= 10
    runs = lake.read("allocation_runs").toPandas()
    assert lake.read("allocation_runs").schema == ALLOCATION_RUNS_SCHEMA
    assert len(runs) == 1 and runs["dual_bound"].iloc[0] >= runs["primal_value"].iloc[0]
    export = Path(lake.cfg.root) / "exports/allocations" / f"run_date={RUN_DATE.isoformat()}"
    channels = sorted(p.name for p in export.iterdir() if p.is_dir())
    expected = sorted({f"channel={'email' if c == 'k1' else 'push'}" for c in issued["campaign_id"]})
    assert channels == expected
    exported = pd.concat([pd.read_csv(f) for f in export.glob("channel=*/*.csv")])
    assert len(exported) == len(issued)


# ---- the catalogue's campaign budgets, paced -------------------------------------------------------------------


def test_paced_limit_and_merge_by_hand() -> None:
    assert paced_limit(100.0, 30.0, 7, "even") == pytest.approx(10.0)  # 70 left over 7 days
    assert paced_limit(100.0, 30.0, 7, "asap") == pytest.approx(70.0)
    assert paced_limit(100.0, 130.0, 3, "even") == 0.0  # overspent: nothing more
    assert paced_limit(100.0, 0.0, 0, "even") == pytest.approx(100.0)  # last day (or a stale snapshot)
    with pytest.raises(ValueError, match="pacing"):
        paced_limit(100.0, 0.0, 3, "off")
    configured = [make_budget(None, "amount", 500.0), make_budget("a", "amount", 5.0), make_budget("b", "amount", 50)]
    catalogue = [make_budget("a", "amount", 8.0), make_budget("b", "amount", 20.0), make_budget("c", "amount", 3.0)]
    merged = {b.name: b.limit for b in merge_budgets(configured, catalogue)}
    assert merged == {"overall:amount": 500.0, "campaign a:amount": 5.0, "campaign b:amount": 20.0,
                      "campaign c:amount": 3.0}  # fmt: skip


def _catalogue_tables(spark: SparkSession) -> tuple[DataFrame, DataFrame, DataFrame]:
    """coupon_features of RUN_DATE, silver coupons and redemptions: k1 has 100 EUR, 30 spent (3 x c1 at 10 EUR),
    4 days left; k2 has no budget; k0's coupons expired yesterday."""
    cf = spark.createDataFrame(
        [
            (RUN_DATE, "c1", "k1", 100.0, 4.0, 10.0),
            (RUN_DATE, "c4", "k1", 100.0, 2.0, 10.0),  # the campaign lasts as long as its last coupon
            (RUN_DATE, "c2", "k2", 0.0, 9.0, 3.0),
            (RUN_DATE, "c0", "k0", 40.0, 0.0, 20.0),
        ],
        "as_of_date date, coupon_id string, campaign_id string, cf_campaign_budget double, cf_days_left double, "
        "cf_days_since_start double",
    )
    coupons = spark.createDataFrame(
        [("c1", "k1", 10.0), ("c1", "k1", 10.0), ("c0", "k0", 5.0)],  # c1 on two ingest dates: charged once
        "coupon_id string, campaign_id string, cost_eur double",
    )
    earlier = RUN_DATE - dt.timedelta(days=1)
    redemptions = spark.createDataFrame(
        [("r1", "c1", earlier), ("r2", "c1", earlier), ("r3", "c1", earlier), ("r4", "c0", earlier),
         ("r5", "c1", RUN_DATE)],  # ingested on the run date: not known to a run of that date
        "redemption_id string, coupon_id string, ingest_date date",
    )  # fmt: skip
    return cf, coupons, redemptions


def test_catalogue_budgets_spread_what_remains_over_the_days_left(spark: SparkSession) -> None:
    from coupon_spark.scoring import campaign_spend

    cf, coupons, redemptions = _catalogue_tables(spark)
    spent = {r["campaign_id"]: r["spent"] for r in campaign_spend(redemptions, coupons, RUN_DATE).collect()}
    assert spent == {"k1": pytest.approx(30.0), "k0": pytest.approx(5.0)}
    even = catalogue_budgets(cf, campaign_spend(redemptions, coupons, RUN_DATE), "even")
    assert even == [make_budget("k1", "amount", 70.0 / 4)]
    asap = catalogue_budgets(cf, campaign_spend(redemptions, coupons, RUN_DATE), "asap")
    assert asap == [make_budget("k1", "amount", 70.0)]
    later = catalogue_budgets(cf, campaign_spend(redemptions, coupons, RUN_DATE + dt.timedelta(days=1)), "asap")
    assert later == [make_budget("k1", "amount", 60.0)]  # a day later r5 counts too
    assert catalogue_budgets(cf, None, "even") == [make_budget("k1", "amount", 25.0)]


@pytest.mark.parametrize("pacing", ["even", "off"])
def test_the_job_keeps_each_campaign_within_its_paced_budget(spark: SparkSession, lake: Lake, pacing: str) -> None:
    write_candidates(spark, lake, instance(23, n_users=300))
    cf, coupons, redemptions = _catalogue_tables(spark)
    lake.write(cf, "coupon_features", mode="replace_partitions", partition_by=["as_of_date"])
    lake.write(coupons, "coupons", mode="overwrite")
    lake.write(redemptions, "redemptions", mode="overwrite")
    base = Config.from_file("conf/base.yaml")
    cfg = dataclasses.replace(
        base,
        lake=lake.cfg,
        allocation=dataclasses.replace(
            base.allocation, budget=AllocationConfig.Limit(), campaign_pacing=pacing, exploration_share=0.0,
            partitions=2,
        ),
    )  # fmt: skip
    assert run_allocate(Context(spark, cfg), RUN_DATE) == 0
    alloc = lake.read("allocations", where={"run_date": RUN_DATE}).toPandas()
    k1 = alloc[alloc["campaign_id"] == "k1"]["expected_cost"].sum()
    budgets = {b["name"]: b["limit"] for b in lake.read("allocation_runs").first()["budgets"]}
    if pacing == "even":
        assert budgets == {"campaign k1:amount": pytest.approx(17.5)}
        assert 17.5 * 0.9 < k1 <= 17.5  # binds: unpaced, k1 spends far more (below)
    else:
        assert budgets == {} and k1 > 100.0
