"""spark-submit entry point of stage `maintain` (compaction and vacuum of the Delta tables).

spark-submit --py-files dist/shopseg.zip jobs/maintain.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
