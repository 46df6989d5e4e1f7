"""MLflow: one experiment per stage, one run per job, lineage, charts, the model registry.

Embedded default: tracking on SQLite inside the lakehouse, artifacts under
`<lakehouse>/mlartifacts`. On a cluster or Databricks the URIs come from conf.
Models are registered as Spark ML `PipelineModel`s with explicit pip
requirements (inferring them costs about 25 s) and loaded back by name and
version or alias, never by a file path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shopseg.config import MlflowConf

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.ml import PipelineModel

    from shopseg.delta import WriteResult

log = logging.getLogger(__name__)

PIPELINE_TAG = "shopseg.pipeline_id"
STAGE_TAG = "shopseg.stage"
CONFIG_TAG = "shopseg.config_hash"


def configure(conf: MlflowConf) -> None:
    """Point the MLflow client at the configured tracking and registry servers."""
    import mlflow

    # MLflow sets its own loggers to INFO on import; its start-up chatter
    # ("Creating initial MLflow database tables...") is not ours to show.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if conf.tracking_uri:
        if conf.tracking_uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(conf.tracking_uri[len("sqlite:///") :]), exist_ok=True)
        mlflow.set_tracking_uri(conf.tracking_uri)
    if conf.registry_uri:
        mlflow.set_registry_uri(conf.registry_uri)


def experiment_name(conf: MlflowConf, stage: str) -> str:
    return f"{conf.experiment_prefix.rstrip('/')}/{stage}"


def ensure_experiment(conf: MlflowConf, stage: str) -> str:
    """Id of the stage's experiment, created with its artifacts under `artifact_root`."""
    import mlflow

    name = experiment_name(conf, stage)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if conf.artifact_root:
        location = f"{conf.artifact_root.rstrip('/')}/{name.strip('/').replace('/', '-')}"
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another job
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@dataclass
class StageRun:
    """The MLflow run of one job, with the tables it read and wrote."""

    run_id: str
    experiment_id: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def log_input(self, table: str, version: int, rows: int | None) -> None:
        """Record the Delta version a job read (lineage)."""
        import mlflow

        self.inputs.append({"table": table, "version": version, "rows": rows})
        mlflow.log_param(f"input.{table}.version", version)

    def log_output(self, result: WriteResult) -> None:
        """Record a table version the job wrote."""
        import mlflow

        self.outputs.append(
            {
                "table": result.table,
                "version": result.version,
                "rows": result.rows,
                "files": result.files,
                "mode": result.mode,
                "writer": result.writer,
                "seconds": round(result.seconds, 3),
            }
        )
        mlflow.log_param(f"output.{result.table}.version", result.version)
        mlflow.log_metric(metric_name(f"rows.{result.table}"), result.rows)

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        import mlflow

        flat = _flatten(params, prefix)
        # MLflow caps a param value at 6000 characters.
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items()}, step=step)

    def log_figure(self, figure: Any, name: str) -> None:
        """Log a matplotlib figure as a PNG artifact."""
        import mlflow

        mlflow.log_figure(figure, name)

    def log_frame(self, frame: pd.DataFrame, name: str) -> None:
        """Log a small pandas DataFrame as a CSV artifact (sweeps, profiles)."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            frame.to_csv(path, index=False)
            mlflow.log_artifact(path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        import mlflow

        mlflow.log_dict(dict(data), name)

    def log_text(self, text: str, name: str) -> None:
        """Log a text artifact (the HTML report)."""
        import mlflow

        mlflow.log_text(text, name)


def metric_name(name: str) -> str:
    """A name MLflow accepts: other characters become '_' ("Can't lose" -> "Can_t lose")."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, default=str) if isinstance(value, list | dict) else value
    return out


@contextlib.contextmanager
def stage_run(
    conf: MlflowConf, stage: str, tags: Mapping[str, str] | None = None
) -> Iterator[StageRun]:
    """Start the MLflow run of one job in the stage's experiment.

    The run ends FINISHED, or FAILED when the block raises; either way its
    lineage (tables read and written, with versions) is logged as
    `lineage.json`.
    """
    import mlflow

    experiment_id = ensure_experiment(conf, stage)
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage) as active:
        run = StageRun(run_id=active.info.run_id, experiment_id=experiment_id)
        mlflow.set_tags({STAGE_TAG: stage, **(tags or {})})
        try:
            yield run
        finally:
            mlflow.log_dict({"inputs": run.inputs, "outputs": run.outputs}, "lineage.json")


def pip_requirements() -> list[str]:
    """Requirements of a registered Spark ML model, stated rather than inferred."""
    import mlflow
    import pyspark

    return [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"]


def register_spark_model(
    model: PipelineModel,
    registered_name: str,
    alias: str | None = None,
    *,
    artifact_path: str = "model",
) -> str:
    """Log `model` in the active run, register it, optionally point `alias` at it.

    Returns:
        The registered model version (as a string, as MLflow reports it).
    """
    import mlflow
    import mlflow.spark
    from mlflow import MlflowClient

    info = mlflow.spark.log_model(
        model,
        artifact_path=artifact_path,
        registered_model_name=registered_name,
        pip_requirements=pip_requirements(),
    )
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(registered_name, alias, version)
    log.info(
        "registered %s version %s%s", registered_name, version, f" as @{alias}" if alias else ""
    )
    return version


def model_uri(name: str, *, version: str | int | None = None, alias: str | None = None) -> str:
    """`models:/` URI by version or alias (exactly one of them)."""
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version or alias")
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


def load_spark_model(
    name: str, *, version: str | int | None = None, alias: str | None = None
) -> PipelineModel:
    """Load a registered Spark ML model by name and version or alias."""
    import mlflow.spark

    return mlflow.spark.load_model(model_uri(name, version=version, alias=alias))


def model_version_of_alias(name: str, alias: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


def champion_version(name: str, alias: str, stage: str) -> str:
    """The version behind `name@alias` for `stage`'s score mode; a ValueError
    naming the stage's fit mode when nothing is registered under it."""
    try:
        return model_version_of_alias(name, alias)
    except Exception as exc:  # MLflow raises its own exception types
        raise ValueError(
            f"{stage}.mode is score but {name}@{alias} is not registered ({exc}); "
            f"run the {stage} stage in fit mode first"
        ) from exc
