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
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

# Spark's ExternalCatalogUtils.escapePathName escapes these (plus control characters) in partition folders.
_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^')

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


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and base path for a table location (local path or object-store URI)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    if uri.startswith("s3a://") or uri.startswith("s3n://"):
        uri = "s3://" + uri.split("://", 1)[1]
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), uri[len("file://") :]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def _json_stat(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _OpenFile:
    def __init__(self, fs: pafs.FileSystem, base: str, rel: str, schema: pa.Schema, compression: str):
        self.rel = rel
        self.full = f"{base.rstrip('/')}/{rel}"
        self.fs = fs
        parent = self.full.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        self.writer = pq.ParquetWriter(
            self.full, schema, filesystem=fs, compression=compression, write_statistics=True
        )
        self.rows = 0
        self.stats_parts: list[pa.Table] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)
        self.rows += batch.num_rows
        self.stats_parts.append(_stat_summary(batch))

    def close(self, partition_values: dict[str, str | None], data_columns: list[str]) -> dict[str, Any]:
        self.writer.close()
        info = self.fs.get_file_info(self.full)
        summary = pa.concat_tables(self.stats_parts) if self.stats_parts else None
        return {
            "path": self.rel,  # raw relative path: delta-rs URI-encodes it in the log
            "size": info.size,
            "partition_values": json.dumps(partition_values),
            "num_records": self.rows,
            "stats": _merge_stats(summary, self.rows, data_columns),
            "modification_time": int(time.time() * 1000),
        }


def _stat_summary(batch: pa.RecordBatch) -> pa.Table:
    """Per-batch min/max/null count of each column, small enough to keep until the file closes."""
    arrays, names = [], []
    for i, field in enumerate(batch.schema):
        col = batch.column(i)
        names.append(f"{field.name}\x00n")
        arrays.append(pa.array([col.null_count], pa.int64()))
        if any(f(field.type) for f in _STAT_TYPES) and col.null_count < len(col):
            mm = pc.min_max(col)
            names += [f"{field.name}\x00min", f"{field.name}\x00max"]
            arrays += [pa.array([mm["min"].as_py()], field.type), pa.array([mm["max"].as_py()], field.type)]
    return pa.table(arrays, names=names)


def _merge_stats(summary: pa.Table | None, rows: int, data_columns: list[str]) -> str:
    nulls: dict[str, int] = {}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for name in data_columns:
        if summary is None:
            nulls[name] = 0
            continue
        nulls[name] = int(pc.sum(summary.column(f"{name}\x00n")).as_py() or 0)
        if f"{name}\x00min" not in summary.column_names:
            continue
        lo = pc.min(summary.column(f"{name}\x00min")).as_py()
        hi = pc.max(summary.column(f"{name}\x00max")).as_py()
        if lo is None or hi is None:
            continue
        if isinstance(lo, str) and (len(lo) > _MAX_STRING_STAT or len(hi) > _MAX_STRING_STAT):
            continue
        mins[name], maxs[name] = _json_stat(lo), _json_stat(hi)
    return json.dumps(
        {"numRecords": rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}, separators=(",", ":")
    )


def make_task_writer(
    table_uri: str,
    target_schema_ipc: bytes,
    partition_by: list[str],
    max_rows_per_file: int,
    compression: str,
    write_id: str,
):
    """Build the ``mapInArrow`` function that writes one task's rows as Parquet files under ``table_uri``.

    Args:
        table_uri: Table location.
        target_schema_ipc: The table's Arrow schema (serialised), data and partition columns, in table order;
            every batch is cast to it, and a null in a non-nullable column fails the task.
        partition_by: Partition columns: not stored in the files, but in folder names and the Delta log.
        max_rows_per_file: Roll over to a new file after this many rows.
        compression: Parquet codec.
        write_id: Unique id of this write, part of every file name, so retries and concurrent writers never
            collide.
    """

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        target = pa.ipc.read_schema(pa.py_buffer(target_schema_ipc))
        data_fields = [f for f in target if f.name not in partition_by]
        data_schema = pa.schema(data_fields)
        data_columns = [f.name for f in data_fields]
        non_null = [f.name for f in target if not f.nullable]
        fs, base = filesystem_for(table_uri)
        task = uuid.uuid4().hex[:12]
        open_files: dict[tuple[str | None, ...], _OpenFile] = {}
        done: list[dict[str, Any]] = []
        seq = 0
        pvals_of: dict[tuple[str | None, ...], dict[str, str | None]] = {}

        def finish(key: tuple[str | None, ...]) -> None:
            done.append(open_files.pop(key).close(pvals_of[key], data_columns))

        for batch in batches:
            if batch.num_rows == 0:
                continue
            for name in non_null:
                if batch.column(batch.schema.get_field_index(name)).null_count:
                    raise ValueError(
                        f"column {name!r} is NOT NULL in the Delta table but the data has nulls: nothing "
                        "was committed"
                    )
            tbl = pa.Table.from_batches([batch]).select(target.names).cast(target)
            if partition_by:
                # one pass: row indices grouped by partition value (nulls form their own group)
                idx = tbl.select(partition_by).append_column("__row", pa.array(range(tbl.num_rows), pa.int64()))
                groups = idx.group_by(partition_by, use_threads=False).aggregate([("__row", "list")])
                rows = groups.column("__row_list").combine_chunks()
                keys = groups.select(partition_by).to_pylist()
                parts = [
                    (tuple(partition_value_to_str(k[c]) for c in partition_by), tbl.take(rows[i].values))
                    for i, k in enumerate(keys)
                ]
            else:
                parts = [((), tbl)]
            for key, part in parts:
                data = part.select(data_columns)
                for chunk in data.to_batches():
                    offset = 0
                    while offset < chunk.num_rows:
                        f = open_files.get(key)
                        if f is None:
                            pvals = dict(zip(partition_by, key))
                            pvals_of[key] = pvals
                            prefix = partition_dir(partition_by, pvals) + "/" if partition_by else ""
                            rel = f"{prefix}part-{seq:05d}-{write_id}-{task}.c000.{compression}.parquet"
                            seq += 1
                            f = open_files[key] = _OpenFile(fs, base, rel, data_schema, compression)
                        take = min(chunk.num_rows - offset, max_rows_per_file - f.rows)
                        f.write(chunk.slice(offset, take))
                        offset += take
                        if f.rows >= max_rows_per_file:
                            finish(key)
        for key in list(open_files):
            finish(key)
        if done:
            yield pa.RecordBatch.from_pylist(
                done,
                schema=pa.schema(
                    [
                        ("path", pa.string()),
                        ("size", pa.int64()),
                        ("partition_values", pa.string()),
                        ("num_records", pa.int64()),
                        ("stats", pa.string()),
                        ("modification_time", pa.int64()),
                    ]
                ),
            )

    return write_partition
