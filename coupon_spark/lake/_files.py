"""What the bridge's Spark tasks run: Arrow batches in, Parquet data files out, file metadata back.

Everything here executes inside Python workers, so it imports only pyarrow and the standard library and
takes plain, picklable arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from coupon_spark.storage import filesystem_for

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

# Spark's ExternalCatalogUtils.escapePathName escapes these (plus control characters) in partition folders.
_ESCAPE = set("\"#%'*/:=?\\\x7f{[]^")

# One row of metadata per data file written, returned by each task to the driver.
FILE_META_DDL = (
    "path string, size long, partition_values string, num_records long, stats string, modification_time long"
)

_STAT_TYPES = (pa.types.is_integer, pa.types.is_date32, pa.types.is_string, pa.types.is_large_string)
_MAX_STRING_STAT = 32


def escape_path_name(value: str) -> str:
    """Escape a partition value for a folder name exactly as Spark/Hive do (``a/b`` -> ``a%2Fb``)."""
    return "".join(f"%{ord(c):02X}" if (c in _ESCAPE or ord(c) < 0x20) else c for c in value)


def partition_value_to_str(value: Any) -> str | None:
    """Serialise a partition value as the Delta protocol stores it in ``partitionValues``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):  # pragma: no cover - timestamp partitions are refused upstream
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def partition_dir(partition_by: list[str], values: dict[str, str | None]) -> str:
    """Hive-style relative folder of one partition, e.g. ``run_date=2026-11-28/region=EU``."""
    return "/".join(
        f"{escape_path_name(c)}={HIVE_NULL if values[c] is None else escape_path_name(values[c])}"  # type: ignore[arg-type]
        for c in partition_by
    )


def _json_stat(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _OpenFile:
    """One Parquet data file being written: batches are buffered into row groups of ``row_group_rows``."""

    def __init__(
        self, fs: pafs.FileSystem, base: str, rel: str, schema: pa.Schema, compression: str, row_group_rows: int
    ):
        self.rel = rel
        self.full = f"{base.rstrip('/')}/{rel}"
        self.fs = fs
        self.schema = schema
        self.row_group_rows = row_group_rows
        fs.create_dir(self.full.rsplit("/", 1)[0], recursive=True)
        self.writer = pq.ParquetWriter(self.full, schema, filesystem=fs, compression=compression)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, self.schema), row_group_size=self.pending_rows)
            self.pending, self.pending_rows = [], 0

    def close(self, partition_values: dict[str, str | None]) -> dict[str, Any]:
        self._flush()
        self.writer.close()
        info = self.fs.get_file_info(self.full)
        return {
            "path": self.rel,  # raw relative path: delta-rs URI-encodes it in the log
            "size": info.size,
            "partition_values": json.dumps(partition_values),
            "num_records": self.rows,
            "stats": footer_stats(self.writer.writer.metadata, self.schema),
            "modification_time": int(time.time() * 1000),
        }


def footer_stats(meta: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta per-file statistics from the Parquet footer the writer just produced (no second pass).

    numRecords and nullCount for every top-level primitive column; min/max only for integers, dates and
    strings of at most 32 characters, whose values round-trip exactly. Timestamps (millisecond-truncated in
    the protocol) and floats (NaN) get none, so no reader can skip a file it should have read.
    """
    top = {f.name: f for f in schema}
    nulls: dict[str, int] = {}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    exact: dict[str, bool] = {}
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema
            field = top.get(name)
            if field is None or pa.types.is_nested(field.type):
                continue
            st = col.statistics
            if st is None:
                exact[name] = False
                continue
            nulls[name] = nulls.get(name, 0) + int(st.null_count or 0)
            if not any(f(field.type) for f in _STAT_TYPES) or not exact.get(name, True):
                continue
            if not st.has_min_max:
                if st.null_count != rg.num_rows:
                    exact[name] = False  # values without statistics: no bound is safe
                continue
            lo, hi = st.min, st.max
            if isinstance(lo, bytes) or isinstance(hi, bytes):
                exact[name] = False
                continue
            mins[name] = lo if name not in mins else min(mins[name], lo)
            maxs[name] = hi if name not in maxs else max(maxs[name], hi)
    for name in list(mins):
        lo, hi = mins[name], maxs[name]
        if not exact.get(name, True) or (isinstance(lo, str) and max(len(lo), len(hi)) > _MAX_STRING_STAT):
            del mins[name], maxs[name]
        else:
            mins[name], maxs[name] = _json_stat(lo), _json_stat(hi)
    return json.dumps(
        {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


FILE_META_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("partition_values", pa.string()),
        ("num_records", pa.int64()),
        ("stats", pa.string()),
        ("modification_time", pa.int64()),
    ]
)
"""Arrow form of :data:`FILE_META_DDL`."""

PartitionKey = tuple[str | None, ...]


def split_by_partition(tbl: pa.Table, partition_by: list[str]) -> list[tuple[PartitionKey, pa.Table]]:
    """The rows of ``tbl`` grouped by their partition values (as folder strings; nulls form their own group),
    in one pass; the whole table under the key ``()`` when the table is not partitioned."""
    if not partition_by:
        return [((), tbl)]
    idx = tbl.select(partition_by).append_column("__row", pa.array(range(tbl.num_rows), pa.int64()))
    groups = idx.group_by(partition_by, use_threads=False).aggregate([("__row", "list")])
    rows = groups.column("__row_list").combine_chunks()
    keys = groups.select(partition_by).to_pylist()
    return [
        (tuple(partition_value_to_str(k[c]) for c in partition_by), tbl.take(rows[i].values))
        for i, k in enumerate(keys)
    ]


class TaskFiles:
    """The data files one task writes: one open file per partition, rolled over at ``max_rows_per_file``, each
    named ``[<partition dirs>/]part-<seq>-<write_id>-<task>.c000.<codec>.parquet`` (unique across tasks,
    retries and concurrent writers); :meth:`close` returns the metadata row of every file."""

    def __init__(
        self,
        table_uri: str,
        data_schema: pa.Schema,
        partition_by: list[str],
        max_rows_per_file: int,
        compression: str,
        write_id: str,
        row_group_rows: int,
    ):
        self.fs, self.base = filesystem_for(table_uri)
        self.data_schema = data_schema
        self.partition_by = partition_by
        self.max_rows_per_file = max_rows_per_file
        self.compression = compression
        self.name_tail = f"{write_id}-{uuid.uuid4().hex[:12]}.c000.{compression}.parquet"
        self.row_group_rows = min(row_group_rows, max_rows_per_file)
        self.open: dict[PartitionKey, tuple[_OpenFile, dict[str, str | None]]] = {}
        self.done: list[dict[str, Any]] = []
        self.seq = 0

    def _file(self, key: PartitionKey) -> _OpenFile:
        if key not in self.open:
            pvals = dict(zip(self.partition_by, key, strict=True))
            prefix = partition_dir(self.partition_by, pvals) + "/" if self.partition_by else ""
            rel = f"{prefix}part-{self.seq:05d}-{self.name_tail}"
            self.seq += 1
            f = _OpenFile(self.fs, self.base, rel, self.data_schema, self.compression, self.row_group_rows)
            self.open[key] = (f, pvals)
        return self.open[key][0]

    def _finish(self, key: PartitionKey) -> None:
        f, pvals = self.open.pop(key)
        self.done.append(f.close(pvals))

    def write(self, key: PartitionKey, data: pa.Table) -> None:
        """Append the data columns of one partition's rows, rolling over to a new file when one is full."""
        for chunk in data.to_batches():
            offset = 0
            while offset < chunk.num_rows:
                f = self._file(key)
                take = min(chunk.num_rows - offset, self.max_rows_per_file - f.rows)
                f.write(chunk.slice(offset, take))
                offset += take
                if f.rows >= self.max_rows_per_file:
                    self._finish(key)

    def close(self) -> list[dict[str, Any]]:
        """Close every open file; the metadata rows of all files written."""
        for key in list(self.open):
            self._finish(key)
        return self.done


def count_nulls(batch: pa.RecordBatch, columns: list[str], into: dict[str, int]) -> None:
    """Add the nulls of ``batch`` in each of ``columns`` (the non-nullable ones) to ``into``."""
    for name in columns:
        n = batch.column(batch.schema.get_field_index(name)).null_count
        if n:
            into[name] = into.get(name, 0) + n


def make_task_writer(
    table_uri: str,
    target_schema_ipc: bytes,
    partition_by: list[str],
    max_rows_per_file: int,
    compression: str,
    write_id: str,
    row_group_rows: int = 500_000,
):
    """Build the ``mapInArrow`` function that writes one task's rows as Parquet files under ``table_uri``.

    Each batch is cast to the table's schema, split by partition (:func:`split_by_partition`) and appended to
    the task's files (:class:`TaskFiles`); the task returns one metadata row per file (:data:`FILE_META_DDL`).

    Args:
        table_uri: Table location.
        target_schema_ipc: The table's Arrow schema (serialised), data and partition columns, in table order;
            every batch is cast to it. Nulls in a non-nullable column are counted, not written: the task then
            returns, beside its files, a row with an empty path and ``stats`` = ``{column: nulls}``.
        partition_by: Partition columns: not stored in the files, but in folder names and the Delta log.
        max_rows_per_file: Roll over to a new file after this many rows.
        compression: Parquet codec.
        write_id: Unique id of this write, part of every file name, so retries and concurrent writers never
            collide.
        row_group_rows: Batches are buffered into Parquet row groups of about this many rows.
    """

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        target = pa.ipc.read_schema(pa.py_buffer(target_schema_ipc))
        data_schema = pa.schema([f for f in target if f.name not in partition_by])
        non_null = [f.name for f in target if not f.nullable]
        files = TaskFiles(
            table_uri, data_schema, partition_by, max_rows_per_file, compression, write_id, row_group_rows
        )
        nulls: dict[str, int] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            count_nulls(batch, non_null, nulls)
            if nulls:
                continue  # the write is refused: count the rest, write nothing more
            tbl = pa.Table.from_batches([batch]).select(target.names)
            if tbl.schema != target:
                tbl = tbl.cast(target)
            for key, part in split_by_partition(tbl, partition_by):
                files.write(key, part.select(data_schema.names))
        done = files.close()
        if nulls:  # reported as a row without a path: the driver refuses the write and deletes the files
            done.append(
                {
                    "path": "",
                    "size": 0,
                    "partition_values": "{}",
                    "num_records": 0,
                    "stats": json.dumps(nulls),
                    "modification_time": 0,
                }
            )
        if done:
            yield pa.RecordBatch.from_pylist(done, schema=FILE_META_SCHEMA)

    return write_partition
