"""Run with the Airflow virtualenv (``.venv-airflow``): load a DAGs folder with Airflow's DagBag and print, as
JSON, the import errors and each DAG's tasks (downstream tasks, pool, retries, spark-submit arguments)."""

from __future__ import annotations

import json
import sys

from airflow.models import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out: dict = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {
            t.task_id: {
                "downstream": sorted(t.downstream_task_ids),
                "pool": t.pool,
                "retries": t.retries,
                "args": list(t.application_args or []),
                "conf": dict(t.conf or {}),
                "application": t.application,
                "files": t.files,
                "py_files": t.py_files,
            }
            for t in dag.tasks
        },
        "schedule": str(getattr(dag, "schedule", None)),
        "max_active_runs": dag.max_active_runs,
    }
print(json.dumps(out))
