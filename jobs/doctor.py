"""spark-submit entry point for the `doctor` stage: `spark-submit jobs/doctor.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
