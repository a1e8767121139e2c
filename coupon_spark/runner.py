"""What every stage runs in: the :class:`Context` (built once per process) and :func:`run_stage`.

The command line builds one context from its arguments; the pipeline hands its own to each stage of the loop;
a test or a notebook builds one around its Spark session::

    ctx = Context(spark, Config.from_file("conf/local.yaml"))
    run_stage("features", ctx, dt.date(2026, 11, 12))
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coupon_spark.stages import RunOptions, Stage, stage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from coupon_spark.config import Config
    from coupon_spark.lake import Lake
    from coupon_spark.model.registry import Registry

StageFn = Callable[["Context", dt.date], int]


@dataclass
class Context:
    """The Spark session, the typed configuration and the stage's options; the lake and the model registry are
    opened on first use and then shared by every stage run with this context (and with the contexts
    :meth:`with_options` derives from it)."""

    spark: SparkSession
    cfg: Config
    options: RunOptions = field(default_factory=RunOptions)
    _opened: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def lake(self) -> Lake:
        if "lake" not in self._opened:
            from coupon_spark.lake import Lake

            self._opened["lake"] = Lake.from_config(self.spark, self.cfg.lake)
        return self._opened["lake"]  # type: ignore[no-any-return]

    @property
    def registry(self) -> Registry:
        if "registry" not in self._opened:
            from coupon_spark.model.registry import Registry

            self._opened["registry"] = Registry.from_config(self.cfg)
        return self._opened["registry"]  # type: ignore[no-any-return]

    def with_options(self, **changes: Any) -> Context:
        """This context (the same session, lake and registry) with other options, e.g. ``force=True``."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))


def resolve(s: Stage | str) -> StageFn:
    """The function behind a stage (imported on first use, so that ``--help`` imports no stage module)."""
    s = stage(s) if isinstance(s, str) else s
    module, func = s.target.split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def run_stage(name: str, ctx: Context, run_date: dt.date) -> int:
    """Run stage ``name`` for ``run_date`` in ``ctx``; returns its exit code (0: done)."""
    return int(resolve(name)(ctx, run_date) or 0)
