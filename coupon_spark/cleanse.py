"""``coupon-spark cleanse``: one ingest date of landing files into the silver Delta tables, nothing lost.

For each source (users, coupons, events, orders, issuances, redemptions, in that order, since later ones
check their references against earlier ones), every line gets either a place in its silver table or a row in
the quarantine table with a reason code (:data:`REASONS`, first matching wins):

``bad_encoding``      the line is not valid UTF-8
``malformed``         not a JSON object / not a CSV row with the header's number of fields, or empty
``missing_field``     a required field is absent, null or blank
``bad_type``          a value cannot be read as its type (number, ISO 8601 timestamp, date)
``unknown_currency``  a currency missing from ``cleanse.fx_to_eur``
``bad_amount``        a negative amount, or one above ``cleanse.max_amount_eur``
``bad_value``         a value outside its domain (event type, device, propensity outside (0, 1], ...)
``unknown_category``  a category that is neither canonical nor a configured alias
``future_timestamp``  later than the end of the ingest date plus ``cleanse.future_tolerance_minutes``
``stale_timestamp``   a fact more than ``cleanse.max_lateness_days`` older than the ingest date
``unknown_user``      a user id absent from that date's user snapshot
``unknown_coupon``    a coupon id absent from that date's coupon catalogue
``unknown_issuance``  a redemption of an issuance not seen on this date nor in the lookback window
``control_issuance``  a redemption of a control-arm issuance (one that gave no coupon)
``coupon_mismatch``   a redemption of another coupon than the one its issuance gave
``user_mismatch``     a redemption by another user than the one its issuance went to
``duplicate``         the same line again (same natural key, same text); one copy is kept. Also a fact (event,
                      order, issuance, redemption) whose key silver already holds from another ingest date:
                      silver keeps the copy it has (see :func:`with_repeats_marked`)
``superseded``        an older version of a record (same natural key; the latest ``updated_at``, else the
                      later position in the file, is kept)

Values are normalised on the way: timestamps to UTC (any offset; naive ones read in
``cleanse.naive_timezone``), money to ``decimal(12,2)`` in the base currency, categories to their canonical
name, codes to one case.

Every count is reconciled before anything is written: per source, lines read = accepted + quarantined, or the
job raises :class:`ReconciliationError`. Each table's partition of the ingest date is then replaced (a rerun
replaces, never duplicates), except silver ``users``: a type-2 dimension, into which the export's changes are
merged (:mod:`coupon_spark.dimension`; a rerun merges nothing new). Should a write fail, the partitions already
replaced, and the dimension, are put back as they were.

A bulk import (a shop's past, loaded once: :mod:`coupon_spark.datagen.backfill`) is a landing folder with a
``manifest.json`` of ``{"kind": "import", "covers": {"from": F, "to": T}}``; its folder is the one of T. It is
cleansed by the same rules with two differences: its facts must lie in ``[F, T]`` (``stale_timestamp`` before
F, ``future_timestamp`` from T + 1 day on, without tolerance) instead of within the lateness limit, and each
accepted fact lands in the silver partition of its own day, as if it had arrived on time, so that the features'
point-in-time windows see the past where it happened. Snapshots (users, as versions from T; coupons), the
quarantine and the run metrics keep the folder's date T. A rerun replaces every partition of ``[F, T]``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from coupon_spark import schemas, tables
from coupon_spark.config import CleanseConfig, Config
from coupon_spark.dimension import VALID_FROM, VALID_TO, from_snapshots, is_snapshot_layout, merge_source
from coupon_spark.errors import InputError, UpstreamNotReady
from coupon_spark.lake import Lake
from coupon_spark.runner import Context

log = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "bad_encoding",
    "malformed",
    "missing_field",
    "bad_type",
    "unknown_currency",
    "bad_amount",
    "bad_value",
    "unknown_category",
    "future_timestamp",
    "stale_timestamp",
    "unknown_user",
    "unknown_coupon",
    "unknown_issuance",
    "control_issuance",
    "coupon_mismatch",
    "user_mismatch",
    "duplicate",
    "superseded",
)
SOURCE_ORDER: tuple[str, ...] = ("users", "coupons", "events", "orders", "issuances", "redemptions")
PARTITION = "ingest_date"

_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$"
_OFFSET_PATTERN = r"(Z|[+-]\d{2}:?\d{2})$"
_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_NUMBER_PATTERN = r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$"
_INT_PATTERN = r"^[+-]?\d+$"


class CleanseError(RuntimeError):
    """Base class of the cleansing job's errors."""


class LandingFileMissingError(CleanseError, UpstreamNotReady, FileNotFoundError):
    """A landing file of the ingest date is not there."""


class LandingHeaderError(CleanseError, InputError, ValueError):
    """A CSV file's header is not the expected one (a file-level problem, not a record's)."""


class ImportManifestError(CleanseError, InputError, ValueError):
    """A landing folder's ``manifest.json`` is not a valid import manifest."""


@dataclass(frozen=True)
class ImportPeriod:
    """The period a bulk import covers (both days included); its landing folder is the one of ``last``."""

    first: dt.date
    last: dt.date

    @property
    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]


MANIFEST = "manifest.json"
"""A landing folder's optional description; ``{"kind": "import", ...}`` marks a bulk import."""


def read_manifest(folder: str) -> dict[str, Any] | None:
    """The landing folder's ``manifest.json`` as a dict, or None when there is none.

    Raises:
        ImportManifestError: It is not a JSON object.
    """
    import pyarrow.fs as pafs

    from coupon_spark.storage import filesystem_for

    fs, path = filesystem_for(f"{folder.rstrip('/')}/{MANIFEST}")
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    try:
        out = json.loads(text)
    except ValueError as e:
        raise ImportManifestError(f"{folder}/{MANIFEST}: not JSON ({e}); fix or remove it") from None
    if not isinstance(out, dict):
        raise ImportManifestError(
            f"{folder}/{MANIFEST}: expected a JSON object, found {type(out).__name__}; fix or remove it"
        )
    return out


def import_period(manifest: dict[str, Any] | None, folder_day: dt.date, where: str) -> ImportPeriod | None:
    """The import period of a landing folder's manifest (None: an ordinary ingest date).

    Raises:
        ImportManifestError: A manifest that is not ``{"kind": "import", "covers": {"from", "to"}}`` with
            ``to`` equal to the folder's date and ``from <= to``.
    """
    if manifest is None:
        return None
    try:
        if manifest.get("kind") != "import":
            raise ValueError(f"kind is {manifest.get('kind')!r}, expected 'import'")
        covers = manifest["covers"]
        period = ImportPeriod(dt.date.fromisoformat(covers["from"]), dt.date.fromisoformat(covers["to"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ImportManifestError(
            f"{where}: not an import manifest ({e}); expected "
            '{"kind": "import", "covers": {"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}}. Fix or remove it.'
        ) from None
    if period.last != folder_day or period.first > period.last:
        raise ImportManifestError(
            f"{where}: an import covering {period.first}..{period.last} must lie in the folder of its last day "
            f"({period.last}) and start no later; it is in the folder of {folder_day}. Move the files or fix "
            "the manifest."
        )
    return period


class ReconciliationError(CleanseError):
    """Records read != accepted + quarantined for a source: the job lost or invented records."""


# ---- source specifications ----------------------------------------------------------------------------------

Kind = Literal["string", "timestamp", "date", "money", "int", "double", "category", "code", "currency"]


@dataclass(frozen=True)
class Rule:
    """One landing field: how to type it, whether it is required, and its silver column."""

    name: str
    kind: Kind = "string"
    required: bool = False
    out: str | None = None  # silver column (default: the same name; money: <name>_eur)
    values: tuple[str, ...] = ()  # allowed values of a code (after lower-casing), or for a category extra ones
    upper: bool = False  # codes kept in upper case (regions, currencies)
    capped: bool = True  # money: above cleanse.max_amount_eur is absurd (not for budgets)
    bounds: tuple[float | None, float | None] = (None, None)  # int/double: the plausible range (inclusive)

    @property
    def column(self) -> str:
        if self.out:
            return self.out
        return f"{self.name}_eur" if self.kind == "money" else self.name


@dataclass(frozen=True)
class Match:
    """A field that must agree with the same field of the record a reference points to: a redemption's coupon
    and user are its issuance's."""

    ref: str  # the referring field, one of the source's ``refs`` ("issuance_id")
    field: str  # compared with the referenced record's field of the same name ("coupon_id")
    reason: str  # the two differ ("coupon_mismatch")
    reason_if_none: str | None = None  # the referenced record's field is null ("control_issuance": no coupon)


@dataclass(frozen=True)
class Source:
    """A landing source: its file, fields, natural key, version column, time checks and references.

    A source with an ``event_time`` is a table of facts: each happens once, so its key is unique across
    ingest dates (a key silver already holds from another date is a ``duplicate``). The others are snapshots
    (users, coupons): each date restates every record, so the key is unique within a date only.
    """

    name: str
    rules: tuple[Rule, ...]
    key: str
    table: tables.Table
    version: str | None = None  # the record's own update time: the latest wins among duplicates
    event_time: str | None = None  # checked for future and stale timestamps
    future_only: tuple[str, ...] = ()  # checked for future timestamps only
    refs: tuple[tuple[str, str], ...] = ()  # (field, "user" | "coupon" | "issuance")
    currency: str | None = None  # the field holding the currency of the money fields
    zero_when_null: tuple[str, ...] = ()  # silver money columns that are 0 when absent (e.g. no discount)
    matches: tuple[Match, ...] = ()  # fields that must agree with the referenced record's

    @property
    def is_fact(self) -> bool:
        return self.event_time is not None

    @property
    def schema(self) -> StructType:
        """The silver contract, as the catalog declares it."""
        if self.table.schema is None:  # every silver table is declared with its contract
            raise TypeError(f"the catalog declares no schema for silver table {self.table.name!r}")
        return self.table.schema

    @property
    def tracked(self) -> tuple[str, ...]:
        """A dimension's columns whose change makes a new version: all but the key, the record's own update
        time and the validity range."""
        skip = {self.key_column, self.version, VALID_FROM, VALID_TO}
        return tuple(f.name for f in self.schema.fields if f.name not in skip)

    @property
    def key_column(self) -> str:
        """The natural key's silver column."""
        return next(r.column for r in self.rules if r.name == self.key)

    @property
    def file(self) -> str:
        return schemas.LANDING_FILES[self.name]

    @property
    def is_csv(self) -> bool:
        return self.file.endswith(".csv")


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "users",
            (
                Rule("user_id", required=True),
                Rule("signup_date", "date"),
                Rule("region", "code", upper=True),
                Rule("city"),
                Rule("device", "code", values=("ios", "android", "web")),
                Rule("segment", "code"),
                Rule("updated_at", "timestamp"),
            ),
            key="user_id",
            table=tables.USERS,
            version="updated_at",
            future_only=("updated_at",),
        ),
        Source(
            "coupons",
            (
                Rule("coupon_id", required=True),
                Rule("campaign_id"),
                Rule("kind", "code"),
                Rule("category", "category", values=("all",)),
                Rule("face_value", "money", required=True),
                Rule("min_spend", "money"),
                Rule("cost", "money", required=True),
                Rule("currency", "currency", required=True),
                Rule("valid_from", "date", required=True),
                Rule("valid_to", "date", required=True),
                Rule("campaign_budget", "money", capped=False),
                Rule("updated_at", "timestamp"),
            ),
            key="coupon_id",
            table=tables.COUPONS,
            version="updated_at",
            future_only=("updated_at",),
            currency="currency",
        ),
        Source(
            "events",
            (
                Rule("event_id", required=True),
                Rule("event_type", "code", required=True, values=("view", "cart", "purchase")),
                Rule("user_id", required=True),
                Rule("ts", "timestamp", required=True, out="event_time"),
                Rule("session_id"),
                Rule("product_id"),
                Rule("category", "category"),
                Rule("price", "money"),
                Rule("currency", "currency"),
                Rule("order_id"),
            ),
            key="event_id",
            table=tables.EVENTS,
            event_time="ts",
            refs=(("user_id", "user"),),
            currency="currency",
        ),
        Source(
            "orders",
            (
                Rule("order_id", required=True),
                Rule("user_id", required=True),
                Rule("ordered_at", "timestamp", required=True),
                Rule("category", "category"),
                Rule("amount", "money", required=True),
                Rule("discount", "money"),
                Rule("currency", "currency", required=True, out="source_currency"),
                Rule("coupon_id"),
                Rule("n_items", "int", bounds=(1, 1000)),
                Rule("updated_at", "timestamp"),
            ),
            key="order_id",
            table=tables.ORDERS,
            version="updated_at",
            event_time="ordered_at",
            refs=(("user_id", "user"), ("coupon_id", "coupon")),
            currency="currency",
            zero_when_null=("discount_eur",),
        ),
        Source(
            "issuances",
            (
                Rule("issuance_id", required=True),
                Rule("user_id", required=True),
                Rule("coupon_id"),
                Rule("issued_at", "timestamp", required=True),
                Rule("policy"),
                Rule("propensity", "double", required=True),
            ),
            key="issuance_id",
            table=tables.ISSUANCES,
            event_time="issued_at",
            refs=(("user_id", "user"), ("coupon_id", "coupon")),
        ),
        Source(
            "redemptions",
            (
                Rule("redemption_id", required=True),
                Rule("issuance_id", required=True),
                Rule("user_id", required=True),
                Rule("coupon_id", required=True),
                Rule("order_id"),
                Rule("redeemed_at", "timestamp", required=True),
                Rule("discount", "money"),
                Rule("currency", "currency"),
            ),
            key="redemption_id",
            table=tables.REDEMPTIONS,
            event_time="redeemed_at",
            refs=(("user_id", "user"), ("coupon_id", "coupon"), ("issuance_id", "issuance")),
            currency="currency",
            matches=(
                Match("issuance_id", "coupon_id", "coupon_mismatch", reason_if_none="control_issuance"),
                Match("issuance_id", "user_id", "user_mismatch"),
            ),
        ),
    ]
}


# ---- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandingLines:
    """The lines of one landing source, read in one pass and numbered from that pass's own counts.

    ``lines`` has ``source_file``, ``_block`` (the first byte of the line's split of the file), ``_mid``
    (consecutive within a split, in line order) and ``value`` (raw bytes as a string; may be invalid UTF-8). A
    line's 1-based number is its split's offset plus its rank in the split (:func:`numbered`); the offsets come
    from :func:`split_offsets` over a count of the lines per split, which the cleansing takes together with its
    reason counts, so the file is read once.
    """

    lines: DataFrame
    has_header: bool


def read_lines(spark: SparkSession, path: str, has_header: bool, expected_header: tuple[str, ...] = ()) -> LandingLines:
    """Read a landing file (or a folder of part files) as lines to be numbered; a CSV file's header is checked
    first, from the file's first bytes (no Spark job).

    Raises:
        LandingHeaderError: A CSV file whose first line is not ``expected_header``, or no CSV line at all.
    """
    raw = spark.read.text(path).select(
        F.col("_metadata.file_path").alias("source_file"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_mid"),
        "value",
    )
    if has_header:
        check_headers(raw.inputFiles(), path, ",".join(expected_header))
    return LandingLines(lines=raw, has_header=has_header)


def check_headers(files: list[str], path: str, want: str) -> None:
    """Every non-empty CSV file's first line must be ``want`` (a byte-order mark and spaces aside).

    Raises:
        LandingHeaderError: A file with another first line, or no non-empty file at all.
    """
    from urllib.parse import unquote

    from coupon_spark.storage import filesystem_for

    heads = 0
    for file in sorted(files):
        if file.startswith("file:/") and not file.startswith("file://"):
            file = "file://" + file[len("file:") :]
        fs, fpath = filesystem_for(unquote(file) if file.startswith("file://") else file)
        with fs.open_input_stream(fpath) as f:
            first = f.read(1 << 16)
        if not first:
            continue
        heads += 1
        line = first.split(b"\n", 1)[0] if b"\n" in first else first
        got = line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
        if got != want:
            raise LandingHeaderError(
                f"{file}: the CSV header is {got!r}, expected {want!r}. The export's columns "
                "changed: fix the export, or update coupon_spark.schemas.LANDING_FIELDS and the cleansing "
                "rules together. Nothing was written."
            )
    if not heads:
        raise LandingHeaderError(
            f"{path}: the CSV file is empty (no header line {want!r}): an export that failed half-way? "
            "Re-export it (a day without records still has the header). Nothing was written."
        )


@dataclass(frozen=True)
class SplitCount:
    """The lines of one split of a landing file that have one reason (None: accepted)."""

    source_file: str
    block: int
    reason: str | None
    lines: int
    first: int  # the smallest _mid among them
    last: int  # the largest


def split_counts(df: DataFrame) -> list[SplitCount]:
    """Lines per (file, split, reason) of ``df`` (a classified :class:`LandingLines` frame): one Spark job."""
    rows = (
        df.groupBy("source_file", "_block", "reason")
        .agg(F.count(F.lit(1)).alias("n"), F.min("_mid").alias("lo"), F.max("_mid").alias("hi"))
        .collect()
    )
    return [SplitCount(r["source_file"], r["_block"], r["reason"], r["n"], r["lo"], r["hi"]) for r in rows]


@dataclass(frozen=True)
class SplitOffsets:
    """Where each split's lines start, and what the counts say about the whole source."""

    offsets: list[tuple[str, int, int, int]]  # (file, block, first _mid, lines of the file's earlier splits)
    lines_read: int  # lines in the files, by the splits' id ranges (independent of the rows' count)
    header_reasons: list[str | None]  # the reason each file's first line got (CSV only)
    files: tuple[str, ...]


def split_offsets(counts: list[SplitCount], has_header: bool) -> SplitOffsets:
    """Each split's first ``_mid`` and line offset in its file: a split's ids are consecutive, so it holds
    ``last - first + 1`` lines whatever happened to its rows later (a lost or doubled row shows up as a
    difference between this and the rows' count: the reconciliation)."""
    splits: dict[tuple[str, int], list[SplitCount]] = {}
    for c in counts:
        splits.setdefault((c.source_file, c.block), []).append(c)
    offsets, headers = [], []
    running, last_file, total = 0, None, 0
    for (file, block), cs in sorted(splits.items()):
        first, last = min(c.first for c in cs), max(c.last for c in cs)
        if file != last_file:
            running, last_file = 0, file
            if has_header:
                headers.append(next(c.reason for c in cs if c.first == first))
        offsets.append((file, block, first, running))
        running += last - first + 1
        total += last - first + 1
    return SplitOffsets(offsets, total, headers, tuple(sorted({f for f, _ in splits})))


def numbered(spark: SparkSession, df: DataFrame, offsets: SplitOffsets, has_header: bool) -> DataFrame:
    """``df`` with each line's 1-based ``position`` in its file, the CSV header (line 1) left out."""
    offset_df = spark.createDataFrame(offsets.offsets, "source_file string, _block long, _first long, _offset long")
    out = df.join(F.broadcast(offset_df), on=["source_file", "_block"], how="inner").select(
        "*", (F.col("_offset") + F.col("_mid") - F.col("_first") + 1).alias("position")
    )
    out = out.drop("_first", "_offset")
    return out.filter(F.col("position") > 1) if has_header else out


def landing_path(cfg: Config, day: dt.date, source: str) -> str:
    return f"{cfg.lake.landing.rstrip('/')}/{day.isoformat()}/{schemas.LANDING_FILES[source]}"


def _const(df: DataFrame) -> Callable[[], DataFrame]:
    return lambda: df


def _exists(spark: SparkSession, path: str) -> bool:
    jvm: Any = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    return bool(fs.exists(hpath))


# ---- column functions ---------------------------------------------------------------------------------------


def blank_to_null(c: Column) -> Column:
    """Trimmed text, null when empty."""
    t = F.trim(c)
    return F.when(F.length(t) > 0, t)


def parse_timestamp(c: Column, naive_timezone: str) -> Column:
    """An ISO 8601 text to a UTC timestamp; null when it is not one. Offsets are honoured; a timestamp
    without an offset is read in ``naive_timezone``."""
    ok = c.rlike(_TS_PATTERN)
    ts = c.try_cast("timestamp")
    naive = ~c.rlike(_OFFSET_PATTERN)
    if naive_timezone.upper() != "UTC":
        ts = F.when(naive, F.to_utc_timestamp(ts, naive_timezone)).otherwise(ts)
    return F.when(ok, ts)


def parse_date(c: Column) -> Column:
    return F.when(c.rlike(_DATE_PATTERN), c.try_cast("date"))


def parse_decimal(c: Column) -> Column:
    return F.when(c.rlike(_NUMBER_PATTERN), c.try_cast("decimal(18,4)"))


def canonical_category(c: Column, cfg: CleanseConfig, extra: tuple[str, ...] = ()) -> Column:
    """Lower-cased, whitespace-collapsed, aliases resolved; null when not a known category."""
    norm = F.lower(F.regexp_replace(F.trim(c), r"\s+", " "))
    aliases = {**{k.lower(): v for k, v in cfg.category_aliases.items()}, **{x: x for x in (*cfg.categories, *extra)}}
    return F.element_at(F.create_map(*[F.lit(x) for kv in aliases.items() for x in kv]), norm)


def fx_rate(currency: Column, cfg: CleanseConfig) -> Column:
    return F.element_at(
        F.create_map(*[x for k, v in cfg.fx_to_eur.items() for x in (F.lit(k), F.lit(v).cast("decimal(12,6)"))]),
        currency,
    )


# ---- transformations ----------------------------------------------------------------------------------------


def with_parsed_fields(source: Source) -> Callable[[DataFrame], DataFrame]:
    """Add ``raw`` (a struct of every landing field as text) and ``_malformed`` (the line is no record)."""
    names = schemas.LANDING_FIELDS[source.name]

    def transform(df: DataFrame) -> DataFrame:
        text = F.col("value")
        if source.is_csv:
            ddl = ", ".join(f"`{n}` string" for n in names) + ", `_corrupt` string"
            parsed = F.from_csv(text, ddl, {"columnNameOfCorruptRecord": "_corrupt", "mode": "PERMISSIVE"})
            shape_ok = F.length(F.trim(text)) > 0
        else:
            ddl = ", ".join(f"`{n}` string" for n in names) + ", `_corrupt` string"
            parsed = F.from_json(text, ddl, {"columnNameOfCorruptRecord": "_corrupt", "mode": "PERMISSIVE"})
            shape_ok = F.trim(text).startswith("{") & F.trim(text).endswith("}")
        return df.select("*", parsed.alias("raw")).select(
            "*",
            (F.col("raw").isNull() | F.col("raw._corrupt").isNotNull() | ~shape_ok).alias("_malformed"),
        )

    return transform


def with_typed_fields(source: Source, cfg: CleanseConfig) -> Callable[[DataFrame], DataFrame]:
    """Add ``t_<field>`` per landing field: typed, normalised, null when absent or unreadable (money: in the
    record's currency, plus ``t_<field>_eur`` in the base currency)."""

    def transform(df: DataFrame) -> DataFrame:
        text = {r.name: blank_to_null(F.col(f"raw.{r.name}")) for r in source.rules}
        rate = fx_rate(F.upper(text[source.currency]), cfg) if source.currency else F.lit(1).cast("decimal(12,6)")
        cols: list[Column] = []
        for r in source.rules:
            v = text[r.name]
            if r.kind == "timestamp":
                t = parse_timestamp(v, cfg.naive_timezone)
            elif r.kind == "date":
                t = parse_date(v)
            elif r.kind == "money":
                t = parse_decimal(v)
                cols.append(F.round(t * rate, 2).alias(f"t_{r.name}_eur"))
            elif r.kind == "int":
                t = F.when(v.rlike(_INT_PATTERN), v.try_cast("int"))
            elif r.kind == "double":
                t = F.when(v.rlike(_NUMBER_PATTERN), v.try_cast("double"))
            elif r.kind in ("code", "currency"):
                t = F.upper(v) if (r.upper or r.kind == "currency") else F.lower(v)
            elif r.kind == "category":
                t = canonical_category(v, cfg, r.values)
            else:
                t = v
            cols.append(t.alias(f"t_{r.name}"))
        return df.select("*", *cols)

    return transform


def with_reference_flags(source: Source, refs: dict[str, DataFrame]) -> Callable[[DataFrame], DataFrame]:
    """Add ``_ref_<field>`` (true: known or null; false: unknown) by left joins on the distinct known keys;
    for a reference that :attr:`Source.matches` use, also ``_found_<field>`` (the referenced record was found)
    and the referenced record's fields as ``_r_<field>_<its field>``. ``refs[kind]`` has a ``key`` column
    and those fields, one row per key."""

    def transform(df: DataFrame) -> DataFrame:
        out = df
        for fld, kind in source.refs:
            fields = [m.field for m in source.matches if m.ref == fld]
            known = (
                refs[kind]
                .select(F.col("key").alias(f"_k_{fld}"), *[F.col(f).alias(f"_r_{fld}_{f}") for f in fields])
                .distinct()
            )
            out = out.join(F.broadcast(known), on=F.col(f"t_{fld}") == F.col(f"_k_{fld}"), how="left")
            out = out.withColumn(f"_ref_{fld}", F.col(f"t_{fld}").isNull() | F.col(f"_k_{fld}").isNotNull())
            if fields:
                out = out.withColumn(f"_found_{fld}", F.col(f"_k_{fld}").isNotNull())
            out = out.drop(f"_k_{fld}")
        return out

    return transform


Check = tuple[str, Column, Column]  # (reason, failed?, detail)


def record_checks(source: Source, cfg: CleanseConfig, day: dt.date, period: ImportPeriod | None = None) -> list[Check]:
    """Every check of a record of ``source``, over the columns the transformations above add (``period``:
    the folder is a bulk import; facts must lie inside it)."""
    text = {r.name: blank_to_null(F.col(f"raw.{r.name}")) for r in source.rules}
    t = {r.name: F.col(f"t_{r.name}") for r in source.rules}
    out: list[Check] = [
        (
            "bad_encoding",
            ~F.is_valid_utf8("value"),
            F.concat(F.lit("invalid UTF-8; original bytes (base64): "), F.base64(F.col("value").cast("binary"))),
        ),
        (
            "malformed",
            F.col("_malformed"),
            F.lit("not a CSV row with the header's fields" if source.is_csv else "not one JSON object"),
        ),
    ]
    for r in source.rules:
        v = text[r.name]
        if r.required:
            out.append(("missing_field", v.isNull(), F.lit(f"{r.name} is missing")))
        if r.kind in ("timestamp", "date", "money", "int", "double"):
            out.append(
                ("bad_type", v.isNotNull() & t[r.name].isNull(), F.format_string(f"{r.name}: %s is not a {r.kind}", v))
            )
        if r.kind == "currency":
            out.append(
                (
                    "unknown_currency",
                    v.isNotNull() & fx_rate(t[r.name], cfg).isNull(),
                    F.format_string(f"{r.name}: %s is not in cleanse.fx_to_eur", v),
                )
            )
        if r.kind == "money":
            eur = F.col(f"t_{r.name}_eur")
            out.append(("bad_amount", t[r.name] < 0, F.format_string(f"{r.name}: %s is negative", v)))
            if r.capped:
                out.append(
                    (
                        "bad_amount",
                        eur > F.lit(cfg.max_amount_eur),
                        F.format_string(f"{r.name}: %s is above {cfg.max_amount_eur:g} {cfg.base_currency}", v),
                    )
                )
        if r.kind == "code" and r.values:
            out.append(
                (
                    "bad_value",
                    v.isNotNull() & ~t[r.name].isin(*r.values),
                    F.format_string(f"{r.name}: %s is not one of {', '.join(r.values)}", v),
                )
            )
        if r.kind in ("string", "code", "category", "currency"):
            out.append(
                (
                    "bad_value",
                    F.length(v) > F.lit(cfg.max_field_chars),
                    F.format_string(
                        f"{r.name}: %d characters, more than cleanse.max_field_chars ({cfg.max_field_chars})",
                        F.length(v),
                    ),
                )
            )
        lo, hi = r.bounds
        if lo is not None or hi is not None:
            x = t[r.name]
            outside = (x < F.lit(lo) if lo is not None else F.lit(False)) | (
                x > F.lit(hi) if hi is not None else F.lit(False)
            )
            out.append(("bad_value", outside, F.format_string(f"{r.name}: %s is outside [{lo}, {hi}]", v)))
        if r.name == "propensity":
            p = t[r.name]
            out.append(("bad_value", ~((p > 0) & (p <= 1)), F.format_string("propensity: %s is not in (0, 1]", v)))
        if r.kind == "category":
            out.append(
                (
                    "unknown_category",
                    v.isNotNull() & t[r.name].isNull(),
                    F.format_string(f"{r.name}: %s is not a known category", v),
                )
            )
    start = dt.datetime(day.year, day.month, day.day)
    latest = start + dt.timedelta(days=1, minutes=cfg.future_tolerance_minutes)
    earliest = start - dt.timedelta(days=cfg.max_lateness_days)
    stale_why = f"more than {cfg.max_lateness_days} days before {day}"
    if period is not None:
        earliest = dt.datetime(period.first.year, period.first.month, period.first.day)
        stale_why = f"before the import's first day {period.first}"
    for name in (*([source.event_time] if source.event_time else []), *source.future_only):
        after_end = t[name] > F.lit(latest)
        if period is not None and name == source.event_time:  # an imported fact must not spill past T
            after_end = t[name] >= F.lit(start + dt.timedelta(days=1))
        out.append(
            (
                "future_timestamp",
                after_end,
                F.format_string(f"{name}: %s is after the ingest date {day}", text[name]),
            )
        )
    if source.event_time:
        name = source.event_time
        out.append(
            (
                "stale_timestamp",
                t[name] < F.lit(earliest),
                F.format_string(f"{name}: %s is {stale_why}", text[name]),
            )
        )
    codes = {"user": "unknown_user", "coupon": "unknown_coupon", "issuance": "unknown_issuance"}
    for fld, kind in source.refs:
        out.append((codes[kind], ~F.col(f"_ref_{fld}"), F.format_string(f"{fld}: %s is not a known {kind}", t[fld])))
    for m in source.matches:
        found, theirs = F.col(f"_found_{m.ref}"), F.col(f"_r_{m.ref}_{m.field}")
        if m.reason_if_none:
            out.append(
                (
                    m.reason_if_none,
                    found & theirs.isNull(),
                    F.format_string(f"{m.ref}: %s has no {m.field}", t[m.ref]),
                )
            )
        out.append(
            (
                m.reason,
                found & (t[m.field] != theirs),
                F.format_string(f"{m.field}: %s, but {m.ref} %s has %s", t[m.field], t[m.ref], theirs),
            )
        )
    return out


def with_reason(checks: list[Check]) -> Callable[[DataFrame], DataFrame]:
    """Add ``reason`` and ``detail``: the first failed check in :data:`REASONS` order (checks of one reason in
    field order); both null for a good record."""
    rank = {r: i for i, r in enumerate(REASONS)}
    ordered = sorted(enumerate(checks), key=lambda ic: (rank[ic[1][0]], ic[0]))

    def transform(df: DataFrame) -> DataFrame:
        # each check is evaluated once, into a flag; the reason and its detail are then picked by flag
        flags = df.select("*", *[F.coalesce(failed, F.lit(False)).alias(f"_f{i}") for i, (_, failed, _) in ordered])
        reason = detail = None
        for i, (code, _, why) in ordered:
            cond = F.col(f"_f{i}")
            reason = F.when(cond, F.lit(code)) if reason is None else reason.when(cond, F.lit(code))
            detail = F.when(cond, why) if detail is None else detail.when(cond, why)
        assert reason is not None and detail is not None
        return flags.select(*df.columns, reason.alias("reason"), detail.alias("detail"))

    return transform


def with_duplicates_marked(source: Source) -> Callable[[DataFrame], DataFrame]:
    """Among good records of one natural key keep the latest (``version`` desc, then file and line desc); the
    others become ``duplicate`` (same text as the kept one) or ``superseded``."""

    def transform(df: DataFrame) -> DataFrame:
        good = F.col("reason").isNull()
        order = [F.col("source_file").desc(), F.col("_block").desc(), F.col("_mid").desc()]  # the line order
        if source.version:
            order.insert(0, F.col(f"t_{source.version}").desc_nulls_last())
        # by the key alone, good records first: among them the numbering and the first text are the same as in
        # a window of the good ones only, and the rows leave hash-partitioned and sorted by the key, which the
        # join with silver's keys (with_repeats_marked) takes as they are instead of shuffling them again
        w = Window.partitionBy(F.col(f"t_{source.key}")).orderBy(good.desc(), *order)
        kept_text = F.first("value").over(w)
        rn = F.row_number().over(w)
        dup = good & (rn > 1)
        same = F.col("value") == kept_text
        return df.select(
            *[c for c in df.columns if c not in ("reason", "detail")],
            F.when(dup & same, F.lit("duplicate"))
            .when(dup, F.lit("superseded"))
            .otherwise(F.col("reason"))
            .alias("reason"),
            F.when(
                dup,
                F.format_string(f"{source.key} %s appears again; the latest copy is kept", F.col(f"t_{source.key}")),
            )
            .otherwise(F.col("detail"))
            .alias("detail"),
        )

    return transform


def with_repeats_marked(source: Source, seen: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """A good record whose key silver already holds from another ingest date becomes ``duplicate``: a fact
    is kept once across dates, and the copy silver has wins, whatever the new one's text or version.

    Args:
        seen: The silver rows of the source on the other ingest dates that could hold a copy (``key``,
            ``ingest_date``; only the key column is read: :func:`keys_on_other_dates`); None when there are
            none. The date's own partition must not be among them, so that a rerun is not its own duplicate.
    """

    def transform(df: DataFrame) -> DataFrame:
        if seen is None:
            return df
        first = seen.groupBy(F.col("key").alias("_seen_key")).agg(F.min(PARTITION).alias("_seen_on"))
        joined = df.join(first, on=F.col(f"t_{source.key}") == F.col("_seen_key"), how="left")
        dup = F.col("reason").isNull() & F.col("_seen_on").isNotNull()
        return joined.select(
            *[c for c in df.columns if c not in ("reason", "detail")],
            F.when(dup, F.lit("duplicate")).otherwise(F.col("reason")).alias("reason"),
            F.when(
                dup,
                F.format_string(
                    f"{source.key} %s is in silver already (ingest date %s); that copy is kept",
                    F.col(f"t_{source.key}"),
                    F.col("_seen_on").cast("string"),
                ),
            )
            .otherwise(F.col("detail"))
            .alias("detail"),
        )

    return transform


def select_accepted(
    source: Source, day: dt.date, period: ImportPeriod | None = None
) -> Callable[[DataFrame], DataFrame]:
    """The good records as the silver table's rows (:data:`coupon_spark.schemas` schema of the source); in a
    bulk import (``period``) a fact's ``ingest_date`` is its own day."""

    def transform(df: DataFrame) -> DataFrame:
        by_column: dict[str, Column] = {}
        for r in source.rules:
            by_column[r.column] = F.col(f"t_{r.name}_eur") if r.kind == "money" else F.col(f"t_{r.name}")
        for name in source.zero_when_null:
            by_column[name] = F.coalesce(by_column[name], F.lit(0))
        by_column[PARTITION] = F.lit(day)
        if source.table.mode == "merge":  # a type-2 dimension: the export's version (merged by _write_all)
            by_column[VALID_FROM] = F.lit(day)
            by_column[VALID_TO] = F.lit(None)
        if period is not None and source.event_time:
            by_column[PARTITION] = F.to_date(F.col(f"t_{source.event_time}"))
        return df.filter(F.col("reason").isNull()).select(
            *[by_column[f.name].cast(f.dataType).alias(f.name) for f in source.schema.fields]
        )

    return transform


def select_quarantined(source: Source, day: dt.date) -> Callable[[DataFrame], DataFrame]:
    """The rejected records as quarantine rows (:data:`coupon_spark.schemas.QUARANTINE`)."""

    def transform(df: DataFrame) -> DataFrame:
        cols = {
            "ingest_date": F.lit(day),
            "source": F.lit(source.name),
            "source_file": F.col("source_file"),
            "position": F.col("position"),
            "raw_text": F.make_valid_utf8("value"),
            "reason": F.col("reason"),
            "detail": F.col("detail"),
        }
        return df.filter(F.col("reason").isNotNull()).select(
            *[cols[f.name].cast(f.dataType).alias(f.name) for f in schemas.QUARANTINE.fields]
        )

    return transform


def classify(
    lines: DataFrame,
    source: Source,
    cfg: CleanseConfig,
    day: dt.date,
    refs: dict[str, DataFrame],
    period: ImportPeriod | None = None,
    seen: DataFrame | None = None,
) -> DataFrame:
    """Every line of one source with its ``reason`` (null: accepted), keeping only the columns the outputs
    need (``source_file``, ``_block``, ``_mid``, ``value``, ``detail`` and the typed fields the silver table takes:
    ``t_<field>``, money as ``t_<field>_eur``), so that the de-duplication sorts and the cache holds narrow
    rows. ``seen``: the keys silver holds on other ingest dates (:func:`with_repeats_marked`)."""
    typed = [f"t_{r.name}_eur" if r.kind == "money" else f"t_{r.name}" for r in source.rules]
    return (
        lines.transform(with_parsed_fields(source))
        .transform(with_typed_fields(source, cfg))
        .transform(with_reference_flags(source, refs))
        .transform(with_reason(record_checks(source, cfg, day, period)))
        .select("source_file", "_block", "_mid", "value", "reason", "detail", *typed)
        .transform(with_duplicates_marked(source))
        .transform(with_repeats_marked(source, seen))
    )


# ---- the job ------------------------------------------------------------------------------------------------


@dataclass
class SourceResult:
    """What one source came to."""

    source: str
    files: tuple[str, ...]
    records_read: int
    accepted: int
    quarantined_by_reason: dict[str, int]
    accepted_df: DataFrame
    quarantined_df: DataFrame

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    @property
    def reconciled(self) -> bool:
        return self.records_read == self.accepted + self.quarantined

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.quarantined_by_reason.items(), key=lambda kv: -kv[1]))
        return (
            f"  {self.source:<12} read {self.records_read:>10,}  accepted {self.accepted:>10,}  "
            f"quarantined {self.quarantined:>7,}" + (f"  ({reasons})" if reasons else "")
        )


@dataclass
class CleanseResult:
    day: dt.date
    run_id: str
    sources: dict[str, SourceResult]
    versions: dict[str, int] = field(default_factory=dict)
    period: ImportPeriod | None = None
    input_digest: str | None = None
    skipped: bool = False  # the same landing files were cleansed already: nothing was written


def input_digest(cfg: Config, day: dt.date) -> str:
    """What a cleansing of ``day`` reads: the landing folder's files (relative names, sizes, modification times:
    metadata only, so it costs the same for any size) and the cleanse settings, as a sha256."""
    import hashlib

    import pyarrow.fs as pafs

    from coupon_spark.storage import filesystem_for

    fs, folder = filesystem_for(f"{cfg.lake.landing.rstrip('/')}/{day.isoformat()}")
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    files = sorted(
        (i.path[len(folder.rstrip("/")) + 1 :], i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File
    )
    settings = json.dumps(dataclasses.asdict(cfg.cleanse), sort_keys=True, default=str)
    return hashlib.sha256(json.dumps([files, settings], default=str).encode()).hexdigest()


def cleansed_as(lake: Lake, day: dt.date) -> tuple[str | None, str | None]:
    """``(input_digest, run_id)`` of the run that wrote ``day``'s run metrics, or Nones."""
    if not lake.exists(tables.RUN_METRICS):
        return None, None
    df = lake.read(tables.RUN_METRICS, where={PARTITION: day})
    if "input_digest" not in df.columns:
        return None, None
    rows = df.select("input_digest", "run_id").distinct().collect()
    return (rows[0]["input_digest"], rows[0]["run_id"]) if len(rows) == 1 else (None, None)


def cleanse_day(spark: SparkSession, lake: Lake, cfg: Config, day: dt.date, force: bool = False) -> CleanseResult:
    """Cleanse the landing folder of ``day`` into the silver tables, the quarantine and the run metrics.

    A rerun over the same landing files and settings (:func:`input_digest`) writes nothing and returns a
    result with ``skipped``; ``force`` cleanses again all the same.

    Raises:
        LandingFileMissingError: A source file is missing (nothing is written).
        LandingHeaderError: A CSV header is wrong (nothing is written).
        ReconciliationError: A source's counts do not add up (nothing is written).
    """
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run_id = f"cleanse-{day.isoformat()}-{uuid.uuid4().hex[:8]}"
    missing = [landing_path(cfg, day, s) for s in SOURCE_ORDER if not _exists(spark, landing_path(cfg, day, s))]
    if missing:
        raise LandingFileMissingError(
            f"landing folder of {day} is incomplete; missing: {', '.join(missing)}. Expected the files "
            f"{', '.join(schemas.LANDING_FILES.values())} under {cfg.lake.landing}/{day}. Nothing was written."
        )
    digest = input_digest(cfg, day)
    done, done_by = cleansed_as(lake, day)
    if digest == done and not force:
        log.info("cleanse %s: %s cleansed the same landing files already; nothing written", day, done_by)
        return CleanseResult(day, done_by or run_id, {}, input_digest=digest, skipped=True)
    folder = f"{cfg.lake.landing.rstrip('/')}/{day.isoformat()}"
    period = import_period(read_manifest(folder), day, f"{folder}/{MANIFEST}")
    refs: dict[str, DataFrame] = {}
    results: dict[str, SourceResult] = {}
    cached: list[DataFrame] = []
    # every file is opened and its header checked before any record is classified
    reads = {
        name: read_lines(spark, landing_path(cfg, day, name), SOURCES[name].is_csv, schemas.LANDING_FIELDS[name])
        for name in SOURCE_ORDER
    }
    try:
        for name in SOURCE_ORDER:
            source = SOURCES[name]
            read = reads[name]
            seen = keys_on_other_dates(lake, cfg.cleanse, source, day, period) if source.is_fact else None
            classified = classify(read.lines, source, cfg.cleanse, day, refs, period, seen).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            cached.append(classified)
            # the one pass over the file: lines per split and reason, from which the counts, the line
            # numbers and the reconciliation all come
            splits = split_counts(classified)
            where = split_offsets(splits, read.has_header)
            if any(h is None for h in where.header_reasons):
                raise CleanseError(
                    f"{name}: a CSV header line passed the checks as a record; the rules accept a header: this is "
                    "a bug, report it with the ingest date. Nothing was written."
                )
            counts: dict[str | None, int] = {}
            for c in splits:
                counts[c.reason] = counts.get(c.reason, 0) + c.lines
            for h in where.header_reasons:  # line 1 of a CSV file is no record
                counts[h] -= 1
            counts = {k: v for k, v in counts.items() if v}
            accepted = counts.pop(None, 0)
            result = SourceResult(
                name,
                where.files,
                where.lines_read - len(where.header_reasons),
                accepted,
                {str(k): v for k, v in counts.items()},
                classified.transform(select_accepted(source, day, period)),
                numbered(spark, classified, where, read.has_header).transform(select_quarantined(source, day)),
            )
            if not result.reconciled:
                raise ReconciliationError(
                    f"{name} ({', '.join(where.files)}): read {result.records_read} records but accepted "
                    f"{result.accepted} + quarantined {result.quarantined} = {result.accepted + result.quarantined}. "
                    "Records were lost or duplicated by the cleansing logic (e.g. a join on a key that is not "
                    "unique); nothing was written. This is a bug: report it with the ingest date."
                )
            results[name] = result
            kind = REFERENCED.get(name)
            if kind == "issuance":
                refs[kind] = _known_issuances(lake, cfg, day, result.accepted_df, _matched_fields(kind))
            elif kind:
                refs[kind] = result.accepted_df.select(F.col(source.key_column).alias("key"), *_matched_fields(kind))
        out = CleanseResult(day, run_id, results, period=period, input_digest=digest)
        _write_all(spark, lake, out, started)
        return out
    finally:
        for df in cached:
            df.unpersist()


def keys_on_other_dates(
    lake: Lake, cfg: CleanseConfig, source: Source, day: dt.date, period: ImportPeriod | None = None
) -> DataFrame | None:
    """The keys (``key``, ``ingest_date``) that silver holds for a fact ``source`` on the ingest dates, other
    than the ones this run replaces, that could hold a copy of one of its records; None when there is no
    table yet. Only the key column is read, of the partitions within ``cleanse.max_lateness_days + 1`` days
    of the run's dates, earlier and later (a cleansing out of date order keeps one copy too).

    That window holds every copy of the same record: a fact accepted on ingest date D has its time in
    [D - max_lateness_days, D + 1 day + future_tolerance), so two dates that accept the same fact time are at
    most max_lateness_days + 1 apart (an imported fact lies in the partition of its own day, inside it too).
    """
    if not lake.exists(source.table):
        return None
    own = set(period.days) if period is not None else {day}
    reach = cfg.max_lateness_days + 1
    first, last = min(own) - dt.timedelta(days=reach), max(own) + dt.timedelta(days=reach)
    dates = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    return lake.read(source.table, where={PARTITION: [d for d in dates if d not in own]}).select(
        F.col(source.key_column).alias("key"), PARTITION
    )


REFERENCED: dict[str, str] = {"users": "user", "coupons": "coupon", "issuances": "issuance"}
"""The sources other sources refer to, by the kind their ``refs`` name."""


def _matched_fields(kind: str) -> list[str]:
    """The fields of a referenced record (``kind``) that some source's :attr:`Source.matches` compare."""
    return sorted({m.field for s in SOURCES.values() for m in s.matches if dict(s.refs)[m.ref] == kind})


def _known_issuances(lake: Lake, cfg: Config, day: dt.date, today: DataFrame, fields: list[str]) -> DataFrame:
    """The issuances a redemption of ``day`` may refer to: the day's accepted ones and silver's of the
    ``cleanse.issuance_lookback_days`` before, as ``key`` and ``fields``, one row per key (the latest copy)."""
    cols: list[Column | str] = [F.col("issuance_id").alias("key"), *fields]
    keys = today.select(*cols)
    if cfg.cleanse.issuance_lookback_days <= 0 or not lake.exists(tables.ISSUANCES):
        return keys
    dates = [day - dt.timedelta(days=i) for i in range(1, cfg.cleanse.issuance_lookback_days + 1)]
    earlier = lake.read(tables.ISSUANCES, where={PARTITION: dates}).select(*cols, F.col(PARTITION).alias("_on"))
    both = keys.select("*", F.lit(day).alias("_on")).unionByName(earlier)
    if not fields:
        return both.select("key")
    return both.groupBy("key").agg(F.max_by(F.struct(*fields), "_on").alias("_r")).select("key", "_r.*")


def _metrics(spark: SparkSession, result: CleanseResult, started: dt.datetime) -> DataFrame:
    finished = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        (
            result.day,
            r.source,
            r.records_read,
            r.accepted,
            r.quarantined,
            r.quarantined_by_reason,
            r.reconciled,
            result.run_id,
            started,
            finished,
            result.input_digest,
        )
        for r in result.sources.values()
    ]
    return spark.createDataFrame(rows, schemas.RUN_METRICS)


def _write_all(spark: SparkSession, lake: Lake, result: CleanseResult, started: dt.datetime) -> None:
    """Replace the ingest date's partition of every table; on a failure put back the ones already replaced."""
    day = result.day
    quarantine = None
    for r in result.sources.values():
        quarantine = r.quarantined_df if quarantine is None else quarantine.unionByName(r.quarantined_df)
    assert quarantine is not None
    # each table's date in as few files as lake.target_file_rows allows: the counts are known, the frames
    # cached, so this only merges the write's tasks (the quarantine was one small file per source and task)
    target = lake.cfg.target_file_rows
    quarantined = sum(r.quarantined for r in result.sources.values())
    writes: list[tuple[tables.Table, Callable[[], DataFrame]]] = [
        (SOURCES[name].table, _const(_in_files(r.accepted_df, r.accepted, target)))
        for name, r in result.sources.items()
        if SOURCES[name].table.mode != "merge"
    ]
    # the type-2 dimensions: the export's changes, merged last of the sources (a failed merge commits nothing)
    merges = [(SOURCES[n], r.accepted_df) for n, r in result.sources.items() if SOURCES[n].table.mode == "merge"]
    writes.append((tables.QUARANTINE, lambda: _in_files(quarantine, quarantined, target)))
    writes.append((tables.RUN_METRICS, lambda: _metrics(spark, result, started).coalesce(1)))
    # an import replaces every day it covers in the tables of facts (they land on their own days)
    fact_tables = {s.table for s in SOURCES.values() if s.is_fact} if result.period else set()
    before: dict[tables.Table, int | None] = {}
    where: dict[tables.Table, dict[str, Any]] = {}
    try:
        for source, accepted in merges:
            table = source.table
            before[table] = lake.version(table) if lake.exists(table) else None
            where[table] = {}
            if before[table] is not None and is_snapshot_layout(lake.read(table)):
                _convert_snapshots(lake, source)
            changes = merge_source(
                lake.read(table) if before[table] is not None else None,
                accepted,
                day,
                source.key_column,
                source.tracked,
            )
            # at most as many changes as the export has rows (and the rows of an earlier load of the date): a
            # first load in as few files as lake.target_file_rows allows, not one per shuffle partition
            changes = _in_files(changes, result.sources[source.name].accepted, target)
            res = lake.merge(changes, table, description=f"{result.run_id}: ingest date {day}")
            result.versions[table.name] = res.version
        for table, make in writes:
            before[table] = lake.version(table) if lake.exists(table) else None
            where[table] = {PARTITION: result.period.days if result.period and table in fact_tables else day}
            df = make()
            if result.period and table in fact_tables:
                df = df.repartition(PARTITION)  # one file per imported day, not one per day and task
            res = lake.write(
                df,
                table,  # the catalog's overwrite by ingest_date
                replace_where=where[table],
                description=f"{result.run_id}: ingest date {day}" + (" (import)" if result.period else ""),
                schema_mode="add_columns" if table is tables.RUN_METRICS else "strict",  # input_digest, added later
            )
            result.versions[table.name] = res.version
    except BaseException:
        log.error("cleanse %s: a write failed; restoring %s", day, ", ".join(t.name for t in before) or "nothing")
        for table, version in before.items():
            if table.name in result.versions:
                _restore(lake, table, version, where[table])
        raise


def _convert_snapshots(lake: Lake, source: Source) -> None:
    """Rewrite a dimension an earlier release kept as a snapshot per ingest date as its type-2 versions, in
    one commit (the merge that follows is another; should it fail, the cleanse puts back the snapshots)."""
    table = source.table
    old = lake.read(table)
    log.warning(
        "cleanse: silver %s is in the snapshot layout of earlier releases (%s); converting it to a type-2 "
        "dimension (valid_from / valid_to) once",
        table.name,
        lake.location(table),
    )
    rows = from_snapshots(old, source.key_column, source.tracked).select(*source.schema.fieldNames())
    lake.write(
        rows,
        table,
        mode="overwrite",
        partition_by=[],
        schema_mode="overwrite",
        description="convert the snapshots per ingest date to a type-2 dimension",
    )


def _in_files(df: DataFrame, rows: int, target_rows: int) -> DataFrame:
    """``df`` (``rows`` rows) in at most ``ceil(rows / target_rows)`` tasks, so in as many files at most."""
    return df.coalesce(max(1, -(-rows // max(1, target_rows))))


def _restore(lake: Lake, table: tables.Table, version: int | None, where: dict[str, Any]) -> None:
    """Put the partitions ``where`` selects in ``table`` back as they were at ``version`` (empty if none); a
    dimension (merged, not partitioned) whole."""
    try:
        if table.mode == "merge":
            old = lake.read(table, version=version) if version is not None else lake.read(table).limit(0)
            lake.write(old, table, mode="overwrite", description="restore after failure")
            return
        if version is None:
            old = lake.read(table).limit(0)
        else:
            old = lake.read(table, version=version, where=where)
        lake.write(old, table, mode="overwrite", replace_where=where, description="restore after failure")
    except Exception:
        log.exception("cleanse: could not restore %s (%s) to version %s", table, where, version)


def run(ctx: Context, run_date: dt.date) -> int:
    """The ``cleanse`` stage: cleanse the landing folder of the run date; prints a per-source summary."""
    t0 = time.perf_counter()
    result = cleanse_day(ctx.spark, ctx.lake, ctx.cfg, run_date, force=ctx.options.force)
    if result.skipped:
        print(
            f"cleanse {run_date}: already cleansed from the same landing files by {result.run_id}; nothing "
            "written (--force cleanses again)"
        )
        return 0
    print(f"cleanse {run_date} ({result.run_id}, {time.perf_counter() - t0:.1f}s):")
    for r in result.sources.values():
        print(r.summary())
    return 0
