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


def test_backend_detection_without_the_connector(spark):
    assert not delta_connector_available(spark)  # no Delta jar on this classpath
    assert resolve_backend(spark, "auto") == "bridge"
    assert resolve_backend(spark, "bridge") == "bridge"
    with pytest.raises(DeltaConnectorMissingError) as err:
        resolve_backend(spark, "native")
    assert f"spark.jars.packages={DELTA_PACKAGE}" in str(err.value)
    assert "lake.backend: bridge" in str(err.value)
