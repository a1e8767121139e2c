"""spark-submit entry point for the `allocate` stage: `spark-submit jobs/allocate.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["allocate", *sys.argv[1:]]))
