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
import itertools
import os
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
# the loop, in order; generate (the synthetic shop) has no place in production: the shop's export lands itself
STAGES = ["cleanse", "features", "train", "score", "allocate", "evaluate"]
GPU_STAGES = {"train"}


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
