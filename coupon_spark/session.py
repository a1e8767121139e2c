"""The SparkSession, built from configuration, and detection of the Delta backend it can use.

Library code never creates a session: jobs call :func:`build_spark_session` once and pass the session on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pyspark.sql import SparkSession

from coupon_spark.config import LakeConfig, SparkConfig
from coupon_spark.errors import InputError

DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
DELTA_EXTENSION_CLASS = "io.delta.sql.DeltaSparkSessionExtension"
JARS_ENV = "COUPON_SPARK_JARS"
DELTA_CATALOG_CLASS = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
MIN_JAVA = 17

Backend = Literal["bridge", "native"]


class JavaNotFoundError(InputError, RuntimeError):
    """No usable Java runtime for Spark."""


class DeltaConnectorMissingError(InputError, RuntimeError):
    """The native Delta backend was asked for but the connector is not on Spark's classpath."""


def java_version(java: str | None = None) -> int:
    """Major version of the Java runtime Spark will start (``JAVA_HOME`` first, then ``java`` on PATH).

    Raises:
        JavaNotFoundError: No Java, or one older than Spark 4 needs, with what to install.
    """
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    hint = (
        f"Spark 4 needs a Java {MIN_JAVA} or newer runtime. Install one (Debian/Ubuntu: "
        f"`sudo apt-get install openjdk-{MIN_JAVA}-jre-headless`; macOS: `brew install openjdk@{MIN_JAVA}`) "
        "and put it on PATH or set JAVA_HOME."
    )
    if not java or not os.path.exists(java):
        where = (
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java"
            if os.environ.get("JAVA_HOME")
            else ("no `java` on PATH")
        )
        raise JavaNotFoundError(f"No Java runtime found ({where}). {hint}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(f"Could not run {java} -version ({exc}). {hint}") from exc
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise JavaNotFoundError(f"Could not read the version of {java}: {out.stderr.strip()!r}. {hint}")
    major = int(m.group(1))
    if major == 1 and m.group(2):  # 1.8 style
        major = int(m.group(2))
    if major < MIN_JAVA:
        raise JavaNotFoundError(f"{java} is Java {major}. {hint}")
    return major


def connector_jars(cfg: SparkConfig) -> list[str]:
    """The Delta connector's jar files to put on a local session's classpath (:attr:`SparkConfig.connector_jars`):
    none on a non-local master (the cluster's ``--jars`` / ``--packages`` or its Delta runtime provide them),
    for ``none``, or where the folder holds no ``delta-spark`` jar.

    Raises:
        InputError: ``connector_jars`` names a folder or file that does not exist.
    """
    setting = (cfg.connector_jars or "none").strip()
    if setting == "none" or not (cfg.master or "").startswith("local"):
        return []
    if setting == "auto":
        env = os.environ.get(JARS_ENV)
        if env:
            folder = Path(env)
        else:  # a source checkout: <root>/coupon_spark/session.py -> <root>/.jars (make setup)
            root = Path(__file__).resolve().parents[1]
            folder = root / ".jars"
            if not (root / "pyproject.toml").exists() or not folder.is_dir():
                return []
        paths = [folder]
    else:
        paths = [Path(p.strip()) for p in setting.split(",") if p.strip()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(
            f"spark.connector_jars: {', '.join(missing)} does not exist. Run `make setup` (it fetches the Delta "
            f"connector's jars into .jars/), point {JARS_ENV} or spark.connector_jars at a folder of them, or set "
            "spark.connector_jars: none to use the bridge backend."
        )
    jars = sorted(str(j) for p in paths for j in ([p] if p.is_file() else p.glob("*.jar")))
    return jars if any(Path(j).name.startswith("delta-spark") for j in jars) else []


JVM_OPTIONS = "-Duser.timezone=UTC -XX:-DontCompileHugeMethods"
"""The JVMs' options. HotSpot does not JIT-compile a method of more than 8,000 bytes of bytecode, and Spark's
whole-stage code generation keeps methods up to 64 KB (``spark.sql.codegen.hugeMethodLimit``): the cleansing
job's one projection of ~40 checks per record is such a method, and ran interpreted (a one-off profile of that
step on 1.94M events, loaded machine: 94 s interpreted, 31 s compiled; not a benchmark figure).
``-XX:-DontCompileHugeMethods`` lets HotSpot compile it. Under ``spark-submit`` the
driver's JVM is started before this session is built: set the same options in ``spark-defaults.conf`` there."""


def build_spark_session(cfg: SparkConfig, lake: LakeConfig | None = None) -> SparkSession:
    """Start (or join) the SparkSession described by ``cfg``.

    Sets ``PYSPARK_PYTHON`` to this interpreter when unset, so that Python workers see the same packages; UTC
    session time zone (all timestamps in the lake are UTC); Arrow for pandas conversions with the configured
    batch size; the configured shuffle partitions. On a local master the Delta connector's jars
    (:func:`connector_jars`) join the classpath unless the lake is pinned to the bridge; with them, or with
    ``lake.backend == "native"`` (the jars then come from ``spark.jars.packages`` or the platform), the Delta
    session extension and catalog are configured, so ``lake.backend: auto`` picks the native backend and
    tables can be queried in Spark SQL (``delta.`<path>```, ``DESCRIBE HISTORY``, ``VERSION AS OF``).
    """
    if not os.environ.get("SPARK_REMOTE") and not os.environ.get("SPARK_HOME"):
        java_version()  # a clear message instead of Py4J's "Java gateway process exited"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    settings = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_size),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.memory": cfg.driver_memory,
        "spark.driver.extraJavaOptions": JVM_OPTIONS,
        "spark.executor.extraJavaOptions": JVM_OPTIONS,
    }
    jars = connector_jars(cfg) if lake is None or lake.backend != "bridge" else []
    if jars or (lake is not None and lake.backend == "native"):
        settings["spark.sql.extensions"] = DELTA_EXTENSION_CLASS
        settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG_CLASS
    if jars:  # a local session: Delta rebuilds a table's snapshot state in 50 tasks by default, ~4 s a write on
        # 2 cores for the few files of a day; as many as the shuffle partitions cut a native write ~3x
        settings["spark.databricks.delta.snapshotPartitions"] = str(cfg.shuffle_partitions)
    settings.update(cfg.conf)
    if jars:  # after the configured settings: their own spark.jars are kept, the connector's added
        given = cfg.conf.get("spark.jars", "")
        settings["spark.jars"] = ",".join([*([given] if given else []), *jars])
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def delta_connector_available(spark: SparkSession) -> bool:
    """Whether the Delta Spark connector's classes can be loaded by this session's JVM."""
    try:
        jvm: Any = spark.sparkContext._jvm
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(DELTA_CATALOG_CLASS, False, loader)
        return True
    except Exception:  # noqa: BLE001 - py4j raises its own error types for a missing class
        return False


def resolve_backend(spark: SparkSession, requested: str) -> Backend:
    """Pick the Delta backend: ``native`` where the connector is loaded, else ``bridge``.

    Raises:
        DeltaConnectorMissingError: ``native`` was requested but the connector is not on the classpath.
    """
    if requested == "bridge":
        return "bridge"
    available = delta_connector_available(spark)
    if requested == "native" and not available:
        raise DeltaConnectorMissingError(
            "lake.backend is 'native' but the Delta Spark connector is not on Spark's classpath. Add it with "
            f"`--conf spark.jars.packages={DELTA_PACKAGE}` (or spark.conf in the YAML, or the platform's "
            "Delta runtime), with spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension and "
            f"spark.sql.catalog.spark_catalog={DELTA_CATALOG_CLASS}; or set lake.backend: bridge, which needs "
            "no jar."
        )
    if requested not in ("auto", "native"):
        raise ValueError(f"unknown Delta backend {requested!r}: use auto, bridge or native")
    return "native" if available else "bridge"
