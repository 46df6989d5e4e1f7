"""spark-submit entry point of stage `features`.

Writes silver/events, silver/user_features and silver/interactions.

spark-submit --py-files dist/shopseg.zip jobs/features.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
