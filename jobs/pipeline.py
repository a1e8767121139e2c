"""spark-submit entry point for the `pipeline` stage: `spark-submit jobs/pipeline.py --conf conf/cluster.yaml`."""

from __future__ import annotations

import sys

from coupon_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
