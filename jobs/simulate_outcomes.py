"""spark-submit entry point of stage `simulate_outcomes` (synthetic outcomes of a send).

spark-submit --py-files dist/shopseg.zip jobs/simulate_outcomes.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate_outcomes", *sys.argv[1:]]))
