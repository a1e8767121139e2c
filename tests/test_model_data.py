"""A small world with a KNOWN logistic response model, written as the feature tables' contract, and the
tests of the rank-side data path (snapshot file list, split by rank, pyarrow reads).

The other model tests import :func:`make_world` / :func:`write_world` from here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from coupon_spark.lake import Lake
from coupon_spark.model.data import DataFile, read_files, snapshot_files, split_files
from coupon_spark.schemas import FEATURE_STATS, TRAINING_EXAMPLES_KEYS

COUPONS = pd.DataFrame(
    {
        "coupon_id": ["c05", "c10", "c20"],
        "campaign_id": ["k1", "k1", "k2"],
        "cf_value": [5.0, 10.0, 20.0],
        "cc_kind": ["pct", "abs", "abs"],
    }
)
REGIONS = np.array(["north", "south", "east"])
RUN_DATE = dt.date(2026, 12, 1)

# feature_stats, by hand: what the features stage would have computed.
STATS = [
    {"feature": "uf_a", "kind": "numeric", "transform": "standard", "center": 0.0, "scale": 1.0, "vocabulary": None},
    {
        "feature": "uf_b",
        "kind": "numeric",
        "transform": "log1p_standard",
        "center": 1.0,
        "scale": 0.5,
        "vocabulary": None,
    },
    {
        "feature": "uc_region",
        "kind": "categorical",
        "transform": "onehot",
        "center": None,
        "scale": None,
        "vocabulary": ["north", "south"],
    },
    {
        "feature": "cf_value",
        "kind": "numeric",
        "transform": "standard",
        "center": 10.0,
        "scale": 5.0,
        "vocabulary": None,
    },
    {
        "feature": "cc_kind",
        "kind": "categorical",
        "transform": "onehot",
        "center": None,
        "scale": None,
        "vocabulary": ["abs", "pct"],
    },
]


@dataclass
class World:
    """Logged issuances (the contract's columns) and the true probabilities of each row's arm and of none."""

    examples: pd.DataFrame
    p_true: np.ndarray  # p(purchase | logged arm)
    p_none_true: np.ndarray  # p(purchase | none)
    uplift_true: np.ndarray  # p(purchase | logged coupon) - p(purchase | none) (0 for control rows)


def true_logits(uf_a: np.ndarray, uf_b: np.ndarray, region: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, ...]:
    """The hidden response model: base logit (no coupon) and the coupon's logit shift."""
    base = -0.5 + 1.5 * uf_a + 0.7 * (region == "north")
    z_b = (np.log1p(uf_b) - 1.0) / 0.5
    tau = (value / 10.0) * (0.9 * z_b)  # persuadable when z_b > 0, sleeping dog when z_b < 0
    return base, tau


def make_world(n: int, seed: int = 1, days: int = 3) -> World:
    """``n`` logged issuances over ``days`` issue dates before ``RUN_DATE``.

    The logging policy is randomised but user-dependent: users with ``uf_a > 0`` get no coupon with
    probability 0.5, the others with 0.2; the rest is uniform over the three coupons. The logged
    ``propensity`` is the probability of the action taken.
    """
    rng = np.random.default_rng(seed)
    n_users = max(n // 3, 10)
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(n_users)],
            "uf_a": rng.normal(size=n_users),
            "uf_b": np.expm1(rng.normal(1.0, 0.5, size=n_users)).clip(0.0),
            "uc_region": rng.choice(REGIONS, size=n_users),
        }
    )
    who = rng.integers(0, n_users, size=n)
    ex = users.iloc[who].reset_index(drop=True)
    p_none_arm = np.where(ex["uf_a"].to_numpy() > 0, 0.5, 0.2)
    control = rng.random(n) < p_none_arm
    pick = rng.integers(0, len(COUPONS), size=n)
    coupon = COUPONS.iloc[pick].reset_index(drop=True)
    propensity = np.where(control, p_none_arm, (1 - p_none_arm) / len(COUPONS))
    value = np.where(control, 0.0, coupon["cf_value"].to_numpy())
    base, tau = true_logits(ex["uf_a"].to_numpy(), ex["uf_b"].to_numpy(), ex["uc_region"].to_numpy(), value)
    p_none = 1 / (1 + np.exp(-base))
    p = 1 / (1 + np.exp(-(base + tau)))
    purchased = rng.random(n) < p
    use = 1 / (1 + np.exp(-(0.5 + 0.8 * ex["uf_a"].to_numpy())))
    redeemed = purchased & ~control & (rng.random(n) < use)
    issue_date = [RUN_DATE - dt.timedelta(days=1 + int(k)) for k in rng.integers(0, days, size=n)]
    frame = pd.DataFrame(
        {
            "issue_date": issue_date,
            "issuance_id": [f"i{seed}-{k:07d}" for k in range(n)],
            "user_id": ex["user_id"],
            "coupon_id": np.where(control, None, coupon["coupon_id"].to_numpy()),
            "campaign_id": np.where(control, None, coupon["campaign_id"].to_numpy()),
            "issued_at": [dt.datetime.combine(d, dt.time(9)) for d in issue_date],
            "policy": "random",
            "propensity": propensity,
            "purchased": purchased.astype(int),
            "redeemed": redeemed.astype(int),
            "revenue_eur": np.where(purchased, 40.0, 0.0),
            "coupon_cost_eur": np.where(redeemed, value, 0.0),
            "outcome_window_days": 1,
            "uf_a": ex["uf_a"],
            "uf_b": ex["uf_b"],
            "uc_region": ex["uc_region"],
            "cf_value": value,
            "cc_kind": np.where(control, "none", coupon["cc_kind"].to_numpy()),
        }
    )
    return World(frame, p, p_none, np.where(control, 0.0, p - p_none))


EXAMPLES_SCHEMA = StructType(
    [
        *TRAINING_EXAMPLES_KEYS.fields,
        StructField("uf_a", DoubleType(), False),
        StructField("uf_b", DoubleType(), False),
        StructField("uc_region", StringType(), False),
        StructField("cf_value", DoubleType(), False),
        StructField("cc_kind", StringType(), False),
    ]
)


def write_world(spark: SparkSession, lake: Lake, world: World, stats: list[dict] | None = None) -> int:
    """Write ``training_examples`` (partitioned by issue_date) and ``feature_stats``; return the examples'
    Delta version."""
    pdf = world.examples
    cols = [
        [t.to_pydatetime() for t in pdf[c]] if c == "issued_at" else pdf[c].astype(object).tolist()
        for c in EXAMPLES_SCHEMA.fieldNames()
    ]
    rows = list(zip(*cols, strict=True))
    df = spark.createDataFrame(rows, EXAMPLES_SCHEMA).repartition(2)
    res = lake.write(df, "training_examples", mode="overwrite", partition_by=["issue_date"])
    stats_rows = [
        (
            RUN_DATE - dt.timedelta(days=1),
            s["feature"],
            s["kind"],
            s["transform"],
            s["center"],
            s["scale"],
            s["vocabulary"],
            "features/user_features",
            7,
        )
        for s in (stats or STATS)
    ]
    lake.write(
        spark.createDataFrame(stats_rows, FEATURE_STATS), "feature_stats", mode="overwrite", partition_by=["as_of_date"]
    )
    return res.version


# ---- tests of the data path -----------------------------------------------------------------------------------
def test_split_files_balances_rows_largest_first():
    files = [DataFile(f"f{k}", n) for k, n in enumerate([100, 60, 50, 40, 10])]
    groups = split_files(files, 2)
    # 100 -> g0; 60 -> g1; 50 -> g1 (60 < 100); 40 -> g0 (100 < 110); 10 -> g1 (110 < 140)
    assert [[f.num_records for f in g] for g in groups] == [[100, 40], [60, 50, 10]]


def test_rank_shards_read_exactly_the_snapshot_with_partition_values(spark, lake):
    world = make_world(1500, days=2)
    version = write_world(spark, lake, world)
    loc = lake.location("training_examples")
    files = snapshot_files(loc, version)
    assert len(files) >= 2 and sum(f.num_records for f in files) == 1500
    groups = split_files(files, 2)
    cols = ["issuance_id", "issue_date", "coupon_id", "uf_a"]
    shards = [read_files(g, cols) for g in groups]
    assert all(len(s) > 0 for s in shards)
    both = pd.concat(shards).sort_values("issuance_id").reset_index(drop=True)
    want = world.examples[cols].sort_values("issuance_id").reset_index(drop=True)
    assert set(shards[0]["issuance_id"]).isdisjoint(shards[1]["issuance_id"])
    assert both["issuance_id"].tolist() == want["issuance_id"].tolist()
    assert [str(d) for d in both["issue_date"]] == [str(d) for d in want["issue_date"]]
    assert both["coupon_id"].isna().tolist() == want["coupon_id"].isna().tolist()
    np.testing.assert_array_equal(both["uf_a"].to_numpy(), want["uf_a"].to_numpy())
    # the date bounds keep only files of issue dates in [since, until)
    last = RUN_DATE - dt.timedelta(days=1)
    kept = snapshot_files(loc, version, since=last, until=RUN_DATE)
    assert {str(f.partition["issue_date"]) for f in kept} == {str(last)}
    assert sum(f.num_records for f in kept) == int((world.examples["issue_date"] == last).sum())
