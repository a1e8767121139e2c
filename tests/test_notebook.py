"""The analyst notebook, executed by a real Jupyter kernel against a small lakehouse of real Delta tables."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from coupon_spark.config import Config, LakeConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.schemas import ALLOCATIONS_SCHEMA, EVALUATION_METRICS, USERS

ROOT = Path(__file__).resolve().parents[1]
D1, D2 = dt.date(2026, 11, 16), dt.date(2026, 11, 17)
UTC = dt.timezone.utc


def alloc(day, user, coupon, campaign, policy, cost, profit, version="m/1"):
    return (day, user, coupon, campaign, policy, policy == "holdout", 0.1 if coupon else None, 0.05 if coupon else None,
            profit, cost, 5.0 if coupon else None, 1.0, version, "run-1")  # fmt: skip


@pytest.fixture()
def small_lake(spark, tmp_path) -> Path:
    root = tmp_path / "lakehouse"
    tables = Config.from_file(ROOT / "conf" / "local.yaml").lake.tables  # where the notebook will look
    cfg = LakeConfig(root=str(root), landing=str(tmp_path / "landing"), tables=tables)
    lake = Lake(spark, cfg, BridgeBackend(spark))
    rows = [
        alloc(D1, "u1", "c1", "camp_a", "model", 1.0, 2.0, "m/1"),
        alloc(D2, "u1", "c1", "camp_a", "model", 1.25, 2.0, "m/2"),
        alloc(D2, "u2", "c2", "camp_b", "model", 2.5, 3.0, "m/2"),
        alloc(D2, "u3", "c3", "camp_a", "exploration", 0.75, -1.0, "m/2"),
        alloc(D2, "u4", None, None, "holdout", None, None, "m/2"),
        alloc(D2, "u5", None, None, "model", None, None, "m/2"),
    ]
    lake.write(spark.createDataFrame(rows, ALLOCATIONS_SCHEMA), "allocations", partition_by=["run_date"])
    users = [(f"u{i}", dt.date(2026, 1, 1), "DE", "Berlin", "web", "vip" if i % 2 else "regular", None, D1, None)
             for i in range(1, 6)]  # fmt: skip
    # a closed version the notebook must not count (u1 was "lapsed" before D1)
    users.append(("u1", dt.date(2026, 1, 1), "DE", "Berlin", "web", "lapsed", None, dt.date(2026, 1, 1), D1))
    lake.write(spark.createDataFrame(users, USERS), "users")
    now = dt.datetime(2026, 11, 18, tzinfo=UTC)
    metrics = [(D2, "holdout", "reward_per_user_uplift", "arm", "model-holdout", 0.42, 0.1, 0.7, 1000, None, "r", now)]
    lake.write(spark.createDataFrame(metrics, EVALUATION_METRICS), "evaluation_metrics", partition_by=["run_date"])
    return root


def test_notebook_runs_and_the_three_engines_agree(small_lake):
    nb = nbformat.read(ROOT / "notebooks" / "analyst.ipynb", as_version=4)
    env_before = dict(os.environ)
    os.environ["COUPON_LAKE"] = str(small_lake)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    text = "\n".join(
        o.get("text", "") if o.get("output_type") == "stream" else str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "latest run date: 2026-11-17" in text
    # by hand, run date D2, issued coupons only: camp_a = 1.25 + 0.75, camp_b = 2.5
    assert "spend per campaign (EUR): {'camp_a': 2.0, 'camp_b': 2.5}" in text
    assert "model-holdout" in text and "0.42" in text  # the holdout uplift row
    assert "m/1" in text and "m/2" in text  # model versions per run date
