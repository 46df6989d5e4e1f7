"""spark-submit entry point of stage `audiences` (campaign audiences with A/B holdouts).

spark-submit --py-files dist/shopseg.zip jobs/audiences.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["audiences", *sys.argv[1:]]))
