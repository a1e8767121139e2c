"""The one list of stages (``coupon_spark.stages``): what the command line offers, the pipeline runs and the DAG
schedules; typed options below the command line; the DAG reads the list from the shipped wheel alone."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coupon_spark import pipeline, stages
from coupon_spark.cli import build_parser, options_of
from coupon_spark.runner import Context, resolve
from coupon_spark.stages import DAILY, LOOP, STAGES, RunOptions

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coupon_spark"


def test_the_production_day_and_the_loop_in_order():
    assert DAILY == ("cleanse", "features", "train", "score", "allocate", "evaluate")
    assert LOOP == ("features", "train", "score", "allocate")
    assert [s.name for s in STAGES if s.gpu] == ["train"]
    assert {s.name for s in STAGES} == {p.stem for p in (ROOT / "jobs").glob("*.py")}


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_every_stage_resolves_to_a_function_of_context_and_run_date(name):
    fn = resolve(name)
    assert list(inspect.signature(fn).parameters) == ["ctx", "run_date"]


def test_options_arrive_typed_and_only_where_declared():
    parse = build_parser().parse_args
    assert options_of(parse(["generate", "--days", "3", "--users", "50"])) == RunOptions(days=3, users=50)
    assert options_of(parse(["generate"])) == RunOptions()
    assert options_of(parse(["train", "--force"])) == RunOptions(force=True)
    assert options_of(parse(["cleanse", "--force"])) == RunOptions(force=True)
    assert options_of(parse(["pipeline", "--days", "2"])) == RunOptions(days=2)
    with pytest.raises(SystemExit):
        parse(["score", "--force"])  # score declares no --force


def test_unknown_stage_names_the_stages():
    with pytest.raises(KeyError, match="the stages are doctor, generate"):
        stages.stage("scoring")


def imported(path: Path) -> set[str]:
    """The modules a file imports (``from a.b import c``: ``a.b`` and ``a.b.c``)."""
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            out |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
    return out


def test_no_module_below_the_command_line_reads_argparse_or_imports_the_cli():
    below = [p for p in PACKAGE.rglob("*.py") if p.name != "cli.py"]
    assert sorted(str(p.relative_to(ROOT)) for p in below if "argparse" in imported(p)) == []
    assert sorted(str(p.relative_to(ROOT)) for p in below if "coupon_spark.cli" in imported(p)) == []
    assert "argparse" in imported(PACKAGE / "cli.py")  # the check sees what it looks for


def test_stages_imports_only_the_standard_library():
    assert {m.split(".")[0] for m in imported(PACKAGE / "stages.py")} <= {"__future__", "dataclasses", "typing"}


def test_context_shares_its_lake_with_the_stages_it_runs(spark, tmp_path):
    from coupon_spark.config import Config

    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={tmp_path}", "lake.backend=bridge"])
    ctx = Context(spark, cfg)
    forced = ctx.with_options(force=True)
    assert forced.options == RunOptions(force=True) and ctx.options == RunOptions()
    assert forced.lake is ctx.lake and forced.spark is ctx.spark
    assert ctx.lake.location("users") == f"{tmp_path}/silver/users"
    assert pipeline.run.__module__ == "coupon_spark.pipeline" and resolve("pipeline") is pipeline.run


def test_the_dag_reads_the_stages_from_the_wheel_alone(tmp_path):
    """An Airflow worker has neither the package nor Spark: the DAG's ``load_stages`` takes the list out of the
    wheel the tasks ship, in an interpreter that cannot import ``coupon_spark`` (``-I -S``: no site-packages)."""
    wheel = tmp_path / "dist" / "coupon_spark-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(PACKAGE / "__init__.py", "coupon_spark/__init__.py")
        z.write(PACKAGE / "stages.py", "coupon_spark/stages.py")
    dag = ast.parse((ROOT / "dags" / "coupon_daily.py").read_text())
    fn = next(n for n in dag.body if isinstance(n, ast.FunctionDef) and n.name == "load_stages")
    script = "\n".join(
        [
            "import importlib, json, sys, types, zipfile",
            "from pathlib import Path",
            f"HOME = Path({str(tmp_path)!r})",
            f"WHEEL = {str(wheel)!r}",
            ast.unparse(fn),
            "try:\n    import coupon_spark\n    sys.exit('coupon_spark is importable')\nexcept ImportError:\n    pass",
            "m = load_stages()",
            "print(json.dumps([list(m.DAILY), sorted(s.name for s in m.STAGES if s.gpu), m.__file__]))",
        ]
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout
    daily, gpu, origin = json.loads(out.stdout.strip().splitlines()[-1])
    assert daily == list(DAILY) and gpu == ["train"]
    assert origin == f"{wheel}/coupon_spark/stages.py"
    # and where neither exists, the error says what to do
    script = script.replace(f"WHEEL = {str(wheel)!r}", f"WHEEL = {str(tmp_path / 'missing.whl')!r}")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "make package" in out.stderr


def test_run_date_reaches_the_stage(spark, tmp_path, monkeypatch, capsys):
    """``coupon-spark <stage>`` builds one context and calls the declared function with it and the run date."""
    from coupon_spark import cli

    seen = {}

    def fake_doctor(ctx: Context, run_date: dt.date) -> int:
        seen.update(date=run_date, options=ctx.options, root=ctx.cfg.lake.root)
        return 0

    monkeypatch.setattr("coupon_spark.doctor.run", fake_doctor)
    monkeypatch.setattr("coupon_spark.session.build_spark_session", lambda *a, **k: spark)
    rc = cli.main(["doctor", "--conf", str(ROOT / "conf" / "local.yaml"), "--run-date", "2026-11-12",
                   "--set", f"lake.root={tmp_path}"])  # fmt: skip
    assert rc == 0
    assert seen == {"date": dt.date(2026, 11, 12), "options": RunOptions(), "root": str(tmp_path)}


def test_private_modules_of_the_lake_stay_inside_it():
    outside = [p for p in PACKAGE.rglob("*.py") if "lake" not in p.relative_to(PACKAGE).parts[:1]]
    users = sorted(
        str(p.relative_to(ROOT)) for p in outside if any(m.startswith("coupon_spark.lake._") for m in imported(p))
    )
    assert users == []
    assert "coupon_spark.storage" in imported(PACKAGE / "model" / "data.py")  # the check sees imports there
