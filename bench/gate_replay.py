"""Replay the decision gate of a lake's published model versions with the gate of this code.

Each version's own fold models (``fold_weights.npz``) and published weights score the randomised rows it was
trained on (``training_examples`` issued before its run date), and :func:`coupon_spark.model.train.gate_of_models`
decides, as the loop would have: the versions in order, each the next test of the loop unless the one before
kept the gate open (``train.gate_monitor``). Nothing is retrained and nothing in the lake is written: it shows
what a change of the gate would have said on a finished run (``make demo``) without running it again.

    python bench/gate_replay.py --lake ./lakehouse [--version 1 ...] [--set train.gate_out_of_bag=false ...]

Each version's line ``same bits as published: yes`` says that the replay wrote exactly the published
``decision.json`` (every gain, bound and threshold of its curve to the last bit): what a change that should
not move the gate (a faster scoring path) must print; otherwise the fields that differ.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import time
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from deltalake import DeltaTable

from coupon_spark.config import Config
from coupon_spark.lake import Lake
from coupon_spark.model.gate import DECISION_FILE, Gate, monitors, next_test_index
from coupon_spark.model.registry import Registry
from coupon_spark.model.scorer import read_version
from coupon_spark.model.train import gate_columns, gate_of_models, gate_rows
from coupon_spark.session import build_spark_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default="./lakehouse")
    ap.add_argument("--conf", default="conf/local.yaml")
    ap.add_argument(
        "--version",
        dest="versions",
        type=int,
        action="append",
        default=[],
        help="replay only these versions (the earlier ones' published gates count for the loop)",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, KEY=VALUE")
    a = ap.parse_args()
    cfg = Config.from_file(a.conf, overrides=[f"lake.root={a.lake}", *a.overrides])
    spark = build_spark_session(cfg.spark, cfg.lake)
    lake = Lake.from_config(spark, cfg.lake)
    registry, name = Registry.from_config(cfg), cfg.train.model_name
    tables = cfg.lake.tables
    examples = DeltaTable(f"{cfg.lake.root.rstrip('/')}/{tables.get('training_examples', 'training_examples')}")
    replayed: list[Gate] = []
    for v in sorted(registry.versions(name)):
        started = time.perf_counter()
        published = registry.read_json(name, v, DECISION_FILE)
        if a.versions and v not in a.versions:  # counts for the loop as it was published
            replayed.append(Gate.from_json(published))
            continue
        run_date = dt.date.fromisoformat(registry.manifest(name, v)["run_date"][:10])
        version = read_version(registry.local_dir(name, v))
        spec, transform, weights, models = version.spec, version.transform, version.weights, version.fold_weights
        rows = examples.to_pandas(columns=gate_columns(transform), filters=[("issue_date", "<", run_date)])
        rows = gate_rows(rows, cfg, len(models))
        monitor, by = monitors(replayed, cfg.train.gate_monitor)
        test_index = by if monitor else next_test_index(replayed)
        scoring = time.perf_counter()
        gate = gate_of_models(lake, cfg, rows, spec, transform, weights, models, test_index, monitor)
        replayed.append(gate)
        now = time.perf_counter()
        print(f"v{v} ({run_date}, {now - started:.0f} s; the gate on {len(rows):,} rows {now - scoring:.0f} s)")
        print(f"  as published: {version.gate.describe()}")
        print(f"  replayed:     {gate.describe()}")
        print(f"  effective rows of the tested terms: {gate.effective_rows:,.0f}")
        replay = gate.to_json()
        differ = sorted(k for k in published.keys() | replay.keys() if published.get(k) != replay.get(k))
        apart = ", ".join(
            f"{k} (largest relative difference {relative_difference(published.get(k), replay.get(k)):.1e})"
            for k in differ
        )
        print(f"  same bits as published: {'yes' if not differ else 'no: ' + apart}")
    print(f"gate_open_days: {sum(g.is_open for g in replayed)} of {len(replayed)}")
    spark.stop()


def relative_difference(a: Any, b: Any) -> float:
    """The largest ``|a - b| / max(|a|, |b|)`` over the numbers of two JSON values of the same shape (a list
    of curve points, a number); inf where their shapes or non-numbers differ."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return max((relative_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return max((relative_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))
    return 0.0 if a == b else math.inf


if __name__ == "__main__":
    main()
