"""The lake's contract on both Delta backends, and the bridge's own guarantees, against real Spark.

Tests that take ``any_lake`` run once on the bridge (Spark's Parquet writer + delta-rs commits) and once on the
native backend (the Delta Spark connector; skipped where ``make setup`` could not fetch its jars): the same
rows, versions, errors and messages. Tests that take ``lake`` prove what only the bridge does (its file layout
and statistics, its commit protocol under a deterministic race, deleting a loser's files itself)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    DecimalType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from coupon_spark.lake import CommitError, Lake, SchemaMismatchError, TableNotFoundError, Txn

SCHEMA = StructType(
    [
        StructField("order_id", LongType()),
        StructField("user_id", StringType()),
        StructField("day", DateType()),
        StructField("amount", DecimalType(12, 2)),
        StructField("score", DoubleType()),
        StructField("ts", TimestampType()),
    ]
)
UTC = dt.timezone.utc
D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)


@pytest.fixture()
def lake(bridge_lake: Lake) -> Lake:
    """This module's ``lake`` is the bridge's, for the tests of its own files and commits; the lake contract's
    tests take ``any_lake`` and run on both backends."""
    return bridge_lake


def rows(day: dt.date, ids: range, user: str = "u") -> list[tuple]:
    return [
        (i, f"{user}{i % 3}", day, Decimal(f"{i}.25"), i / 4, dt.datetime(2026, 11, 1, i % 24, tzinfo=UTC)) for i in ids
    ]


def frame(spark: SparkSession, data: list[tuple]):
    return spark.createDataFrame(data, SCHEMA)


def data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet")}


def log_files(lake: Lake, table: str) -> set[str]:
    return set(DeltaTable(lake.location(table)).file_uris())


def test_round_trip_exact_rows(spark, any_lake):
    lake = any_lake
    df = frame(spark, rows(D1, range(10)) + [(99, None, None, None, None, None)])
    res = lake.write(df, "orders")
    assert (res.version, res.num_rows, res.skipped) == (0, 11, False)
    assert_df_equality(lake.read("orders"), df, ignore_row_order=True)


def test_partitioned_round_trip_with_hostile_partition_values(spark, any_lake):
    lake = any_lake
    odd = ["a/b=c", "sp ace", "pct%25", "quote'\"", "#hash?", "ünï"]
    data = [(i, v, D1, Decimal("1.00"), 0.5, None) for i, v in enumerate(odd)] + [(9, None, None, None, None, None)]
    df = frame(spark, data)
    lake.write(df, "t", partition_by=["user_id", "day"])
    assert_df_equality(lake.read("t"), df, ignore_row_order=True)
    got = lake.read("t", where={"user_id": "a/b=c"}).collect()
    assert [r.order_id for r in got] == [0]
    assert [r.order_id for r in lake.read("t", where={"user_id": None}).collect()] == [9]


def test_overwrite_returns_only_new_rows(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D1, range(5))), "t")
    new = frame(spark, rows(D2, range(100, 103)))
    res = lake.write(new, "t", mode="overwrite")
    assert res.version == 1 and res.removed_files >= 1
    assert_df_equality(lake.read("t"), new, ignore_row_order=True)


def test_replace_partitions_leaves_other_partitions_alone(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D1, range(0, 5)) + rows(D2, range(5, 9))), "t", partition_by=["day"])
    replacement = frame(spark, rows(D2, range(50, 52)) + rows(D3, range(60, 61)))
    res = lake.write(replacement, "t", mode="replace_partitions")
    assert res.num_rows == 3
    got = sorted(r.order_id for r in lake.read("t").collect())
    assert got == [0, 1, 2, 3, 4, 50, 51, 60]


def test_replace_where_replaces_matching_partitions_and_refuses_rows_outside(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D1, range(0, 3)) + rows(D2, range(3, 6))), "t", partition_by=["day"])
    lake.write(frame(spark, rows(D1, range(10, 11))), "t", mode="overwrite", replace_where={"day": D1})
    assert sorted(r.order_id for r in lake.read("t").collect()) == [3, 4, 5, 10]
    before = lake.version("t")
    with pytest.raises(ValueError, match="other partitions"):
        lake.write(frame(spark, rows(D3, range(20, 21))), "t", mode="overwrite", replace_where={"day": D1})
    assert lake.version("t") == before


def test_time_travel_to_each_version_and_timestamp(spark, any_lake):
    lake = any_lake
    expected: list[list[int]] = []
    stamps: list[dt.datetime] = []
    for v, ids in enumerate([range(0, 2), range(2, 5), range(5, 6)]):
        mode = "overwrite" if v == 2 else "append"
        lake.write(frame(spark, rows(D1, ids)), "t", mode=mode)
        prev = expected[-1] if expected and mode == "append" else []
        expected.append(sorted(prev + list(ids)))
        time.sleep(0.05)
        stamps.append(dt.datetime.now(UTC))
        time.sleep(0.05)
    for v, want in enumerate(expected):
        assert sorted(r.order_id for r in lake.read("t", version=v).collect()) == want
        assert sorted(r.order_id for r in lake.read("t", timestamp=stamps[v]).collect()) == want
    assert [h["version"] for h in lake.history("t")] == [2, 1, 0]
    with pytest.raises(LookupError):
        lake.read("t", version=7)


def test_schema_mismatch_is_refused_and_table_stays_readable(spark, any_lake):
    lake = any_lake
    good = frame(spark, rows(D1, range(3)))
    lake.write(good, "t")
    before_files = data_files(Path(lake.location("t")))
    wrong_type = good.withColumn("order_id", F.col("order_id").cast("string"))
    with pytest.raises(SchemaMismatchError, match=r"order_id: table has long, DataFrame has string"):
        lake.write(wrong_type, "t")
    with pytest.raises(SchemaMismatchError, match=r"missing columns: score \(double\)"):
        lake.write(good.drop("score"), "t")
    with pytest.raises(SchemaMismatchError, match=r"extra columns: note \(string\).*add_columns"):
        lake.write(good.withColumn("note", F.lit("x")), "t")
    with pytest.raises(SchemaMismatchError, match="have no type"):
        lake.write(good.withColumn("order_id", F.lit(None)), "t")
    assert lake.version("t") == 0
    assert data_files(Path(lake.location("t"))) == before_files  # refused before any file was written
    assert_df_equality(lake.read("t"), good, ignore_row_order=True)


def test_add_columns_evolves_schema_and_old_rows_read_null(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D1, range(2))), "t")
    extra = frame(spark, rows(D1, range(2, 3))).withColumn("note", F.lit("n"))
    lake.write(extra, "t", schema_mode="add_columns")
    got = {r.order_id: r.note for r in lake.read("t").collect()}
    assert got == {0: None, 1: None, 2: "n"}


def test_overwrite_schema(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D1, range(2))), "t")
    other = spark.createDataFrame([(1, "x")], "k int, v string")
    with pytest.raises(SchemaMismatchError):
        lake.write(other, "t", mode="overwrite")
    lake.write(other, "t", mode="overwrite", schema_mode="overwrite")
    assert_df_equality(lake.read("t"), other)


def test_rerun_with_same_idempotency_key_adds_no_version_and_no_rows(spark, any_lake):
    lake = any_lake
    df = frame(spark, rows(D1, range(4)))
    first = lake.write(df, "t", txn=Txn("cleanse.orders", 20261101))
    again = lake.write(df, "t", txn=Txn("cleanse.orders", 20261101))
    older = lake.write(df, "t", txn=Txn("cleanse.orders", 20261031))
    assert again.skipped and older.skipped
    assert lake.version("t") == first.version == 0
    assert lake.read("t").count() == 4
    nxt = lake.write(df, "t", txn=Txn("cleanse.orders", 20261102))
    assert not nxt.skipped and nxt.version == 1 and lake.read("t").count() == 8
    other_app = lake.write(df, "t", txn=Txn("features", 20261101))
    assert other_app.version == 2


@pytest.mark.parametrize("writer", ["spark", "arrow"])
def test_task_failing_mid_write_leaves_previous_version_and_no_file_behind(spark, lake_cfg, writer):
    """Spark's writer: its committer deletes what the failed job wrote. The pyarrow writer: the files of the
    tasks that ran are invisible (not in the log) and ``vacuum`` deletes them."""
    from coupon_spark.lake.bridge import BridgeBackend

    lake = Lake(spark, lake_cfg, BridgeBackend(spark, target_file_rows=1000, writer=writer))
    lake.write(frame(spark, rows(D1, range(3))), "t")
    root = Path(lake.location("t"))
    committed = data_files(root)

    @F.udf("double")
    def explode_at_900(i):
        if i == 900:
            raise RuntimeError("boom at row 900")
        return i / 4

    bad = spark.range(0, 1000, numPartitions=4).select(
        F.col("id").alias("order_id"),
        F.lit("u").alias("user_id"),
        F.lit(D2).alias("day"),
        F.lit(Decimal("1.00")).cast("decimal(12,2)").alias("amount"),
        explode_at_900("id").alias("score"),
        F.lit(None).cast("timestamp").alias("ts"),
    )
    with pytest.raises(CommitError, match=r"writing table 't' \(.*/t\) failed \(\w+\): .*boom at row 900"):
        lake.write(bad, "t")
    assert lake.version("t") == 0
    assert sorted(r.order_id for r in lake.read("t").collect()) == [0, 1, 2]
    orphans = data_files(root) - committed
    if writer == "spark":  # no file, and no staging folder either
        assert orphans == set()
        assert {p.name for p in root.iterdir()} == {"_delta_log", *(f.split("/")[0] for f in committed)}
        return
    assert orphans, "the tasks that ran before the failure wrote files (invisible: not in the log)"
    removed = lake.vacuum("t", retention_hours=0)
    assert len(removed) == len(orphans)
    assert data_files(root) == committed
    assert lake.vacuum("t", retention_hours=0) == []  # not the files the first vacuum deleted, again


def test_a_failed_commit_names_the_table(spark, lake, monkeypatch):
    """A commit that delta-rs refuses (here: a concurrent writer won) is reported with the table's name and
    location, the original error chained; the table stays where it was."""
    from deltalake.exceptions import CommitFailedError

    lake.write(frame(spark, rows(D1, range(3))), "orders", partition_by=["day"])

    def conflict(self, *args, **kwargs):
        raise CommitFailedError("Transaction failed: a concurrent transaction deleted the same data")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", conflict)
    with pytest.raises(CommitError) as err:
        lake.write(frame(spark, rows(D2, range(3))), "orders")
    assert str(err.value) == (
        f"writing table 'orders' ({lake.location('orders')}) failed (CommitFailedError): Transaction failed: a "
        "concurrent transaction deleted the same data"
    )
    assert isinstance(err.value.__cause__, CommitFailedError)
    assert err.value.exit_code == 1
    monkeypatch.undo()
    assert lake.version("orders") == 0


def test_not_null_column_with_nulls_is_refused_by_the_lake_and_leaves_no_file(spark, lake):
    strict = StructType([StructField("k", LongType(), nullable=False), StructField("v", StringType())])
    lake.write(spark.createDataFrame([(1, "a")], strict), "t")
    before = data_files(Path(lake.location("t")))
    loose = spark.createDataFrame([(None, "b"), (2, "c"), (None, "d")] + [(i, "e") for i in range(3, 40)],
                                  "k long, v string").repartition(3)  # fmt: skip
    with pytest.raises(SchemaMismatchError, match=r"NOT NULL columns of the table have nulls .*: k \(2 rows\)"):
        lake.write(loose, "t")
    assert lake.version("t") == 0
    assert data_files(Path(lake.location("t"))) == before  # the tasks that had rows to write left nothing


# ---- two writers, one date -----------------------------------------------------------------------------------


def race(monkeypatch, other) -> None:
    """Run ``other()`` (a complete write by a second writer) after this write has read the table and written
    its files, before it commits: the interleaving of two jobs started at the same time, made deterministic."""
    from coupon_spark.lake.bridge import BridgeBackend

    original = BridgeBackend._write_files
    state = {"raced": False}

    def run_then_let_the_other_commit(self, *args):
        out = original(self, *args)
        if not state["raced"]:
            state["raced"] = True
            other()
        return out

    monkeypatch.setattr(BridgeBackend, "_write_files", run_then_let_the_other_commit)


def assert_no_orphans(lake: Lake, table: str, before: set[str]) -> None:
    """Every data file is one the table had before the race (the replaced ones stay until a vacuum) or one the
    log refers to now: the writer that did not commit left nothing behind."""
    root = Path(lake.location(table))
    committed = {str(Path(u.removeprefix("file://")).relative_to(root)) for u in log_files(lake, table)}
    assert data_files(root) - before == committed - before


@pytest.mark.parametrize("date_exists", [False, True], ids=["new date", "existing date"])
def test_two_replaces_of_one_date_never_double_it(spark, lake, monkeypatch, date_exists):
    from coupon_spark.lake import ConcurrentWriteError

    lake.write(frame(spark, rows(D1, range(4))), "orders", partition_by=["day"])
    if date_exists:
        lake.write(frame(spark, rows(D2, range(50, 52))), "orders", mode="replace_partitions", partition_by=["day"])
    version = lake.version("orders")
    day2 = frame(spark, rows(D2, range(10, 15)))
    before = data_files(Path(lake.location("orders")))
    race(monkeypatch, lambda: lake.write(day2, "orders", mode="replace_partitions", partition_by=["day"]))
    with pytest.raises(ConcurrentWriteError, match="another writer replaced or added to the same partitions") as err:
        lake.write(day2, "orders", mode="replace_partitions", partition_by=["day"])
    assert err.value.exit_code == 75 and "Rerun the stage" in str(err.value)
    assert lake.version("orders") == version + 1  # the other writer's commit only
    got = lake.read("orders", where={"day": D2}).toPandas()
    assert sorted(got["order_id"]) == list(range(10, 15))  # once, not twice
    assert lake.read("orders", where={"day": D1}).count() == 4
    assert_no_orphans(lake, "orders", before)
    monkeypatch.undo()
    lake.write(day2, "orders", mode="replace_partitions", partition_by=["day"])  # the rerun replaces the date
    assert lake.read("orders", where={"day": D2}).count() == 5


def test_a_replace_lands_on_top_of_a_writer_of_other_partitions(spark, lake, monkeypatch):
    lake.write(frame(spark, rows(D1, range(4))), "orders", partition_by=["day"])
    day3 = frame(spark, rows(D3, range(20, 23)))
    before = data_files(Path(lake.location("orders")))
    d1_files = len(before)
    race(monkeypatch, lambda: lake.write(day3, "orders", mode="append"))
    res = lake.write(frame(spark, rows(D1, range(30, 32))), "orders", mode="replace_partitions", partition_by=["day"])
    assert (res.version, res.removed_files) == (2, d1_files)
    counts = lake.read("orders").groupBy("day").count().toPandas().set_index("day")["count"].to_dict()
    assert counts == {D1: 2, D3: 3}
    assert_no_orphans(lake, "orders", before)


def test_a_run_the_other_writer_committed_is_skipped_not_doubled(spark, lake, monkeypatch):
    lake.write(frame(spark, rows(D1, range(4))), "orders", partition_by=["day"])
    day2 = frame(spark, rows(D2, range(10, 15)))
    key = Txn("cleanse", 20261102)
    before = data_files(Path(lake.location("orders")))
    race(monkeypatch, lambda: lake.write(day2, "orders", mode="append", txn=key))
    res = lake.write(day2, "orders", mode="append", txn=key)
    assert res.skipped and res.version == 1
    assert lake.read("orders", where={"day": D2}).count() == 5
    assert_no_orphans(lake, "orders", before)


@pytest.mark.parametrize("date_exists", [False, True], ids=["new date", "existing date"])
def test_writers_in_two_threads_leave_one_copy_of_the_date(spark, any_lake, date_exists):
    lake = any_lake
    import threading

    from coupon_spark.lake import ConcurrentWriteError

    lake.write(frame(spark, rows(D1, range(4))), "orders", partition_by=["day"])
    if date_exists:
        lake.write(frame(spark, rows(D2, range(50, 52))), "orders", mode="replace_partitions", partition_by=["day"])
    day2 = frame(spark, rows(D2, range(10, 40))).repartition(2)
    outcomes: list[str] = []
    before = data_files(Path(lake.location("orders")))

    def writer() -> None:
        try:
            lake.write(day2, "orders", mode="replace_partitions", partition_by=["day"])
            outcomes.append("committed")
        except ConcurrentWriteError:
            outcomes.append("lost the race")

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "committed" in outcomes and len(outcomes) == 2  # whatever the interleaving
    assert lake.read("orders", where={"day": D2}).count() == 30
    if lake.backend.name == "native":  # Delta leaves a loser's files outside the log; vacuum removes them
        lake.vacuum("orders", retention_hours=0)
        before = data_files(Path(lake.location("orders"))) & before
    assert_no_orphans(lake, "orders", before)


def test_empty_dataframe_creates_an_empty_table_with_its_schema(spark, any_lake):
    lake = any_lake
    res = lake.write(frame(spark, []), "t", partition_by=["day"])
    assert (res.version, res.num_files) == (0, 0)
    back = lake.read("t")
    assert back.count() == 0 and back.schema == SCHEMA


def test_missing_table_is_a_clear_error(any_lake):
    lake = any_lake
    with pytest.raises(TableNotFoundError, match="no Delta table"):
        lake.read("nope")
    assert not lake.exists("nope")
    # one of the pipeline's tables: the error also says which stage builds it
    with pytest.raises(TableNotFoundError) as err:
        lake.version("training_examples")
    assert str(err.value) == (
        f"no Delta table at {lake.location('training_examples')}: table 'training_examples' is not built yet; "
        "run `coupon-spark features` for the date first"
    )


def test_file_statistics_are_exact(spark, lake):
    data = rows(D1, range(7)) + [(100, None, D1, None, None, None)]
    lake.write(frame(spark, data).coalesce(1), "t", partition_by=["day"])
    actions = pa.table(DeltaTable(lake.location("t")).get_add_actions(flatten=True)).to_pylist()
    assert len(actions) == 1
    a = actions[0]
    assert a["num_records"] == 8
    assert (a["min.order_id"], a["max.order_id"]) == (0, 100)
    assert (a["min.user_id"], a["max.user_id"]) == ("u0", "u2")
    assert a["null_count.user_id"] == 1 and a["null_count.order_id"] == 0
    assert a.get("min.score") is None  # floats: no min/max (NaN semantics), so no reader can skip wrongly
    # the Parquet file itself holds only the data columns; the partition value lives in the log
    path = DeltaTable(lake.location("t")).file_uris()[0]
    assert "day" not in pq.read_schema(path).names
    assert a["partition.day"] == D1


def test_files_roll_over_at_target_rows(spark, lake):
    res = lake.write(spark.range(0, 2500, numPartitions=1).withColumnRenamed("id", "k"), "t")
    assert res.num_files == 3 and res.num_rows == 2500
    counts = sorted(
        r["num_records"] for r in pa.table(DeltaTable(lake.location("t")).get_add_actions(flatten=True)).to_pylist()
    )
    assert counts == [500, 1000, 1000]


def test_compaction_keeps_rows_and_reduces_files(spark, any_lake):
    lake = any_lake
    for i in range(4):
        lake.write(spark.range(i * 10, i * 10 + 10, numPartitions=2).withColumnRenamed("id", "k"), "t")
    before = lake.info("t")
    assert (before.num_files, before.num_rows, before.partition_columns) == (8, 40, [])
    metrics = lake.compact("t")
    after = lake.info("t")
    assert after.num_files == 1 and after.version == before.version + 1 and after.num_rows == 40
    assert metrics["numFilesRemoved"] == 8
    assert sorted(r.k for r in lake.read("t").collect()) == list(range(40))


def test_bridge_table_read_by_independent_readers(spark, lake):
    df = frame(spark, rows(D1, range(6)) + rows(D2, range(6, 9)))
    lake.write(df, "t", partition_by=["day"])
    lake.write(frame(spark, rows(D2, range(20, 22))), "t", mode="replace_partitions")
    expected = sorted(r.order_id for r in lake.read("t").collect())
    assert expected == [0, 1, 2, 3, 4, 5, 20, 21]

    import duckdb
    import duckdb_extension_delta

    ext = next(Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{ext}'")
    got = con.execute(
        f"SELECT order_id, CAST(amount AS VARCHAR), CAST(day AS VARCHAR) FROM delta_scan('{lake.location('t')}') "
        "ORDER BY order_id"
    ).fetchall()
    assert [g[0] for g in got] == expected
    assert got[0][1:] == ("0.25", "2026-11-01") and got[-1][1:] == ("21.25", "2026-11-02")

    import polars as pl

    pdf = pl.read_delta(lake.location("t")).sort("order_id")
    assert pdf["order_id"].to_list() == expected
    assert str(pdf.schema["amount"]) == "Decimal(precision=12, scale=2)"


def independent_reads(location: str) -> tuple[list[int], list[int]]:
    """The order ids of the table's current version as DuckDB (its delta extension) and polars (delta-rs) read them."""
    import duckdb
    import duckdb_extension_delta
    import polars as pl

    ext = next(Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{ext}'")
    duck = [r[0] for r in con.execute(f"SELECT order_id FROM delta_scan('{location}') ORDER BY order_id").fetchall()]
    return duck, pl.read_delta(location).sort("order_id")["order_id"].to_list()


@pytest.mark.parametrize("first", ["bridge", "native"], ids=["bridge then native", "native then bridge"])
def test_one_table_written_by_both_backends_reads_the_same_everywhere(spark, lake_cfg, first):
    from conftest import backend_lake

    second = "native" if first == "bridge" else "bridge"
    a, b = backend_lake(spark, lake_cfg, first), backend_lake(spark, lake_cfg, second)
    a.write(frame(spark, rows(D1, range(0, 4)) + rows(D2, range(4, 6))), "t", partition_by=["day"])  # v0
    b.write(frame(spark, rows(D3, range(6, 8))), "t", mode="append", txn=Txn("job", 1))  # v1
    a.write(frame(spark, rows(D3, range(6, 8))), "t", mode="append", txn=Txn("job", 1))  # the same run: skipped
    b.write(frame(spark, rows(D2, range(20, 23))), "t", mode="replace_partitions")  # v2
    a.write(frame(spark, rows(D1, range(30, 31))), "t", mode="overwrite", replace_where={"day": D1})  # v3
    want = {0: [0, 1, 2, 3, 4, 5], 1: [0, 1, 2, 3, 4, 5, 6, 7], 2: [0, 1, 2, 3, 6, 7, 20, 21, 22],
            3: [6, 7, 20, 21, 22, 30]}  # fmt: skip
    for lake in (a, b):
        assert lake.version("t") == 3
        for v, ids in want.items():
            assert sorted(r.order_id for r in lake.read("t", version=v).collect()) == ids, (lake.backend.name, v)
    duck, polars = independent_reads(a.location("t"))
    assert duck == polars == want[3]
    with pytest.raises(SchemaMismatchError):  # each refuses what the other would, before writing
        b.write(frame(spark, rows(D1, range(2))).drop("score"), "t")
    assert a.version("t") == 3


def test_native_refuses_nulls_where_the_table_declares_not_null(spark, lake_cfg):
    """A table the bridge created keeps its NOT NULL columns; the native backend's write of nulls into one is
    refused with the lake's error naming the column, and commits nothing."""
    from conftest import backend_lake

    bridge, native = backend_lake(spark, lake_cfg, "bridge"), backend_lake(spark, lake_cfg, "native")
    strict = StructType([StructField("k", LongType(), nullable=False), StructField("v", StringType())])
    bridge.write(spark.createDataFrame([(1, "a")], strict), "t")
    with pytest.raises(SchemaMismatchError, match=r"NOT NULL columns of the table have nulls in the DataFrame: k"):
        native.write(spark.createDataFrame([(None, "b"), (2, "c")], "k long, v string"), "t")
    assert native.version("t") == 0 and native.read("t").count() == 1


def test_native_creates_a_table_with_the_not_null_columns_of_its_data(spark, lake_cfg):
    """Delta's DataFrame writer alone makes every column of a new table nullable; native creates the table with
    the data's schema first (version 0), so its NOT NULL columns stay declared, as Spark, delta-rs and the
    bridge read them, and a later write of nulls is refused by either backend with nothing committed."""
    from conftest import backend_lake

    native, bridge = backend_lake(spark, lake_cfg, "native"), backend_lake(spark, lake_cfg, "bridge")
    strict = StructType(
        [StructField("k", LongType(), nullable=False), StructField("v", StringType()),
         StructField("day", DateType(), nullable=False)]
    )  # fmt: skip
    first = native.write(spark.createDataFrame([(1, "a", D1), (2, None, D2)], strict), "t", partition_by=["day"])
    assert first.version == 1 and first.num_rows == 2
    declared = {"k": False, "v": True, "day": False}
    assert {f.name: f.nullable for f in native.read("t").schema.fields} == declared
    assert {f.name: f.nullable for f in DeltaTable(native.location("t")).schema().fields} == declared
    assert native.info("t").partition_columns == ["day"]
    loose = spark.createDataFrame([(None, "b", D1), (3, "c", D1)], "k long, v string, day date")
    for lake in (native, bridge):
        with pytest.raises(SchemaMismatchError, match=r"NOT NULL columns of the table have nulls .*k"):
            lake.write(loose, "t", mode="append")
    assert native.version("t") == 1 and sorted(r.k for r in bridge.read("t").collect()) == [1, 2]
    again = native.write(loose.where("k IS NOT NULL"), "t", mode="append")  # a nullable DataFrame fits the table
    assert again.version == 2 and native.read("t").count() == 3


def test_analysts_query_tables_by_name_in_spark_sql(spark, lake_cfg):
    """The native session's SQL: a table registered by name over its location, DESCRIBE HISTORY, VERSION AS OF."""
    from conftest import backend_lake

    lake = backend_lake(spark, lake_cfg, "native")
    lake.write(frame(spark, rows(D1, range(3))), "orders", partition_by=["day"])
    lake.write(frame(spark, rows(D2, range(3, 5))), "orders", mode="append")
    spark.sql("CREATE SCHEMA IF NOT EXISTS silver_test")
    spark.sql(f"CREATE TABLE IF NOT EXISTS silver_test.orders USING DELTA LOCATION '{lake.location('orders')}'")
    try:
        assert spark.sql("SELECT count(*) AS n FROM silver_test.orders").first()["n"] == 5
        assert spark.sql("SELECT count(*) AS n FROM silver_test.orders VERSION AS OF 0").first()["n"] == 3
        history = spark.sql("DESCRIBE HISTORY silver_test.orders").select("version", "operation").collect()
        assert [(h.version, h.operation) for h in history] == [(1, "WRITE"), (0, "WRITE")]
    finally:
        spark.sql("DROP TABLE IF EXISTS silver_test.orders")  # the catalog entry only: the files stay
    assert lake.read("orders").count() == 5


def test_log_is_plain_delta_reader1_writer2(spark, lake):
    lake.write(frame(spark, rows(D1, range(2))), "t", partition_by=["day"], txn=Txn("job", 5), description="hello")
    log = Path(lake.location("t")) / "_delta_log" / ("0" * 20 + ".json")
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {next(iter(a)) for a in actions}
    assert {"protocol", "metaData", "add", "txn", "commitInfo"} <= kinds
    proto = next(a["protocol"] for a in actions if "protocol" in a)
    assert (proto["minReaderVersion"], proto["minWriterVersion"]) == (1, 2)
    txn = next(a["txn"] for a in actions if "txn" in a)
    assert (txn["appId"], txn["version"]) == ("job", 5)
    add = next(a["add"] for a in actions if "add" in a)
    assert add["partitionValues"] == {"day": "2026-11-01"}
    assert os.path.exists(Path(lake.location("t")) / add["path"])


def test_partitions_are_listed_from_the_log(spark, any_lake):
    lake = any_lake
    lake.write(frame(spark, rows(D2, range(2)) + rows(D1, range(2, 3))), "t", partition_by=["day"])
    assert lake.partitions("t") == [{"day": D1}, {"day": D2}]
    lake.write(frame(spark, []), "u")
    assert lake.partitions("u") == []


def test_write_leaves_the_session_arrow_batch_size_as_it_was(spark, lake):
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    lake.write(spark.range(0, 10).withColumnRenamed("id", "k"), "t")
    assert spark.conf.get(key) == before


def test_task_writer_splits_partitions_and_rolls_files_over(tmp_path):
    """The bridge task's writer on its own (pyarrow only): 5 rows of partition "a", 1 of "b" and 1 null, at
    most 2 rows a file, give 3 + 1 + 1 files whose rows, names and metadata are checked by hand."""
    from coupon_spark.lake._files import FILE_META_SCHEMA, HIVE_NULL, make_task_writer

    schema = pa.schema([("id", pa.int64(), False), ("p", pa.string())])
    rows = {"id": [1, 2, 3, 4, 5, 6, 7], "p": ["a", "a", "b", "a", None, "a", "a"]}
    write = make_task_writer(
        str(tmp_path), schema.serialize().to_pybytes(), ["p"], 2, "snappy", "w1", row_group_rows=500_000
    )
    batches = [pa.RecordBatch.from_pydict({k: v[:4] for k, v in rows.items()}, schema),
               pa.RecordBatch.from_pydict({k: v[4:] for k, v in rows.items()}, schema)]  # fmt: skip
    (meta,) = list(write(iter(batches)))
    assert meta.schema == FILE_META_SCHEMA
    files = meta.to_pylist()
    by_part: dict[str | None, list[int]] = {}
    for f in files:
        pv = json.loads(f["partition_values"])["p"]
        folder = "p=" + (HIVE_NULL if pv is None else pv)
        assert re.fullmatch(re.escape(folder) + r"/part-\d{5}-w1-[0-9a-f]{12}\.c000\.snappy\.parquet", f["path"])
        ids = pq.read_table(tmp_path / f["path"]).column("id").to_pylist()
        assert f["num_records"] == len(ids) <= 2 and json.loads(f["stats"])["numRecords"] == len(ids)
        by_part.setdefault(pv, []).extend(ids)
    assert by_part == {"a": [1, 2, 4, 6, 7], "b": [3], None: [5]}
    assert len(files) == 5 and len({f["path"] for f in files}) == 5

    # a null in the non-nullable id: nothing more is written, the nulls come back in a row without a path
    bad = pa.RecordBatch.from_pydict(
        {"id": [None, 9], "p": ["a", "a"]}, pa.schema([("id", pa.int64()), ("p", pa.string())])
    )
    refused = make_task_writer(str(tmp_path / "r"), schema.serialize().to_pybytes(), ["p"], 2, "snappy", "w2")
    (out,) = list(refused(iter([bad])))
    assert out.to_pylist() == [
        {
            "path": "",
            "size": 0,
            "partition_values": "{}",
            "num_records": 0,
            "stats": '{"id": 1}',
            "modification_time": 0,
        }
    ]
    assert not (tmp_path / "r").exists()
