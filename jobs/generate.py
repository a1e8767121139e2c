"""spark-submit entry point for the `generate` stage: `spark-submit jobs/generate.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
