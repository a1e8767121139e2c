"""The daily coupon-spark run on Airflow: one SparkSubmitOperator per stage, the run date templated.

Deploy: build the wheel (``make package``), put ``dist/coupon_spark-*.whl``, ``jobs/`` and ``conf/`` where the
Spark client of the Airflow workers can read them (``COUPON_SPARK_HOME``, default ``/opt/coupon-spark``), and
this file in the DAGs folder. Each stage is idempotent for its run date, so retries and backfills are safe.
The training task runs in the ``gpu`` pool with ``conf/gpu-cluster.yaml`` (one GPU per Spark task).

The Spark settings of each task come from the same YAML files the jobs read (``spark.conf``, following
``extends:``), so that static settings (jars, executor resources) reach ``spark-submit`` itself.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
import os
import sys
import types
import zipfile
from pathlib import Path

import yaml
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # pragma: no cover - Airflow 2
    from airflow import DAG

HOME = Path(os.environ.get("COUPON_SPARK_HOME", "/opt/coupon-spark"))
WHEEL = os.environ.get("COUPON_SPARK_WHEEL", str(HOME / "dist" / "coupon_spark-0.1.0-py3-none-any.whl"))
CONF_DIR = HOME / "conf"


def load_stages() -> types.ModuleType:
    """``coupon_spark.stages``, the one list of stages (standard library only): the installed package's, else a
    source checkout's at ``COUPON_SPARK_HOME``, else the one inside the wheel the tasks ship (an Airflow worker
    that has neither the package nor Spark)."""
    try:
        return importlib.import_module("coupon_spark.stages")
    except ImportError:
        pass
    checkout = HOME / "coupon_spark" / "stages.py"
    if checkout.is_file():
        origin, source = str(checkout), checkout.read_text()
    else:
        try:
            with zipfile.ZipFile(WHEEL) as wheel:
                origin, source = f"{WHEEL}/coupon_spark/stages.py", wheel.read("coupon_spark/stages.py").decode()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ImportError(
                f"coupon_spark.stages not found: install the package, or build the wheel (make package) and set "
                f"COUPON_SPARK_WHEEL (now {WHEEL}) or COUPON_SPARK_HOME (now {HOME}): {exc}"
            ) from exc
    module = types.ModuleType("coupon_spark_stages")
    module.__file__ = origin
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


_stages = load_stages()
# the production day, in order; generate (the synthetic shop) has no place there: the shop's export lands itself
STAGES = list(_stages.DAILY)
GPU_STAGES = {s.name for s in _stages.STAGES if s.gpu}


def spark_conf(env_file: str) -> dict[str, str]:
    """``spark.conf`` of an environment file, following ``extends:`` (the child wins), as strings."""

    def load(path: Path) -> dict:
        if not path.exists():
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        parent = data.pop("extends", None)
        conf = load(path.parent / parent) if parent else {}
        conf.update((data.get("spark") or {}).get("conf") or {})
        return conf

    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in load(CONF_DIR / env_file).items()}


def stage_task(stage: str) -> SparkSubmitOperator:
    env = "gpu-cluster.yaml" if stage in GPU_STAGES else "cluster.yaml"
    return SparkSubmitOperator(
        task_id=stage,
        application=str(HOME / "jobs" / f"{stage}.py"),
        py_files=WHEEL,
        files=",".join(str(CONF_DIR / f) for f in dict.fromkeys(("base.yaml", "cluster.yaml", env))),
        application_args=["--conf", env, "--run-date", "{{ ds }}"],
        conf=spark_conf(env),
        conn_id="spark_default",
        name=f"coupon-spark-{stage}-{{{{ ds_nodash }}}}",
        pool="gpu" if stage in GPU_STAGES else "default_pool",
        execution_timeout=dt.timedelta(hours=4 if stage == "train" else 2),
    )


with DAG(
    dag_id="coupon_daily",
    description="Cleanse the shop's exports, build features, train, score, allocate coupons, evaluate",
    schedule="0 2 * * *",  # 02:00 UTC: yesterday's exports have landed
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # a day builds on the previous day's tables
    default_args={"owner": "coupon-spark", "retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["coupon-spark"],
) as dag:
    tasks = [stage_task(s) for s in STAGES]
    for upstream, downstream in itertools.pairwise(tasks):
        upstream >> downstream
