from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from coupon_spark import doctor
from coupon_spark.cli import build_parser, main
from coupon_spark.config import Config
from coupon_spark.runner import Context
from coupon_spark.stages import BY_NAME as STAGES

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


@pytest.mark.parametrize("backend", ["bridge", "native"])
def test_doctor_round_trips_a_table(spark, tmp_path, capsys, monkeypatch, backend):
    from coupon_spark.session import delta_connector_available

    if backend == "native" and not delta_connector_available(spark):
        pytest.skip("the Delta Spark connector is not on the classpath: `make setup` fetches it into .jars/")
    monkeypatch.chdir(ROOT)
    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={tmp_path}", f"lake.backend={backend}"])
    assert doctor.run(Context(spark, cfg), dt.date(2026, 11, 28)) == 0
    out = capsys.readouterr().out
    assert "round trip    ok: wrote 1000 rows" in out
    assert f"delta backend {backend}" in out
    assert os.path.isdir(tmp_path / "ops" / "doctor" / "_delta_log")
    version = DeltaTable(str(tmp_path / "ops" / "doctor")).version()
    # a second run on the same date is a no-op thanks to the idempotency key
    assert doctor.run(Context(spark, cfg), dt.date(2026, 11, 28)) == 0
    assert f"already committed (version {version})" in capsys.readouterr().out
    assert DeltaTable(str(tmp_path / "ops" / "doctor")).version() == version


# ---- errors a scheduler can act on (issue 14) ------------------------------------------------------------------


@pytest.fixture()
def no_spark(monkeypatch):
    """Any attempt to start Spark fails the test: what is checked must be found before any processing."""

    def refuse(*args, **kwargs):
        raise AssertionError("Spark was started")

    monkeypatch.setattr("coupon_spark.session.build_spark_session", refuse)
    monkeypatch.setattr(os, "environ", os.environ.copy())  # main sets the TensorFlow env: keep it to this test


def unwritable_under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "lake"


def unwritable_read_only(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except PermissionError:
        return ro / "lake"
    (ro / "probe").unlink()
    pytest.skip("this user writes into a 0o555 folder anyway (root with CAP_DAC_OVERRIDE)")


@pytest.mark.parametrize("make", [unwritable_under_a_file, unwritable_read_only])
def test_unwritable_lake_root_exits_2_with_one_line_before_any_work(tmp_path, capsys, no_spark, make):
    root = make(tmp_path)
    code = main(["features", "--conf", str(ROOT / "conf/local.yaml"), "--set", f"lake.root={root}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"coupon-spark features: lake.root {root} is not writable: ")
    assert "Traceback" not in err and "[exit 2: " in err
    assert not root.exists()


def test_generate_checks_the_landing_folder_too(tmp_path, capsys, no_spark):
    landing = unwritable_under_a_file(tmp_path)
    args = ["--conf", str(ROOT / "conf/local.yaml"), "--set", f"lake.root={tmp_path / 'lake'}"]
    assert main(["generate", *args, "--set", f"lake.landing={landing}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"coupon-spark generate: lake.landing {landing} is not writable: {tmp_path / 'a-file'} is")
    # features does not write landing files: it gets past the check (to the refused Spark start)
    with pytest.raises(AssertionError, match="Spark was started"):
        main(["features", *args, "--set", f"lake.landing={landing}"])
    assert not (tmp_path / "lake").exists()  # the check creates nothing


def test_verbose_adds_the_traceback_before_the_line(tmp_path, capsys, no_spark):
    assert main(["-v", "doctor", "--set", "lake.bakend=bridge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1] == (
        "coupon-spark doctor: configuration error: --set: unknown key 'lake.bakend'; lake accepts: backend, "
        "bridge_writer, compression, landing, root, tables, target_file_rows [exit 2: bad input or configuration, "
        "fix it and rerun]"
    )


def test_exit_code_of_each_kind_of_error():
    from coupon_spark.cleanse import ImportManifestError, LandingFileMissingError, LandingHeaderError
    from coupon_spark.config import ConfigError
    from coupon_spark.errors import kind_of
    from coupon_spark.evaluation import NoAllocationError
    from coupon_spark.features import MissingInputError
    from coupon_spark.lake import CommitError, SchemaMismatchError, TableNotFoundError
    from coupon_spark.model import ModelNotFoundError
    from coupon_spark.model.train import NoTrainingDataError
    from coupon_spark.scoring import NoUserFeaturesError
    from coupon_spark.session import JavaNotFoundError

    expected = {
        ConfigError: 2,
        JavaNotFoundError: 2,
        LandingHeaderError: 2,
        ImportManifestError: 2,
        LandingFileMissingError: 75,
        TableNotFoundError: 75,
        MissingInputError: 75,
        NoTrainingDataError: 75,
        ModelNotFoundError: 75,
        NoUserFeaturesError: 75,
        NoAllocationError: 75,
        CommitError: 1,
        SchemaMismatchError: 1,
    }
    got = {cls: kind_of(cls("x")).exit_code for cls in expected}  # type: ignore[union-attr]
    assert got == expected
    assert kind_of(RuntimeError("a bug")) is None  # not ours: keeps its traceback
    # the older bases stay, for code that catches them
    assert issubclass(ConfigError, ValueError) and issubclass(ModelNotFoundError, LookupError)


def test_features_on_an_empty_lake_exits_75_and_writes_nothing(spark, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("coupon_spark.session.build_spark_session", lambda *a, **k: spark)
    monkeypatch.setattr(os, "environ", os.environ.copy())
    lake = tmp_path / "lake"
    code = main(
        ["features", "--conf", str(ROOT / "conf/local.yaml"), "--run-date", "2026-11-12"]
        + ["--set", f"lake.root={lake}"]
    )
    err = capsys.readouterr().err
    assert code == 75
    assert err == (
        f"coupon-spark features: silver table 'users' ({lake}/silver/users) does not exist: run `coupon-spark "
        "cleanse` first [exit 75: upstream not ready, retry later]\n"
    )
    assert not lake.exists()
