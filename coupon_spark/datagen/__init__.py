"""The synthetic shop: a population with hidden traits, coupon campaigns, days of activity, dirty landing
files, and the truth (the response model) kept apart for evaluation.

Modules: :mod:`~coupon_spark.datagen.world` (catalogue, population), :mod:`~coupon_spark.datagen.response`
(the oracle), :mod:`~coupon_spark.datagen.simulate` (logging policy, one day of outcomes),
:mod:`~coupon_spark.datagen.landing` (rendering, defects, files), :mod:`~coupon_spark.datagen.shop` (the
``generate`` stage).
"""

from __future__ import annotations

import argparse
import datetime as dt

from pyspark.sql import SparkSession

from coupon_spark.config import Config


def run(spark: SparkSession, cfg: Config, run_date: dt.date, args: argparse.Namespace) -> int:
    """The ``generate`` stage (see :func:`coupon_spark.datagen.shop.run`)."""
    from coupon_spark.datagen.shop import run as _run

    return _run(spark, cfg, run_date, args)
