"""spark-submit entry point of stage `report` (the HTML report of the gold tables).

spark-submit --py-files dist/shopseg.zip jobs/report.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
