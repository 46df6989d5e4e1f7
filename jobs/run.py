"""spark-submit entry point of the whole pipeline in one application.

Every stage (or --stages) in order, in one Spark application: on a small
cluster this saves each stage's executor start-up. Per-stage jobs
(`jobs/<stage>.py`) are what a scheduler runs.

spark-submit --py-files dist/shopseg.zip jobs/run.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
