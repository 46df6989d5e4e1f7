"""The harness's folder, ports and environment (`Harness`), and the jars a cluster needs."""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shopseg.config import ShopsegError
from shopseg.spark import jars_cache_dir

# moto accepts any credentials; they stand for the cloud SDK's environment
# variables a real cluster sets (never a file in the repository).
ACCESS_KEY = "shopseg-harness"
SECRET_KEY = "shopseg-harness-secret"
REGION = "us-east-1"
BUCKET = "shopseg-lakehouse"
# Three JVMs (driver, two executors) share two cores here, and each new
# application's JVMs spend them compiling: C1 only (no C2) for these
# short-lived JVMs, and the parallel collector (as local mode). Measured on
# the suite's one-application pipeline (2026-12-04, one run each): 338 s as
# C1 only, 322 s with the parallel collector, 281 s with it and
# `CODEGEN_FACTORY` below, 313 s with those and C2.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseParallelGC"
# Each task of each executor generated (and the driver compiled) Java source
# for every projection it built: 16% of an executor's samples in Java Flight
# Recorder on the tiny shop, with Janino's compiler another 10%. Spark's
# interpreted projections do without; whole-stage code generation stays.
# For the harness's tiny data only: on data of any size generated code pays.
CODEGEN_FACTORY = {"spark.sql.codegen.factoryMode": "NO_CODEGEN"}


class HarnessError(ShopsegError):
    """The local cluster cannot be started, used or stopped."""


@dataclass(frozen=True)
class Ports:
    """The ports the harness binds on 127.0.0.1 (checked free before anything starts)."""

    master: int = 7077
    master_ui: int = 18080
    worker_ui: tuple[int, ...] = (18081, 18082)
    s3: int = 19000
    mlflow: int = 15000

    def all(self) -> list[int]:
        return [self.master, self.master_ui, *self.worker_ui, self.s3, self.mlflow]


@dataclass
class Harness:
    """One local cluster: where its files live and how to reach its servers.

    Args:
        folder: pids, logs, jars, worker folders and the MLflow database.
        ports: the ports to bind.
        worker_memory: memory each worker offers its executors.
        jars_folder: Spark's Ivy folder for the cluster's jars (default
            `cluster/` in the user's jar cache, `spark.jars_cache_dir()`, so a
            new checkout does not download the ~700 MB of AWS SDK again).
    """

    folder: Path
    ports: Ports = field(default_factory=Ports)
    worker_memory: str = "3g"
    jars_folder: Path | None = None

    @property
    def ivy(self) -> Path:
        return self.jars_folder or jars_cache_dir() / "cluster"

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.ports.master}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def lakehouse_root(self) -> str:
        return f"s3a://{BUCKET}/shopseg"

    @property
    def state_file(self) -> Path:
        return self.folder / "harness.json"

    def environment(self) -> dict[str, str]:
        """Variables every process of the cluster and its clients gets.

        The AWS ones are read by S3A (its default credential chain), by
        delta-rs and by boto3 alike; `AWS_ENDPOINT_URL` sends all of them to
        the local store.
        """
        return {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "PYSPARK_PYTHON": sys.executable,
        }

    def jars(self) -> list[str]:
        """The resolved jars (empty before `resolve_jars`)."""
        return sorted(glob.glob(str(self.ivy / "jars" / "*.jar")))

    def classpath_jars(self) -> list[str]:
        """The resolved jars pyspark does not ship already.

        Ivy also brings older copies of jars Spark has (jackson 2.13,
        hadoop-client 3.4.2, parquet 1.16): `--packages` puts them after
        Spark's own, but on the extra class path they would come first and
        break Spark (its Scala Jackson module refuses jackson-databind 2.13).
        """
        shipped = {
            artifact_name(Path(j).name) for j in glob.glob(str(spark_home() / "jars" / "*.jar"))
        }
        return [
            j for j in self.jars() if artifact_name(Path(j).name.split("_", 1)[-1]) not in shipped
        ]

    def spark_properties(self) -> dict[str, str]:
        """What `spark-submit` passes for this cluster (besides conf/cluster.yaml's own)."""
        classpath = ":".join(self.classpath_jars())
        return {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.extraClassPath": classpath,
            "spark.executor.extraClassPath": classpath,
            "spark.pyspark.python": sys.executable,
            "spark.pyspark.driver.python": sys.executable,
            "spark.executor.memory": "2g",
            "spark.ui.enabled": "false",
            # Spark's INFO chatter (10,000 lines a stage) buries the stage's own log.
            "spark.driver.extraJavaOptions": (
                f"-Dlog4j2.configurationFile={log4j_file()} {JVM_OPTIONS}"
            ),
            "spark.executor.extraJavaOptions": JVM_OPTIONS,
            **CODEGEN_FACTORY,
            **{f"spark.executorEnv.{k}": v for k, v in self.environment().items()},
        }


def artifact_name(jar_name: str) -> str:
    """`jackson-databind` of `jackson-databind-2.13.5.jar`: the name without its version."""
    stem = jar_name[: -len(".jar")]
    parts = stem.split("-")
    while len(parts) > 1 and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts)


def log4j_file() -> str:
    from importlib import resources

    return str(resources.files("shopseg") / "resources" / "log4j2.properties")


def spark_home() -> Path:
    """The installed pyspark's folder, which holds `bin/spark-class` and `jars/`."""
    import pyspark

    return Path(pyspark.__file__).parent


def hadoop_version() -> str:
    """The Hadoop version pyspark ships (hadoop-aws must be the same)."""
    found = sorted(glob.glob(str(spark_home() / "jars" / "hadoop-client-api-*.jar")))
    if not found:
        raise HarnessError(f"no hadoop-client-api jar in {spark_home() / 'jars'}")
    return Path(found[-1]).name[len("hadoop-client-api-") : -len(".jar")]


def cluster_packages() -> list[str]:
    """Maven coordinates the cluster needs: Delta's Spark package and hadoop-aws."""
    from shopseg.spark import delta_package

    packages = [f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"]
    delta = delta_package()
    if delta:
        packages.append(delta)
    return packages
