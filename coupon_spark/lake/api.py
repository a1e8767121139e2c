"""One small Delta table API over two backends (native delta-spark, jar-less bridge)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pyspark.sql import DataFrame, SparkSession

from coupon_spark.config import LakeConfig
from coupon_spark.errors import EX_TEMPFAIL, CouponSparkError, InputError, UpstreamNotReady, one_line
from coupon_spark.session import resolve_backend
from coupon_spark.tables import CATALOG, Table, WriteMode

SchemaMode = Literal["strict", "add_columns", "overwrite"]
# Partition predicate: column -> one value or a list of values (the union), all columns ANDed.
PartitionPredicate = dict[str, Any]


class LakeError(CouponSparkError, RuntimeError):
    """Base class of the table layer's errors."""


class TableNotFoundError(UpstreamNotReady, LakeError):
    """No Delta table at the location."""


# The stage that writes each logical table: a missing table's error says what to run.
WRITTEN_BY = {t.name: t.written_by for t in CATALOG.values()}

TableRef = Table | str
"""A table of the catalog (:mod:`coupon_spark.tables`), or a path (the doctor's probe, the shop's truth)."""


class SchemaMismatchError(LakeError, ValueError):
    """The DataFrame does not match the table's schema; nothing was written."""


class UnsupportedTableError(InputError, LakeError):
    """The table uses Delta features this backend cannot read or write correctly."""


class CommitError(LakeError):
    """Writing a table failed (its data files or its Delta commit); the message names the table, the cause is
    chained (``__cause__``)."""


class ConcurrentWriteError(LakeError):
    """Another writer committed to the partitions this write replaces while it ran: nothing was committed (and
    the data files it had written were deleted). Rerunning replaces the date (or, with an idempotency key the
    other writer committed, does nothing)."""

    exit_code = EX_TEMPFAIL
    advice = "another writer changed the same partitions, rerun (the date is replaced, never doubled)"


@dataclass(frozen=True)
class Txn:
    """A Delta application transaction id: a write with (app_id, version) commits at most once.

    Use the job name as ``app_id`` and a number that grows with each job run (for example the run date as
    ``YYYYMMDD``) as ``version``; a rerun with the same or a lower version commits nothing.
    """

    app_id: str
    version: int


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the table version it produced (or found, when skipped) and what it added."""

    table: str
    version: int
    num_files: int = 0
    num_rows: int = 0
    removed_files: int = 0
    skipped: bool = False  # True when the idempotency key had already been committed

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.table}: already committed (version {self.version}), nothing written"
        return f"{self.table}: version {self.version}, +{self.num_rows} rows in {self.num_files} files" + (
            f", {self.removed_files} files replaced" if self.removed_files else ""
        )


@dataclass(frozen=True)
class TableInfo:
    """Current state of a table."""

    location: str
    version: int
    num_files: int
    num_rows: int | None
    partition_columns: list[str] = field(default_factory=list)
    schema: str = ""


class Backend(Protocol):
    name: str

    def exists(self, location: str) -> bool: ...

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
    ) -> WriteResult: ...

    def read(
        self,
        location: str,
        version: int | None,
        timestamp: dt.datetime | str | None,
        where: PartitionPredicate | None,
    ) -> DataFrame: ...

    def version(self, location: str) -> int: ...

    def partitions(self, location: str) -> list[dict[str, Any]]: ...

    def files(self, location: str) -> list[tuple[str, dict[str, Any]]]: ...

    def history(self, location: str, limit: int | None) -> list[dict[str, Any]]: ...

    def info(self, location: str) -> TableInfo: ...

    def compact(self, location: str, where: PartitionPredicate | None, target_file_rows: int) -> dict[str, Any]: ...

    def vacuum(self, location: str, retention_hours: int, dry_run: bool) -> list[str]: ...

    def merge(self, source: DataFrame, location: str, on: list[str], description: str | None) -> WriteResult: ...


class Lake:
    """The lakehouse: Delta tables addressed by their catalog entry (:mod:`coupon_spark.tables`; the
    configuration's ``lake.tables`` gives the path) or by path.

    Example:
        >>> from coupon_spark import tables
        >>> lake = Lake.from_config(spark, cfg.lake)
        >>> lake.write(df, tables.CANDIDATES)  # replace_partitions by run_date, as the catalog declares
        >>> lake.read(tables.ORDERS, where={"ingest_date": "2026-11-28"})
    """

    def __init__(self, spark: SparkSession, cfg: LakeConfig, backend: Backend):
        self.spark = spark
        self.cfg = cfg
        self.backend = backend

    @classmethod
    def from_config(cls, spark: SparkSession, cfg: LakeConfig) -> Lake:
        """Open the lakehouse with the backend ``cfg.backend`` asks for (``auto`` picks native if present)."""
        name = resolve_backend(spark, cfg.backend)
        if name == "native":
            from coupon_spark.lake.native import NativeBackend

            return cls(spark, cfg, NativeBackend(spark))
        from coupon_spark.lake.bridge import BridgeBackend

        return cls(spark, cfg, BridgeBackend(spark, cfg.target_file_rows, cfg.compression, writer=cfg.bridge_writer))

    @contextlib.contextmanager
    def _missing_says_what_to_run(self, table: TableRef) -> Iterator[None]:
        """A :class:`TableNotFoundError` for one of the pipeline's tables also names the stage that writes it."""
        try:
            yield
        except TableNotFoundError as exc:
            stage = WRITTEN_BY.get(str(table))
            if stage is None:
                raise
            raise TableNotFoundError(
                f"{exc}: table {str(table)!r} is not built yet; run `coupon-spark {stage}` for the date first"
            ) from None

    def location(self, table: TableRef) -> str:
        """Where ``table`` (a catalog table, a logical name or a path) lives."""
        return self.cfg.table_path(str(table))

    def exists(self, table: TableRef) -> bool:
        return self.backend.exists(self.location(table))

    def write(
        self,
        df: DataFrame,
        table: TableRef,
        mode: WriteMode | None = None,
        partition_by: list[str] | None = None,
        replace_where: PartitionPredicate | None = None,
        txn: Txn | None = None,
        schema_mode: SchemaMode = "strict",
        description: str | None = None,
    ) -> WriteResult:
        """Write ``df`` to ``table`` in one atomic commit.

        Args:
            df: The rows to write.
            table: A catalog table (its mode and partition columns are the defaults of the next two), a logical
                name or a path.
            mode: ``append``; ``overwrite`` (the whole table, or only the partitions matching
                ``replace_where``); ``replace_partitions`` (only the partitions present in ``df``). Default:
                the catalog table's, else ``append``.
            partition_by: Partition columns (string, date, integer or boolean); must equal the table's. Default:
                the catalog table's.
            replace_where: With ``overwrite``: replace only matching partitions; every written row must
                match too.
            txn: Idempotency key: when the table has already committed ``txn.app_id`` at ``txn.version``
                or later, nothing is written and the result says ``skipped``.
            schema_mode: ``strict`` (the DataFrame must have the table's columns and types), ``add_columns``
                (new columns become nullable columns of the table), ``overwrite`` (with ``mode="overwrite"``
                only: the table takes the DataFrame's schema).
            description: Free text stored in the commit.

        Raises:
            SchemaMismatchError: Before anything is written, with the differing columns named.
            CommitError: The backend failed to write the files or to commit (a Spark task, the file system,
                delta-rs, a concurrent writer); the message names the table and its location.
        """
        if isinstance(table, Table):
            if table.mode == "merge" and mode is None:
                raise ValueError(
                    f"table {table.name!r} is a type-2 dimension, changed by merges: write it with lake.merge "
                    "(coupon_spark.dimension.merge_source builds the source), or give mode='overwrite' to replace it"
                )
            if mode is None and table.mode == "overwrite" and replace_where is None:
                raise ValueError(
                    f"table {table.name!r} is replaced date by date: give replace_where={{{table.partition_by[0]!r}: "
                    "<date>}} (or mode='overwrite' explicitly to replace the whole table)"
                )
            mode = mode or table.mode
            partition_by = list(table.partition_by) if partition_by is None else partition_by
        mode = mode or "append"
        if mode not in ("append", "overwrite", "replace_partitions"):
            raise ValueError(f"mode must be append, overwrite or replace_partitions, not {mode!r}")
        if replace_where is not None and mode != "overwrite":
            raise ValueError("replace_where only goes with mode='overwrite'")
        if schema_mode == "overwrite" and (mode != "overwrite" or replace_where is not None):
            raise ValueError("schema_mode='overwrite' replaces the whole table: use it with mode='overwrite' only")
        if mode == "replace_partitions" and not partition_by and not self.exists(table):
            raise ValueError("replace_partitions needs partition_by when the table does not exist yet")
        location = self.location(table)
        try:
            return self.backend.write(df, location, mode, partition_by, replace_where, txn, schema_mode, description)
        except (LakeError, ValueError, TypeError):
            raise  # ours, or a wrong argument: they name the location already
        except Exception as exc:
            name = location if str(table) == location else f"{str(table)!r} ({location})"
            raise CommitError(f"writing table {name} failed ({type(exc).__name__}): {one_line(exc, 500)}") from exc

    def merge(
        self, source: DataFrame, table: TableRef, on: list[str] | None = None, description: str | None = None
    ) -> WriteResult:
        """Apply ``source`` to ``table`` in one atomic commit (a Delta merge): each source row has the table's
        columns plus ``_op``; matched with a row of the table on the columns ``on`` (default: the catalog
        table's keys), ``delete`` deletes that row and ``upsert`` replaces it; an ``upsert`` that matches none
        is inserted. A source with no row writes nothing (the result says ``skipped``); a table that does not
        exist yet is created from the upserts. The type-2 dimensions are written so
        (:mod:`coupon_spark.dimension`).

        Raises:
            SchemaMismatchError: The source's columns are not the table's (before anything is written).
            CommitError: As :meth:`write`.
        """
        keys = list(on if on is not None else (table.keys if isinstance(table, Table) else ()))
        if not keys:
            raise ValueError("merge needs the columns to match on: give on=[...] (or a catalog table with keys)")
        if "_op" not in source.columns or not set(keys) <= set(source.columns):
            raise ValueError(f"a merge source has the table's columns and _op; got {source.columns}, keys {keys}")
        if not self.exists(table):  # nothing to match: the upserts are the table (one place for both backends)
            upserts = source.where("_op = 'upsert'").drop("_op")
            return self.write(upserts, table, mode="append", description=description)
        location = self.location(table)
        try:
            return self.backend.merge(source, location, keys, description)
        except (LakeError, ValueError, TypeError):
            raise
        except Exception as exc:
            name = location if str(table) == location else f"{str(table)!r} ({location})"
            raise CommitError(f"merging into table {name} failed ({type(exc).__name__}): {one_line(exc, 500)}") from exc

    def read(
        self,
        table: TableRef,
        version: int | None = None,
        timestamp: dt.datetime | str | None = None,
        where: PartitionPredicate | None = None,
    ) -> DataFrame:
        """Read the current version of ``table``, or the one at ``version`` / ``timestamp``.

        ``where`` selects partitions before any file is opened (partition pruning).
        """
        if version is not None and timestamp is not None:
            raise ValueError("give version or timestamp, not both")
        with self._missing_says_what_to_run(table):
            return self.backend.read(self.location(table), version, timestamp, where)

    def version(self, table: TableRef) -> int:
        """Current version of ``table``."""
        with self._missing_says_what_to_run(table):
            return self.backend.version(self.location(table))

    def partitions(self, table: TableRef) -> list[dict[str, Any]]:
        """Distinct partition values of the current version (typed: dates as ``datetime.date``), sorted."""
        with self._missing_says_what_to_run(table):
            return self.backend.partitions(self.location(table))

    def files(self, table: TableRef) -> list[tuple[str, dict[str, Any]]]:
        """``(path, partition values)`` of each data file of the current version (typed as :meth:`partitions`),
        from the log alone: what a consumer compares to see whether partitions were rewritten."""
        with self._missing_says_what_to_run(table):
            return self.backend.files(self.location(table))

    def dates(self, table: Table, column: str | None = None) -> list[dt.date]:
        """The values of a date partition column (default: the table's first) in the current version, sorted;
        none when the table does not exist yet. A type-2 dimension (no partition): the dates that began a
        version (its distinct ``valid_from``, one Spark job)."""
        if not self.exists(table):
            return []
        if column is None and not table.partition_by and table.mode == "merge":
            rows = self.read(table).select("valid_from").distinct().collect()
            return sorted(r[0] for r in rows)
        column = column or table.partition_by[0]
        return sorted(p[column] for p in self.partitions(table) if p.get(column) is not None)

    def history(self, table: TableRef, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits of ``table``, newest first, as dicts with at least version, timestamp and operation."""
        with self._missing_says_what_to_run(table):
            return self.backend.history(self.location(table), limit)

    def info(self, table: TableRef) -> TableInfo:
        with self._missing_says_what_to_run(table):
            return self.backend.info(self.location(table))

    def compact(self, table: TableRef, where: PartitionPredicate | None = None) -> dict[str, Any]:
        """Rewrite small files into larger ones (a commit with dataChange=false); returns its metrics."""
        return self.backend.compact(self.location(table), where, self.cfg.target_file_rows)

    def vacuum(self, table: TableRef, retention_hours: int = 168, dry_run: bool = False) -> list[str]:
        """Delete files no longer referenced by versions within ``retention_hours``; returns the files."""
        return self.backend.vacuum(self.location(table), retention_hours, dry_run)


def predicate_values(where: PartitionPredicate) -> dict[str, list[Any]]:
    """Normalise a partition predicate to column -> list of accepted values."""
    return {c: (list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]) for c, v in where.items()}
