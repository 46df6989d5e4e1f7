"""The session factory: local defaults in local mode only."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest

from shopseg.config import SparkConf
from shopseg.spark import local_cores, session_properties


def test_local_master_gets_small_machine_defaults():
    props = session_properties(SparkConf(), "local[2]", "app")
    assert props["spark.sql.shuffle.partitions"] == "8"
    assert props["spark.pyspark.python"] == sys.executable
    assert props["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert props["spark.sql.adaptive.enabled"] == "true"
    assert props["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    assert props["spark.sql.session.timeZone"] == "UTC"
    assert props["spark.ui.enabled"] == "false"


def test_cluster_master_gets_only_explicit_conf():
    settings = SparkConf(shuffle_partitions=3, conf={"spark.executor.memory": "8g"})
    props = session_properties(settings, "spark://head:7077", "app")
    assert props == {"spark.executor.memory": "8g"}
    assert session_properties(SparkConf(), "yarn", "app") == {}


def test_explicit_conf_wins_over_local_defaults():
    settings = SparkConf(conf={"spark.sql.session.timeZone": "Europe/Paris"})
    assert session_properties(settings, "local[*]", "app")["spark.sql.session.timeZone"] == (
        "Europe/Paris"
    )


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
