"""The whole loop on a tiny synthetic shop: history, features, Horovod training, scoring, allocation, the shop
playing the allocations forward, cleansing and evaluation, through the same functions as `make demo`."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from coupon_spark import pipeline
from coupon_spark.config import Config
from coupon_spark.lake import Lake
from coupon_spark.runner import Context
from coupon_spark.stages import RunOptions

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = dt.date(2026, 11, 8)


@pytest.fixture(scope="module")
def loop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    cfg = Config.from_file(
        ROOT / "conf" / "local.yaml",
        overrides=[
            f"lake.root={root / 'lake'}",
            f"lake.landing={root / 'landing'}",
            "shop.users=800",
            "shop.partitions=2",
            "shop.issue_rate=0.6",  # enough held-out randomised decisions for the decision gate (>= 100)
            "pipeline.history_days=4",
            "features.outcome_window_days=2",  # issues of RUN_DATE-4 .. -2 have closed windows
            "train.epochs=2",
            "train.batch_size=128",
            "allocation.budget.amount=40.0",  # binding: the allocator must choose
            "evaluate.bootstrap_samples=200",
        ],
    )
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    rc = pipeline.run(Context(spark, cfg, RunOptions(days=1)), RUN_DATE)
    return rc, cfg, Lake.from_config(spark, cfg.lake)


def test_the_loop_runs_and_writes_every_table(spark, loop):
    from coupon_spark.session import delta_connector_available

    rc, cfg, lake = loop
    assert rc == 0
    # conf/local.yaml's lake.backend auto: the Delta connector where make setup fetched it, as make demo runs
    assert lake.backend.name == ("native" if delta_connector_available(spark) else "bridge")
    for t in ("users", "orders", "issuances", "user_features", "training_examples", "candidates", "allocations",
              "allocation_runs", "evaluation_metrics"):  # fmt: skip
        assert lake.exists(t), t
    assert (Path(cfg.lake.root) / "models" / cfg.train.model_name / "latest").exists()


def test_the_model_was_gated_on_held_out_randomised_decisions(loop):
    """The decision gate ran on the shop's held-out random-policy rows, and the score job applied it: no
    candidate has a positive expected profit at or below the threshold."""
    import math

    from coupon_spark.model.registry import Registry

    _, cfg, lake = loop
    registry, name = Registry.from_config(cfg), cfg.train.model_name
    decision = registry.read_json(name, registry.latest(name), "decision.json")
    assert decision["rows"] >= 100 and decision["confidence"] == cfg.train.decision_confidence
    assert len(decision["curve"]) >= 1
    threshold = math.inf if decision["threshold"] is None else decision["threshold"]
    profit = [r[0] for r in lake.read("candidates", where={"run_date": RUN_DATE}).select("expected_profit").collect()]
    assert profit and not any(0 < p <= threshold for p in profit)
    # the evaluation reports the gate the run's model was published with
    gate_open = (
        lake.read("evaluation_metrics", where={"run_date": RUN_DATE})
        .where((F.col("section") == "model") & (F.col("metric") == "decision_gate.open"))
        .select("value")
        .collect()
    )
    assert [r.value for r in gate_open] == [float(decision["open"])]


def test_allocations_keep_the_budget_and_the_holdout(loop):
    _, cfg, lake = loop
    alloc = lake.read("allocations", where={"run_date": RUN_DATE})
    issued = alloc.where(F.col("coupon_id").isNotNull())
    spend = issued.agg(F.sum("expected_cost")).first()[0]
    assert 0 < spend <= cfg.allocation.budget.amount + 1e-9
    assert alloc.where(F.col("holdout") & F.col("coupon_id").isNotNull()).count() == 0
    assert issued.groupBy("user_id").count().where(F.col("count") > cfg.allocation.max_per_user).count() == 0


def test_the_shop_played_the_allocations_forward(loop):
    _, _, lake = loop
    alloc = lake.read("allocations", where={"run_date": RUN_DATE})
    logged = lake.read("issuances", where={"ingest_date": RUN_DATE})
    # every decision of the day is logged as the day's issuance, with the allocation's policy and propensity
    assert logged.where(~F.col("policy").startswith("coupon-spark/")).count() == 0
    pairs = {(r.user_id, r.coupon_id) for r in alloc.select("user_id", "coupon_id").collect()}
    got = {(r.user_id, r.coupon_id) for r in logged.select("user_id", "coupon_id").collect()}
    assert got <= pairs and len(got) >= 0.95 * len(pairs)  # a few lines are dirtied by the shop's export
    assert lake.read("orders", where={"ingest_date": RUN_DATE}).count() > 0


def test_the_evaluation_compares_with_the_oracle(loop):
    _, cfg, lake = loop
    rows = {
        r.dimension_value: r.value
        for r in lake.read("evaluation_metrics", where={"run_date": RUN_DATE})
        .where((F.col("section") == "policy_truth") & (F.col("metric") == "ratio_to_oracle"))
        .collect()
    }
    assert rows["oracle"] == pytest.approx(1.0)
    assert {"model", "random", "redeem"} <= set(rows)
    # the day was played forward, so its realised uplift against the holdout is measured (whatever the gate)
    up = (
        lake.read("evaluation_metrics", where={"run_date": RUN_DATE})
        .where((F.col("section") == "holdout") & (F.col("metric") == "uplift_per_user"))
        .collect()
    )
    assert len(up) == 1 and up[0].ci_low <= up[0].value <= up[0].ci_high and up[0].n > 0
    report = Path(cfg.lake.root) / cfg.evaluate.report_dir / RUN_DATE.isoformat() / "index.html"
    assert report.exists() and report.stat().st_size > 1000


def test_the_exploration_arm_is_valued_on_the_truth(loop):
    """The evaluation's true value of the exploration arm equals the hidden response model summed over the
    exploration coupons of the day (computed here straight from the truth tables)."""
    import numpy as np

    from coupon_spark.allocation import POLICY_EXPLORATION
    from coupon_spark.datagen.response import CouponParams, UserTraits, response_pairs
    from coupon_spark.datagen.shop import truth_table
    from coupon_spark.datagen.world import season_logit

    _, cfg, lake = loop
    alloc = lake.read("allocations", where={"run_date": RUN_DATE})
    ex = alloc.where((F.col("policy") == POLICY_EXPLORATION) & F.col("coupon_id").isNotNull()).toPandas()
    traits = lake.read(truth_table(cfg, "user_traits")).toPandas().set_index("user_id").loc[ex["user_id"]]
    coupons = CouponParams.from_pandas(lake.read(truth_table(cfg, "coupons")).toPandas())
    users = UserTraits.from_pandas(traits.reset_index())
    season = season_logit(RUN_DATE)
    treated = response_pairs(users, coupons, coupons.index_of(ex["coupon_id"]), season)
    untreated = response_pairs(users, coupons, np.full(len(ex), -1), season)
    want = float((treated.expected_profit - untreated.expected_profit).sum())
    got = (
        lake.read("evaluation_metrics", where={"run_date": RUN_DATE})
        .where((F.col("metric") == "true_incremental_profit") & (F.col("dimension_value") == "exploration"))
        .collect()
    )
    assert len(got) == 1 and got[0].n == len(ex) > 0
    assert got[0].value == pytest.approx(want, rel=1e-6, abs=1e-6)


def _chromium() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed: `make setup-browser` installs them")
    return chromium, driver


def _open_in_chromium(page: Path, chromium: str, driver_path: str):  # type: ignore[no-untyped-def]
    """(images as [src, complete, naturalWidth], console entries, the driver) of ``page`` in headless Chromium."""
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.get(page.as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"
    )
    return images, driver.get_log("browser"), driver


def test_the_report_renders_in_a_real_browser(loop, tmp_path):
    """reports/<date>/index.html in headless Chromium: every image loads (and the check sees a broken one), the
    page logs no console error, and a screenshot is saved under the test's tmp dir."""
    _, cfg, _ = loop
    chromium, driver_path = _chromium()
    report = Path(cfg.lake.root) / cfg.evaluate.report_dir / RUN_DATE.isoformat() / "index.html"
    images, console, driver = _open_in_chromium(report, chromium, driver_path)
    try:
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        title = driver.title
    finally:
        driver.quit()
    assert RUN_DATE.isoformat() in title
    assert len(images) >= 5 and [src for src, complete, width in images if not (complete and width > 0)] == []
    assert [e for e in console if e["level"] in ("SEVERE", "ERROR")] == []
    # the same checks see a page whose image is missing
    broken = report.parent / "broken.html"
    broken.write_text(report.read_text().replace(images[0][0], "missing.png", 1))
    images, console, driver = _open_in_chromium(broken, chromium, driver_path)
    driver.quit()
    broken.unlink()
    assert [src for src, complete, width in images if not (complete and width > 0)] == ["missing.png"]
    assert any(e["level"] == "SEVERE" and "missing.png" in e["message"] for e in console)


def test_the_wall_time_per_stage_adds_up_each_stage_over_days():
    p = pipeline.Progress()
    p.seconds = {
        "[setup] the synthetic shop's hidden truth": 8.0,
        "[past 2025-10-29 .. 2026-10-28] 365 days generate (orders, the 10%/day randomised promotion)": 55.0,
        "[history 2026-10-29] 1/14 generate (random logging policy)": 20.0,
        "[history 2026-10-29] 1/14 cleanse": 30.0,
        "[history 2026-10-30] 2/14 generate (random logging policy)": 22.0,
        "[2026-11-12] day 1/3 1/6 features": 400.0,
        "[2026-11-12] day 1/3 5/6 cleanse": 38.0,
        "[2026-11-13] day 2/3 1/6 features": 150.0,
    }
    assert p.by_stage() == [
        ("setup the synthetic shop's hidden truth", 1, 8.0),
        ("past generate", 1, 55.0),
        ("history generate", 2, 42.0),
        ("history cleanse", 1, 30.0),
        ("loop features", 2, 550.0),
        ("loop cleanse", 1, 38.0),
    ]
