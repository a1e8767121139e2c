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
from coupon_spark.session import build_spark_session, delta_connector_available

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
            # the stages run on the default backend: native where `make setup` fetched the Delta connector;
            # COUPON_SPARK_TEST_BACKEND=bridge runs the suite as a site without it (the native tests skip)
            connector_jars="none" if os.environ.get("COUPON_SPARK_TEST_BACKEND") == "bridge" else "auto",
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
    """A fresh lake folder on the default backend, ``auto``: native where ``make setup`` fetched the Delta
    connector (as ``make demo`` runs), the bridge elsewhere; small bridge files so that tests see several."""
    return LakeConfig(
        root=str(tmp_path / "lake"), landing=str(tmp_path / "landing"), backend="auto", target_file_rows=1000
    )


@pytest.fixture()
def lake(spark: SparkSession, lake_cfg: LakeConfig) -> Lake:
    """The stages' lake in a fresh folder, on the default backend (see ``lake_cfg``)."""
    return Lake.from_config(spark, lake_cfg)


@pytest.fixture()
def bridge_lake(spark: SparkSession, lake_cfg: LakeConfig) -> Lake:
    """A bridge-backed lake in a fresh folder, for the tests of the bridge's own files and commits."""
    return backend_lake(spark, lake_cfg, "bridge")


BACKENDS = ("bridge", "native")


def backend_lake(spark: SparkSession, lake_cfg: LakeConfig, backend: str) -> Lake:
    """A lake in a fresh folder on ``backend``; the native one skips where the Delta connector's jars are absent
    (``make setup`` fetches them). The bridge writes small files so that tests see several per write."""
    import dataclasses

    if backend == "native":
        if not delta_connector_available(spark):
            pytest.skip("the Delta Spark connector is not on the classpath: `make setup` fetches it into .jars/")
        from coupon_spark.lake.native import NativeBackend

        return Lake(spark, dataclasses.replace(lake_cfg, backend="native"), NativeBackend(spark))
    return Lake(spark, dataclasses.replace(lake_cfg, backend="bridge"), BridgeBackend(spark, target_file_rows=1000))


@pytest.fixture(params=BACKENDS)
def any_lake(request: pytest.FixtureRequest, spark: SparkSession, lake_cfg: LakeConfig) -> Lake:
    """The lake contract's tests run once per backend."""
    return backend_lake(spark, lake_cfg, request.param)
