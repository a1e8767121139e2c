"""``coupon-spark <stage> --conf conf/<env>.yaml [--run-date YYYY-MM-DD]``: one entry point per stage.

The same functions back ``spark-submit jobs/<stage>.py``. Each stage is idempotent for a run date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coupon_spark.config import Config, ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    target: str | None  # "module:function" taking (spark, cfg, run_date, args) -> int; None: not built yet


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "doctor",
            "check Java, Spark, the Delta backend and the lakehouse; list tables and versions",
            "coupon_spark.doctor:run",
        ),
        Stage("generate", "write a synthetic shop's landing files and its hidden truth", "coupon_spark.datagen:run"),
        Stage(
            "cleanse",
            "landing files of one ingest date -> silver Delta tables + quarantine",
            "coupon_spark.cleanse:run",
        ),
        Stage("features", "point-in-time user/coupon features and training examples", "coupon_spark.features:run"),
        Stage("train", "train the two-tower uplift model with Horovod on Spark", "coupon_spark.model.train:run"),
        Stage("score", "score every user against every live coupon (pandas UDF)", "coupon_spark.scoring:run"),
        Stage("allocate", "budget-constrained allocation through the Lagrangian dual", "coupon_spark.allocation:run"),
        Stage(
            "evaluate", "model metrics, policy value, budget use, fairness; the report", "coupon_spark.evaluation:run"
        ),
        Stage("pipeline", "run the stages in order for one or more days", "coupon_spark.pipeline:run"),
    ]
}

PIPELINE_ORDER = ["generate", "cleanse", "features", "train", "score", "allocate", "evaluate"]


class NotBuiltError(RuntimeError):
    """The stage exists in the CLI but its implementation has not been built yet."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, found {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coupon-spark",
        description="Personalised coupon allocation on Spark + Delta Lake. Each stage reads and writes Delta "
        "tables under the configured lakehouse root.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(
            stage.name,
            help=stage.help + ("" if stage.target else " [not built yet]"),
            description=stage.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.add_argument("--conf", default="conf/local.yaml", help="environment configuration file")
        p.add_argument("--run-date", type=_date, default=dt.date.today(), help="run date (UTC), YYYY-MM-DD")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a configuration value, e.g. --set lake.root=/tmp/lake (repeatable)",
        )
        if stage.name == "train":
            p.add_argument("--force", action="store_true", help="train again on inputs already trained on")
        if stage.name == "pipeline":
            p.add_argument("--days", type=int, default=1, help="number of consecutive days to run")
        if stage.name == "generate":
            p.add_argument("--days", type=int, default=1, help="number of consecutive days to generate")
            p.add_argument(
                "--users",
                type=int,
                default=None,
                help="population size (small-sample runs); default: shop.users from the configuration",
            )
    return parser


def resolve(stage: Stage) -> Callable[..., int]:
    if stage.target is None:
        raise NotBuiltError(f"stage {stage.name!r} is not built yet")
    module, func = stage.target.split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # third-party libraries (py4j, Horovod's rendezvous) log at INFO on the root logger: keep them to warnings
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("coupon_spark").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        cfg = Config.from_file(args.conf, overrides=args.overrides)
    except ConfigError as exc:
        print(f"coupon-spark: configuration error: {exc}", file=sys.stderr)
        return 2
    stage = STAGES[args.stage]
    try:
        fn = resolve(stage)
    except NotBuiltError as exc:
        print(f"coupon-spark: {exc}; see the open issues. Nothing was run.", file=sys.stderr)
        return 3
    from coupon_spark.session import JavaNotFoundError, build_spark_session

    try:
        spark = build_spark_session(cfg.spark, cfg.lake)
    except JavaNotFoundError as exc:
        print(f"coupon-spark: {exc}", file=sys.stderr)
        return 2
    return int(fn(spark, cfg, args.run_date, args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
