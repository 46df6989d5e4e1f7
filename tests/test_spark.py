"""The session factory: local defaults in local mode only."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from shopseg.config import ConfigError, SparkConf, load_config
from shopseg.spark import get_spark, local_cores, session_properties


def test_cluster_master_gets_only_explicit_conf():
    settings = SparkConf(shuffle_partitions=3, conf={"spark.executor.memory": "8g"})
    props = session_properties(settings, "spark://head:7077", "app")
    assert props == {"spark.executor.memory": "8g"}
    assert session_properties(SparkConf(), "yarn", "app") == {}


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
