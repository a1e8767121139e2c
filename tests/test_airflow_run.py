"""A real Airflow run of dags/coupon_daily.py: ``airflow dags test`` executes every SparkSubmitOperator task,
each a ``spark-submit`` of ``jobs/<stage>.py`` with the built wheel on ``--py-files``, against a local Spark
(the ``spark_default`` connection is ``local[2]``) and a small synthetic shop; then a retried task commits
nothing new.

The shop's history and the day's landing files are made in this process first (what the shop's exports are in
production); the DAG then cleanses the day, builds features, trains, scores, allocates and evaluates it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coupon_spark.config import Config
from coupon_spark.dimension import in_force
from coupon_spark.lake import Lake
from coupon_spark.stages import DAILY

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"
RUN_DATE = dt.date(2026, 11, 8)
STAGES = list(DAILY)
SILVER = ["users", "coupons", "events", "orders", "issuances", "redemptions"]


def cluster_yaml(lake_root: Path) -> str:
    """The deployment's cluster.yaml for this test: a local Spark (the master comes from spark-submit), the
    bridge backend, a small shop and a short training (one process: the DAG's gpu pool has no GPU here)."""
    return f"""extends: base.yaml
spark:
  master: ""
  shuffle_partitions: 2
  driver_memory: 2g
  conf:
    spark.ui.enabled: "false"
    spark.ui.showConsoleProgress: "false"
lake:
  root: {lake_root}
  landing: {lake_root}/landing
  backend: bridge
shop:
  users: 600
  partitions: 2
  issue_rate: 0.6
  backfill_days: 0
pipeline:
  history_days: 4
features:
  outcome_window_days: 2
train:
  num_proc: 0
  epochs: 2
  batch_size: 128
  gate_folds: 0
allocation:
  budget:
    amount: 40.0
evaluate:
  bootstrap_samples: 100
"""


@pytest.fixture(scope="module")
def deployment(spark, tmp_path_factory):
    """COUPON_SPARK_HOME as the DAG's docstring deploys it (dist/ wheel, jobs/, conf/), a lake with the shop's
    history before RUN_DATE and the landing files of RUN_DATE."""
    if not (AIRFLOW_BIN / "airflow").exists():
        pytest.skip("no .venv-airflow: run `make setup-airflow` (make test does)")
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if not spark_submit.exists():
        pytest.skip(f"no spark-submit beside {sys.executable}")
    home = tmp_path_factory.mktemp("coupon-spark-home")
    lake_root = home / "lake"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(home / "dist")],
        cwd=ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (home / "jobs").symlink_to(ROOT / "jobs")
    (home / "conf").mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", home / "conf" / "base.yaml")
    (home / "conf" / "cluster.yaml").write_text(cluster_yaml(lake_root))
    (home / "conf" / "gpu-cluster.yaml").write_text("extends: cluster.yaml\n")

    from coupon_spark.datagen.shop import World, generate_day, write_truth
    from coupon_spark.pipeline import Progress, ensure_history

    cfg = Config.from_file(home / "conf" / "cluster.yaml")
    lake = Lake.from_config(spark, cfg.lake)
    world = World.build(spark, cfg)
    try:
        write_truth(lake, cfg, world)
        ensure_history(spark, lake, cfg, world, RUN_DATE, Progress())
        generate_day(spark, lake, cfg, world, RUN_DATE)  # the day's exports, not cleansed yet
    finally:
        world.close()
    return home, cfg, lake


def airflow(home: Path, airflow_home: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
        COUPON_SPARK_HOME=str(home),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",  # spark-submit of the project's venv
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        TF_USE_LEGACY_KERAS="1",
    )
    # the jobs read `--conf cluster.yaml` from their working directory, as on a cluster where --files lands there
    return subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), *args], cwd=home / "conf", env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def versions(lake: Lake, tables: list[str]) -> dict[str, int]:
    return {t: lake.version(t) for t in tables if lake.exists(t)}


@pytest.mark.slow
def test_airflow_runs_every_stage_with_spark_submit_and_a_retry_commits_nothing(deployment, tmp_path):
    home, cfg, lake = deployment
    airflow_home = tmp_path / "airflow"
    migrated = airflow(home, airflow_home, "db", "migrate", timeout=600)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    before = versions(lake, SILVER)
    run = airflow(home, airflow_home, "dags", "test", "coupon_daily", RUN_DATE.isoformat())
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    for stage in STAGES:  # each task ran spark-submit with the wheel and succeeded
        assert f"coupon-spark-{stage}-{RUN_DATE:%Y%m%d}" in log, stage
    assert "--py-files" in log and "coupon_spark-0.1.0-py3-none-any.whl" in log
    # the tables each task wrote, for the run date
    assert {p["ingest_date"] for p in lake.partitions("orders")} >= {RUN_DATE}
    # every table of facts and the catalogue got a new version; the users dimension gets one only where the day's
    # export changed or added a user (a type-2 merge): its run metrics show the export was read, and every
    # accepted user is in force on the run date
    assert all(lake.version(t) > before.get(t, -1) for t in SILVER if t != "users")
    users = lake.read("run_metrics", where={"ingest_date": RUN_DATE}).where("source = 'users'").first()
    assert users is not None and users.records_accepted > 0
    assert in_force(lake.read("users"), RUN_DATE).count() >= users.records_accepted
    assert lake.read("user_features", where={"as_of_date": RUN_DATE}).count() > 0
    assert lake.read("candidates", where={"run_date": RUN_DATE}).count() > 0
    assert lake.read("allocations", where={"run_date": RUN_DATE}).count() > 0
    assert lake.read("evaluation_metrics", where={"run_date": RUN_DATE}).count() > 0
    assert (Path(cfg.lake.root) / "models" / cfg.train.model_name / "latest").exists()
    # a retried cleanse (what Airflow does after a failure) commits nothing new
    after = versions(lake, [*SILVER, "quarantine", "run_metrics"])
    retry = airflow(home, airflow_home, "tasks", "test", "coupon_daily", "cleanse", RUN_DATE.isoformat())
    assert retry.returncode == 0, (retry.stdout + retry.stderr)[-4000:]
    assert versions(lake, [*SILVER, "quarantine", "run_metrics"]) == after
