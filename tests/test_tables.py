"""The table catalog (``coupon_spark.tables``): every table declared once, written through its declaration, and
named by no string literal in the stages."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
import yaml

from coupon_spark import tables
from coupon_spark.config import LakeConfig
from coupon_spark.lake import Lake
from coupon_spark.lake.api import WRITTEN_BY
from coupon_spark.lake.bridge import BridgeBackend
from coupon_spark.schemas import EVALUATION_METRICS
from coupon_spark.stages import BY_NAME

ROOT = Path(__file__).resolve().parents[1]
LAKE_METHODS = {"read", "write", "exists", "location", "info", "partitions", "version", "history", "compact", "vacuum",
                "dates", "files", "merge"}  # fmt: skip


def test_the_catalog_and_the_configuration_name_the_same_tables():
    base = yaml.safe_load((ROOT / "conf" / "base.yaml").read_text())
    assert set(base["lake"]["tables"]) == set(tables.CATALOG)


def test_each_table_is_written_by_a_stage_and_its_contract_holds_its_keys_and_partitions():
    assert WRITTEN_BY == {name: t.written_by for name, t in tables.CATALOG.items()}
    for t in tables.CATALOG.values():
        assert t.written_by in BY_NAME, t
        assert t.mode in ("append", "overwrite", "replace_partitions", "merge"), t
        # partitioned by date, or a type-2 dimension: merged, keyed by the record's key and its valid_from
        assert t.partition_by or (t.mode == "merge" and t.keys[-1] == "valid_from"), t
        if t.schema is not None:
            names = set(t.schema.fieldNames())
            assert set(t.partition_by) <= names and set(t.keys) <= names, t
    assert [t.name for t in tables.SILVER] == ["users", "coupons", "events", "orders", "issuances", "redemptions"]
    with pytest.raises(KeyError, match="the tables are users, coupons"):
        tables.table("order")


def literal_table_names(path: Path) -> list[str]:
    """``lake.<method>("<table>" ...)`` calls in ``path``: a table named by a string literal."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LAKE_METHODS:
            continue
        owner = node.func.value
        if not ((isinstance(owner, ast.Name) and owner.id == "lake") or (
            isinstance(owner, ast.Attribute) and owner.attr == "lake"
        )):  # fmt: skip
            continue
        arg = node.args[1] if node.func.attr in ("write", "merge") and len(node.args) > 1 else (node.args or [None])[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} {arg.value}")
    return out


def test_no_stage_names_a_table_by_a_string_literal():
    found = [hit for p in sorted((ROOT / "coupon_spark").rglob("*.py")) for hit in literal_table_names(p)]
    assert found == []
    # the scan sees what it looks for
    probe = ROOT / "tests" / "test_tables.py"
    assert literal_table_names(probe) == [f"tests/test_tables.py:{PROBE_LINE} orders"]


def _probe(lake: Lake) -> None:  # never called: a literal the scan above must find
    lake.read("orders")


PROBE_LINE = _probe.__code__.co_firstlineno + 1


@pytest.fixture
def lake(spark, tmp_path):
    cfg = LakeConfig(str(tmp_path), str(tmp_path / "landing"), tables={"evaluation_metrics": "ops/evaluation_metrics"})
    return Lake(spark, cfg, BridgeBackend(spark))


def metrics(spark, days: list[dt.date], value: float):
    rows = [(d, "s", "m", "all", "all", value, None, None, 1, None, "r", dt.datetime(2026, 11, 12)) for d in days]
    return spark.createDataFrame(rows, EVALUATION_METRICS)


def test_a_write_through_the_catalog_takes_its_partitions_and_refuses_a_whole_table_overwrite(spark, lake):
    d1, d2 = dt.date(2026, 11, 12), dt.date(2026, 11, 13)
    t = tables.EVALUATION_METRICS
    with pytest.raises(ValueError, match="replace_where=\\{'run_date'"):
        lake.write(metrics(spark, [d1, d2], 1.0), t)  # would replace every date
    assert not lake.exists(t)
    lake.write(metrics(spark, [d1, d2], 1.0), t, replace_where={"run_date": [d1, d2]})
    assert lake.info(t).partition_columns == ["run_date"]
    assert lake.location(t) == f"{lake.cfg.root}/ops/evaluation_metrics"
    lake.write(metrics(spark, [d2], 2.0), t, replace_where={"run_date": d2})
    got = {(r["run_date"], r["value"]) for r in lake.read(t).collect()}
    assert got == {(d1, 1.0), (d2, 2.0)}
    assert lake.dates(t) == [d1, d2]
    assert lake.dates(tables.CANDIDATES) == []  # not written yet: no dates, no error


def test_a_table_equals_its_name_so_comparisons_and_lookups_by_name_keep_working():
    assert tables.ORDERS == "orders" and "orders" == tables.ORDERS and tables.ORDERS != "order"
    assert tables.ORDERS == tables.table("orders") and tables.ORDERS != tables.USERS
    assert {tables.ORDERS: 1}["orders"] == 1 and "quarantine" in {tables.QUARANTINE}
