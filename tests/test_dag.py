"""The Airflow DAG, loaded by Airflow itself (from the separate .venv-airflow that `make setup-airflow` builds)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from coupon_spark.stages import DAILY

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PY = ROOT / ".venv-airflow" / "bin" / "python"
STAGES = list(DAILY)  # the one list (tests/test_stages.py pins its order)


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    if not AIRFLOW_PY.exists():
        pytest.skip("no .venv-airflow: run `make setup-airflow` (make test does)")
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "COUPON_SPARK_HOME": str(ROOT),
    }
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(AIRFLOW_PY), str(ROOT / "tests" / "airflow_dagbag.py"), str(ROOT / "dags")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_imports_without_errors(dagbag):
    assert dagbag["errors"] == {}
    assert list(dagbag["dags"]) == ["coupon_daily"]


def test_one_spark_submit_per_stage_in_order(dagbag):
    tasks = dagbag["dags"]["coupon_daily"]["tasks"]
    assert set(tasks) == set(STAGES)
    for upstream, downstream in itertools.pairwise(STAGES):
        assert tasks[upstream]["downstream"] == [downstream]
    assert tasks["evaluate"]["downstream"] == []
    for stage, t in tasks.items():
        assert t["application"] == str(ROOT / "jobs" / f"{stage}.py")
        assert t["args"][-2:] == ["--run-date", "{{ ds }}"]  # the run date is templated
        assert t["retries"] == 2
        assert t["py_files"].endswith(".whl")


def test_training_runs_on_the_gpu_pool_with_gpu_settings(dagbag):
    tasks = dagbag["dags"]["coupon_daily"]["tasks"]
    train = tasks["train"]
    assert train["pool"] == "gpu"
    assert train["args"][:2] == ["--conf", "gpu-cluster.yaml"]
    assert train["conf"]["spark.task.resource.gpu.amount"] == "1"
    assert train["conf"]["spark.jars.packages"] == "io.delta:delta-spark_4.2_2.13:4.4.0"  # from cluster.yaml
    assert tasks["score"]["pool"] == "default_pool" and "spark.task.resource.gpu.amount" not in tasks["score"]["conf"]
    assert train["files"].count("cluster.yaml") == 2 and tasks["score"]["files"].count(".yaml") == 2
    assert dagbag["dags"]["coupon_daily"]["max_active_runs"] == 1
