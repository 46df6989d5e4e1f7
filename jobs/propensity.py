"""spark-submit entry point of stage `propensity` (who will buy, who will churn).

spark-submit --py-files dist/shopseg.zip jobs/propensity.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["propensity", *sys.argv[1:]]))
