"""spark-submit entry point of stage `evaluate` (measured uplift of each campaign).

spark-submit --py-files dist/shopseg.zip jobs/evaluate.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
