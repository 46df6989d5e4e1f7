"""spark-submit entry point of `shopseg summary`: the lakehouse's tables, runs and models.

spark-submit --py-files dist/shopseg.zip jobs/summary.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["summary", *sys.argv[1:]]))
