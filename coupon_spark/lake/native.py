"""The native Delta backend: the Delta Spark connector (delta-spark) does the reading and committing.

Used wherever ``io.delta:delta-spark_4.2_2.13`` is on the classpath (a cluster, Databricks). The semantics are
those of :class:`coupon_spark.lake.Lake`, mapped onto Delta's writer options: ``replaceWhere``, dynamic
partition overwrite, ``mergeSchema`` / ``overwriteSchema`` and ``txnAppId`` / ``txnVersion``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from coupon_spark.lake.api import (
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
        before = self.version(location) if self.exists(location) else -1
        if before >= 0 and schema_mode != "overwrite":
            table_schema = self.spark.read.format("delta").load(location).schema
            have = {f.name: f.dataType for f in df.schema.fields}
            missing = [f.name for f in table_schema.fields if f.name not in have]
            wrong = [
                f"{f.name}: table has {f.dataType.simpleString()}, DataFrame has {have[f.name].simpleString()}"
                for f in table_schema.fields
                if f.name in have and have[f.name] != f.dataType
            ]
            if missing or wrong:
                raise SchemaMismatchError(
                    f"{location}: the DataFrame does not match the Delta table's schema; nothing was written. "
                    f"missing columns: {missing}; type mismatch: {wrong}"
                )
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
        writer.save(location)
        after = self.version(location)
        if after == before:
            return WriteResult(location, after, skipped=True)
        last = self.history(location, 1)[0]
        metrics = last.get("operationMetrics") or {}
        return WriteResult(
            location,
            after,
            num_files=int(metrics.get("numFiles", 0)),
            num_rows=int(metrics.get("numOutputRows", 0)),
            removed_files=int(metrics.get("numRemovedFiles", 0)),
        )

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
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if timestamp is not None:
            ts = timestamp.isoformat() if isinstance(timestamp, dt.datetime) else timestamp
            reader = reader.option("timestampAsOf", ts)
        df = reader.load(location)
        return df.where(predicate_column(where)) if where else df

    def version(self, location: str) -> int:
        return int(self._table(location).history(1).collect()[0]["version"])

    def partitions(self, location: str) -> list[dict[str, Any]]:
        cols = list(self._table(location).detail().collect()[0]["partitionColumns"] or [])
        if not cols:
            return []
        rows = self.spark.read.format("delta").load(location).select(*cols).distinct().orderBy(*cols).collect()
        return [r.asDict() for r in rows]

    def history(self, location: str, limit: int | None) -> list[dict[str, Any]]:
        hist = self._table(location).history(limit) if limit else self._table(location).history()
        return [r.asDict(recursive=True) for r in hist.collect()]

    def info(self, location: str) -> TableInfo:
        d = self._table(location).detail().collect()[0].asDict(recursive=True)
        return TableInfo(
            location=location,
            version=self.version(location),
            num_files=int(d.get("numFiles") or 0),
            num_rows=None,
            partition_columns=list(d.get("partitionColumns") or []),
            schema=self.spark.read.format("delta").load(location).schema.json(),
        )

    def compact(self, location: str, where: PartitionPredicate | None, target_file_rows: int) -> dict[str, Any]:
        opt = self._table(location).optimize()
        if where:
            opt = opt.where(predicate_sql(where))
        rows = opt.executeCompaction().collect()
        return rows[0].asDict(recursive=True) if rows else {}

    def vacuum(self, location: str, retention_hours: int, dry_run: bool) -> list[str]:
        self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        path = location.replace("`", "``")
        sql = f"VACUUM delta.`{path}` RETAIN {int(retention_hours)} HOURS" + (" DRY RUN" if dry_run else "")
        return [r[0] for r in self.spark.sql(sql).collect()]
