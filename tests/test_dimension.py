"""silver ``users`` as a type-2 dimension: the merge of each export, against histories worked out by hand, on
both backends (real Delta tables), and its point-in-time reads against the snapshots the exports were."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from coupon_spark import tables
from coupon_spark.dimension import OP, in_force, merge_source
from coupon_spark.lake import Lake
from coupon_spark.lake.api import SchemaMismatchError
from coupon_spark.schemas import USERS

ROOT = Path(__file__).resolve().parents[1]
D0, D1, D2, D3 = (dt.date(2026, 11, d) for d in (1, 2, 3, 4))
SIGNUP = dt.date(2026, 1, 1)
TRACKED = ("signup_date", "region", "city", "device", "segment")
EXPORT_COLUMNS = [f.name for f in USERS.fields if f.name not in ("valid_from", "valid_to")]


def export(spark: SparkSession, rows: list[tuple[str, str, str]]):  # type: ignore[no-untyped-def]
    """A day's accepted users: (user_id, device, segment); the rest fixed, updated_at the same for all."""
    data = [(u, SIGNUP, "DE", "Berlin", dev, seg, dt.datetime(2026, 10, 1)) for u, dev, seg in rows]
    return spark.createDataFrame(data, "user_id string, signup_date date, region string, city string, "
                                 "device string, segment string, updated_at timestamp")  # fmt: skip


def load(lake: Lake, spark: SparkSession, day: dt.date, rows: list[tuple[str, str, str]]) -> int | None:
    """Merge a day's export as the cleanse does; the number of source rows (None: nothing written)."""
    current = lake.read(tables.USERS) if lake.exists(tables.USERS) else None
    source = merge_source(current, export(spark, rows), day, "user_id", TRACKED).persist()
    n = source.count()
    res = lake.merge(source, tables.USERS)
    source.unpersist()
    return None if res.skipped else n


def history(lake: Lake) -> set[tuple]:
    return {
        (r.user_id, r.device, r.segment, r.valid_from, r.valid_to)
        for r in lake.read(tables.USERS).select("user_id", "device", "segment", "valid_from", "valid_to").collect()
    }


def test_each_export_adds_only_its_changes_and_a_rerun_adds_nothing(spark: SparkSession, any_lake: Lake) -> None:
    lake = any_lake
    assert load(lake, spark, D1, [("u1", "ios", "regular"), ("u2", "web", "vip")]) == 2
    assert history(lake) == {("u1", "ios", "regular", D1, None), ("u2", "web", "vip", D1, None)}
    # D2: u1 moves to android, u2 is unchanged, u3 signs up: u1's row closes, two rows are added
    v = lake.version(tables.USERS)
    assert load(lake, spark, D2, [("u1", "android", "regular"), ("u2", "web", "vip"), ("u3", "web", "new")]) == 3
    want = {
        ("u1", "ios", "regular", D1, D2),
        ("u1", "android", "regular", D2, None),
        ("u2", "web", "vip", D1, None),
        ("u3", "web", "new", D2, None),
    }
    assert history(lake) == want and lake.version(tables.USERS) == v + 1
    # the same export again: no row differs, no commit
    v = lake.version(tables.USERS)
    assert load(lake, spark, D2, [("u1", "android", "regular"), ("u2", "web", "vip"), ("u3", "web", "new")]) is None
    assert history(lake) == want and lake.version(tables.USERS) == v
    # D3 misses u2 (its line was quarantined, say): u2 keeps its version; nothing else changed
    assert load(lake, spark, D3, [("u1", "android", "regular"), ("u3", "web", "new")]) is None
    assert history(lake) == want
    # the point-in-time reads are the exports (u2 from its last export on)
    on = {d: {(r.user_id, r.device) for r in in_force(lake.read(tables.USERS), d).collect()} for d in (D0, D1, D2, D3)}
    assert on == {
        D0: set(),
        D1: {("u1", "ios"), ("u2", "web")},
        D2: {("u1", "android"), ("u2", "web"), ("u3", "web")},
        D3: {("u1", "android"), ("u2", "web"), ("u3", "web")},
    }


def test_a_corrected_or_late_export_takes_its_place_in_the_history(spark: SparkSession, any_lake: Lake) -> None:
    lake = any_lake
    load(lake, spark, D1, [("u1", "ios", "regular")])
    load(lake, spark, D2, [("u1", "android", "regular"), ("u2", "web", "vip")])
    # D2 again, corrected: u1 did not change after all, u2 is "new" not "vip": u1's D2 row goes, u1's D1 row
    # is current again, u2's row is replaced (3 source rows: a delete, an update, an update)
    assert load(lake, spark, D2, [("u1", "ios", "regular"), ("u2", "web", "new")]) == 3
    assert history(lake) == {("u1", "ios", "regular", D1, None), ("u2", "web", "new", D2, None)}
    # an export of an earlier date, loaded late: u1 was on web before D1, u2 already in its D2 state on D0
    assert load(lake, spark, D0, [("u1", "web", "regular"), ("u2", "web", "new")]) == 3
    assert history(lake) == {
        ("u1", "web", "regular", D0, D1),
        ("u1", "ios", "regular", D1, None),
        ("u2", "web", "new", D0, None),  # the D2 row is no change any more: the version starts on D0
    }
    keys = lake.read(tables.USERS).groupBy("user_id", "valid_from").count().where("count > 1").count()
    assert keys == 0


def test_a_merge_source_has_the_tables_columns_and_a_wrong_one_is_refused(spark: SparkSession, any_lake: Lake) -> None:
    lake = any_lake
    load(lake, spark, D1, [("u1", "ios", "regular")])
    source = merge_source(lake.read(tables.USERS), export(spark, [("u1", "web", "x")]), D2, "user_id", TRACKED)
    assert source.columns == [*EXPORT_COLUMNS, "valid_from", "valid_to", OP]
    with pytest.raises(SchemaMismatchError, match="segment"):
        lake.merge(source.drop("segment"), tables.USERS)
    assert history(lake) == {("u1", "ios", "regular", D1, None)}
    with pytest.raises(ValueError, match="type-2 dimension"):
        lake.write(lake.read(tables.USERS), tables.USERS)


def test_a_users_table_in_the_snapshot_layout_is_converted_once(spark: SparkSession, any_lake: Lake) -> None:
    """A lake written by an earlier release keeps a users snapshot per ingest date: the cleanse converts it to the
    type-2 dimension in one commit (the features refuse it with what to run until then)."""
    from coupon_spark import features
    from coupon_spark.cleanse import SOURCES, _convert_snapshots
    from coupon_spark.config import Config

    lake = any_lake
    snaps = [
        export(spark, [("u1", "ios", "regular"), ("u2", "web", "vip")]).withColumn("ingest_date", F.lit(D1)),
        export(spark, [("u1", "android", "regular"), ("u2", "web", "vip")]).withColumn("ingest_date", F.lit(D2)),
        export(spark, [("u1", "android", "regular"), ("u2", "web", "vip"), ("u3", "web", "new")]).withColumn(
            "ingest_date", F.lit(D3)
        ),
    ]
    legacy = snaps[0].unionByName(snaps[1]).unionByName(snaps[2])
    lake.write(legacy, tables.USERS, mode="overwrite", partition_by=["ingest_date"])
    cfg = Config.from_file(ROOT / "conf" / "local.yaml", overrides=[f"lake.root={lake.cfg.root}"])
    for t in tables.SILVER[1:]:  # the other silver tables, empty: the features check the users first
        lake.write(spark.createDataFrame([], t.schema), t, mode="overwrite")
    with pytest.raises(features.MissingInputError, match="snapshot layout of earlier releases: run `coupon-spark"):
        features.build_features(spark, lake, cfg, D3)
    _convert_snapshots(lake, SOURCES["users"])
    assert lake.read(tables.USERS).columns == USERS.fieldNames() and lake.info(tables.USERS).partition_columns == []
    assert history(lake) == {
        ("u1", "ios", "regular", D1, D2),
        ("u1", "android", "regular", D2, None),
        ("u2", "web", "vip", D1, None),
        ("u3", "web", "new", D3, None),
    }
