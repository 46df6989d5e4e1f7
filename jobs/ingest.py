"""spark-submit entry point of stage `ingest`.

Configured sources go to bronze, bad records to bronze/quarantine.

spark-submit --py-files dist/shopseg.zip jobs/ingest.py --conf conf/cluster.yaml
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
