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

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark import schemas
from coupon_spark.cleanse import (
    REASONS,
    SOURCE_ORDER,
    SOURCES,
    CleanseResult,
    LandingFileMissingError,
    LandingHeaderError,
    cleanse_day,
    numbered,
    read_lines,
    split_counts,
    split_offsets,
)
from coupon_spark.config import Config, LakeConfig, ShopConfig, SparkConfig
from coupon_spark.lake import Lake

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
    """The hand-written folder cleansed once, retried (nothing to do), then once more (a forced rerun); shared by
    the read-only tests."""
    root = tmp_path_factory.mktemp("cleanse")
    lake_cfg = LakeConfig(root=str(root / "lake"), landing=str(root / "landing"), target_file_rows=1000)
    shutil.copytree(FIXTURE, lake_cfg.landing)
    cfg = make_cfg(lake_cfg)
    lake = Lake.from_config(spark, lake_cfg)  # the default backend, native where fetched
    result = cleanse_day(spark, lake, cfg, DAY)
    first = snapshot(lake)
    versions = {t: lake.version(t) for t in (*TABLES, "run_metrics")}
    again = cleanse_day(spark, lake, cfg, DAY)  # a retry over the same files: nothing to do
    assert again.skipped and again.run_id == result.run_id and again.input_digest == result.input_digest
    assert {t: lake.version(t) for t in versions} == versions
    forced = cleanse_day(spark, lake, cfg, DAY, force=True)
    # a forced rerun replaces each table's date; the users dimension has no change to merge: no new version
    assert not forced.skipped and {t: lake.version(t) - (t != "users") for t in versions} == versions
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
    coupons = {
        r.coupon_id: (r.kind, r.category, r.campaign_budget_eur, r.valid_from, r.valid_to)
        for r in lake.read("coupons").collect()
    }
    assert coupons == {  # a budget may exceed max_amount_eur: only transaction amounts are capped
        "CPN0101": ("price_off", "all", Decimal("1000.00"), dt.date(2026, 10, 1), dt.date(2027, 1, 31)),
        "CPN0201": ("free_shipping", "electronics", Decimal("50000.00"), dt.date(2026, 11, 1), dt.date(2026, 11, 30)),
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
    """One pass numbers the lines: the counts per split give the offsets, a CSV header is line 1 and left out."""
    path = tmp_path / "big.csv"
    path.write_text("n\n" + "".join(f"{i}\n" for i in range(2, 20002)), encoding="utf-8")
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")  # ~13 splits of one file
    try:
        read = read_lines(spark, str(path), has_header=True, expected_header=("n",))
        lines = read.lines.withColumn("reason", F.when(F.col("value") == "n", "bad_type")).cache()
        where = split_offsets(split_counts(lines), read.has_header)
        rows = numbered(spark, lines, where, read.has_header).select("position", "value").collect()
        lines.unpersist()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    assert len(where.offsets) > 5  # the file was split
    assert where.lines_read == 20001 and where.header_reasons == ["bad_type"]
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
        # each table's date in at most ceil(rows / lake.target_file_rows) files (1,000 here), not one per task
        sizes = {SOURCES[s].table: r.accepted for s, r in result.sources.items()}
        sizes["quarantine"] = sum(expected.values())
        for table, rows in sizes.items():
            adds = pa.table(DeltaTable(lake.location(table)).get_add_actions(flatten=True)).to_pylist()
            # users: a type-2 dimension, not partitioned (this first date is all of it)
            files = [a for a in adds if table == "users" or str(a["partition.ingest_date"]) == day.isoformat()]
            assert len(files) <= max(1, -(-rows // 1000)), (table, rows, len(files))


# ---- issue 14: a fact kept once across ingest dates; redemptions checked against their issuance ---------------

NEXT = DAY + dt.timedelta(days=1)


def fixture_lines(source: str, *numbers: int) -> list[str]:
    """Lines of the hand-written folder by their line number (CSV: 1 is the header)."""
    path = FIXTURE / DAY.isoformat() / schemas.LANDING_FILES[source]
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()  # a line is Latin-1
    return [lines[n - 1] for n in numbers]


def write_next_day(landing: Path, **facts: list[str]) -> None:
    """A landing folder for NEXT: the users and coupons the fixture accepts (restated, as every date does),
    and the given lines of the fact sources (CSV: without the header)."""
    folder = landing / NEXT.isoformat()
    folder.mkdir(parents=True)
    files = {"users": fixture_lines("users", 1, 2, 3, 4), "coupons": fixture_lines("coupons", 1, 2, 3)}
    for source in ("events", "orders", "issuances", "redemptions"):
        lines = facts.get(source, [])
        files[source] = [",".join(schemas.LANDING_FIELDS[source]), *lines] if source == "orders" else lines
    for source, lines in files.items():
        (folder / schemas.LANDING_FILES[source]).write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")


def quarantined(lake: Lake, day: dt.date) -> set[tuple[str, int, str]]:
    return {(r.source, r.position, r.reason) for r in lake.read("quarantine", where={"ingest_date": day}).collect()}


def test_a_fact_landing_again_on_a_later_date_is_a_duplicate(
    spark: SparkSession, lake: Lake, fixture_cfg: Config
) -> None:
    """Issue 14: the same record landing again on a later ingest date was accepted twice. Silver keeps the
    copy it has, the later one is quarantined as duplicate and counted; reruns of either date change nothing."""
    cleanse_day(spark, lake, fixture_cfg, DAY)
    new_order = "O6,U00000002,2026-11-29T10:00:00Z,books,20.00,,EUR,,1,2026-11-29T10:05:00Z"
    o1_updated = fixture_lines("orders", 2)[0].replace(",2,2026-11-28T12:05:00Z", ",3,2026-11-29T08:00:00Z")
    write_next_day(
        Path(fixture_cfg.lake.landing),
        events=[
            fixture_lines("events", 1)[0],  # E1, the same line as on DAY
            '{"event_id":"E20","event_type":"view","user_id":"U00000002","ts":"2026-11-29T10:00:00Z"}',
        ],
        orders=[o1_updated, new_order],  # O1 again, a later version: silver keeps the first one it accepted
        issuances=[
            fixture_lines("issuances", 1)[0],  # I1 again
            '{"issuance_id":"I7","user_id":"U00000002","coupon_id":"CPN0201","issued_at":"2026-11-29T07:00:00Z",'
            '"policy":"random_v1","propensity":0.375}',
        ],
        redemptions=[
            fixture_lines("redemptions", 1)[0],  # R1 again (of I1, accepted on DAY)
            '{"redemption_id":"R4","issuance_id":"I7","user_id":"U00000002","coupon_id":"CPN0201","order_id":"O6",'
            '"redeemed_at":"2026-11-29T12:00:00Z","discount":4.95,"currency":"EUR"}',
        ],
    )
    res = cleanse_day(spark, lake, fixture_cfg, NEXT)

    assert quarantined(lake, NEXT) == {
        ("events", 1, "duplicate"),
        ("orders", 2, "duplicate"),  # line 1 is the header
        ("issuances", 1, "duplicate"),
        ("redemptions", 1, "duplicate"),
    }
    counts = {s: (r.records_read, r.accepted, r.quarantined_by_reason) for s, r in res.sources.items()}
    assert counts == {
        "users": (3, 3, {}),  # snapshots restate their records every date: not duplicates
        "coupons": (2, 2, {}),
        "events": (2, 1, {"duplicate": 1}),
        "orders": (2, 1, {"duplicate": 1}),
        "issuances": (2, 1, {"duplicate": 1}),
        "redemptions": (2, 1, {"duplicate": 1}),
    }
    metrics = {r.source: r for r in lake.read("run_metrics", where={"ingest_date": NEXT}).collect()}
    assert {
        s: (m.records_read, m.records_accepted, m.records_quarantined, m.reconciled) for s, m in metrics.items()
    } == {s: (n, a, sum(q.values()), True) for s, (n, a, q) in counts.items()}
    detail = lake.read("quarantine", where={"ingest_date": NEXT}).where("source = 'orders'").first()["detail"]
    assert detail == "order_id O1 is in silver already (ingest date 2026-11-28); that copy is kept"
    # one row per id across dates; O1 is the copy of DAY
    ids = {
        t: sorted(r[0] for r in lake.read(t).select(SOURCES[t].key).collect())
        for t in ("events", "orders", "issuances", "redemptions")
    }
    assert ids == {
        "events": ["E1", "E2", "E20", "E3"],
        "orders": ["O1", "O2", "O6"],
        "issuances": ["I1", "I2", "I6", "I7"],
        "redemptions": ["R1", "R4"],
    }
    assert [(r.n_items, r.ingest_date) for r in lake.read("orders").where("order_id = 'O1'").collect()] == [(2, DAY)]
    # a rerun of NEXT is not a duplicate of itself; a rerun of DAY keeps DAY's copies (NEXT holds none of them)
    after_next = snapshot(lake)
    cleanse_day(spark, lake, fixture_cfg, NEXT, force=True)
    assert snapshot(lake) == after_next
    cleanse_day(spark, lake, fixture_cfg, DAY, force=True)
    assert snapshot(lake) == after_next
    assert quarantined(lake, DAY) == EXPECTED_QUARANTINE


def test_a_redemption_must_match_its_issuance(spark: SparkSession, lake: Lake, fixture_cfg: Config) -> None:
    """Issue 14: a redemption of another coupon than the one issued, of a control-arm issuance (no coupon) or
    by another user than the issuance's was accepted. Each now has its reason, whether the issuance is of the
    same day or in silver from an earlier date."""
    landing = Path(fixture_cfg.lake.landing)

    def redemption(rid: str, issuance: str, user: str, coupon: str, at: str) -> str:
        return (
            f'{{"redemption_id":"{rid}","issuance_id":"{issuance}","user_id":"{user}","coupon_id":"{coupon}",'
            f'"order_id":null,"redeemed_at":"{at}","discount":1.00,"currency":"EUR"}}'
        )

    # on DAY: I1 gave U00000001 CPN0101, I2 gave U00000002 nothing (control), I6 gave U00000003 CPN0201
    t = "2026-11-28T13:00:00Z"
    with (landing / DAY.isoformat() / "redemptions.jsonl").open("a", encoding="utf-8") as f:
        for line in (
            redemption("R5", "I1", "U00000001", "CPN0201", t),  # line 4: the wrong coupon
            redemption("R6", "I2", "U00000002", "CPN0101", t),  # line 5: a control issuance
            redemption("R7", "I6", "U00000001", "CPN0201", t),  # line 6: another user
            redemption("R8", "I6", "U00000003", "CPN0201", t),  # line 7: as issued
        ):
            f.write(line + "\n")
    res = cleanse_day(spark, lake, fixture_cfg, DAY)
    assert quarantined(lake, DAY) == EXPECTED_QUARANTINE | {
        ("redemptions", 4, "coupon_mismatch"),
        ("redemptions", 5, "control_issuance"),
        ("redemptions", 6, "user_mismatch"),
    }
    r = res.sources["redemptions"]
    assert (r.records_read, r.accepted, r.quarantined, r.reconciled) == (7, 2, 5, True)
    assert sorted(x.redemption_id for x in lake.read("redemptions").collect()) == ["R1", "R8"]
    details = {
        x.position: x.detail
        for x in lake.read("quarantine").where("source = 'redemptions' AND position >= 4").collect()
    }
    assert details == {
        4: "coupon_id: CPN0201, but issuance_id I1 has CPN0101",
        5: "issuance_id: I2 has no coupon_id",
        6: "user_id: U00000001, but issuance_id I6 has U00000003",
    }

    # on NEXT, the issuances of DAY are found in silver
    t = "2026-11-29T09:00:00Z"
    write_next_day(
        landing,
        redemptions=[
            redemption("R9", "I1", "U00000002", "CPN0101", t),  # line 1: another user
            redemption("R10", "I2", "U00000002", "CPN0101", t),  # line 2: a control issuance
            redemption("R11", "I1", "U00000001", "CPN0201", t),  # line 3: the wrong coupon
            redemption("R12", "I6", "U00000003", "CPN0201", t),  # line 4: as issued (R8 redeemed it too)
        ],
    )
    res = cleanse_day(spark, lake, fixture_cfg, NEXT)
    assert quarantined(lake, NEXT) == {
        ("redemptions", 1, "user_mismatch"),
        ("redemptions", 2, "control_issuance"),
        ("redemptions", 3, "coupon_mismatch"),
    }
    r = res.sources["redemptions"]
    assert (r.records_read, r.accepted, r.quarantined, r.reconciled) == (4, 1, 3, True)
    assert [x.redemption_id for x in lake.read("redemptions", where={"ingest_date": NEXT}).collect()] == ["R12"]
