"""Delta Lake tables for coupon-spark: one API (:class:`Lake`) over the native and bridge backends."""

from __future__ import annotations

from coupon_spark.lake.api import (
    CommitError,
    ConcurrentWriteError,
    Lake,
    LakeError,
    SchemaMismatchError,
    TableInfo,
    TableNotFoundError,
    Txn,
    UnsupportedTableError,
    WriteResult,
)

__all__ = [
    "CommitError",
    "ConcurrentWriteError",
    "Lake",
    "LakeError",
    "SchemaMismatchError",
    "TableInfo",
    "TableNotFoundError",
    "Txn",
    "UnsupportedTableError",
    "WriteResult",
]
