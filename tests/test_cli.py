"""The `shopseg` command and the spark-submit entry points."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from shopseg import tables
from shopseg.cli import build_parser, main
from shopseg.pipeline import STAGE_NAMES

from .conftest import FAST_WRITER, LOCAL_CONF, REPO, SMALL_GENERATE


def small_args(root: Path) -> list[str]:
    args = ["--conf", str(LOCAL_CONF), "--set", f"lakehouse.root={root}"]
    for item in ("spark.master=local[2]", FAST_WRITER, *SMALL_GENERATE):
        args += ["--set", item]
    return args


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in STAGE_NAMES:
        assert f"  {name}" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--stages" in capsys.readouterr().out


def test_unknown_stage_is_named(capsys, lake_root):
    assert main(["run", "--stages", "generate,segmentz", *small_args(lake_root)]) == 2
    err = capsys.readouterr().err
    assert "segmentz" in err and "generate" in err


def test_bad_config_exits_2_naming_the_key(capsys, lake_root):
    assert main(["generate", *small_args(lake_root), "--set", "generate.users=lots"]) == 2
    assert "generate.users" in capsys.readouterr().err
    assert main(["generate", "--conf", str(lake_root / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_generate_writes_tables_files_runs_and_summary(spark, lake_root, capsys):
    assert main(["run", "--stages", "generate", *small_args(lake_root)]) == 0
    out = capsys.readouterr().out

    personas = DeltaTable(str(lake_root / tables.USER_PERSONAS.name))
    assert personas.version() == 0
    assert len(personas.to_pandas()) == 3000
    assert (lake_root / tables.RAW_USERS).is_dir()
    assert list((lake_root / tables.RAW_EVENTS).glob("event_date=2025-*/part-*"))
    assert list((lake_root / tables.RAW_ITEMS).glob("part-*.parquet"))

    # The commit names the MLflow run that made it, and the run names the version.
    # Both writers keep the commit's metadata as JSON in userMetadata.
    commit = json.loads(personas.history(1)[0]["userMetadata"])
    run = MlflowClient().get_run(commit["shopseg.mlflow_run_id"])
    assert run.data.tags["shopseg.stage"] == "generate"
    assert run.data.params[f"output.{tables.USER_PERSONAS.name}.version"] == "0"
    assert run.data.params["generate.users"] == "3000"
    assert commit["shopseg.config_hash"] == run.data.tags["shopseg.config_hash"]
    raw_events = run.data.metrics[f"rows.{tables.RAW_EVENTS}"]
    assert 0.85 * 90_000 < raw_events < 1.15 * 90_000

    assert "raw/ground_truth/user_personas" in out
    assert f"{3000:,}" in out
    assert run.info.run_id in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert str(lake_root) in out


def test_summary_command_reads_an_existing_lakehouse(spark, lake_root, capsys):
    assert main(["summary", *small_args(lake_root)]) == 0
    assert "no Delta tables yet" in capsys.readouterr().out


@pytest.mark.slow
def test_spark_submit_runs_a_job_file(tmp_path):
    """`spark-submit jobs/maintain.py --conf ...` runs the same stage code.

    `maintain` on one small table: the cheapest stage that reads and rewrites
    a Delta table (`generate` spent ~25 s of a cold JVM's time here).
    """
    import pandas as pd
    from deltalake import write_deltalake

    root = tmp_path / "lh"
    table = str(root / tables.ITEM_GROUPS.name)
    for part in range(3):
        rows = pd.DataFrame({"item_id": range(part * 10, part * 10 + 10), "taste_group": part})
        write_deltalake(table, rows, mode="append")
    assert len(DeltaTable(table).file_uris()) == 3
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [
        str(spark_submit),
        "--master",
        "local[2]",
        str(REPO / "jobs" / "maintain.py"),
        *small_args(root),
        "--set",
        "maintain.retention_hours=0",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = DeltaTable(table)
    assert len(after.file_uris()) == 1
    assert sorted(after.to_pandas()["item_id"]) == list(range(30))
    # spark-submit relays the Python driver's output through its own streams.
    assert "stage maintain finished" in done.stdout + done.stderr


@pytest.mark.slow
def test_console_script_fails_with_status_1_when_a_stage_fails(tmp_path):
    root = tmp_path / "lh"
    root.mkdir()
    # A file where the raw folder must go makes the stage fail for real.
    (root / "raw").write_text("not a folder")
    shopseg = Path(sys.executable).parent / "shopseg"
    done = subprocess.run(
        [str(shopseg), "generate", *small_args(root), "--set", "generate.users=300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    assert "shopseg generate failed" in done.stderr
    assert "Traceback" in done.stderr, "an unexpected failure keeps its traceback"
    tracking = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_every_stage_has_a_spark_submit_job_file():
    for name in STAGE_NAMES:
        job = REPO / "jobs" / f"{name}.py"
        assert job.is_file(), f"stage {name} has no jobs/{name}.py"
        assert f'main(["{name}", *sys.argv[1:]])' in job.read_text()


QUARANTINE_TYPES = [
    ("source", "string"),
    ("record", "string"),
    ("record_bytes", "binary"),
    ("reason", "string"),
    ("batch_id", "string"),
    ("ingested_at", "timestamp"),
    ("source_file", "string"),
]


def test_maintain_is_not_in_the_default_run_and_compacts_every_table(spark, lake_root):
    from shopseg.delta import Lakehouse
    from shopseg.pipeline import parse_stages

    assert "maintain" not in parse_stages(None)
    assert parse_stages("features,maintain") == ["features", "maintain"]

    lake = Lakehouse(spark, str(lake_root), "delta-rs")
    for i in range(3):
        rows = spark.range(i * 5, i * 5 + 5).withColumnRenamed("id", "user_id").coalesce(1)
        lake.write(rows, tables.INTERACTIONS.name, "append")
        lake.write(rows.withColumnRenamed("user_id", "item_id"), tables.BRONZE_ITEMS.name, "append")
    args = [*small_args(lake_root), "--set", "maintain.retention_hours=0"]
    assert main(["maintain", *args]) == 0
    for name in (tables.INTERACTIONS.name, tables.BRONZE_ITEMS.name):
        assert len(DeltaTable(lake.path(name)).file_uris()) == 1, name
        assert lake.read(name).count() == 15
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.data.metrics["files_before"] == 6 and run.data.metrics["files_after"] == 2
    assert run.data.metrics[f"files_vacuumed.{tables.INTERACTIONS.name}"] == 3

    # The quarantine keeps records maintain.quarantine_days (default 90) days.
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ages = [1, 89, 91, 400]
    rows = [
        ("users", f"r{d}", None, "bad_type:age", "b", now - dt.timedelta(days=d), "f") for d in ages
    ]
    lake.write(
        spark.createDataFrame(rows, ", ".join(f"{c} {ty}" for c, ty in QUARANTINE_TYPES)),
        tables.QUARANTINE.name,
        "append",
    )
    assert main(["maintain", *args]) == 0
    kept = sorted(r.record for r in lake.read(tables.QUARANTINE.name).collect())
    assert kept == ["r1", "r89"]
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.data.metrics["quarantine_rows_purged"] == 2

    missing = [*args, "--set", "maintain.tables=[gold/nothing]"]
    assert main(["maintain", *missing]) == 1


def test_databricks_bundle_runs_every_pipeline_stage_in_order():
    """databricks.yml: one task per stage of `shopseg run`, each after the one before."""
    import yaml

    from shopseg.pipeline import parse_stages

    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    tasks = bundle["resources"]["jobs"]["shopseg_pipeline"]["tasks"]
    assert [task["task_key"] for task in tasks] == parse_stages(None)
    for before, task in zip([None, *tasks], tasks, strict=False):
        script = task["spark_python_task"]["python_file"]
        assert script == f"jobs/{task['task_key']}.py" and (REPO / script).is_file()
        wanted = [{"task_key": before["task_key"]}] if before else None
        assert task.get("depends_on") == wanted
    maintain = bundle["resources"]["jobs"]["shopseg_maintain"]["tasks"]
    assert [task["task_key"] for task in maintain] == ["maintain"]


def test_databricks_bundle_jobs_are_valid_for_databricks_and_serverless_runs_the_wheel():
    """Every job of databricks.yml against the bundle's job models that Databricks
    generates from its bundle schema (databricks-bundles: an unknown field or a wrong
    enum value is refused), and the serverless job: the same stages in the same order,
    each the wheel's `shopseg <stage>` in the job's environment."""
    import yaml
    from databricks.bundles.jobs import Job

    from shopseg.pipeline import parse_stages

    jobs = yaml.safe_load((REPO / "databricks.yml").read_text())["resources"]["jobs"]
    for name, job in jobs.items():
        Job.from_dict(job)  # raises on a field or value the schema does not have
        for cluster in job.get("job_clusters", []):
            assert cluster["new_cluster"].get("data_security_mode"), name
    broken = {**jobs["shopseg_pipeline"], "tasks": [{"task_key": "x", "spark_pyton_task": {}}]}
    with pytest.raises(ValueError, match="spark_pyton_task"):
        Job.from_dict(broken)

    serverless = jobs["shopseg_pipeline_serverless"]
    assert "job_clusters" not in serverless
    environments = {env["environment_key"] for env in serverless["environments"]}
    scripts = {
        e.name: e.value
        for e in metadata.distribution("shopseg").entry_points
        if e.group == "console_scripts"
    }
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    tasks = serverless["tasks"]
    assert [task["task_key"] for task in tasks] == parse_stages(None)
    for before, task in zip([None, *tasks], tasks, strict=False):
        assert task["environment_key"] in environments
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "shopseg" and wheel["entry_point"] in scripts
        stage, *rest = wheel["parameters"]
        assert stage == task["task_key"] and stage in commands and rest[0] == "--conf"
        assert task.get("depends_on") == ([{"task_key": before["task_key"]}] if before else None)


def test_the_entry_point_itself_exits_with_the_failure_status(monkeypatch, tmp_path):
    """A Databricks python_wheel_task calls the entry point and ignores what it returns:
    the failure has to leave as SystemExit with a non-zero code."""
    entry = next(
        e
        for e in metadata.distribution("shopseg").entry_points
        if e.group == "console_scripts" and e.name == "shopseg"
    )
    monkeypatch.setattr(sys, "argv", ["shopseg", "segment", "--conf", str(tmp_path / "no.yaml")])
    with pytest.raises(SystemExit) as exited:
        entry.load()()
    assert exited.value.code == 2
