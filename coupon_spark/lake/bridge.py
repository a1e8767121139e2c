"""The jar-less Delta backend: Spark tasks write Parquet with pyarrow, the driver commits once with delta-rs.

Why: the Delta Spark connector is a JVM jar fetched from a Maven repository, which many laptops and build
machines cannot reach. The tables this backend writes are plain Delta (reader 1 / writer 2), readable by
Spark + Delta, Databricks, Trino, DuckDB and polars.

How a write goes:
1. The DataFrame's schema is checked against the table's *before* anything is written (delta-rs does not
   check a commit's schema, and a wrong one corrupts the table).
2. ``mapInArrow`` tasks write Parquet data files (hive-style partition folders, unique file names) and
   return one metadata row per file: path, size, partition values, row count, statistics.
3. The driver turns those rows into add actions (and remove actions for the files being replaced) and
   makes a single delta-rs commit, carrying the idempotency key as a Delta app transaction.
A task or job that fails never reaches step 3: the files it wrote are invisible (not in the log) and
``vacuum`` deletes them.

Reads never list directories: the snapshot's add actions give the file list (pruned by partition values),
and Spark reads exactly those files with the Delta schema.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import TableNotFoundError as DeltaRsTableNotFound
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    Transaction,
    create_table_with_add_actions,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from coupon_spark.lake._files import (
    FILE_META_DDL,
    HIVE_NULL,
    footer_stats,
    make_task_writer,
    partition_value_to_str,
)
from coupon_spark.lake.api import (
    ConcurrentWriteError,
    PartitionPredicate,
    SchemaMismatchError,
    SchemaMode,
    TableInfo,
    TableNotFoundError,
    Txn,
    UnsupportedTableError,
    WriteMode,
    WriteResult,
    predicate_values,
)
from coupon_spark.storage import filesystem_for

log = logging.getLogger(__name__)

_PARTITION_TYPES = {"string", "date", "long", "integer", "short", "byte", "boolean"}
_COMMIT_ATTEMPTS = 20


@contextlib.contextmanager
def _session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set SQL settings for the duration of a block, then put back what was there."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, old in before.items():
            if old is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, old)


def _partition_values(folder: str, parts: list[str]) -> dict[str, str | None]:
    """Delta partition values of a Hive-style folder Spark wrote (``day=2026-11-01/region=a%2Fb``)."""
    out: dict[str, str | None] = {}
    for piece in folder.split("/") if folder else []:
        name, _, value = piece.partition("=")
        out[unquote(name)] = None if value == HIVE_NULL else unquote(value)
    missing = [c for c in parts if c not in out]
    if missing:
        raise RuntimeError(f"Spark wrote a file outside the partition folders of {missing}: {folder!r}")
    return {c: out[c] for c in parts}


def _delete_files(location: str, files: list[dict[str, Any]]) -> None:
    """Delete the data files of a write that did not commit (best effort: ``vacuum`` removes what is left)."""
    fs, base = filesystem_for(location)
    for f in files:
        try:
            fs.delete_file(f"{base.rstrip('/')}/{f['path']}")
        except OSError as exc:  # pragma: no cover - a file system hiccup: vacuum removes it later
            log.warning("%s: could not delete uncommitted file %s (%s); vacuum removes it", location, f["path"], exc)


def delta_fields(schema: DeltaSchema) -> list[dict[str, Any]]:
    return list(json.loads(schema.to_json())["fields"])


def _type_str(t: Any) -> str:
    return t if isinstance(t, str) else json.dumps(t, separators=(",", ":"))


def delta_schema_of(df: DataFrame, location: str) -> DeltaSchema:
    """The Delta schema a DataFrame would be written with; refuses types Delta cannot store."""
    try:
        arrow = to_arrow_schema(df.schema, timezone="UTC")
    except Exception as exc:
        raise SchemaMismatchError(f"{location}: the DataFrame has a column Arrow cannot carry: {exc}") from exc
    void = [f.name for f in arrow if pa.types.is_null(f.type)]
    if void:
        raise SchemaMismatchError(
            f"{location}: columns {void} have no type (a bare lit(None)?): cast them, e.g. "
            "F.lit(None).cast('string'); nothing was written"
        )
    return DeltaSchema.from_arrow(arrow)


def reconcile_schema(
    table: list[dict[str, Any]], incoming: list[dict[str, Any]], schema_mode: SchemaMode, location: str
) -> tuple[list[dict[str, Any]], bool]:
    """The schema to write with, or :class:`SchemaMismatchError` naming every difference.

    Returns the target fields (the table's, in its order, then any added columns, nullable) and whether the
    table's schema changes.
    """
    if schema_mode == "overwrite":
        return incoming, [f["name"] for f in incoming] != [f["name"] for f in table] or any(
            a != b for a, b in zip(incoming, table, strict=False)
        )
    have = {f["name"]: f for f in incoming}
    want = {f["name"]: f for f in table}
    missing = [f"{n} ({_type_str(want[n]['type'])})" for n in want if n not in have]
    extra = [f for f in incoming if f["name"] not in want]
    wrong = [
        f"{n}: table has {_type_str(want[n]['type'])}, DataFrame has {_type_str(have[n]['type'])}"
        for n in want
        if n in have and have[n]["type"] != want[n]["type"]
    ]
    problems = []
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    if wrong:
        problems.append("type mismatch: " + "; ".join(wrong))
    if extra and schema_mode != "add_columns":
        problems.append(
            "extra columns: "
            + ", ".join(f"{f['name']} ({_type_str(f['type'])})" for f in extra)
            + " (pass schema_mode='add_columns' to add them as nullable columns)"
        )
    if problems:
        raise SchemaMismatchError(
            f"{location}: the DataFrame does not match the Delta table's schema; nothing was written.\n  "
            + "\n  ".join(problems)
        )
    added = [dict(f, nullable=True) for f in extra]
    return table + added, bool(added)


def _matches(pvals: dict[str, str | None], where: dict[str, list[str | None]]) -> bool:
    return all(pvals.get(c) in vals for c, vals in where.items())


def _normalise_where(
    where: PartitionPredicate, partition_cols: list[str], location: str
) -> dict[str, list[str | None]]:
    bad = [c for c in where if c not in partition_cols]
    if bad:
        raise ValueError(
            f"{location}: {bad} are not partition columns (partitioned by {partition_cols}); the bridge "
            "backend selects and replaces whole partitions only"
        )
    return {c: [partition_value_to_str(v) for v in vals] for c, vals in predicate_values(where).items()}


def _remove_selector(
    mode: WriteMode, parts: list[str], files: list[dict[str, Any]], where: dict[str, list[str | None]] | None
) -> Callable[[dict[str, str | None]], bool] | None:
    """Which existing files (by their partition values) a write of ``mode`` removes: none (``append``), those
    of the partitions the new files fill (``replace_partitions``), those ``replace_where`` matches, or all (an
    ``overwrite`` without it)."""
    if mode == "append":
        return None
    if mode == "replace_partitions":
        present = {tuple(f["partition_values"].get(c) for c in parts) for f in files}
        return lambda pv: tuple(pv.get(c) for c in parts) in present
    if where is not None:
        return lambda pv: _matches(pv, where)
    return lambda pv: True  # the whole table


class BridgeBackend:
    """Delta tables through Spark tasks + pyarrow + one delta-rs commit per write."""

    name = "bridge"

    def __init__(
        self,
        spark: SparkSession,
        target_file_rows: int = 1_000_000,
        compression: str = "snappy",
        write_batch_rows: int = 100_000,
        writer: str = "spark",
    ):
        if writer not in ("spark", "arrow"):
            raise ValueError(f"the bridge's file writer is 'spark' or 'arrow', not {writer!r}")
        self.spark = spark
        self.target_file_rows = target_file_rows
        self.compression = compression
        self.write_batch_rows = write_batch_rows
        self.writer = writer

    # ---- opening -----------------------------------------------------------------------------------------
    def _open(
        self, location: str, version: int | None = None, timestamp: dt.datetime | str | None = None
    ) -> DeltaTable | None:
        try:
            table = DeltaTable(location, version=version) if version is not None else DeltaTable(location)
        except DeltaRsTableNotFound:
            return None
        except Exception as exc:  # a version that does not exist, a corrupt log
            if version is not None and DeltaTable.is_deltatable(location):
                raise LookupError(f"{location}: no version {version} ({exc})") from exc
            raise
        if timestamp is not None:
            try:
                table.load_as_version(timestamp)
            except Exception as exc:
                raise LookupError(f"{location}: no version at or before {timestamp} ({exc})") from exc
        return table

    def _require(self, location: str, **kw: Any) -> DeltaTable:
        table = self._open(location, **kw)
        if table is None:
            raise TableNotFoundError(f"no Delta table at {location}")
        return table

    @staticmethod
    def _check_protocol(table: DeltaTable, location: str) -> None:
        p = table.protocol()
        if p.min_reader_version > 1 or p.reader_features:
            raise UnsupportedTableError(
                f"{location}: reader version {p.min_reader_version} with features {p.reader_features}: the "
                "bridge backend reads plain (reader 1) tables only; use the native backend for this table"
            )

    def exists(self, location: str) -> bool:
        return DeltaTable.is_deltatable(location)

    # ---- writing -----------------------------------------------------------------------------------------
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
        """Write ``df`` to the table at ``location`` in one Delta commit (see :meth:`coupon_spark.lake.Lake.write`).

        The steps: skip when ``txn`` is already committed; reconcile the schema and the partitioning
        (:meth:`_plan_schema`; nothing is written on a mismatch); add new nullable columns first
        (``add_columns``); write the data files with Spark's writer (:meth:`_write_files`) and refuse nulls in
        NOT NULL columns and rows outside ``replace_where``; choose the files the commit removes by the write
        mode (:func:`_remove_selector`); commit on the snapshot read (:meth:`_commit`). Whatever stops the
        write after the files exist deletes them, so a failed write leaves no new version and no file.
        """
        started = time.perf_counter()
        table = self._open(location)
        if table is not None:
            self._check_protocol(table, location)
            if txn is not None:
                done = table.transaction_version(txn.app_id)
                if done is not None and done >= txn.version:
                    log.info("%s: %s v%s already committed, skipping", location, txn.app_id, txn.version)
                    return WriteResult(location, table.version(), skipped=True)

        incoming = delta_fields(delta_schema_of(df, location))
        fields, evolved, parts = self._plan_schema(table, incoming, partition_by, schema_mode, location)
        where = _normalise_where(replace_where, parts, location) if replace_where is not None else None
        if table is not None and evolved and schema_mode == "add_columns":
            # delta-rs keeps the table's schema on an append, so the new nullable columns are added first, in
            # a metadata-only commit. Should the data commit then fail, the table only has extra null columns.
            new = [f for f in fields if f["name"] not in set(table.schema().to_arrow().names)]
            table.alter.add_columns([Field.from_json(json.dumps(f)) for f in new])
            table = DeltaTable(location)
        target = DeltaSchema.from_json(json.dumps({"type": "struct", "fields": fields}))
        if table is not None and schema_mode == "overwrite" and parts != list(table.metadata().partition_columns):
            # a new partitioning: delta-rs's commit of staged files keeps the table's, its writer takes a new one
            # (through the driver as Arrow: a one-time rewrite, e.g. a dimension leaving the snapshot layout)
            data = df.toArrow()
            write_deltalake(
                location,
                data.cast(pa.schema(target.to_arrow())),
                mode="overwrite",
                schema_mode="overwrite",
                partition_by=parts,
                commit_properties=CommitProperties(
                    custom_metadata={"userMetadata": description} if description else None
                ),
            )
            secs = time.perf_counter() - started
            log.info("%s: rewritten with partitioning %s (%d rows, %.1fs)", location, parts, data.num_rows, secs)
            return WriteResult(location, DeltaTable(location).version(), num_rows=data.num_rows)
        files = self._staged_files(df, location, fields, incoming, target, parts, where, replace_where)
        adds = [
            AddAction(f["path"], f["size"], f["partition_values"], f["modification_time"], True, f["stats"])
            for f in files
        ]
        props = CommitProperties(
            custom_metadata={"userMetadata": description} if description else None,
            app_transactions=[Transaction(txn.app_id, txn.version)] if txn is not None else None,
            max_commit_retries=0,  # a commit lands on the snapshot it read, or _commit decides what to do
        )
        selector = _remove_selector(mode, parts, files, where)
        try:
            whole = mode == "overwrite" and where is None
            replaced = self._commit(location, table, whole, selector, adds, target, parts, props, txn)
        except ConcurrentWriteError:
            _delete_files(location, files)
            raise
        if replaced is None:
            _delete_files(location, files)
            assert txn is not None
            log.info("%s: %s v%s committed by another writer meanwhile", location, txn.app_id, txn.version)
            return WriteResult(location, DeltaTable(location).version(), skipped=True)
        after = DeltaTable(location)
        num_rows = sum(f["num_records"] for f in files)
        result = WriteResult(location, after.version(), len(adds), num_rows, replaced)
        log.info("%s (%s, %.1fs%s)", result, mode, time.perf_counter() - started, ", schema evolved" if evolved else "")
        return result

    def merge(self, source: DataFrame, location: str, on: list[str], description: str | None) -> WriteResult:
        """delta-rs's MERGE of the source's rows, brought to the driver as Arrow (a type-2 dimension's changes
        of one date: the records that changed, not the table); see :meth:`coupon_spark.lake.Lake.merge`."""
        started = time.perf_counter()
        columns = [c for c in source.columns if c != "_op"]
        table = self._require(location)  # Lake.merge created a missing table from the upserts
        self._check_protocol(table, location)
        incoming = delta_fields(delta_schema_of(source.select(*columns), location))
        reconcile_schema(delta_fields(table.schema()), incoming, "strict", location)
        data = source.select(*columns, "_op").toArrow()
        if data.num_rows == 0:
            return WriteResult(location, table.version(), skipped=True)
        target = pa.schema(table.schema().to_arrow())
        data = pa.Table.from_arrays(
            [data.column(c).cast(target.field(c).type) for c in columns] + [data.column("_op")],
            names=[*columns, "_op"],
        )
        values = {c: f"s.`{c}`" for c in columns}
        props = CommitProperties(custom_metadata={"userMetadata": description} if description else None)
        metrics = (
            table.merge(
                data,
                predicate=" AND ".join(f"t.`{c}` = s.`{c}`" for c in on),
                source_alias="s",
                target_alias="t",
                commit_properties=props,
            )
            .when_matched_delete(predicate="s._op = 'delete'")
            .when_matched_update(updates=values, predicate="s._op = 'upsert'")
            .when_not_matched_insert(updates=values, predicate="s._op = 'upsert'")
            .execute()
        )
        result = WriteResult(
            location,
            DeltaTable(location).version(),
            num_files=int(metrics.get("num_target_files_added", 0)),
            num_rows=int(metrics.get("num_target_rows_inserted", 0)) + int(metrics.get("num_target_rows_updated", 0)),
            removed_files=int(metrics.get("num_target_files_removed", 0)),
        )
        log.info("%s (merge of %d rows, %.1fs, bridge)", result, data.num_rows, time.perf_counter() - started)
        return result

    @staticmethod
    def _plan_schema(
        table: DeltaTable | None,
        incoming: list[dict[str, Any]],
        partition_by: list[str] | None,
        schema_mode: SchemaMode,
        location: str,
    ) -> tuple[list[dict[str, Any]], bool, list[str]]:
        """``(fields, evolved, partition columns)`` of the write: the incoming schema reconciled with the
        table's (:func:`reconcile_schema`) and the partitioning checked against it.

        Raises:
            SchemaMismatchError: Other partition columns than the table's, partition columns missing from the
                frame or of a type a partition cannot hold; nothing was written.
        """
        if table is None:
            fields, evolved = incoming, False
            parts = list(partition_by or [])
        else:
            fields, evolved = reconcile_schema(delta_fields(table.schema()), incoming, schema_mode, location)
            existing_parts = list(table.metadata().partition_columns)
            parts = list(partition_by) if partition_by is not None else existing_parts
            if parts != existing_parts and schema_mode != "overwrite":
                raise SchemaMismatchError(
                    f"{location}: the table is partitioned by {existing_parts}, the write asks for {parts}; "
                    "nothing was written"
                )
        by_name = {f["name"]: f for f in fields}
        missing_parts = [c for c in parts if c not in by_name]
        if missing_parts:
            raise SchemaMismatchError(f"{location}: partition columns {missing_parts} are not in the DataFrame")
        bad_parts = [
            f"{c} ({_type_str(by_name[c]['type'])})" for c in parts if by_name[c]["type"] not in _PARTITION_TYPES
        ]
        if bad_parts:
            raise SchemaMismatchError(
                f"{location}: cannot partition by {bad_parts}: use string, date, integer or boolean columns"
            )
        return fields, evolved, parts

    def _staged_files(
        self,
        df: DataFrame,
        location: str,
        fields: list[dict[str, Any]],
        incoming: list[dict[str, Any]],
        target: DeltaSchema,
        parts: list[str],
        where: dict[str, list[str | None]] | None,
        replace_where: PartitionPredicate | None,
    ) -> list[dict[str, Any]]:
        """Write the data files (not yet committed) and check them; on a refusal they are deleted first.

        Raises:
            SchemaMismatchError: Nulls in NOT NULL columns.
            ValueError: Rows outside ``replace_where``.
        """
        columns = [f["name"] for f in fields if f["name"] in {x["name"] for x in incoming}]
        target_arrow = pa.schema(target.to_arrow())
        files, counts = self._write_files(df.select(*columns), location, target_arrow, parts, uuid.uuid4().hex[:16])
        if counts:
            _delete_files(location, files)
            raise SchemaMismatchError(
                f"{location}: NOT NULL columns of the table have nulls in the DataFrame: "
                + ", ".join(f"{c} ({n} rows)" for c, n in sorted(counts.items()))
                + "; nothing was written (fill or filter them first)"
            )
        if where is not None:
            outside = {json.dumps(f["partition_values"]) for f in files if not _matches(f["partition_values"], where)}
            if outside:
                _delete_files(location, files)
                raise ValueError(
                    f"{location}: replace_where={replace_where} but the data has rows in other partitions "
                    f"{sorted(outside)[:5]}; nothing was committed"
                )
        return files

    def _commit(
        self,
        location: str,
        table: DeltaTable | None,
        whole_table: bool,
        selector: Callable[[dict[str, str | None]], bool] | None,
        adds: list[AddAction],
        target: DeltaSchema,
        parts: list[str],
        props: CommitProperties,
        txn: Txn | None,
    ) -> int | None:
        """Commit ``adds`` (and, unless ``selector`` is None, the removal of the files it selects) on top of the
        snapshot ``table`` this write read (None: the table did not exist); ``whole_table``: an overwrite of every
        partition (delta-rs derives the removes and may take a new schema).

        Optimistic concurrency with delta-rs's own retries off: when another writer committed first, the
        latest snapshot is read. Where the files this write replaces are the same there (the other writer
        touched other partitions, or appended), the commit is made again on top of it; where they differ (it
        wrote the same date), :class:`ConcurrentWriteError`: two replaces of one date never both land, so a
        date is never doubled. An append (``selector`` None) is retried on top (appends compose).

        Returns:
            Files replaced, or None when ``txn`` was committed by another writer meanwhile (nothing written).
        """

        def replaced(listing: list[tuple[str, int, dict[str, str | None]]]) -> list[tuple[str, int, dict]]:
            return [] if selector is None else [f for f in listing if selector(f[2])]

        current = replaced(self._files(table, parts)) if table is not None else []  # one listing per snapshot
        before = {p for p, _, _ in current}
        added: list[AddAction | RemoveAction] = [*adds]
        for _ in range(_COMMIT_ATTEMPTS):
            try:
                if table is None:
                    create_table_with_add_actions(
                        location, target, adds, mode="error", partition_by=parts or None, commit_properties=props
                    )
                    return 0
                if selector is None:
                    table.create_write_transaction(added, "append", target, parts or None, commit_properties=props)
                    return 0
                if whole_table:
                    # the whole table: delta-rs derives the removes itself (and takes a new schema)
                    table.create_write_transaction(added, "overwrite", target, parts or None, commit_properties=props)
                    return len(before)
                now = int(time.time() * 1000)
                removes = [RemoveAction(path, True, now, size, pv) for path, size, pv in current]
                actions = [*added, *removes]
                table.create_write_transaction(actions, "append", target, parts or None, commit_properties=props)
                return len(removes)
            except Exception as exc:
                latest = self._open(location)
                if latest is None or (table is not None and latest.version() == table.version()):
                    raise  # not a lost race: the commit itself failed
                listing = self._files(latest, parts)
                if adds and unquote(adds[0].path) in {unquote(p) for p, _, _ in listing}:
                    return len(before)  # it did land (a later step of the commit failed): keep it
                log.info("%s: another writer committed version %s first (%s)", location, latest.version(), exc)
                if txn is not None and (latest.transaction_version(txn.app_id) or -1) >= txn.version:
                    return None
                current = replaced(listing)
                if selector is not None and {p for p, _, _ in current} != before:
                    raise ConcurrentWriteError(
                        f"{location}: another writer replaced or added to the same partitions while this write "
                        f"ran (table version {latest.version()}); nothing was committed and this write's "
                        f"{len(adds)} data files were deleted. Rerun the stage: it replaces the date (or skips "
                        "it when the other writer committed the same run)"
                    ) from exc
                table = latest
        raise ConcurrentWriteError(
            f"{location}: {_COMMIT_ATTEMPTS} commits in a row lost to other writers; nothing was committed, rerun"
        )

    def _write_files(
        self, df: DataFrame, location: str, target: pa.Schema, parts: list[str], write_id: str
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Write the data files of ``df`` (columns in table order) under ``location``, not yet committed.

        Returns:
            One dict per file (``path`` relative to the table, ``size``, ``partition_values``, ``num_records``,
            ``stats``, ``modification_time``), and the nulls found per NOT NULL column (empty when none).
        """
        if self.writer == "spark":
            return self._spark_files(df, location, target, parts, write_id)
        writer = make_task_writer(
            location, target.serialize().to_pybytes(), parts, self.target_file_rows, self.compression, write_id
        )
        files = [r.asDict() for r in self._run_write_tasks(df.mapInArrow(writer, FILE_META_DDL))]
        counts: dict[str, int] = {}
        for f in files:
            f["partition_values"] = json.loads(f["partition_values"])
            if not f["path"]:  # a task's report of nulls in NOT NULL columns
                for name, n in json.loads(f["stats"]).items():
                    counts[name] = counts.get(name, 0) + int(n)
        return [f for f in files if f["path"]], counts

    def _spark_files(
        self, df: DataFrame, location: str, target: pa.Schema, parts: list[str], write_id: str
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Spark's own Parquet writer writes the files into ``staging-<write_id>/`` of the table (its committer
        publishes them only when the whole job succeeds); the driver moves each into its partition folder
        under a name carrying ``write_id`` and reads its footer for the Delta statistics. No row crosses from
        the JVM to Python (bench/lake_write.py)."""
        fs, base = filesystem_for(location)
        base = base.rstrip("/")
        staging = f"{base}/staging-{write_id}"
        spark_schema = from_arrow_schema(target)
        data = df.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in spark_schema.fields])
        writer = (
            data.write.mode("error")
            .option("compression", self.compression)
            .option("maxRecordsPerFile", self.target_file_rows)
        )
        if parts:
            writer = writer.partitionBy(*parts)
        uri = staging if "://" not in location else f"{location.rstrip('/')}/staging-{write_id}"
        try:  # (the committer's _SUCCESS marker stays in the staging folder, which goes below)
            with _session_conf(self.spark, {"spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}):
                writer.parquet(uri)
        except Exception:
            with contextlib.suppress(OSError):  # the committer aborted: only its empty folder is left
                fs.delete_dir(staging)
            raise
        infos = fs.get_file_info(pafs.FileSelector(staging, recursive=True, allow_not_found=True))
        written = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
        non_null = [f.name for f in target if not f.nullable]
        files: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        now = int(time.time() * 1000)
        made: set[str] = set()
        for seq, path in enumerate(written):
            folder = path[len(staging) + 1 :].rsplit("/", 1)[0] if "/" in path[len(staging) + 1 :] else ""
            pvals = _partition_values(folder, parts)
            rel = f"{folder}/" if folder else ""
            rel += f"part-{seq:05d}-{write_id}.c000.{self.compression}.parquet"
            if folder and folder not in made:
                fs.create_dir(f"{base}/{folder}", recursive=True)
                made.add(folder)
            fs.move(path, f"{base}/{rel}")
            with fs.open_input_file(f"{base}/{rel}") as fh:
                pf = pq.ParquetFile(fh)
                meta, schema = pf.metadata, pf.schema_arrow
                size = fh.size()
            stats = footer_stats(meta, schema)
            nulls = json.loads(stats)["nullCount"]
            for name in non_null:
                n = nulls.get(name, 0) if name not in parts else (meta.num_rows if pvals[name] is None else 0)
                if n:
                    counts[name] = counts.get(name, 0) + int(n)
            files.append(
                {
                    "path": rel,
                    "size": size,
                    "partition_values": pvals,
                    "num_records": meta.num_rows,
                    "stats": stats,
                    "modification_time": now,
                }
            )
        fs.delete_dir(staging)
        return files, counts

    def _run_write_tasks(self, files: DataFrame) -> list[Any]:
        """Run the writing tasks. Their Arrow batches are made larger than the session's default for UDFs
        (``write_batch_rows``): the tasks only hand rows to the Parquet writer, and the per-batch cost of the
        JVM-to-Python transfer dominated the write at 20k-row batches (bench/lake_write.py)."""
        key = "spark.sql.execution.arrow.maxRecordsPerBatch"
        batch = max(self.write_batch_rows, int(self.spark.conf.get(key, None) or 0))
        with _session_conf(self.spark, {key: str(batch)}):
            return files.collect()

    @staticmethod
    def _files(table: DeltaTable, parts: list[str]) -> list[tuple[str, int, dict[str, str | None]]]:
        """(log path, size, partition values as protocol strings) of every file in the snapshot."""
        actions = pa.table(table.get_add_actions(flatten=True))
        paths = actions.column("path").to_pylist()
        sizes = actions.column("size_bytes").to_pylist()
        pvals = {c: actions.column(f"partition.{c}").to_pylist() for c in parts}
        return [
            (p, s, {c: partition_value_to_str(pvals[c][i]) for c in parts})
            for i, (p, s) in enumerate(zip(paths, sizes, strict=True))
        ]

    # ---- reading -----------------------------------------------------------------------------------------
    def read(
        self,
        location: str,
        version: int | None,
        timestamp: dt.datetime | str | None,
        where: PartitionPredicate | None,
    ) -> DataFrame:
        table = self._require(location, version=version, timestamp=timestamp)
        self._check_protocol(table, location)
        spark_schema = from_arrow_schema(pa.schema(table.schema().to_arrow()))
        parts = list(table.metadata().partition_columns)
        files = self._files(table, parts)
        if where:
            w = _normalise_where(where, parts, location)
            files = [f for f in files if _matches(f[2], w)]
        if not files:
            return self.spark.createDataFrame([], spark_schema)
        base = location.rstrip("/")
        uris = [p if "://" in p else f"{base}/{unquote(p)}" for p, _, _ in files]
        reader = self.spark.read.schema(spark_schema)
        if parts:
            reader = reader.option("basePath", base)
        return reader.parquet(*uris).select(*spark_schema.fieldNames())

    def version(self, location: str) -> int:
        return self._require(location).version()

    def partitions(self, location: str) -> list[dict[str, Any]]:
        """From the snapshot's add actions: no file is opened."""
        return partitions_in_log(self._require(location))

    def files(self, location: str) -> list[tuple[str, dict[str, Any]]]:
        return files_in_log(self._require(location))

    def history(self, location: str, limit: int | None) -> list[dict[str, Any]]:
        return list(self._require(location).history(limit))

    def info(self, location: str) -> TableInfo:
        return info_in_log(self._require(location), location)

    # ---- maintenance -------------------------------------------------------------------------------------
    def compact(self, location: str, where: PartitionPredicate | None, target_file_rows: int) -> dict[str, Any]:
        """delta-rs bin-packing compaction (runs on the driver, streaming; dataChange=false commit)."""
        table = self._require(location)
        self._check_protocol(table, location)
        parts = list(table.metadata().partition_columns)
        filters = None
        if where:
            w = _normalise_where(where, parts, location)
            filters = [(c, "in", [v for v in vals if v is not None]) for c, vals in w.items()]
        info = self.info(location)
        total_bytes = sum(pa.table(table.get_add_actions(flatten=True)).column("size_bytes").to_pylist())
        bytes_per_row = total_bytes / info.num_rows if info.num_rows else 100.0
        target_size = max(1 << 20, int(bytes_per_row * target_file_rows))
        return dict(table.optimize.compact(partition_filters=filters, target_size=target_size))

    def vacuum(self, location: str, retention_hours: int, dry_run: bool) -> list[str]:
        """Delete unreferenced files older than the retention, orphans of failed writes included; returns the
        files deleted (delta-rs also lists removed files an earlier vacuum already deleted: those are left out)."""
        table = self._require(location)
        kw = {"retention_hours": retention_hours, "enforce_retention_duration": False, "full": True}
        fs, base = filesystem_for(location)
        base = base.rstrip("/")
        candidates = list(table.vacuum(dry_run=True, **kw))  # type: ignore[arg-type]
        infos = fs.get_file_info([p if p.startswith("/") else f"{base}/{unquote(p)}" for p in candidates])
        present = [p for p, i in zip(candidates, infos, strict=True) if i.type != pafs.FileType.NotFound]
        if not dry_run and present:
            table.vacuum(dry_run=False, **kw)  # type: ignore[arg-type]
        return present


def partitions_in_log(table: DeltaTable) -> list[dict[str, Any]]:
    """The distinct partition values of a table's snapshot, from its add actions: no file is opened (both
    backends: delta-rs reads the log the connector writes as well)."""
    parts = list(table.metadata().partition_columns)
    if not parts:
        return []
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return []
    distinct = actions.select([f"partition.{c}" for c in parts]).group_by([f"partition.{c}" for c in parts])
    rows = distinct.aggregate([]).to_pylist()
    out = [{c: r[f"partition.{c}"] for c in parts} for r in rows]
    return sorted(out, key=lambda r: tuple((v is None, v) for v in r.values()))


def files_in_log(table: DeltaTable) -> list[tuple[str, dict[str, Any]]]:
    """``(path, partition values)`` of every data file of a table's snapshot, from its add actions (both
    backends; no file is opened)."""
    parts = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return []
    paths = actions.column("path").to_pylist()
    values = {c: actions.column(f"partition.{c}").to_pylist() for c in parts}
    return [(p, {c: values[c][i] for c in parts}) for i, p in enumerate(paths)]


def info_in_log(table: DeltaTable, location: str) -> TableInfo:
    """Version, files, rows (the files' ``numRecords`` statistics; ``None`` where a file has none), partition
    columns and schema of a table's snapshot, from its log alone (both backends)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else []
    return TableInfo(
        location=location,
        version=table.version(),
        num_files=actions.num_rows,
        num_rows=None if any(r is None for r in rows) else int(sum(rows)),
        partition_columns=list(table.metadata().partition_columns),
        schema=table.schema().to_json(),
    )
