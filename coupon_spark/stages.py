"""The stages, declared once: the command line, the pipeline, the Airflow DAG and the tests all read this list.

A stage is a function ``run(ctx, run_date) -> int`` (``ctx``: :class:`coupon_spark.runner.Context`, the Spark
session, the typed configuration, the lake, the registry and the stage's options, built once per process),
named here by ``"module:function"`` so that this module imports nothing but the standard library: the DAG
loads it from the deployed wheel on an Airflow worker that has neither Spark nor the package's dependencies.

Options are declared per stage (:class:`Option`) and arrive typed in :class:`RunOptions`; nothing below the
command line reads argparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Option:
    """A command-line option of a stage, and the :class:`RunOptions` field it fills.

    Attributes:
        name: The field of :class:`RunOptions` (``--days`` fills ``days``).
        help: The ``--help`` line.
        kind: ``flag`` (``--force``: true when given) or ``int`` (``--days 3``).
    """

    name: str
    help: str
    kind: Literal["flag", "int"] = "flag"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class RunOptions:
    """What a stage may be asked beyond its configuration and run date (the command line's options).

    Attributes:
        force: ``cleanse``: cleanse again landing files already cleansed; ``train``: train again on rows already
            trained on.
        days: ``generate`` and ``pipeline``: consecutive days from the run date.
        users: ``generate``: the population (small-sample runs); None: ``shop.users``.
    """

    force: bool = False
    days: int = 1
    users: int | None = None


@dataclass(frozen=True)
class Stage:
    """One stage.

    Attributes:
        name: ``coupon-spark <name>``, ``jobs/<name>.py``, the DAG's task id.
        help: One line for ``--help`` and the README.
        target: ``"module:function"`` of ``run(ctx, run_date) -> int``.
        options: The stage's own command-line options.
        daily: A task of the production DAG (``dags/coupon_daily.py``), in :data:`STAGES` order.
        gpu: Runs on the GPU pool in production (``conf/gpu-cluster.yaml``).
        tensorflow: Imports TensorFlow in the driver process (started quietly before Spark).
        writes_landing: Writes landing files (the synthetic shop): ``lake.landing`` must be writable.
    """

    name: str
    help: str
    target: str
    options: tuple[Option, ...] = field(default=())
    daily: bool = False
    gpu: bool = False
    tensorflow: bool = False
    writes_landing: bool = False


FORCE_CLEANSE = Option("force", "cleanse again landing files already cleansed")
FORCE_TRAIN = Option("force", "train again on inputs already trained on")

STAGES: tuple[Stage, ...] = (
    Stage(
        "doctor",
        "check Java, Spark, the Delta backend and the lakehouse; list tables and versions",
        "coupon_spark.doctor:run",
    ),
    Stage(
        "generate",
        "write a synthetic shop's landing files and its hidden truth",
        "coupon_spark.datagen.shop:run",
        options=(
            Option("days", "number of consecutive days to generate", "int"),
            Option("users", "population size (small-sample runs); default: shop.users from the configuration", "int"),
        ),
        writes_landing=True,
    ),
    Stage(
        "cleanse",
        "landing files of one ingest date -> silver Delta tables + quarantine",
        "coupon_spark.cleanse:run",
        options=(FORCE_CLEANSE,),
        daily=True,
    ),
    Stage(
        "features",
        "point-in-time user/coupon features and training examples",
        "coupon_spark.features:run",
        daily=True,
    ),
    Stage(
        "train",
        "train the two-tower uplift model with Horovod on Spark",
        "coupon_spark.model.train:run",
        options=(FORCE_TRAIN,),
        daily=True,
        gpu=True,
        tensorflow=True,
    ),
    Stage(
        "score",
        "score every user against every live coupon (pandas UDF)",
        "coupon_spark.scoring:run",
        daily=True,
    ),
    Stage(
        "allocate",
        "budget-constrained allocation through the Lagrangian dual",
        "coupon_spark.allocation.job:run",
        daily=True,
    ),
    Stage(
        "evaluate",
        "model metrics, policy value, budget use, fairness; the report",
        "coupon_spark.evaluation.job:run",
        daily=True,
    ),
    Stage(
        "pipeline",
        "run the stages in order for one or more days",
        "coupon_spark.pipeline:run",
        options=(Option("days", "number of consecutive days to run", "int"),),
        tensorflow=True,
        writes_landing=True,
    ),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

DAILY: tuple[str, ...] = tuple(s.name for s in STAGES if s.daily)
"""The production day, in order: the DAG's tasks (``generate`` has no place there: the shop's export lands by
itself)."""

LOOP: tuple[str, ...] = ("features", "train", "score", "allocate")
"""What :mod:`coupon_spark.pipeline` runs each day before the shop plays the day forward (then ``cleanse`` of
the day's landing files and ``evaluate``): :data:`DAILY` with ``cleanse`` moved after the shop's day."""


def stage(name: str) -> Stage:
    """The stage called ``name``.

    Raises:
        KeyError: No such stage; the message lists them.
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(BY_NAME)}") from None
