"""spark-submit entry point of stage `recommend` (ALS recommendations, similar items).

spark-submit --py-files dist/shopseg.zip jobs/recommend.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
