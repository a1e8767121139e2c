"""Landing files as a shop's exports write them: CSV and JSON lines, local time zones and currencies, messy
spellings, and dirt.

Each source is rendered to one text line per record with Spark column expressions, defects are injected at
``shop.dirty_rate`` (the kind drawn from a hash of the record's key), and the lines are written in a
deterministic order. A record's defect is recorded next to it, so the generator knows exactly what the
cleansing job must quarantine (``<truth_dir>/defects``).

How defects are injected:
- fact sources (events, orders, redemptions): the defective line *replaces* the record (the shop lost it);
- dimension snapshots (users, coupons) and issuances: the defective line is an *extra*, corrupted copy of a
  record that also arrives intact, so that no later record loses its reference (the expected quarantine is
  exactly the injected defects, without cascades);
- ``exact_duplicate`` adds the same line twice; ``near_duplicate`` adds an older version of the record (same
  key, different text: an earlier ``updated_at`` or, for sources without one, the same instant written in
  another format, placed before the current line).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, IntegralType, StringType, TimestampType

from coupon_spark.datagen.world import CATEGORIES, REGIONS, S_REGION, choice, uniform
from coupon_spark.schemas import LANDING_FIELDS, LANDING_FILES

CLEAN = "none"
EXTRA_LINE_SOURCES = frozenset({"users", "coupons", "issuances"})
# which defect kinds make sense for which source
APPLICABLE: dict[str, tuple[str, ...]] = {
    "users": ("malformed", "bad_type", "missing_field", "future_timestamp", "exact_duplicate", "near_duplicate",
              "bad_encoding"),
    "coupons": ("malformed", "bad_type", "missing_field", "bad_amount", "future_timestamp", "exact_duplicate",
                "near_duplicate", "bad_encoding"),
    "events": ("malformed", "bad_type", "missing_field", "bad_amount", "future_timestamp", "unknown_user",
               "exact_duplicate", "near_duplicate", "bad_encoding"),
    "orders": ("malformed", "bad_type", "missing_field", "bad_amount", "future_timestamp", "unknown_user",
               "unknown_coupon", "exact_duplicate", "near_duplicate", "bad_encoding"),
    "issuances": ("malformed", "bad_type", "missing_field", "future_timestamp", "unknown_user", "unknown_coupon",
                  "exact_duplicate", "near_duplicate", "bad_encoding"),
    "redemptions": ("malformed", "bad_type", "missing_field", "bad_amount", "future_timestamp", "unknown_user",
                    "unknown_coupon", "exact_duplicate", "near_duplicate", "bad_encoding"),
}  # fmt: skip
# the reason code the cleansing job must give each injected defect
EXPECTED_REASON: dict[str, str] = {
    "malformed": "malformed",
    "bad_type": "bad_type",
    "missing_field": "missing_field",
    "bad_amount": "bad_amount",
    "future_timestamp": "future_timestamp",
    "unknown_user": "unknown_user",
    "unknown_coupon": "unknown_coupon",
    "exact_duplicate": "duplicate",
    "near_duplicate": "superseded",
    "bad_encoding": "bad_encoding",
}

S_DIRTY, S_KIND, S_MESSY, S_FUTURE, S_SIGN = 400, 401, 402, 403, 404
_SOURCE_SALT = {name: 10 * i for i, name in enumerate(LANDING_FIELDS)}

Overrides = dict[str, Column | None]  # field -> new value; None drops the field (JSON) / empties it (CSV)


@dataclass
class Rendering:
    """How one source's records become lines: field values, and per defect kind the fields to change."""

    source: str
    fields: dict[str, Column]
    key: Column
    sort: Column
    defects: dict[str, Overrides] = field(default_factory=dict)
    near_duplicate: Overrides = field(default_factory=dict)
    near_duplicate_first: bool = True  # the older version comes first in the file


# ---- column helpers -----------------------------------------------------------------------------------------

_TZ = {r.code: ("UTC" if r.utc_offset == "Z" else r.utc_offset) for r in REGIONS}
_SUFFIX = {r.code: r.utc_offset for r in REGIONS}
_CURRENCY = {r.code: r.currency for r in REGIONS}


def _lookup(mapping: dict[str, str], key: Column) -> Column:
    return F.element_at(F.create_map(*[F.lit(x) for kv in mapping.items() for x in kv]), key)


def regions(seed: int) -> Callable[[Column], Column]:
    """``user_id -> region`` as a column function, without a join (the region is a hash draw of the user)."""

    def of(user_id: Column) -> Column:
        num = F.substring(user_id, 2, 20).cast("int")
        return choice(uniform(seed, S_REGION, num), [r.code for r in REGIONS], [r.weight for r in REGIONS])

    return of


def local_time(ts: Column, region: Column) -> Column:
    """An ISO 8601 timestamp in the region's offset: ``2026-11-28T10:15:00+01:00`` (``Z`` for UTC)."""
    local = F.from_utc_timestamp(ts, _lookup(_TZ, region))
    return F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss"), _lookup(_SUFFIX, region))


def utc_millis(ts: Column) -> Column:
    """The same instant written another way: ``2026-11-28T09:15:00.000Z``."""
    return F.date_format(ts, "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")


def currency_of(region: Column) -> Column:
    return _lookup(_CURRENCY, region)


def local_money(eur: Column, currency: Column, fx_to_eur: dict[str, float]) -> Column:
    """An EUR amount in the record's currency, two decimals."""
    rate = F.element_at(F.create_map(*[x for k, v in fx_to_eur.items() for x in (F.lit(k), F.lit(v))]), currency)
    return F.round(eur / rate, 2).cast("decimal(12,2)")


def messy_category(category: Column, u: Column, aliases: dict[str, str]) -> Column:
    """Mostly canonical; sometimes Title case, upper case with spaces, or an alias the shop's systems use."""
    first_alias = {c: next((a for a, t in aliases.items() if t == c), c) for c in CATEGORIES}
    return (
        F.when(u < 0.7, category)
        .when(u < 0.8, F.initcap(category))
        .when(u < 0.9, F.concat(F.lit(" "), F.upper(category), F.lit(" ")))
        .otherwise(_lookup(first_alias, category))
    )


def messy_case(value: Column, u: Column) -> Column:
    return F.when(u < 0.8, value).when(u < 0.9, F.upper(value)).otherwise(F.initcap(value))


def render_line(
    fmt: str, names: tuple[str, ...], fields: dict[str, Column], drop: frozenset[str] = frozenset()
) -> Column:
    """One CSV line (``to_csv``, fields in ``names`` order) or one JSON object (explicit nulls)."""
    if fmt == "csv":
        cols = [(F.lit(None).cast("string") if n in drop else fields[n].cast("string")).alias(n) for n in names]
        return F.to_csv(F.struct(*cols))
    cols = [fields[n].alias(n) for n in names if n not in drop]
    return F.to_json(F.struct(*cols), {"ignoreNullFields": "false"})


def _malformed(fmt: str, line: Column, n_fields: int) -> Column:
    if fmt == "csv":
        return F.substring_index(line, ",", n_fields - 1)  # the last field is missing
    return F.substring(line, 1, (F.length(line) / 2).cast("int"))  # truncated JSON


def _bad_encoding(fmt: str, line: Column) -> Column:
    """Insert a Latin-1 'é' (byte 0xE9, invalid UTF-8 here) into the first field value."""
    bad = F.unhex(F.lit("E9")).cast("string")
    pos = F.instr(line, ",") if fmt == "csv" else F.instr(line, '",')
    return F.concat(F.substring(line, 1, pos - 1), bad, F.substring(line, pos, 1 << 30))


# ---- the dirty line set -------------------------------------------------------------------------------------


def dirty_lines(df: DataFrame, r: Rendering, seed: int, rate: float, kinds: list[str], day: dt.date) -> DataFrame:
    """Lines of one source (``_sort``, ``_key``, ``_pos``, ``line``, ``defect``): each record's clean line,
    or its defective variant(s) at ``rate`` (drawn per record and day: a snapshot is dirty differently each
    day)."""
    fmt = "csv" if LANDING_FILES[r.source].endswith(".csv") else "jsonl"
    names = LANDING_FIELDS[r.source]
    salt = _SOURCE_SALT[r.source]
    usable = [k for k in APPLICABLE[r.source] if k in kinds]
    key = r.key
    # every field's value once per record, in a projection; the lines (the clean one and each defect's variant)
    # are then built from these columns and the variants' few overrides: small generated code, where the
    # variants' copies of every field's expression made one method of ~200 kB for the JIT to compile
    slots = {n: f"_f{i}" for i, n in enumerate(names)}
    df = df.select("*", *[r.fields[n].alias(slots[n]) for n in names])
    values = {n: F.col(slots[n]) for n in names}
    clean = render_line(fmt, names, values)

    def variant(overrides: Overrides) -> Column:
        fields = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        return render_line(fmt, names, fields, frozenset(k for k, v in overrides.items() if v is None))

    def pair(line: Column, defect: str) -> Column:
        return F.struct(line.alias("line"), F.lit(defect).alias("defect"))

    kind = F.lit(None).cast("string")
    if usable and rate > 0:
        tag = F.lit(day.isoformat())
        dirty = uniform(seed, S_DIRTY + salt, key, tag) < F.lit(rate)
        kind = F.when(dirty, choice(uniform(seed, S_KIND + salt, key, tag), usable))
    # The defect kind and the clean line are computed once per record, in a projection: the generator below
    # (posexplode) gets no common-subexpression elimination, and would otherwise hash the record again for
    # every branch it tests and render the clean line in every branch that holds it.
    df = df.select("*", r.sort.alias("_sort"), key.alias("_key"), kind.alias("_kind"), clean.alias("_clean"))
    kind, clean = F.col("_kind"), F.col("_clean")
    options = F.when(kind.isNull(), F.array(pair(clean, CLEAN)))
    extra = r.source in EXTRA_LINE_SOURCES
    for k in usable:
        if k == "exact_duplicate":
            lines = F.array(pair(clean, CLEAN), pair(clean, k))
        elif k == "near_duplicate":
            older = pair(variant(r.near_duplicate), k)
            lines = F.array(older, pair(clean, CLEAN)) if r.near_duplicate_first else F.array(pair(clean, CLEAN), older)
        else:
            if k == "malformed":
                bad = _malformed(fmt, clean, len(names))
            elif k == "bad_encoding":
                bad = _bad_encoding(fmt, clean)
            else:
                bad = variant(r.defects[k])
            lines = F.array(pair(clean, CLEAN), pair(bad, k)) if extra else F.array(pair(bad, k))
        options = options.when(kind == k, lines)
    return df.select("_sort", "_key", F.posexplode(options).alias("_pos", "_l")).select(
        "_sort", "_key", "_pos", F.col("_l.line").alias("line"), F.col("_l.defect").alias("defect")
    )


# ---- writing ------------------------------------------------------------------------------------------------


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), uri.removeprefix("file://")
    return pafs.FileSystem.from_uri(uri.replace("s3a://", "s3://"))


DRIVER_WRITE_MAX_LINES = 3_000_000
"""Up to this many lines, a single-file source is collected (Arrow) and sorted and written by the driver:
no range-partitioning sample, shuffle, part files and their concatenation. The driver streams every byte of a
single file anyway; above this it writes through Spark's sort."""

SORT = ("_sort", "_key", "_pos")
"""The order of a landing file's lines (:func:`dirty_lines`' columns)."""
SHARED_SORT = ("_sort_s", "_sort_n", "_key", "_pos")
"""The same order in :func:`landing_lines`' columns, which every source shares: a string sort key in
``_sort_s`` (``_sort_n`` null), any other in ``_sort_n`` as a long (``_sort_s`` null)."""


def landing_lines(df: DataFrame, r: Rendering, seed: int, rate: float, kinds: list[str], day: dt.date) -> DataFrame:
    """:func:`dirty_lines` in columns every source shares (``source``, :data:`SHARED_SORT`, ``line``,
    ``defect``), so that the lines of several sources can be unioned and written together
    (:func:`write_landings`).

    A timestamp sort key becomes its microseconds, a date its day number, an integer a long: the same order,
    nulls first as before. The record key must be a string (it is compared as one).
    """
    lines = dirty_lines(df, r, seed, rate, kinds, day)
    types = {f.name: f.dataType for f in lines.schema.fields}
    if not isinstance(types["_key"], StringType):
        raise TypeError(f"{r.source}: the record key must be a string, not {types['_key'].simpleString()}")
    sort, none_s, none_n = F.col("_sort"), F.lit(None).cast("string"), F.lit(None).cast("long")
    t = types["_sort"]
    if isinstance(t, StringType):
        sort_s, sort_n = sort, none_n
    elif isinstance(t, TimestampType):
        sort_s, sort_n = none_s, F.unix_micros(sort)
    elif isinstance(t, DateType):
        sort_s, sort_n = none_s, F.unix_date(sort).cast("long")
    elif isinstance(t, IntegralType):
        sort_s, sort_n = none_s, sort.cast("long")
    else:
        raise TypeError(f"{r.source}: cannot sort landing lines by a {t.simpleString()}")
    return lines.select(
        F.lit(r.source).alias("source"), sort_s.alias("_sort_s"), sort_n.alias("_sort_n"), "_key", "_pos", "line",
        "defect",
    )  # fmt: skip


def write_landings(
    lines: DataFrame, folder: str, sources: Sequence[str], single_file: bool
) -> dict[str, dict[str, int]]:
    """Write the landing file of every source of ``lines`` (:func:`landing_lines` of ``sources``, unioned);
    returns the lines per source and defect kind (``{}`` for a source without lines, whose file is empty or
    only its CSV header).

    The lines are computed once (persisted), then: one Spark job counts them per source and defect kind;
    one collects every single-file source of at most :data:`DRIVER_WRITE_MAX_LINES` lines (Arrow), which
    the driver sorts and writes; the others go through Spark's sort (:func:`write_landing_file`). The bytes
    are the same either way, and the same as :func:`write_landing`'s.
    """
    lines = lines.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts: dict[str, dict[str, int]] = {s: {} for s in sources}
        for row in lines.groupBy("source", "defect").count().collect():
            counts[row["source"]][row["defect"]] = int(row["count"])
        small = [s for s in sources if single_file and sum(counts[s].values()) <= DRIVER_WRITE_MAX_LINES]
        large = [s for s in sources if s not in small]
        collected = [s for s in small if counts[s]]
        if collected:
            table = (
                lines.where(F.col("source").isin(collected))
                .select("source", *SHARED_SORT, F.col("line").cast("binary").alias("line"))
                .toArrow()
            )
            for s in collected:
                _write_sorted(table.filter(pc.equal(table.column("source"), s)), SHARED_SORT, folder, s)
        for s in small:
            if not counts[s]:
                _write_sorted(None, SHARED_SORT, folder, s)
        for s in large:
            write_landing_file(lines.where(F.col("source") == s), folder, s, single_file, order=SHARED_SORT)
        return counts
    finally:
        lines.unpersist()


def write_landing(lines: DataFrame, folder: str, source: str, single_file: bool) -> dict[str, int]:
    """Write ``lines`` (:func:`dirty_lines`) as the source's landing file; returns the lines per defect kind.

    The bytes are the same either way: lines sorted by ``_sort``, ``_key``, ``_pos`` (Spark's order: binary
    strings, nulls first), each followed by a newline, a CSV header first.
    """
    by_defect = {r["defect"]: int(r["count"]) for r in lines.groupBy("defect").count().collect()}
    total = sum(by_defect.values())
    if not single_file or total > DRIVER_WRITE_MAX_LINES:
        write_landing_file(lines, folder, source, single_file)
        return by_defect
    table = lines.select(*SORT, F.col("line").cast("binary").alias("line")).toArrow()
    _write_sorted(table, SORT, folder, source)
    return by_defect


def _write_sorted(table: pa.Table | None, order: Sequence[str], folder: str, source: str) -> None:
    """Sort ``table`` (the ``order`` columns and ``line`` as binary; None: no lines) on the driver and write its
    lines as ``<folder>/<file>``, a CSV header first, replaced atomically (written aside, then renamed)."""
    name = LANDING_FILES[source]
    header = ",".join(LANDING_FIELDS[source]) + "\n" if name.endswith(".csv") else ""
    fs, folder_path = _fs(folder)
    fs.create_dir(folder_path, recursive=True)
    target_path = f"{folder_path.rstrip('/')}/{name}"
    staging = f"{folder_path.rstrip('/')}/_tmp_{source}_{uuid.uuid4().hex[:8]}.out"
    with fs.open_output_stream(staging) as out:
        out.write(header.encode("utf-8"))
        if table is not None and table.num_rows:
            indices = pc.sort_indices(table, sort_keys=[(c, "ascending", "at_start") for c in order])
            body = table.column("line").take(indices)
            if body.null_count:
                raise ValueError(f"{source}: a rendered landing line is null")
            # each line and a newline, one buffer per chunk: its bytes from the first offset to the last
            empty, newline = pa.scalar(b"", pa.binary()), pa.scalar(b"\n", pa.binary())
            for chunk in pc.binary_join_element_wise(body.cast(pa.binary()), empty, newline).chunks:
                if len(chunk):
                    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
                    first, last = int(offsets[chunk.offset]), int(offsets[chunk.offset + len(chunk)])
                    out.write(chunk.buffers()[2][first:last])
    info = fs.get_file_info(target_path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(target_path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(target_path)
    fs.move(staging, target_path)


def write_landing_file(
    lines: DataFrame, folder: str, source: str, single_file: bool, order: Sequence[str] = SORT
) -> str:
    """Write ``lines`` (sorted by the ``order`` columns) as ``<folder>/<file>`` and return its path.

    Spark writes part files in parallel; with ``single_file`` they are then concatenated (CSV header first)
    into one file, replaced atomically (written aside, then renamed). Otherwise the file name is a folder of
    part files, which the cleansing job reads the same way.
    """
    name = LANDING_FILES[source]
    target = f"{folder.rstrip('/')}/{name}"
    tmp = f"{folder.rstrip('/')}/_tmp_{source}_{uuid.uuid4().hex[:8]}"
    ordered = lines.orderBy(*order).select("line")
    fs, _ = _fs(folder)
    header = ",".join(LANDING_FIELDS[source]) + "\n" if name.endswith(".csv") else ""
    if not single_file and header:
        # a header line sorts before every data line: one line in its own first part
        head = lines.sparkSession.createDataFrame([(header.rstrip("\n"),)], "line string")
        ordered = head.unionByName(ordered)  # union keeps partition order
    ordered.write.mode("overwrite").text(tmp)
    _, tmp_path = _fs(tmp)
    _, target_path = _fs(target)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(tmp_path)) if i.base_name.startswith("part-"))
    if fs.get_file_info(target_path).type == pafs.FileType.Directory:
        fs.delete_dir(target_path)
    elif fs.get_file_info(target_path).type == pafs.FileType.File:
        fs.delete_file(target_path)
    if not single_file:
        fs.move(tmp_path, target_path)
        return target
    staging = f"{tmp_path}.out"
    with fs.open_output_stream(staging) as out:
        out.write(header.encode("utf-8"))
        for p in parts:
            with fs.open_input_stream(p) as src:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
    fs.move(staging, target_path)
    fs.delete_dir(tmp_path)
    return target


def day_folder(landing: str, day: dt.date) -> str:
    """``<landing>/<YYYY-MM-DD>``."""
    return f"{landing.rstrip('/')}/{day.isoformat()}"
