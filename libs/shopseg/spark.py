"""The one Spark session factory.

`get_spark` returns the active session when there is one (a notebook, a
Databricks cluster, `spark-submit`) and otherwise builds one. Local-mode
defaults are applied only when the master is local; on a cluster nothing the
cluster configured is overridden.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from importlib import resources
from typing import TYPE_CHECKING

from shopseg.config import SparkConf

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _requested_master(settings: SparkConf) -> str:
    """The master the session will get: spark-submit's, else the conf's, else local[*]."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Launched by spark-submit or the pyspark shell: the JVM already runs
        # with the master it was given, and that choice wins over the file.
        from pyspark import SparkConf as JvmConf
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
        submitted = JvmConf().get("spark.master", "local[*]")
        if settings.master and settings.master != submitted:
            log.info("spark-submit master %s wins over spark.master %s", submitted, settings.master)
        return submitted
    return settings.master or os.environ.get("MASTER", "local[*]")


def is_local_master(master: str) -> bool:
    return master.startswith("local")


def local_cores(master: str) -> int:
    """Cores a `local[N]` / `local[*]` / `local` master uses."""
    inside = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
    inside = inside.split(",")[0]
    if inside == "*":
        return os.cpu_count() or 1
    return max(1, int(inside))


def local_defaults(settings: SparkConf, master: str) -> dict[str, str]:
    """Spark properties for local mode on a small machine (DESIGN.md, local Spark)."""
    cores = local_cores(master)
    log4j = resources.files("shopseg") / "resources" / "log4j2.properties"
    return {
        "spark.master": master,
        "spark.app.name": settings.app_name,
        "spark.driver.memory": settings.driver_memory,
        # Spark's 200 shuffle partitions are for clusters; a small multiple of
        # the cores keeps tasks few and big enough here. Measured on 10M events
        # (user features, 2 cores): 13.2 s with 2x the cores, 11.2 s with 4x,
        # 11.0 s with 8x; adaptive execution coalesces them on small data.
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions or 4 * cores),
        "spark.default.parallelism": str(2 * cores),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Worker Python must be this interpreter (the venv's) or workers fail
        # to import pyarrow.
        "spark.pyspark.python": sys.executable,
        # Delta expects INT64 microsecond timestamps; Spark defaults to INT96.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.session.timeZone": settings.time_zone,
        # Reliable checkpoints (ALS, the segment sweep) are removed once unused.
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        "spark.ui.enabled": str(settings.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log4j}",
    }


def session_properties(settings: SparkConf, master: str, app_name: str) -> dict[str, str]:
    """Properties a new session is built with.

    Local mode gets the small-machine defaults; on a cluster only what the
    `spark.conf` section states explicitly is passed, so nothing the cluster
    configured is overridden.
    """
    props: dict[str, str] = {}
    if is_local_master(master):
        props.update(local_defaults(settings, master))
        props["spark.app.name"] = app_name
    props.update(settings.conf)
    return props


def delta_classes_available(spark: SparkSession) -> bool:
    """True when the JVM has Delta Lake's Spark classes (Databricks, or --packages io.delta)."""
    try:
        jvm = spark.sparkContext._jvm  # noqa: SLF001 - py4j is the only way to ask the JVM
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def apply_session_settings(spark: SparkSession, settings: SparkConf) -> None:
    """Session SQL settings that decide results, on every master, cluster included.

    The time zone decides which day `to_date(event_ts)` gives; Delta (and so
    the delta-rs writer) needs INT64 microsecond Parquet timestamps, where
    Spark's default is INT96. A value in `spark.conf` wins.
    """
    wanted = {
        "spark.sql.session.timeZone": settings.time_zone,
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    for key, value in wanted.items():
        spark.conf.set(key, settings.conf.get(key, value))


def get_spark(app_name: str, settings: SparkConf | None = None) -> SparkSession:
    """Return the active SparkSession or build one.

    Args:
        app_name: application name (used only when a session is created here).
        settings: the `spark` config section.

    Returns:
        A SparkSession with a checkpoint directory set.
    """
    from pyspark.sql import SparkSession

    settings = settings or SparkConf()
    active = SparkSession.getActiveSession()
    started = time.perf_counter()
    if active is not None:
        spark = active
        master = spark.sparkContext.master
    else:
        master = _requested_master(settings)
        builder = SparkSession.builder.appName(app_name)
        if is_local_master(master):
            # pyspark takes the worker interpreter from PYSPARK_PYTHON, not
            # from spark.pyspark.python, when the driver is a Python process.
            os.environ["PYSPARK_PYTHON"] = sys.executable
        for key, value in session_properties(settings, master, app_name).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        log.info(
            "started Spark %s (master %s) in %.1f s",
            spark.version,
            master,
            time.perf_counter() - started,
        )
    if is_local_master(master):
        spark.sparkContext.setLogLevel("ERROR")
        if settings.shuffle_partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
    apply_session_settings(spark, settings)
    sc = spark.sparkContext
    if settings.checkpoint_dir and sc.getCheckpointDir() is None:
        sc.setCheckpointDir(settings.checkpoint_dir)
    return spark


def checkpointed(df: DataFrame) -> DataFrame:
    """`df` computed once, with its lineage cut, without being persisted (cached).

    A reliable checkpoint when the SparkContext has a checkpoint directory
    (survives a lost executor), else a local one.
    """
    if df.sparkSession.sparkContext.getCheckpointDir():
        return df.checkpoint(eager=True)
    return df.localCheckpoint(eager=True)
