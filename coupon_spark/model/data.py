"""Training data for the ranks: a Delta snapshot's file list split by rank, each rank reading only its files.

The driver opens the snapshot of ``training_examples`` at one version with delta-rs (no Spark job), lists its
data files from the add actions and splits them into balanced groups (:func:`split_files`); each rank then
reads its group with pyarrow (:func:`read_files`) and turns it into numpy arrays (:func:`make_examples`).
Partition columns are not stored in the Parquet files: they come back from the add actions.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from coupon_spark.errors import InputError
from coupon_spark.model.pair import pair_rows
from coupon_spark.model.spec import ModelSpec, hash_buckets
from coupon_spark.model.transform import FeatureTransform
from coupon_spark.storage import filesystem_for

ID_COLUMNS = ("issuance_id", "user_id", "coupon_id")
TARGET_COLUMNS = ("propensity", "purchased", "redeemed")


class NotEnoughFilesError(InputError, ValueError):
    """The snapshot has fewer data files than ranks: some rank would get no data."""


@dataclass(frozen=True)
class DataFile:
    """One data file of a Delta snapshot: its absolute location, row count and partition values."""

    path: str
    num_records: int
    partition: dict[str, Any] = field(default_factory=dict)


def snapshot_files(
    location: str,
    version: int,
    since: dt.date | None = None,
    until: dt.date | None = None,
    date_column: str = "issue_date",
) -> list[DataFile]:
    """Data files of the table at ``location``, version ``version``, with ``since <= date_column < until``.

    Args:
        location: Table location (path or URI).
        version: Delta version to read (the registry records it).
        since: First partition date kept (None: no lower bound).
        until: Partition dates on or after this are dropped (None: no upper bound).
        date_column: The date partition column the bounds apply to.
    """
    from deltalake import DeltaTable

    table = DeltaTable(location, version=version)
    parts = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    records = (
        actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None] * len(paths)
    )
    pvals = {c: actions.column(f"partition.{c}").to_pylist() for c in parts}
    base = location.rstrip("/")
    out = []
    for i, p in enumerate(paths):
        part = {c: pvals[c][i] for c in parts}
        day = part.get(date_column)
        if isinstance(day, str):
            day = dt.date.fromisoformat(day)
        if day is not None and ((since and day < since) or (until and day >= until)):
            continue
        uri = p if "://" in p else f"{base}/{unquote(p)}"
        n = records[i]
        out.append(DataFile(uri, int(n) if n is not None else -1, part))
    return sorted(out, key=lambda f: f.path)


def split_files(files: list[DataFile], n: int) -> list[list[DataFile]]:
    """Split ``files`` into ``n`` groups of nearly equal row counts (largest file first to the lightest group).

    Deterministic: the same files give the same groups in every process.

    Raises:
        NotEnoughFilesError: Fewer files than groups.
    """
    if len(files) < n:
        raise NotEnoughFilesError(
            f"the training snapshot has {len(files)} data file(s) for {n} ranks: every rank needs at least one. "
            "Lower train.num_proc, or rewrite the table in smaller files (lake.target_file_rows)"
        )
    heap = [(0, i) for i in range(n)]
    groups: list[list[DataFile]] = [[] for _ in range(n)]
    for f in sorted(files, key=lambda f: (-f.num_records, f.path)):
        rows, i = heapq.heappop(heap)
        groups[i].append(f)
        heapq.heappush(heap, (rows + max(f.num_records, 0), i))
    return [sorted(g, key=lambda f: f.path) for g in groups]


def read_files(files: list[DataFile], columns: list[str]) -> pd.DataFrame:
    """Read ``columns`` of ``files`` (partition columns filled from each file's partition values).

    Args:
        files: The rank's files.
        columns: Columns wanted; one missing from a file (added later by schema evolution) is null there.
    """
    frames = []
    for f in files:
        fs, path = filesystem_for(f.path)
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            have = set(pf.schema_arrow.names)
            pdf = pf.read(columns=[c for c in columns if c in have and c not in f.partition]).to_pandas()
        for c in columns:
            if c in f.partition:
                pdf[c] = f.partition[c]
            elif c not in pdf.columns:
                pdf[c] = None
        frames.append(pdf[columns])
    if not frames:
        return pd.DataFrame({c: [] for c in columns})
    return pd.concat(frames, ignore_index=True)


@dataclass
class Examples:
    """One shard's examples as model inputs (numpy), labels and propensities.

    ``is_validation`` marks the rows held out by :func:`validation_mask`.
    """

    user_x: np.ndarray
    user_bucket: np.ndarray
    coupon_x: np.ndarray
    coupon_index: np.ndarray
    pair_x: np.ndarray
    boot: np.ndarray
    purchased: np.ndarray
    redeemed: np.ndarray
    propensity: np.ndarray
    is_validation: np.ndarray

    def __len__(self) -> int:
        return len(self.purchased)

    def take(self, idx: np.ndarray) -> Examples:
        return Examples(**{k: v[idx] for k, v in self.__dict__.items()})

    def split(self) -> tuple[Examples, Examples]:
        """(training rows, validation rows)."""
        return self.take(np.flatnonzero(~self.is_validation)), self.take(np.flatnonzero(self.is_validation))


def validation_mask(issuance_ids: pd.Series | np.ndarray, share: float, seed: int) -> np.ndarray:
    """True for the share of rows held out, by a hash of (seed, issuance_id): stable however data is sharded."""
    ids = pd.Series(issuance_ids, dtype=object).astype(str)
    return hash_buckets(f"{seed}:" + ids, 1_000_000) < round(share * 1_000_000)


def make_examples(
    pdf: pd.DataFrame, transform: FeatureTransform, spec: ModelSpec, validation_share: float, seed: int
) -> Examples:
    """Model inputs, labels and the validation mask of rows following ``TRAINING_EXAMPLES_KEYS``."""
    return Examples(
        user_x=transform.user_matrix(pdf),
        user_bucket=spec.user_buckets(pdf["user_id"]),
        coupon_x=transform.coupon_matrix(pdf),
        coupon_index=spec.coupon_index(pdf["coupon_id"]),
        pair_x=(pair_rows(pdf, spec.default_basket_eur) if spec.pair_dim else np.zeros((len(pdf), 0), np.float32)),
        boot=bootstrap_weights(pdf["issuance_id"], spec.heads, seed),
        purchased=pdf["purchased"].to_numpy(np.float32),
        redeemed=pdf["redeemed"].to_numpy(np.float32),
        propensity=pdf["propensity"].to_numpy(np.float64),
        is_validation=validation_mask(pdf["issuance_id"], validation_share, seed),
    )


_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(12)])


def bootstrap_weights(issuance_ids: pd.Series | np.ndarray, heads: int, seed: int) -> np.ndarray:
    """``[n, heads]`` float32 Poisson(1) weights, one column per head (the online bootstrap: each head sees each
    row 0, 1, 2... times), by a hash of (seed, head, issuance_id): the same in every process however the data is
    sharded. One head: all 1 (no resampling)."""
    n = len(issuance_ids)
    if heads <= 1:
        return np.ones((n, max(heads, 1)), np.float32)
    ids = pd.Series(issuance_ids, dtype=object).astype(str)
    out = np.empty((n, heads), np.float32)
    for b in range(heads):
        u = (hash_buckets(f"{seed}:boot{b}:" + ids, 1 << 30) + 0.5) / float(1 << 30)
        out[:, b] = np.searchsorted(_POISSON1_CDF, u)
    return out


def ipw_weights(propensity: np.ndarray, clip: float) -> np.ndarray:
    """Inverse-propensity weights ``1 / clip(propensity, clip, 1)`` (not yet normalised)."""
    return 1.0 / np.clip(np.asarray(propensity, np.float64), clip, 1.0)
