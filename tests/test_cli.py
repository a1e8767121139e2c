from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from coupon_spark import doctor
from coupon_spark.cli import STAGES, build_parser, main
from coupon_spark.config import Config

ROOT = Path(__file__).resolve().parents[1]
LOOP = ["generate", "cleanse", "features", "train", "score", "allocate", "evaluate", "pipeline"]


def test_help_lists_every_stage_and_each_takes_conf_and_run_date():
    text = build_parser().format_help()
    for stage in LOOP:
        assert stage in text
    for stage in STAGES:
        args = build_parser().parse_args([stage, "--conf", "conf/x.yaml", "--run-date", "2026-11-28"])
        assert (args.stage, args.conf, args.run_date) == (stage, "conf/x.yaml", dt.date(2026, 11, 28))


def test_console_script_is_installed_and_answers_help():
    exe = Path(sys.executable).parent / "coupon-spark"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "allocate" in out and "pipeline" in out


def test_job_entry_points_exist_for_every_stage():
    for stage in STAGES:
        text = (ROOT / "jobs" / f"{stage}.py").read_text()
        assert f'main(["{stage}", *sys.argv[1:]])' in text


def test_config_error_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: " + str(ROOT / "conf" / "base.yaml") + "\nlake:\n  bakend: bridge\n")
    assert main(["doctor", "--conf", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lake.bakend" in err and str(bad) in err


def test_bad_run_date_is_refused(capsys):
    try:
        main(["doctor", "--run-date", "28/11/2026"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_doctor_round_trips_a_table(spark, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={tmp_path}", "lake.backend=bridge"])
    assert doctor.run(spark, cfg, dt.date(2026, 11, 28), argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert "round trip    ok: wrote 1000 rows" in out
    assert "delta backend bridge" in out
    assert os.path.isdir(tmp_path / "ops" / "doctor" / "_delta_log")
    # a second run on the same date is a no-op thanks to the idempotency key
    assert doctor.run(spark, cfg, dt.date(2026, 11, 28), argparse.Namespace()) == 0
    assert "already committed (version 0)" in capsys.readouterr().out
