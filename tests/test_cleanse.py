"""The cleansing job against real Spark and real Delta tables: a hand-written landing folder with one record
of each defect, generated dirty data, reruns and failures."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark import schemas
from coupon_spark.cleanse import (
    REASONS,
    SOURCE_ORDER,
    CleanseResult,
    LandingFileMissingError,
    LandingHeaderError,
    cleanse_day,
    read_lines,
)
from coupon_spark.config import Config, LakeConfig, ShopConfig, SparkConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.bridge import BridgeBackend

FIXTURE = Path(__file__).parent / "data" / "landing"
DAY = dt.date(2026, 11, 28)
TABLES = (*SOURCE_ORDER, "quarantine")

# (source, line number, reason): every rejected line of tests/data/landing/2026-11-28, worked out by hand
EXPECTED_QUARANTINE = {
    ("users", 3, "duplicate"),  # the same line again at line 10; the later copy is kept
    ("users", 5, "missing_field"),  # no user_id
    ("users", 6, "bad_type"),  # signup_date 31.02.2026
    ("users", 7, "bad_value"),  # device "tablet"
    ("users", 8, "future_timestamp"),  # updated_at a month after the ingest date
    ("users", 9, "superseded"),  # an older updated_at of U00000001
    ("users", 11, "malformed"),  # three fields of seven
    ("users", 12, "bad_encoding"),  # Latin-1 "Köln"
    ("coupons", 4, "unknown_category"),  # "garden"
    ("coupons", 5, "unknown_currency"),  # CHF
    ("coupons", 6, "bad_amount"),  # face value -5.00
    ("events", 1, "duplicate"),  # E1 again at line 14
    ("events", 2, "superseded"),  # E2 again at line 15, the same instant written in UTC
    ("events", 4, "malformed"),  # truncated JSON
    ("events", 5, "missing_field"),  # no user_id
    ("events", 6, "bad_type"),  # price "n/a"
    ("events", 7, "bad_amount"),  # negative price
    ("events", 8, "bad_amount"),  # absurd price
    ("events", 9, "future_timestamp"),
    ("events", 10, "stale_timestamp"),  # two months before the ingest date
    ("events", 11, "unknown_user"),
    ("events", 12, "bad_value"),  # event_type "click"
    ("events", 13, "unknown_currency"),
    ("events", 16, "bad_encoding"),
    ("events", 17, "malformed"),  # a JSON array
    ("events", 18, "bad_type"),  # ts "yesterday"
    ("events", 19, "unknown_category"),
    ("orders", 4, "superseded"),  # an older updated_at of O2, after the current one in the file
    ("orders", 5, "unknown_coupon"),
    ("orders", 6, "bad_type"),  # "12,50"
    ("orders", 7, "missing_field"),  # no ordered_at
    ("issuances", 3, "unknown_coupon"),  # CPN0401 was quarantined (CHF)
    ("issuances", 4, "bad_value"),  # propensity 1.5
    ("issuances", 5, "bad_type"),  # propensity "high"
    ("redemptions", 2, "unknown_issuance"),
    ("redemptions", 3, "unknown_user"),  # U00000005 was quarantined (bad device)
}
LINES = {"users": 11, "coupons": 5, "events": 19, "orders": 6, "issuances": 6, "redemptions": 3}


def make_cfg(lake_cfg: LakeConfig, **shop: object) -> Config:
    return Config(spark=SparkConfig(), lake=lake_cfg, shop=ShopConfig(**shop))  # type: ignore[arg-type]


@pytest.fixture()
def fixture_cfg(lake_cfg: LakeConfig) -> Config:
    shutil.copytree(FIXTURE, lake_cfg.landing)
    return make_cfg(lake_cfg)


def snapshot(lake: Lake) -> dict[str, list[tuple]]:
    return {t: sorted(map(tuple, lake.read(t).collect()), key=repr) for t in TABLES}


@dataclass
class FixtureRun:
    cfg: Config
    lake: Lake
    result: CleanseResult
    first: dict[str, list[tuple]]  # tables after the first run
    second: dict[str, list[tuple]]  # ... and after a rerun of the same date


@pytest.fixture(scope="module")
def fixture_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The hand-written folder cleansed once, then once more (a rerun); shared by the read-only tests."""
    root = tmp_path_factory.mktemp("cleanse")
    lake_cfg = LakeConfig(root=str(root / "lake"), landing=str(root / "landing"), backend="bridge")
    shutil.copytree(FIXTURE, lake_cfg.landing)
    cfg = make_cfg(lake_cfg)
    lake = Lake(spark, lake_cfg, BridgeBackend(spark, target_file_rows=1000))
    result = cleanse_day(spark, lake, cfg, DAY)
    first = snapshot(lake)
    cleanse_day(spark, lake, cfg, DAY)
    return FixtureRun(cfg, lake, result, first, snapshot(lake))


def test_each_defect_gets_its_reason_code(fixture_run: FixtureRun) -> None:
    result, lake = fixture_run.result, fixture_run.lake
    q = lake.read("quarantine").collect()
    got = {(r.source, r.position, r.reason) for r in q}
    assert got == EXPECTED_QUARANTINE
    assert {r.reason for r in q} <= set(REASONS)
    assert all(r.ingest_date == DAY and r.source_file.endswith(schemas.LANDING_FILES[r.source]) for r in q)
    enc = next(r for r in q if r.source == "users" and r.reason == "bad_encoding")
    assert enc.raw_text == "U00000008,2025-01-01,DE,K\ufffdln,ios,regular,2026-11-01T10:00:00Z"
    assert "base64" in enc.detail
    for source, n in LINES.items():
        r = result.sources[source]
        assert (r.records_read, r.accepted + r.quarantined) == (n, n)


def test_accepted_rows_are_typed_and_normalised(spark: SparkSession, fixture_run: FixtureRun) -> None:
    lake = fixture_run.lake
    utc = dt.datetime
    events = spark.createDataFrame(
        [
            ("E1", "view", "U00000001", utc(2026, 11, 28, 9, 15), "S1", "hom-0001", "home", Decimal("12.50"), None,
             DAY),
            ("E2", "cart", "U00000002", utc(2026, 11, 28, 23, 30), "S2", "ele-0002", "electronics", Decimal("11.70"),
             None, DAY),  # 10.00 GBP at 1.17
            ("E3", "purchase", "U00000003", utc(2026, 11, 28, 12, 0), "S3", "toy-0003", "toys", Decimal("18.40"), "O1",
             DAY),  # naive time read as UTC; 20.00 USD at 0.92
        ],
        schemas.EVENTS,
    )  # fmt: skip
    assert_df_equality(lake.read("events"), events, ignore_row_order=True, ignore_nullable=True)
    orders = spark.createDataFrame(
        [
            ("O1", "U00000003", utc(2026, 11, 28, 12, 0), "toys", Decimal("36.80"), Decimal("4.60"), "CPN0101", 2,
             "USD", utc(2026, 11, 28, 12, 5), DAY),
            ("O2", "U00000001", utc(2026, 11, 28, 9, 0), "books", Decimal("15.00"), Decimal("0.00"), None, 1, "EUR",
             utc(2026, 11, 28, 9, 10), DAY),
        ],
        schemas.ORDERS,
    )  # fmt: skip
    assert_df_equality(lake.read("orders"), orders, ignore_row_order=True, ignore_nullable=True)
    users = {r.user_id: (r.region, r.device) for r in lake.read("users").collect()}
    assert users == {"U00000001": ("DE", "ios"), "U00000002": ("GB", "android"), "U00000003": ("US", "web")}
    coupons = {r.coupon_id: (r.kind, r.category, r.campaign_budget_eur) for r in lake.read("coupons").collect()}
    assert coupons == {  # a budget may exceed max_amount_eur: only transaction amounts are capped
        "CPN0101": ("price_off", "all", Decimal("1000.00")),
        "CPN0201": ("free_shipping", "electronics", Decimal("50000.00")),
    }
    issuances = {r.issuance_id: (r.coupon_id, r.propensity) for r in lake.read("issuances").collect()}
    assert issuances == {"I1": ("CPN0101", 0.25), "I2": (None, 0.25), "I6": ("CPN0201", 0.375)}
    assert [r.redemption_id for r in lake.read("redemptions").collect()] == ["R1"]


def test_run_metrics_reconcile(fixture_run: FixtureRun) -> None:
    rows = {r.source: r for r in fixture_run.lake.read("run_metrics").collect()}
    assert set(rows) == set(SOURCE_ORDER)
    expected_q = collections.Counter(s for s, _, _ in EXPECTED_QUARANTINE)
    for source, n in LINES.items():
        r = rows[source]
        assert (r.records_read, r.records_quarantined, r.records_accepted) == (
            n,
            expected_q[source],
            n - expected_q[source],
        )
        assert r.reconciled
    assert rows["events"].quarantined_by_reason["bad_amount"] == 2


def test_rerun_replaces_the_date(fixture_run: FixtureRun) -> None:
    assert fixture_run.second == fixture_run.first
    assert sum(len(rows) for rows in fixture_run.first.values()) == sum(LINES.values())  # each line: one row
    assert fixture_run.lake.read("run_metrics").count() == len(SOURCE_ORDER)


def test_failed_write_leaves_tables_as_they_were(
    spark: SparkSession, fixture_run: FixtureRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, before = fixture_run.lake, fixture_run.second
    # a run over changed data (one more event) fails when it reaches the quarantine table
    landing = tmp_path / "landing"
    shutil.copytree(FIXTURE, landing)
    cfg = dataclasses.replace(fixture_run.cfg, lake=dataclasses.replace(fixture_run.cfg.lake, landing=str(landing)))
    events = landing / DAY.isoformat() / "events.jsonl"
    with events.open("a", encoding="utf-8") as f:
        f.write('{"event_id":"E99","event_type":"view","user_id":"U00000001","ts":"2026-11-28T11:00:00Z"}\n')
    real_write = lake.write

    def failing(df, table, *a, **kw):
        if table == "quarantine":
            raise OSError("disk full")
        return real_write(df, table, *a, **kw)

    monkeypatch.setattr(lake, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        cleanse_day(spark, lake, cfg, DAY)
    monkeypatch.undo()
    assert snapshot(lake) == before


def test_missing_file_fails_before_writing(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    (Path(fixture_cfg.lake.landing) / DAY.isoformat() / "orders.csv").unlink()
    with pytest.raises(LandingFileMissingError, match=r"orders\.csv"):
        cleanse_day(spark, lake, fixture_cfg, DAY)
    assert not any(lake.exists(t) for t in TABLES)


def test_wrong_csv_header_fails_clearly(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    path = Path(fixture_cfg.lake.landing) / DAY.isoformat() / "coupons.csv"
    text = path.read_text(encoding="utf-8").replace("face_value,", "value,", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LandingHeaderError, match=r"expected .coupon_id,campaign_id"):
        cleanse_day(spark, lake, fixture_cfg, DAY)
    assert not any(lake.exists(t) for t in TABLES)


def test_an_absurd_version_never_wins_over_a_clean_one(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    """Issue 14: O1 again with n_items=-99999999 and the same updated_at was accepted and the clean line
    quarantined as superseded. Now n_items has a plausible range: the absurd line is bad_value, the clean one
    stays."""
    path = Path(fixture_cfg.lake.landing) / DAY.isoformat() / "orders.csv"
    clean = path.read_text(encoding="utf-8").splitlines()[1]
    assert clean.startswith("O1,") and ",2,2026-11-28T12:05:00Z" in clean
    absurd = clean.replace(",2,2026-11-28T12:05:00Z", ",-99999999,2026-11-28T12:05:00Z")
    with path.open("a", encoding="utf-8") as f:
        f.write(absurd + "\n")
    res = cleanse_day(spark, lake, fixture_cfg, DAY)
    o1 = lake.read("orders").where("order_id = 'O1'").collect()
    assert [r["n_items"] for r in o1] == [2]
    q = {(r["position"], r["reason"]) for r in lake.read("quarantine").where("source = 'orders'").collect()}
    assert (LINES["orders"] + 2, "bad_value") in q and (2, "superseded") not in q
    assert res.sources["orders"].quarantined_by_reason["bad_value"] == 1


def test_a_huge_text_field_is_refused(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    """Issue 14: a 1 MB text field in an otherwise valid record was accepted; text fields are bounded."""
    path = Path(fixture_cfg.lake.landing) / DAY.isoformat() / "orders.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = lines[1].split(",")
    fields[0] = "O" + "x" * 1_000_000
    path.write_text("\n".join([*lines, ",".join(fields)]) + "\n", encoding="utf-8")
    res = cleanse_day(spark, lake, fixture_cfg, DAY)
    q = lake.read("quarantine").where(f"source = 'orders' AND position = {LINES['orders'] + 2}").collect()
    assert [r["reason"] for r in q] == ["bad_value"] and "1000001 characters" in q[0]["detail"]
    assert res.sources["orders"].accepted == lake.read("orders").count()
    assert lake.read("orders").where(F.length("order_id") > 256).count() == 0


def test_empty_csv_file_fails_clearly(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    """A 0-byte coupons.csv (no header) used to pass and send every issuance to quarantine as unknown_coupon."""
    (Path(fixture_cfg.lake.landing) / DAY.isoformat() / "coupons.csv").write_bytes(b"")
    with pytest.raises(LandingHeaderError, match=r"coupons\.csv: the CSV file is empty"):
        cleanse_day(spark, lake, fixture_cfg, DAY)
    assert not any(lake.exists(t) for t in TABLES)


def test_line_numbers_are_exact_across_splits(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"{i}\n" for i in range(1, 20001)), encoding="utf-8")
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")  # ~13 splits of one file
    try:
        read = read_lines(spark, str(path), has_header=False)
        rows = read.lines.select("position", "value").collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    assert read.records_read == 20000
    assert all(r.position == int(r.value) for r in rows) and len(rows) == 20000


def test_generated_dirty_data_reconciles_and_every_defect_is_caught(
    spark: SparkSession, lake: Lake, lake_cfg: LakeConfig
) -> None:
    from coupon_spark.datagen.shop import generate, truth_table

    cfg = make_cfg(lake_cfg, users=300, dirty_rate=0.05, partitions=2)
    first = dt.date(2026, 11, 2)
    generate(spark, cfg, first, days=1)
    for day in (first,):
        result = cleanse_day(spark, lake, cfg, day)
        assert all(r.reconciled for r in result.sources.values())
        manifest = lake.read(truth_table(cfg, "defects"), where={"ingest_date": day}).collect()
        expected = collections.Counter()
        clean = collections.Counter()
        for r in manifest:
            if r.expected_reason:
                expected[(r.source, r.expected_reason)] += r.lines
            else:
                clean[r.source] += r.lines
        got = collections.Counter(
            (r.source, r.reason) for r in lake.read("quarantine", where={"ingest_date": day}).collect()
        )
        assert got == expected
        assert {s: r.accepted for s, r in result.sources.items()} == {s: clean[s] for s in SOURCE_ORDER}
