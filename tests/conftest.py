"""Shared fixtures: one SparkSession for the whole run (local[2], UI off, few shuffle partitions)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from coupon_spark.config import LakeConfig, SparkConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.session import build_spark_session

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    session = build_spark_session(
        SparkConfig(
            master="local[2]",
            app_name="coupon-spark-tests",
            shuffle_partitions=2,
            arrow_batch_size=1000,
            driver_memory="2g",
            conf={
                "spark.ui.enabled": "false",
                "spark.sql.warehouse.dir": str(warehouse),
                "spark.default.parallelism": "2",
                "spark.sql.adaptive.enabled": "false",
            },
        )
    )
    yield session
    session.stop()


@pytest.fixture()
def lake_cfg(tmp_path: Path) -> LakeConfig:
    return LakeConfig(root=str(tmp_path / "lake"), landing=str(tmp_path / "landing"), backend="bridge")


@pytest.fixture()
def lake(spark: SparkSession, lake_cfg: LakeConfig) -> Lake:
    """A bridge-backed lake in a fresh folder; small files so that tests see several per write."""
    return Lake(spark, lake_cfg, BridgeBackend(spark, target_file_rows=1000))
