"""MLflow layer: runs per stage with lineage, registry round trip by version and alias."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import VectorAssembler
from pyspark.testing import assertDataFrameEqual

from shopseg import tracking
from shopseg.config import MlflowConf
from shopseg.delta import WriteResult


@pytest.fixture
def mlflow_conf(tmp_path) -> MlflowConf:
    conf = MlflowConf(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=f"file://{tmp_path}/mlartifacts",
        experiment_prefix="shopseg-test",
    )
    tracking.configure(conf)
    return conf


def test_stage_run_logs_lineage_in_the_stage_experiment(mlflow_conf, tmp_path):
    with tracking.stage_run(mlflow_conf, "features", {"shopseg.pipeline_id": "p1"}) as run:
        run.log_input("silver/events", 3, 1000)
        run.log_output(
            WriteResult("silver/user_features", "/x", 7, 42, 2, "append", "delta-rs", 1.0)
        )
    client = MlflowClient()
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["input.silver/events.version"] == "3"
    assert got.data.params["output.silver/user_features.version"] == "7"
    assert got.data.metrics["rows.silver/user_features"] == 42
    assert got.data.tags["shopseg.stage"] == "features"
    experiment = client.get_experiment(got.info.experiment_id)
    assert experiment.name == "shopseg-test/features"
    assert experiment.artifact_location.startswith(f"file://{tmp_path}/mlartifacts")
    lineage = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/lineage.json")
    assert lineage["inputs"] == [{"table": "silver/events", "version": 3, "rows": 1000}]
    assert lineage["outputs"][0]["version"] == 7


def test_failed_stage_run_is_marked_failed(mlflow_conf):
    with pytest.raises(RuntimeError), tracking.stage_run(mlflow_conf, "segment") as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.run_id).info.status == "FAILED"


def test_register_and_load_by_version_and_alias(spark, mlflow_conf):
    df = spark.createDataFrame(
        [(float(i), float(i % 3)) for i in range(30)] + [(100.0 + i, 50.0) for i in range(10)],
        "a double, b double",
    )
    model = Pipeline(
        stages=[VectorAssembler(inputCols=["a", "b"], outputCol="features"), KMeans(k=2, seed=1)]
    ).fit(df)
    expected = model.transform(df).select("a", "b", "prediction")
    with tracking.stage_run(mlflow_conf, "segment"):
        v1 = tracking.register_spark_model(model, "shopseg_test_model", alias="champion")
    with tracking.stage_run(mlflow_conf, "segment"):
        v2 = tracking.register_spark_model(model, "shopseg_test_model")
    assert (v1, v2) == ("1", "2")
    assert tracking.model_version_of_alias("shopseg_test_model", "champion") == "1"
    with pytest.raises(ValueError, match=r"segment\.mode is score but shopseg_absent@champion"):
        tracking.champion_version("shopseg_absent", "champion", "segment")
    by_alias = tracking.load_spark_model("shopseg_test_model", alias="champion")
    by_version = tracking.load_spark_model("shopseg_test_model", version=2)
    assertDataFrameEqual(by_alias.transform(df).select("a", "b", "prediction"), expected)
    assertDataFrameEqual(by_version.transform(df).select("a", "b", "prediction"), expected)


def test_model_uri_needs_exactly_one_selector():
    assert tracking.model_uri("m", alias="prod") == "models:/m@prod"
    assert tracking.model_uri("m", version=3) == "models:/m/3"
    with pytest.raises(ValueError):
        tracking.model_uri("m")
    with pytest.raises(ValueError):
        tracking.model_uri("m", version=1, alias="x")


def test_a_process_without_a_main_file_survives_what_spark_model_logging_imports():
    """`python -c`, a script on stdin and pytest-xdist's workers have a `__main__`
    without a file; pyspark.sql.connect (imported by mlflow.spark.log_model) then
    exits the process with status 0 unless its dependencies are installed."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import pyspark.sql.connect; print('carried on')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "carried on"), done.stderr[-2000:]
