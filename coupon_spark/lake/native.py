"""The native Delta backend: the Delta Spark connector (delta-spark) does the reading and committing.

Used wherever ``io.delta:delta-spark_4.2_2.13`` is on the classpath (``make setup`` fetches it into ``.jars/``
for the local session; on a cluster ``--packages`` or the platform's Delta runtime). The semantics are those of
:class:`coupon_spark.lake.Lake`, the bridge's, mapped onto Delta's writer options: ``replaceWhere``, dynamic
partition overwrite, ``mergeSchema`` / ``overwriteSchema`` and ``txnAppId`` / ``txnVersion``; and Delta's
errors onto the lake's, with the bridge's messages:

- the schema check runs on the driver before any Spark job (:func:`coupon_spark.lake.bridge.reconcile_schema`);
- rows outside ``replace_where``: ``ValueError``; nulls in a column the table declares NOT NULL:
  :class:`SchemaMismatchError` naming the column (Delta's own checks, during the write, which then commits
  nothing). A table this backend creates keeps the NOT NULL columns of the DataFrame's schema (created first,
  as version 0, then written: Delta's DataFrame writer alone would make every column nullable);
- a conflicting concurrent commit (Delta's optimistic concurrency: a replace of partitions another writer
  added to or replaced since this write read the table): :class:`ConcurrentWriteError`, exit code 75.

One difference stays: a write that fails after its tasks wrote files leaves them in the table folder, outside
the log (invisible to every reader) until ``coupon-spark vacuum`` removes them; the bridge deletes them itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark.errors import one_line
from coupon_spark.lake.api import (
    ConcurrentWriteError,
    PartitionPredicate,
    SchemaMismatchError,
    SchemaMode,
    TableInfo,
    TableNotFoundError,
    Txn,
    WriteMode,
    WriteResult,
    predicate_values,
)

log = logging.getLogger(__name__)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def predicate_sql(where: PartitionPredicate) -> str:
    """A Spark SQL predicate for a partition predicate (``{"d": ["a", "b"]}`` -> ``(`d` IN ('a', 'b'))``)."""
    clauses = []
    for col, vals in predicate_values(where).items():
        non_null = [v for v in vals if v is not None]
        terms = []
        if non_null:
            terms.append(f"`{col}` IN ({', '.join(_sql_literal(v) for v in non_null)})")
        if len(non_null) < len(vals):
            terms.append(f"`{col}` IS NULL")
        clauses.append("(" + " OR ".join(terms) + ")")
    return " AND ".join(clauses) or "true"


def predicate_column(where: PartitionPredicate) -> Any:
    cond = F.lit(True)
    for col, vals in predicate_values(where).items():
        non_null = [v for v in vals if v is not None]
        c = F.col(col).isin(non_null) if non_null else F.lit(False)
        if len(non_null) < len(vals):
            c = c | F.col(col).isNull()
        cond = cond & c
    return cond


class NativeBackend:
    """Delta tables through the Delta Spark connector."""

    name = "native"

    def __init__(self, spark: SparkSession):
        from delta.tables import DeltaTable  # the delta-spark Python API

        self.spark = spark
        self._dt = DeltaTable

    def exists(self, location: str) -> bool:
        return bool(self._dt.isDeltaTable(self.spark, location))

    def _table(self, location: str) -> Any:
        if not self.exists(location):
            raise TableNotFoundError(f"no Delta table at {location}")
        return self._dt.forPath(self.spark, location)

    def write(
        self,
        df: DataFrame,
        location: str,
        mode: WriteMode,
        partition_by: list[str] | None,
        replace_where: PartitionPredicate | None,
        txn: Txn | None,
        schema_mode: SchemaMode,
        description: str | None,
    ) -> WriteResult:
        started = time.perf_counter()
        table = self._log(location) if self.exists(location) else None  # the log, read once a write
        before = int(table.version()) if table is not None else -1
        self._check_schema(df, location, table, partition_by, schema_mode)
        if table is None:
            self._create_with_not_null(df, location, partition_by)
        writer = df.write.format("delta")
        if mode == "append":
            writer = writer.mode("append")
        elif mode == "replace_partitions":
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        else:
            writer = writer.mode("overwrite")
            if replace_where is not None:
                writer = writer.option("replaceWhere", predicate_sql(replace_where))
        if schema_mode == "add_columns":
            writer = writer.option("mergeSchema", "true")
        elif schema_mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if txn is not None:
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
        if description:
            writer = writer.option("userMetadata", description)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        try:
            writer.save(location)
        except Exception as exc:  # Delta's errors become the lake's; others pass through
            err = _lake_error(exc, location, replace_where)
            if err is exc:
                raise
            raise err from exc
        log_after = self._log(location)  # delta-rs: version and the commit's metrics without a Spark job
        after = int(log_after.version())
        if after == before:
            log.info("%s: %s v%s already committed, skipping", location, txn and txn.app_id, txn and txn.version)
            return WriteResult(location, after, skipped=True)
        metrics = log_after.history(1)[0].get("operationMetrics") or {}
        result = WriteResult(
            location,
            after,
            num_files=int(metrics.get("numFiles", 0)),
            num_rows=int(metrics.get("numOutputRows", 0)),
            removed_files=int(metrics.get("numRemovedFiles", 0)),
        )
        log.info("%s (%s, %.1fs, native)", result, mode, time.perf_counter() - started)
        return result

    def merge(self, source: DataFrame, location: str, on: list[str], description: str | None) -> WriteResult:
        """Delta's MERGE (see :meth:`coupon_spark.lake.Lake.merge`): the source is cached and counted first, so
        that an empty one commits nothing; its schema is checked before any data is touched."""
        started = time.perf_counter()
        columns = [c for c in source.columns if c != "_op"]
        source = source.persist()
        try:
            n = source.count()
            table = self._log(location)  # Lake.merge created a missing table from the upserts
            if n == 0:
                return WriteResult(location, int(table.version()), skipped=True)
            self._check_schema(source.select(*columns), location, table, None, "strict")
            cond = " AND ".join(f"t.`{c}` = s.`{c}`" for c in on)
            values: dict[str, str | Column] = {f"`{c}`": f"s.`{c}`" for c in columns}
            merger = (
                self._dt.forPath(self.spark, location)
                .alias("t")
                .merge(source.alias("s"), cond)
                .whenMatchedDelete(condition="s._op = 'delete'")
                .whenMatchedUpdate(condition="s._op = 'upsert'", set=values)
                .whenNotMatchedInsert(condition="s._op = 'upsert'", values=values)
            )
            key = "spark.databricks.delta.commitInfo.userMetadata"
            try:
                if description:
                    self.spark.conf.set(key, description)
                merger.execute()
            except Exception as exc:
                err = _lake_error(exc, location, None)
                if err is exc:
                    raise
                raise err from exc
            finally:
                if description:
                    self.spark.conf.unset(key)
        finally:
            source.unpersist()
        after = self._log(location)
        metrics = after.history(1)[0].get("operationMetrics") or {}
        result = WriteResult(
            location,
            int(after.version()),
            num_files=int(metrics.get("numTargetFilesAdded", 0)),
            num_rows=int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0)),
            removed_files=int(metrics.get("numTargetFilesRemoved", 0)),
        )
        log.info("%s (merge of %d rows, %.1fs, native)", result, n, time.perf_counter() - started)
        return result

    def _create_with_not_null(self, df: DataFrame, location: str, partition_by: list[str] | None) -> None:
        """Create the table from the DataFrame's schema first where that schema has NOT NULL columns.

        Delta's DataFrame writer creates a table with every column nullable (Spark's ``asNullable`` on a
        create); the bridge keeps NOT NULL, and analysts and later writes rely on it. So a new table whose
        data declares NOT NULL columns is created as Delta's docs do it, ``CREATE TABLE`` with the schema
        (version 0, empty), and the data is its first write (version 1). A writer that loses the race to
        create it writes into the other's table."""
        if all(f.nullable for f in df.schema.fields):
            return
        builder = self._dt.createIfNotExists(self.spark).location(location).addColumns(df.schema)
        if partition_by:
            builder = builder.partitionedBy(*partition_by)
        try:
            builder.execute()
        except Exception as exc:
            if not self.exists(location):  # not another writer's create: the lake's error, or the exception
                err = _lake_error(exc, location, None)
                if err is exc:
                    raise
                raise err from exc
            log.info("%s: created by another writer meanwhile (%s)", location, one_line(exc, 120))
        else:
            log.info("%s: created with NOT NULL %s", location, [f.name for f in df.schema.fields if not f.nullable])

    def read(
        self,
        location: str,
        version: int | None,
        timestamp: dt.datetime | str | None,
        where: PartitionPredicate | None,
    ) -> DataFrame:
        if not self.exists(location):
            raise TableNotFoundError(f"no Delta table at {location}")
        reader = self.spark.read.format("delta")
        if timestamp is not None:  # the version current at that time (Delta refuses times after the last commit)
            version = self._version_at(location, timestamp)
        if version is not None:
            latest = self.version(location)
            if not 0 <= version <= latest:
                raise LookupError(f"{location}: no version {version} (latest {latest})")
            reader = reader.option("versionAsOf", version)
        df = reader.load(location)
        return df.where(predicate_column(where)) if where else df

    def _version_at(self, location: str, timestamp: dt.datetime | str) -> int:
        ts = dt.datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        limit = ts.timestamp() * 1000  # delta-rs history: commit times in epoch milliseconds, no Spark job
        done = [int(c["version"]) for c in self._log(location).history() if c["timestamp"] <= limit]
        if not done:
            raise LookupError(f"{location}: no version at or before {ts.isoformat()}")
        return int(max(done))

    def _check_schema(
        self, df: DataFrame, location: str, table: Any, partition_by: list[str] | None, schema_mode: SchemaMode
    ) -> None:
        """The bridge's checks on the same fields, before any Spark job: types Delta cannot store, and against
        the existing table's log (``table``, delta-rs; ``None``: a new table) missing, extra (without
        ``add_columns``) or retyped columns, and another partitioning."""
        from coupon_spark.lake.bridge import delta_fields, delta_schema_of, reconcile_schema

        incoming = delta_fields(delta_schema_of(df, location))
        if table is None or schema_mode == "overwrite":
            return
        reconcile_schema(delta_fields(table.schema()), incoming, schema_mode, location)
        existing = list(table.metadata().partition_columns)
        if partition_by is not None and list(partition_by) != existing:
            raise SchemaMismatchError(
                f"{location}: the table is partitioned by {existing}, the write asks for {list(partition_by)}; "
                "nothing was written"
            )

    def _log(self, location: str) -> Any:
        """The table's log as delta-rs reads it: its version and metadata in milliseconds, where the
        connector's ``history()`` / ``detail()`` each run a Spark job (5-10 s a write on 2 cores)."""
        from deltalake import DeltaTable as LogReader

        if not self.exists(location):
            raise TableNotFoundError(f"no Delta table at {location}")
        return LogReader(location)

    def version(self, location: str) -> int:
        return int(self._log(location).version())

    def partitions(self, location: str) -> list[dict[str, Any]]:
        from coupon_spark.lake.bridge import partitions_in_log

        return partitions_in_log(self._log(location))  # the add actions: no Spark job

    def files(self, location: str) -> list[tuple[str, dict[str, Any]]]:
        from coupon_spark.lake.bridge import files_in_log

        return files_in_log(self._log(location))

    def history(self, location: str, limit: int | None) -> list[dict[str, Any]]:
        hist = self._table(location).history(limit) if limit else self._table(location).history()
        return [r.asDict(recursive=True) for r in hist.collect()]

    def info(self, location: str) -> TableInfo:
        """From the log through delta-rs, as the bridge: the rows too (the files' statistics), no Spark job."""
        from coupon_spark.lake.bridge import info_in_log

        return info_in_log(self._log(location), location)

    def compact(self, location: str, where: PartitionPredicate | None, target_file_rows: int) -> dict[str, Any]:
        opt = self._table(location).optimize()
        if where:
            opt = opt.where(predicate_sql(where))
        rows = opt.executeCompaction().collect()
        out = rows[0].asDict(recursive=True) if rows else {}
        return {**out, **(out.get("metrics") or {})}  # numFilesAdded / numFilesRemoved at the top, as the bridge

    def vacuum(self, location: str, retention_hours: int, dry_run: bool) -> list[str]:
        self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        path = location.replace("`", "``")
        sql = f"VACUUM delta.`{path}` RETAIN {int(retention_hours)} HOURS" + (" DRY RUN" if dry_run else "")
        return [r[0] for r in self.spark.sql(sql).collect()]


def _lake_error(exc: Exception, location: str, replace_where: PartitionPredicate | None) -> Exception:
    """The lake's error for one of Delta's (the exception itself when it is none of those below)."""
    from delta.exceptions import DeltaConcurrentModificationException

    text = str(exc)
    if isinstance(exc, DeltaConcurrentModificationException) or "DELTA_CONCURRENT" in text:
        return ConcurrentWriteError(
            f"{location}: another writer replaced or added to the same partitions while this write ran; nothing "
            "was committed (its data files stay outside the log until `coupon-spark vacuum`). Rerun the stage: it "
            f"replaces the date (or skips it when the other writer committed the same run). Delta: {one_line(exc, 300)}"
        )
    if "DELTA_REPLACE_WHERE_MISMATCH" in text:
        return ValueError(
            f"{location}: replace_where={replace_where} but the data has rows in other partitions; nothing was "
            "committed"
        )
    if "DELTA_NOT_NULL_CONSTRAINT_VIOLATED" in text or "NOT NULL constraint violated" in text:
        column = re.search(r"column: ([^.\s]+)", text)
        return SchemaMismatchError(
            f"{location}: NOT NULL columns of the table have nulls in the DataFrame: "
            f"{column.group(1) if column else '(see below)'}; nothing was written (fill or filter them first). "
            f"Delta: {one_line(exc, 300)}"
        )
    return exc
