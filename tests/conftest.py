"""Shared fixtures: one Spark session for the whole run, tmp lakehouses, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopseg.config import Config, SparkConf, load_config
from shopseg.spark import delta_classes_available, get_spark

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONF = REPO / "conf" / "local.yaml"


def _delta_jars_conf() -> dict[str, str]:
    """Delta's Spark classes, where a developer has the jars (no Maven access here).

    SHOPSEG_DELTA_JARS: comma-separated jar paths (delta-spark and delta-storage).
    """
    jars = os.environ.get("SHOPSEG_DELTA_JARS")
    if not jars:
        return {}
    return {
        "spark.jars": jars,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    }


@pytest.fixture(scope="session")
def spark():
    settings = SparkConf(
        master="local[2]",
        shuffle_partitions=2,
        ui=False,
        driver_memory="2g",
        conf=_delta_jars_conf(),
    )
    session = get_spark("shopseg-tests", settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def has_spark_delta(spark) -> bool:
    return delta_classes_available(spark)


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lakehouse"


# Small synthetic data: enough users per persona for behaviour checks, quick to build.
SMALL_GENERATE = (
    "generate.users=3000",
    "generate.items=400",
    "generate.events_per_user=30",
)


@pytest.fixture
def small_config(lake_root: Path):
    """Build a Config from conf/local.yaml with a tmp lakehouse and small sizes."""

    def make(*overrides: str) -> Config:
        return load_config(
            LOCAL_CONF,
            [f"lakehouse.root={lake_root}", "spark.master=local[2]", *SMALL_GENERATE, *overrides],
        )

    return make


@pytest.fixture(scope="session")
def default_lake(spark, tmp_path_factory) -> Path:
    """The whole pipeline once on `make run`'s data (conf/local.yaml), for slow tests."""
    from shopseg.cli import main

    root = tmp_path_factory.mktemp("default") / "lakehouse"
    args = ["--conf", str(LOCAL_CONF), "--set", f"lakehouse.root={root}"]
    assert main(["run", *args, "--set", "spark.master=local[2]"]) == 0
    return root
