"""A real cluster on this machine: standalone Spark, an S3-compatible store, an MLflow server.

`shopseg cluster up` starts, all bound to 127.0.0.1:

- a Spark standalone master and two workers (one core each, their own work
  directories), from the installed pyspark's `spark-class`;
- moto's S3 server, with the lakehouse bucket created;
- an MLflow tracking server (SQLite backend store, artifacts in the bucket,
  served through the server, so clients need no bucket credentials).

`shopseg cluster run` submits every stage with `spark-submit` to the master,
the library as a zip, the lakehouse in the bucket, MLflow over HTTP, and
prints the summary `make run` prints; `shopseg cluster down` stops what `up`
started. Pids, logs, the resolved jars and the worker folders live under one
folder (`.cluster/` by default), and `down` works from the pids written
there, whoever started them.

The jars a cluster image would carry (Delta for the Spark writer, hadoop-aws
for `s3a://`, which must match the Hadoop pyspark ships) are resolved once by
Spark's Ivy into `<folder>/ivy/jars` and put on the driver's and executors'
class path, rather than shipped with `--packages` to every executor of every
stage: the AWS SDK bundle alone is 686 MB.

The package: `base` (constants, `Ports`, `Harness`: the folder, ports,
environment and Spark properties; the jars a cluster needs), `servers`
(`up`, `down`, `running`, the jar resolution), `submit` (the library zip and
`spark-submit`). Every name is importable from here.
"""

from shopseg.harness.base import (
    ACCESS_KEY,
    BUCKET,
    CODEGEN_FACTORY,
    JVM_OPTIONS,
    REGION,
    SECRET_KEY,
    Harness,
    HarnessError,
    Ports,
    artifact_name,
    cluster_packages,
    hadoop_version,
    log4j_file,
    spark_home,
)
from shopseg.harness.servers import down, port_in_use, resolve_jars, running, up, wait_for_port
from shopseg.harness.submit import library_zip, library_zip_path, submit, submit_command

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "CODEGEN_FACTORY",
    "JVM_OPTIONS",
    "REGION",
    "SECRET_KEY",
    "Harness",
    "HarnessError",
    "Ports",
    "artifact_name",
    "cluster_packages",
    "down",
    "hadoop_version",
    "library_zip",
    "library_zip_path",
    "log4j_file",
    "port_in_use",
    "resolve_jars",
    "running",
    "spark_home",
    "submit",
    "submit_command",
    "up",
    "wait_for_port",
]
