"""spark-submit entry point of `shopseg stream`: Structured Streaming from the events'
landing folder into bronze, the users' totals and gold/user_segments_current.

spark-submit --py-files dist/shopseg.zip jobs/stream.py --conf conf/cluster.yaml \
    --set stream.trigger='30 seconds'
"""

import sys

from shopseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
