"""Typed configuration: YAML files in ``conf/`` loaded into dataclasses and validated.

An environment file names its parent with ``extends:`` (``local.yaml`` extends ``base.yaml``); mappings are
merged key by key, the child winning. Every key is checked against the dataclasses below: an unknown key, a
value of the wrong type or a missing required value raises :class:`ConfigError`, which names the dotted key
and the file the value came from. Only ``yaml.safe_load`` is used.

Example:
    >>> cfg = Config.from_file("conf/local.yaml", overrides=["lake.root=/tmp/lake"])
    >>> cfg.lake.root
    '/tmp/lake'
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration file is wrong; the message names the key and the file."""


@dataclass(frozen=True)
class SparkConfig:
    """How the SparkSession is built.

    Attributes:
        master: Spark master URL; empty to take it from ``spark-submit --master``.
        app_name: Application name shown by the cluster manager.
        shuffle_partitions: ``spark.sql.shuffle.partitions``.
        arrow_batch_size: Rows per Arrow batch for pandas/Arrow UDFs.
        driver_memory: ``spark.driver.memory`` (only effective when the JVM is started by this process).
        conf: Extra Spark settings, passed through unchanged.
    """

    master: str = "local[*]"
    app_name: str = "coupon-spark"
    shuffle_partitions: int = 8
    arrow_batch_size: int = 20000
    driver_memory: str = "4g"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LakeConfig:
    """Where and how Delta tables are written.

    Attributes:
        root: Lakehouse root (local path or object-store URI).
        landing: Folder of raw landing files, one sub-folder per ingest date.
        backend: ``auto`` (native when the Delta connector is on the classpath, else bridge), ``bridge`` or
            ``native``.
        target_file_rows: Bridge backend: the most rows per Parquet data file.
        compression: Bridge backend: Parquet codec.
        tables: Logical table name -> path relative to ``root`` (or absolute).
    """

    root: str
    landing: str
    backend: Literal["auto", "bridge", "native"] = "auto"
    target_file_rows: int = 1_000_000
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"
    tables: dict[str, str] = field(default_factory=dict)

    def table_path(self, name: str) -> str:
        """Absolute location of the table ``name`` (a logical name from ``tables`` or a relative path)."""
        rel = self.tables.get(name, name)
        if "://" in rel or os.path.isabs(rel):
            return rel
        return join_uri(self.root, rel)


@dataclass(frozen=True)
class ShopConfig:
    """The synthetic shop (``coupon-spark generate``)."""


@dataclass(frozen=True)
class CleanseConfig:
    """The cleansing job (``coupon-spark cleanse``)."""


@dataclass(frozen=True)
class AllocationConfig:
    """The budget-constrained allocation (``coupon-spark allocate``)."""


@dataclass(frozen=True)
class Config:
    """The whole configuration of a coupon-spark deployment."""

    spark: SparkConfig
    lake: LakeConfig
    shop: ShopConfig = field(default_factory=ShopConfig)
    cleanse: CleanseConfig = field(default_factory=CleanseConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    source: str = ""  # the file it was loaded from (not a YAML key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
        """Load ``path`` (following ``extends:``), apply ``key.sub=value`` overrides, validate.

        Args:
            path: The environment file, e.g. ``conf/local.yaml``.
            overrides: Dotted assignments such as ``lake.root=/tmp/lake``; values are parsed as YAML scalars.

        Raises:
            ConfigError: Unknown key, wrong type, missing value, unreadable file or an ``extends`` cycle.
        """
        data, origin = _load_chain(Path(path), seen=())
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. lake.root=/tmp/lake")
            _assign(data, origin, key.strip().split("."), yaml.safe_load(raw), "--set")
        cfg = _build(cls, data, origin, prefix="", default_file=str(path), skip={"source"})
        # Relative paths are taken from the working directory, as a user running a command expects.
        lake = dataclasses.replace(cfg.lake, root=_absolute(cfg.lake.root), landing=_absolute(cfg.lake.landing))
        return dataclasses.replace(cfg, source=str(path), lake=lake)


def join_uri(root: str, rel: str) -> str:
    """Join a path under a local root or an object-store URI."""
    return root.rstrip("/") + "/" + rel.lstrip("/")


def _absolute(p: str) -> str:
    if "://" in p or os.path.isabs(p):
        return p
    return str((Path.cwd() / p).resolve())


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{path}: 'extends' makes a cycle: {chain}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, found {type(raw).__name__}")
    parent = raw.pop("extends", None)
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must be a file name, found {parent!r}")
        data, origin = _load_chain(path.parent / parent, (*seen, resolved))
    _merge(data, origin, raw, str(path), prefix="")
    return data, origin


def _merge(dst: dict[str, Any], origin: dict[str, str], src: dict[str, Any], file: str, prefix: str) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], origin, value, file, prefix=f"{dotted}.")
        else:
            dst[key] = value
            _mark(origin, dotted, value, file)


def _mark(origin: dict[str, str], dotted: str, value: Any, file: str) -> None:
    origin[dotted] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, file)


def _assign(data: dict[str, Any], origin: dict[str, str], keys: list[str], value: Any, file: str) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{file}: {'.'.join(keys)}: {k} is not a mapping")
    node[keys[-1]] = value
    _mark(origin, ".".join(keys), value, file)


def _where(origin: dict[str, str], dotted: str, default_file: str) -> str:
    parts = dotted.split(".")
    while parts:
        f = origin.get(".".join(parts))
        if f:
            return f
        parts.pop()
    return default_file


T = typing.TypeVar("T")


def _build(
    cls: type[T], data: Any, origin: dict[str, str], prefix: str, default_file: str, skip: set[str] | None = None
) -> T:
    where = _where(origin, prefix.rstrip("."), default_file) if prefix else default_file
    section = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {section}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    allowed = set(fields) - (skip or set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{_where(origin, key, default_file)}: unknown key {key!r}; "
            f"{section} accepts: {', '.join(sorted(allowed))}"
        )
    kwargs: dict[str, Any] = {}
    for name in allowed:
        f = fields[name]
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {key!r}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], origin, key, default_file)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, origin: dict[str, str], key: str, default_file: str) -> Any:
    where = _where(origin, key, default_file)
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, prefix=f"{key}.", default_file=default_file)  # type: ignore[type-var,arg-type]
    if o in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, origin, key, default_file)
    if o is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: must be one of {', '.join(map(repr, args))}, found {value!r}")
        return value
    if o is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, found {value!r}")
        kt, vt = args
        if vt is str:  # Spark settings: YAML may give 1 or true, which Spark reads as "1" / "true"
            value = {k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, (bool, int, float)) else v
                     for k, v in value.items()}
        return {
            _coerce(kt, k, origin, f"{key}.{k}", default_file): _coerce(vt, v, origin, f"{key}.{k}", default_file)
            for k, v in value.items()
        }
    if o is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, found {value!r}")
        return [_coerce(args[0], v, origin, f"{key}[{i}]", default_file) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, found {value!r}")
        return value
    raise ConfigError(f"{where}: {key}: unsupported type {tp!r}")  # pragma: no cover
