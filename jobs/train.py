"""spark-submit entry point for the `train` stage: `spark-submit jobs/train.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
