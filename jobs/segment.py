"""spark-submit entry point of stage `segment` (customer segments, profiles, transitions).

spark-submit --py-files dist/shopseg.zip jobs/segment.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["segment", *sys.argv[1:]]))
