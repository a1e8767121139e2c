"""The table catalog: every Delta table the stages write, declared once.

Each :class:`Table` names its logical name (the key of ``lake.tables`` in the configuration, which maps it to a
path under the lakehouse root), the stage that writes it (a missing table's error says what to run), its
partition columns, the mode its writer replaces data with, and its contract in :mod:`coupon_spark.schemas`
(``None`` where the columns follow the configuration: the feature tables' ``uf_*`` / ``cf_*`` columns). The
stages read and write through these objects (``lake.read(tables.ORDERS, where=...)``,
``lake.write(df, tables.CANDIDATES)``: partition columns and mode come from here); no module names a table by
a string literal (``tests/test_tables.py`` checks it).

Two stages write tables outside the catalog, by path: ``doctor`` its probe table (``ops/doctor``) and the
synthetic shop its hidden truth (``<lake.root>/_truth``, which the pipeline never reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pyspark.sql.types import StructType

from coupon_spark import schemas

WriteMode = Literal["append", "overwrite", "replace_partitions", "merge"]
"""How a write replaces data (:meth:`coupon_spark.lake.Lake.write`; ``merge``: :meth:`coupon_spark.lake.Lake.merge`
only, the type-2 dimensions); declared here, beside the tables."""


@dataclass(frozen=True, eq=False)
class Table:
    """One table of the lake.

    Attributes:
        name: Logical name: the key of ``lake.tables`` (the configuration gives its path).
        written_by: The stage that writes it.
        partition_by: Its partition columns.
        mode: How its writer replaces data: ``replace_partitions`` (the partitions present in the written
            frame), ``overwrite`` with a ``replace_where`` on the partition column (the date's partition, also
            when the frame is empty), ``append``, or ``merge`` (a type-2 dimension: :mod:`coupon_spark.dimension`).
        schema: Its contract (:mod:`coupon_spark.schemas`), or None where columns follow the configuration
            (the key columns are then :attr:`keys`).
        keys: The key columns (a row's identity within a partition).
    """

    name: str
    written_by: str
    partition_by: tuple[str, ...]
    mode: WriteMode
    schema: StructType | None = None
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        """A table equals its catalog entry and its logical name (``tables.ORDERS == "orders"``), so code that
        compares table arguments with names keeps working."""
        if isinstance(other, Table):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Table({self.name!r})"


def _silver(name: str, schema: StructType, keys: tuple[str, ...]) -> Table:
    return Table(name, "cleanse", ("ingest_date",), "overwrite", schema, keys)


# ---- silver (cleanse): one partition per ingest date, replaced by a rerun ------------------------------------
# users: a type-2 dimension (one row per version, valid_from / valid_to), merged date by date
USERS = Table("users", "cleanse", (), "merge", schemas.USERS, ("user_id", "valid_from"))
COUPONS = _silver("coupons", schemas.COUPONS, ("coupon_id",))
EVENTS = _silver("events", schemas.EVENTS, ("event_id",))
ORDERS = _silver("orders", schemas.ORDERS, ("order_id",))
ISSUANCES = _silver("issuances", schemas.ISSUANCES, ("issuance_id",))
REDEMPTIONS = _silver("redemptions", schemas.REDEMPTIONS, ("redemption_id",))
QUARANTINE = _silver("quarantine", schemas.QUARANTINE, ("source", "source_file", "position"))
RUN_METRICS = _silver("run_metrics", schemas.RUN_METRICS, ("source",))

# ---- features: point-in-time snapshots and the training rows ----------------------------------------------
USER_FEATURES = Table("user_features", "features", ("as_of_date",), "replace_partitions", None, ("user_id",))
COUPON_FEATURES = Table("coupon_features", "features", ("as_of_date",), "replace_partitions", None, ("coupon_id",))
TRAINING_EXAMPLES = Table(
    "training_examples", "features", ("issue_date",), "replace_partitions", None, ("issuance_id",)
)
FEATURE_STATS = Table(
    "feature_stats", "features", ("as_of_date",), "replace_partitions", schemas.FEATURE_STATS, ("feature",)
)
# the incremental daily run's state: per-(user, known day) aggregates and each snapshot's window sums
USER_DAILY = Table("user_daily", "features", ("day",), "overwrite", None, ("user_id",))
USER_WINDOW_SUMS = Table("user_window_sums", "features", ("as_of_date",), "overwrite", None, ("user_id",))

# ---- gold and ops: one partition per run date ----------------------------------------------------------------
CANDIDATES = Table(
    "candidates", "score", ("run_date",), "replace_partitions", schemas.CANDIDATES_SCHEMA, ("user_id", "coupon_id")
)
ALLOCATIONS = Table(
    "allocations", "allocate", ("run_date",), "replace_partitions", schemas.ALLOCATIONS_SCHEMA, ("user_id",)
)
ALLOCATION_RUNS = Table(
    "allocation_runs", "allocate", ("run_date",), "replace_partitions", schemas.ALLOCATION_RUNS_SCHEMA, ("run_id",)
)
EVALUATION_METRICS = Table(
    "evaluation_metrics",
    "evaluate",
    ("run_date",),
    "overwrite",
    schemas.EVALUATION_METRICS,
    ("section", "metric", "dimension", "dimension_value"),
)

CATALOG: dict[str, Table] = {
    t.name: t
    for t in (
        USERS,
        COUPONS,
        EVENTS,
        ORDERS,
        ISSUANCES,
        REDEMPTIONS,
        QUARANTINE,
        RUN_METRICS,
        USER_FEATURES,
        COUPON_FEATURES,
        TRAINING_EXAMPLES,
        FEATURE_STATS,
        USER_DAILY,
        USER_WINDOW_SUMS,
        CANDIDATES,
        ALLOCATIONS,
        ALLOCATION_RUNS,
        EVALUATION_METRICS,
    )
}
SILVER: tuple[Table, ...] = (USERS, COUPONS, EVENTS, ORDERS, ISSUANCES, REDEMPTIONS)
"""The cleansed sources, in the order cleanse writes them (later ones check references against earlier ones)."""


def table(name: str) -> Table:
    """The catalog's table called ``name``.

    Raises:
        KeyError: No such table; the message lists them.
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalog; the tables are {', '.join(CATALOG)}") from None
