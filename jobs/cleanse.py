"""spark-submit entry point for the `cleanse` stage: `spark-submit jobs/cleanse.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["cleanse", *sys.argv[1:]]))
