"""One of two drivers replacing the same partition of one table in the bucket at once.

    python tests/concurrent_writer.py <table root> <tag> <barrier folder> <class path>

Its own Spark session (its own JVM, reading the bucket through S3A with
conf/cluster.yaml's settings and the cluster's jars) and the delta-rs writer. Both drivers
read the table's snapshot and write their data files, then wait for each
other at the barrier just before committing, so the two commits race for
the same version: the race two scheduled runs can have, made certain.
Prints one JSON line: the tag and `committed` (with the version) or the
error's type.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from shopseg import delta
from shopseg.config import SparkConf, load_config
from shopseg.spark import get_spark

DAY = dt.date(2025, 1, 1)


def main(root: str, tag: str, barrier: Path, classpath: str) -> None:
    cluster = load_config(Path(__file__).parents[1] / "conf" / "cluster.yaml").spark.conf
    settings = SparkConf(
        master="local[1]",
        shuffle_partitions=1,
        conf={
            **cluster,
            "spark.driver.extraClassPath": classpath,
            # delta-rs names the bucket s3://; Spark reads it through S3A.
            "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        },
    )
    spark = get_spark(f"race-{tag}", settings, delta=False)
    commit = delta.DeltaRsWriter._commit  # noqa: SLF001 - the hook the race needs

    def commit_together(self, *args, **kwargs):
        (barrier / tag).touch()
        deadline = time.monotonic() + 180
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return commit(self, *args, **kwargs)

    delta.DeltaRsWriter._commit = commit_together  # noqa: SLF001
    lake = delta.Lakehouse(spark, root, "delta-rs")
    rows = spark.createDataFrame(
        [(u, DAY, tag) for u in range(3)], "user_id long, d date, tag string"
    )
    try:
        result = lake.write(rows, "race", "overwrite_partitions", partition_by=["d"])
        outcome = {"tag": tag, "outcome": "committed", "version": result.version}
    except delta.DeltaError as exc:
        outcome = {"tag": tag, "outcome": type(exc).__name__, "message": str(exc)}
    print(json.dumps(outcome), flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4])
