"""The `jobs` row: the demo pipeline (`make run`'s configuration, a fresh
lakehouse) once, each stage's seconds and Spark jobs, stages and tasks as its
MLflow run recorded them. At demo size a stage's cost is mostly the number of
jobs and plans, not the data, so a change that adds jobs shows up here."""

from __future__ import annotations

import shutil

from bench_common import BENCH, SIZES, log, run_pipeline

COUNTS = ("spark_jobs", "spark_stages", "spark_tasks")


def stage_work(tracking_uri: str) -> dict[str, dict[str, float]]:
    """Per stage of the store's runs: `stage_seconds` and the Spark counts."""
    from mlflow import MlflowClient

    from shopseg import tracking

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    out: dict[str, dict[str, float]] = {}
    for run in client.search_runs(experiments, max_results=1000):
        name = run.data.tags.get(tracking.STAGE_TAG)
        metrics = run.data.metrics
        if name and "stage_seconds" in metrics:
            out[name] = {k: metrics[k] for k in ("stage_seconds", *COUNTS) if k in metrics}
    return out


def bench_jobs() -> dict:
    """The demo pipeline in a subprocess; the row of its per-stage work."""
    from shopseg.pipeline import STAGES

    root = BENCH / "data" / "demo"
    shutil.rmtree(root, ignore_errors=True)
    log(f"jobs: the demo pipeline into {root}")
    seconds = run_pipeline(root, quiet=True)
    work = stage_work(f"sqlite:///{root}/mlflow.db")
    order = [s.name for s in STAGES if s.name in work]
    missing = [s.name for s in STAGES if s.name not in work and s.name != "maintain"]
    if missing:
        raise RuntimeError(f"jobs: no MLflow run with Spark counts for stages {missing}")
    total = {k: int(sum(work[s].get(k, 0) for s in order)) for k in COUNTS}
    return {
        "stage": "jobs",
        "size": SIZES["1m"] * 50,
        "seconds": round(seconds, 1),
        "repeats": [round(seconds, 1)],
        "peer": None,
        "peer_seconds": None,
        "ratio": None,
        "quality": {"jobs": total["spark_jobs"], **{s: int(work[s]["spark_jobs"]) for s in order}},
        "peer_quality": None,
        "equal_quality": None,
        "stages_seconds": round(sum(work[s]["stage_seconds"] for s in order), 1),
        "per_stage": {
            s: {
                "seconds": round(work[s]["stage_seconds"], 1),
                **{k.removeprefix("spark_"): int(work[s][k]) for k in COUNTS if k in work[s]},
            }
            for s in order
        },
        **{k: v for k, v in total.items()},
    }
