"""spark-submit entry point of stage `generate` (synthetic shop data).

spark-submit --py-files dist/shopseg.zip jobs/generate.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
