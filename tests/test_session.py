from __future__ import annotations

import os
import stat
import sys

import pytest

from coupon_spark.session import (
    DELTA_PACKAGE,
    DeltaConnectorMissingError,
    JavaNotFoundError,
    delta_connector_available,
    java_version,
    resolve_backend,
)


def fake_java(tmp_path, banner: str) -> str:
    p = tmp_path / "java"
    p.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_java_version_reads_modern_and_legacy_banners(tmp_path):
    assert java_version(fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')) == 17
    with pytest.raises(JavaNotFoundError, match=r"is Java 8\. Spark 4 needs a Java 17"):
        java_version(fake_java(tmp_path, 'java version "1.8.0_392"'))


def test_missing_java_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(JavaNotFoundError) as err:
        java_version()
    msg = str(err.value)
    assert "no-jdk has no bin/java" in msg and "openjdk-17-jre-headless" in msg


def test_session_is_configured_from_config(spark):
    conf = spark.conf
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.sql.shuffle.partitions") == "2"
    assert conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "1000"
    assert os.environ["PYSPARK_PYTHON"] == sys.executable


def test_python_workers_run_this_interpreter(spark):
    exe = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()[0]
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)


def test_backend_detection(spark):
    """``auto`` picks native where the session has the connector (make setup's .jars/), else the bridge."""
    available = delta_connector_available(spark)
    assert resolve_backend(spark, "auto") == ("native" if available else "bridge")
    assert resolve_backend(spark, "bridge") == "bridge"
    if available:
        assert resolve_backend(spark, "native") == "native"
        return
    with pytest.raises(DeltaConnectorMissingError) as err:
        resolve_backend(spark, "native")
    assert f"spark.jars.packages={DELTA_PACKAGE}" in str(err.value)
    assert "lake.backend: bridge" in str(err.value)


def test_connector_jars_are_found_where_configured_and_only_on_a_local_master(tmp_path, monkeypatch):
    from coupon_spark.config import SparkConfig
    from coupon_spark.errors import InputError
    from coupon_spark.session import JARS_ENV, connector_jars

    folder = tmp_path / "jars"
    folder.mkdir()
    (folder / "delta-storage-4.4.0.jar").write_bytes(b"")
    assert connector_jars(SparkConfig(connector_jars=str(folder))) == []  # no delta-spark jar: nothing
    (folder / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    both = [str(folder / "delta-spark_4.2_2.13-4.4.0.jar"), str(folder / "delta-storage-4.4.0.jar")]
    assert connector_jars(SparkConfig(connector_jars=str(folder))) == both
    monkeypatch.setenv(JARS_ENV, str(folder))
    assert connector_jars(SparkConfig()) == both  # auto: the environment's folder first
    assert connector_jars(SparkConfig(master="yarn")) == []  # a cluster brings its own (--packages, a runtime)
    assert connector_jars(SparkConfig(connector_jars="none")) == []
    with pytest.raises(InputError, match=r"does not exist\. Run `make setup`.*connector_jars: none"):
        connector_jars(SparkConfig(connector_jars=str(tmp_path / "nowhere")))
