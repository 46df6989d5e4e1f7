"""spark-submit entry point of stage `uplift` (whom a campaign changes).

spark-submit --py-files dist/shopseg.zip jobs/uplift.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["uplift", *sys.argv[1:]]))
