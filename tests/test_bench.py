"""`make bench`'s bookkeeping: a stage's row is recorded as soon as the stage finishes,
so a long run (50M events) that is stopped or fails later keeps what it measured."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_finished_before_a_crash_are_recorded_and_the_run_fails(tmp_path, monkeypatch):
    bench = load_bench()
    out, docs = tmp_path / "latest.json", tmp_path / "benchmarks.md"
    shutil.copyfile(REPO / "bench" / "results" / "latest.json", out)
    before = json.loads(out.read_text())
    row = next(r for r in before if r["stage"] == "features" and r["size"] > 5_000_000)
    finished = {**row, "seconds": 123.456, "ratio": 47.5}
    # The measuring process: one stage finishes, some other output, then it dies.
    script = (
        f"print({bench.ROW!r} + {json.dumps(json.dumps(finished))}, flush=True)\n"
        "print('spark says something', flush=True)\n"
        "raise SystemExit(3)\n"
    )
    popen = subprocess.Popen
    monkeypatch.setattr(
        bench.subprocess, "Popen", lambda cmd, **kw: popen([sys.executable, "-c", script], **kw)
    )
    monkeypatch.setattr(
        sys,
        "argv",
        ["run.py", "--sizes", "10m", "--stages", "features,kmeans", "--out", str(out)]
        + ["--docs", str(docs)],
    )

    with pytest.raises(SystemExit, match=r"\['10m'\] did not finish"):
        bench.main()

    after = json.loads(out.read_text())
    assert len(after) == len(before)
    mine = [r for r in after if (r["stage"], r["size"]) == ("features", row["size"])]
    assert [r["seconds"] for r in mine] == [123.456]

    def others(rows):
        return [r for r in rows if (r["stage"], r["size"]) != ("features", row["size"])]

    assert others(after) == others(before)
    assert f"| features | {row['size']:,} | 123" in docs.read_text()


def load_bench_jobs():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_jobs", REPO / "bench" / "bench_jobs.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


@pytest.mark.slow
def test_every_stage_of_the_pipeline_records_its_spark_work_for_the_jobs_row(default_lake):
    from shopseg.pipeline import STAGES

    work = load_bench_jobs().stage_work(f"sqlite:///{default_lake}/mlflow.db")
    pipeline = {s.name for s in STAGES if s.name != "maintain"}
    assert pipeline <= set(work)
    for name in pipeline:
        counts = work[name]
        assert counts["spark_jobs"] >= 1, name
        # Every job has at least one stage; a stage's tasks may be skipped (reused shuffles).
        assert counts["spark_stages"] >= counts["spark_jobs"], name
        assert counts["spark_tasks"] >= 1, name
    # The k sweep fits dozens of models; the lifetime-value stage fits one on the driver.
    assert work["segment"]["spark_jobs"] > 5 * work["clv"]["spark_jobs"]
