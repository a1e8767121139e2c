"""Type-2 dimensions: one row per version of a record, in force over ``[valid_from, valid_to)``.

Silver ``users`` is one. The shop exports its whole user table every day; kept as a snapshot per ingest date,
that is 300M rows a day at 300M shoppers, nearly all of them copies of the day before. As a type-2 dimension
an ingest date adds a row only for a user whose tracked attributes changed (or who is new) and closes that
user's previous row (its ``valid_to`` becomes the date), in one Delta merge (:func:`merge_source`,
:meth:`coupon_spark.lake.Lake.merge`).

Dates are ingest dates: a version loaded on D is the record as the export of D showed it, until the export
that changed it. A point-in-time read is a range filter (:func:`in_force`); the snapshot the old layout held
for D is ``in_force(dim, D)``, for the shop's exports where a record, once exported, is in every later export.
A record missing from an export (its line quarantined, say) keeps its version: a user is not deleted by
absence.

The merge of a date is idempotent and order-free: it rebuilds the history of every record the date's export
holds, or that an earlier load of the same date wrote, from the versions of the other dates plus the date's
own, and changes only the rows that differ. A rerun of the same export writes nothing new; a corrected export
of an earlier date takes its place in the history (its effect lasts until the next recorded change: the days
between two changes are not kept, only the changes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

VALID_FROM = "valid_from"
VALID_TO = "valid_to"
OP = "_op"
"""The merge source's column: ``upsert`` (insert, or replace the row with the same key and ``valid_from``) or
``delete``."""


def in_force(dim: DataFrame, on: dt.date | Column) -> DataFrame:
    """The versions of ``dim`` in force on ``on`` (a date, or a date column of ``dim`` after a join): at most
    one row per record."""
    day = F.lit(on) if isinstance(on, dt.date) else on
    return dim.where((F.col(VALID_FROM) <= day) & (F.col(VALID_TO).isNull() | (F.col(VALID_TO) > day)))


def versions(rows: DataFrame, key: str, tracked: Sequence[str]) -> DataFrame:
    """The type-2 rows of ``rows`` (candidate versions, at most one per ``key`` and ``valid_from``, without
    ``valid_to``): a candidate whose ``tracked`` columns equal those of the record's previous candidate is no
    change and is dropped (its other columns, an ``updated_at`` say, stay the earlier row's); each row kept is
    in force until the next one's ``valid_from`` (``valid_to`` null: current)."""
    order = Window.partitionBy(key).orderBy(VALID_FROM)
    first = F.lag(F.lit(True)).over(order).isNull()
    same = F.lit(True)
    for c in tracked:
        same = same & F.lag(F.col(c)).over(order).eqNullSafe(F.col(c))
    kept = rows.withColumn("_kept", first | ~same).where(F.col("_kept")).drop("_kept")
    return kept.withColumn(VALID_TO, F.lead(VALID_FROM).over(order))


def from_snapshots(
    snapshots: DataFrame, key: str, tracked: Sequence[str], date_column: str = "ingest_date"
) -> DataFrame:
    """The type-2 rows of a dimension kept as one snapshot per ``date_column`` (the layout of silver ``users``
    before: a lake written by an earlier release): each record's snapshots are its candidate versions."""
    return versions(snapshots.withColumnRenamed(date_column, VALID_FROM), key, tracked)


def is_snapshot_layout(dim: DataFrame) -> bool:
    """True for a dimension table still in the snapshot layout (an ``ingest_date`` column, no ``valid_from``)."""
    return VALID_FROM not in dim.columns and "ingest_date" in dim.columns


def merge_source(
    current: DataFrame | None, day_rows: DataFrame, day: dt.date, key: str, tracked: Sequence[str]
) -> DataFrame:
    """The rows a merge applies to make ``current`` (the dimension; None when it has no table yet) hold
    ``day_rows`` (one row per ``key``, the columns of a version without ``valid_from`` / ``valid_to``) as the
    export of ``day``: every column of the dimension, plus :data:`OP`. Matching is on (``key``,
    ``valid_from``). The history of a record whose row is a change against its version in force on ``day`` (or
    that an earlier load of ``day`` wrote) is rebuilt from its versions of other dates plus the day's row
    (:func:`versions`); only the rows that differ from the current ones are in the source, so a rerun of the
    same export yields none."""
    new = day_rows.withColumn(VALID_FROM, F.lit(day))
    if current is None:
        return versions(new, key, tracked).withColumn(OP, F.lit("upsert"))
    columns = current.columns
    new = new.select(*[c for c in columns if c != VALID_TO])
    # a record whose row equals its version in force on the day, with no row of an earlier load of the day, keeps
    # its history as it is (the day's candidate is no change against that version): only the others are rebuilt
    prev = in_force(current, day).select(key, *[F.col(c).alias(f"_p_{c}") for c in tracked])
    same = F.lit(True)
    for c in tracked:
        same = same & F.col(c).eqNullSafe(F.col(f"_p_{c}"))
    unchanged = new.join(prev, key).where(same).select(key)
    affected = (
        new.select(key)
        .join(unchanged, key, "left_anti")
        .unionByName(current.where(F.col(VALID_FROM) == F.lit(day)).select(key))
        .distinct()
    )
    new = new.join(affected, key, "left_semi")
    old = current.join(affected, key, "left_semi")
    rebuilt = versions(old.where(F.col(VALID_FROM) != F.lit(day)).drop(VALID_TO).unionByName(new), key, tracked).select(
        *columns
    )
    rest = [c for c in columns if c not in (key, VALID_FROM)]
    both = old.select(key, VALID_FROM, F.struct(*rest).alias("_o")).join(
        rebuilt.select(key, VALID_FROM, F.struct(*rest).alias("_n")), [key, VALID_FROM], "full"
    )
    upserts = both.where(F.col("_n").isNotNull() & (F.col("_o").isNull() | ~F.col("_o").eqNullSafe(F.col("_n"))))
    deletes = both.where(F.col("_n").isNull())
    return (
        upserts.select(key, VALID_FROM, "_n.*", F.lit("upsert").alias(OP))
        .unionByName(deletes.select(key, VALID_FROM, "_o.*", F.lit("delete").alias(OP)))
        .select(*columns, OP)
    )
