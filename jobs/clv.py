"""spark-submit entry point of stage `clv` (lifetime value and churn probability).

spark-submit --py-files dist/shopseg.zip jobs/clv.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["clv", *sys.argv[1:]]))
