"""Schemas of the Delta tables coupon-spark writes, in one place.

Each stage's section lists its tables as Spark ``StructType`` constants; the stage ends its output with a
``select`` that produces exactly this schema, and the tests compare against it.
"""

from __future__ import annotations

from pyspark.sql.types import StructType

# ---- silver tables and quarantine (cleanse) --------------------------------------------------------------

# ---- features (features) ---------------------------------------------------------------------------------

# ---- candidates (score) and allocations (allocate) -------------------------------------------------------

__all__: list[str] = ["StructType"]
