"""The session factory: local defaults in local mode only."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from shopseg.config import ConfigError, SparkConf, load_config
from shopseg.spark import concurrently, get_spark, local_cores, session_properties, work_done


def test_cluster_master_gets_only_explicit_conf():
    settings = SparkConf(shuffle_partitions=3, conf={"spark.executor.memory": "8g"})
    props = session_properties(settings, "spark://head:7077", "app")
    assert props == {"spark.executor.memory": "8g"}
    assert session_properties(SparkConf(), "yarn", "app") == {}


def test_java_options_follow_the_local_defaults_and_stay_off_a_cluster():
    settings = SparkConf(java_options=["-XX:TieredStopAtLevel=1", "-Xss4m"])
    flags = session_properties(settings, "local[2]", "app")["spark.driver.extraJavaOptions"]
    assert flags.split()[1:] == ["-XX:+UseParallelGC", "-XX:TieredStopAtLevel=1", "-Xss4m"]
    assert "spark.driver.extraJavaOptions" not in session_properties(settings, "yarn", "app")


def test_session_time_zone_is_set_on_any_session_and_keeps_event_days(spark):
    """A session already running in another zone (a cluster's) gets the configured one."""

    def days() -> list[dt.date]:
        # Built anew each time: Spark fixes a plan's time zone when it analyses it.
        events = spark.createDataFrame(
            [("2025-03-02T02:30:00Z",), ("2025-03-01T20:00:00Z",)], "ts string"
        ).select(F.to_date(F.to_timestamp("ts", "yyyy-MM-dd'T'HH:mm:ssX")).alias("day"))
        return [r.day for r in events.collect()]

    try:
        spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
        assert days() == [dt.date(2025, 3, 1), dt.date(2025, 3, 1)]
        assert get_spark("again", SparkConf()) is spark
        assert days() == [dt.date(2025, 3, 2), dt.date(2025, 3, 1)]
        get_spark("again", SparkConf(time_zone="Asia/Tokyo"))
        assert days() == [dt.date(2025, 3, 2), dt.date(2025, 3, 2)]
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_unknown_time_zone_is_a_config_error():
    with pytest.raises(ConfigError, match="spark.time_zone"):
        load_config(None, ["spark.time_zone=Mars/Olympus"])


@pytest.mark.parametrize(("master", "cores"), [("local", 1), ("local[3]", 3), ("local[2,4]", 2)])
def test_local_cores(master: str, cores: int):
    assert local_cores(master) == cores


def test_shared_session_runs_arrow_in_workers(spark):
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"

    def double(batches):
        for batch in batches:
            yield pa.RecordBatch.from_arrays([pa.compute.multiply(batch.column(0), 2)], ["id"])

    # Workers import pyarrow: they run this interpreter, not the system's.
    out = spark.range(10).mapInArrow(double, "id long").agg({"id": "sum"}).first()[0]
    assert out == 90


def test_work_done_counts_the_jobs_and_tasks_of_actions_only(spark):
    df = spark.range(0, 1000, 1, 3).withColumn("k", F.col("id") % 5)
    before = work_done(spark)
    planned = df.groupBy("k").count()
    assert work_done(spark) - before == type(before)(0, 0, 0), "a plan alone runs no job"
    planned.collect()
    df.count()
    ran = work_done(spark) - before
    # Two actions: at least one job each; the groupBy shuffles (two stages), and the
    # first stage of each runs one task per input partition.
    assert ran.jobs >= 2
    assert ran.stages >= 3
    assert ran.tasks >= 2 * 3
    assert "Spark jobs" in ran.describe()


def test_the_local_driver_runs_the_parallel_collector(spark):
    """local_defaults' JVM options reach the JVM the session runs in (not G1)."""
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    collectors = {bean.getName() for bean in management.getGarbageCollectorMXBeans()}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}, collectors


def test_delta_package_matches_the_installed_delta_spark_and_respects_named_jars():
    from importlib import metadata

    from shopseg.spark import delta_package, with_delta_package

    package = delta_package()
    assert package == f"io.delta:delta-spark_2.13:{metadata.version('delta-spark')}"
    props, added = with_delta_package({"spark.jars.packages": "org.example:x:1"})
    assert added == package
    assert props["spark.jars.packages"] == f"org.example:x:1,{package}"
    assert props["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    # Jars a user or cluster already names are left alone.
    named = {"spark.jars": "/opt/jars/delta-spark_2.13-4.4.0.jar"}
    assert with_delta_package(named) == (named, None)


FALLBACK = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
from shopseg.config import SparkConf
from shopseg.delta import Lakehouse
from shopseg.spark import get_spark
settings = SparkConf(master="local[1]", driver_memory="1g", conf={"spark.jars.ivy": sys.argv[2]})
print("writer", Lakehouse(get_spark("offline", settings), sys.argv[1]).writer)
"""


@pytest.mark.slow
def test_without_maven_central_the_run_falls_back_to_delta_rs_with_one_warning(tmp_path):
    """A first run with the network to Maven cut: an empty Ivy cache, an unreachable proxy."""
    import os
    import subprocess
    import sys

    unreachable = " ".join(
        f"-D{scheme}.proxyHost=127.0.0.1 -D{scheme}.proxyPort=9" for scheme in ("http", "https")
    )
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path / "lh"), str(tmp_path / "empty-ivy")],
        capture_output=True,
        text=True,
        timeout=300,
        # An empty jar cache too: the jars an earlier start cached would skip Ivy.
        env={
            **os.environ,
            "JAVA_TOOL_OPTIONS": unreachable,
            "SHOPSEG_JARS_DIR": str(tmp_path / "no-jars"),
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Connection refused" in done.stderr, "the download was attempted and refused"
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING could")]
    assert len(warnings) == 1, done.stdout
    assert "io.delta:delta-spark_2.13" in warnings[0] and "delta-rs" in warnings[0]
    assert "writer delta-rs" in done.stdout


CACHED_START = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
from shopseg.config import SparkConf
from shopseg.delta import Lakehouse
from shopseg.spark import get_spark
settings = SparkConf(master="local[1]", driver_memory="1g", conf={"spark.jars.ivy": sys.argv[2]})
spark = get_spark("cached", settings)
print("packages", spark.sparkContext.getConf().get("spark.jars.packages", "none"))
print("writer", Lakehouse(spark, sys.argv[1]).writer)
"""


@pytest.mark.slow
def test_delta_jars_resolved_once_start_the_next_session_without_ivy(spark, tmp_path):
    """The suite's session resolved Delta's package and cached its jars; a new process
    starts from them with no package to resolve (an empty Ivy home proves it: Ivy
    would have to download everything) and writes through Spark's Delta writer."""
    import os
    import subprocess
    import sys

    from shopseg.spark import cached_jars, delta_package, jars_cache_dir

    jars = cached_jars(delta_package())
    assert jars, f"no Delta jars cached under {jars_cache_dir()}"
    assert any("delta-spark_2.13" in j for j in jars) and all(j.endswith(".jar") for j in jars)
    unreachable = " ".join(
        f"-D{scheme}.proxyHost=127.0.0.1 -D{scheme}.proxyPort=9" for scheme in ("http", "https")
    )
    done = subprocess.run(
        [sys.executable, "-c", CACHED_START, str(tmp_path / "lh"), str(tmp_path / "empty-ivy")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAVA_TOOL_OPTIONS": unreachable},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Delta Lake's jars from {jars_cache_dir()}" in done.stdout, done.stdout
    assert "packages none" in done.stdout
    assert "writer spark" in done.stdout, done.stdout


def test_concurrently_runs_calls_side_by_side_and_keeps_their_order():
    import threading

    # Each call waits for a second one to arrive: one at a time, the barrier breaks.
    barrier = threading.Barrier(2, timeout=20)

    def meet(x: int) -> int:
        barrier.wait()
        return x * x

    assert concurrently(meet, [3, 1, 4, 2], 2) == [9, 1, 16, 4]
    lonely = threading.Barrier(2, timeout=0.5)
    with pytest.raises(threading.BrokenBarrierError):
        concurrently(lambda x: lonely.wait(), [1, 2], 1)


def test_concurrently_raises_the_first_error_and_starts_nothing_after_it():
    started = []

    def call(x: int) -> int:
        started.append(x)
        if x == 2:
            raise ValueError("item 2")
        return x

    with pytest.raises(ValueError, match="item 2"):
        concurrently(call, [1, 2, 3, 4, 5], 1)
    assert started == [1, 2]
    with pytest.raises(ValueError, match="item 2"):
        concurrently(call, [1, 2, 3, 4, 5, 6, 7, 8], 2)


def test_checkpoints_stay_with_the_executors_in_local_mode_and_go_to_the_folder_on_a_cluster(
    spark, tmp_path_factory
):
    from pathlib import Path

    from shopseg.spark import CHECKPOINTS, checkpoint_mode, checkpointed, session_conf

    assert checkpoint_mode("auto", "local[2]") == "local"
    assert checkpoint_mode("auto", "spark://127.0.0.1:7077") == "reliable"
    assert checkpoint_mode("local", "spark://127.0.0.1:7077") == "local"
    assert checkpoint_mode("reliable", "local[2]") == "reliable"
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        sc.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    folder = Path(sc.getCheckpointDir().removeprefix("file:"))
    df = spark.range(1000).withColumn("square", F.col("id") * F.col("id"))
    written = {}
    for mode in ("local", "reliable"):
        before = set(folder.rglob("part-*"))
        with session_conf(spark, {CHECKPOINTS: mode}):
            out = checkpointed(df)
        assert out.agg(F.sum("square")).first()[0] == sum(i * i for i in range(1000))
        written[mode] = len(set(folder.rglob("part-*")) - before)
    assert written["local"] == 0
    assert written["reliable"] > 0


def test_only_the_runtime_module_reaches_the_jvm():
    """Spark Connect (Databricks serverless and shared clusters) has no JVM on the
    Python side: the library asks `shopseg.spark` for what only the JVM knows."""
    import re

    from .conftest import REPO

    reach = re.compile(r"\bsparkContext\b|\._jvm\b|\._jsc\b|\._jdf\b|\.rdd\b")
    runtime = REPO / "libs" / "shopseg" / "spark.py"
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for folder in ("libs", "jobs", "notebooks")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != runtime
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if reach.search(line)
    ]
    assert not offenders, "\n".join(offenders)
    assert reach.search(runtime.read_text()), "the runtime module is where the JVM is reached"
