"""Jobs on the harness's cluster: the library as a zip, `spark-submit` per stage."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from shopseg.harness.base import (
    Harness,
    HarnessError,
    spark_home,
)


def library_zip_path(harness: Harness) -> Path:
    return harness.folder / "shopseg.zip"


def library_zip(harness: Harness) -> Path:
    """The `shopseg` package as one zip for `--py-files` (what `make package` builds)."""
    import shopseg

    package = Path(shopseg.__file__).parent
    target = library_zip_path(harness)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*")):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            archive.write(path, Path("shopseg") / path.relative_to(package))
    return target


def submit_command(
    harness: Harness, job: Path, conf: str, overrides: Sequence[str] = ()
) -> list[str]:
    """The `spark-submit` command line that runs `job` on the cluster."""
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        harness.master_url,
        "--deploy-mode",
        "client",
        "--py-files",
        str(library_zip_path(harness)),
    ]
    for key, value in harness.spark_properties().items():
        command += ["--conf", f"{key}={value}"]
    command += [str(job), "--conf", conf]
    for override in overrides:
        command += ["--set", override]
    return command


def submit(
    harness: Harness,
    stages: Sequence[str],
    conf: str,
    overrides: Sequence[str] = (),
    jobs_dir: Path = Path("jobs"),
    *,
    quiet: bool = False,
) -> list[dict[str, object]]:
    """Run `stages` one `spark-submit` each, in order; stop at the first that fails.

    Args:
        stages: job names (`jobs/<name>.py`): stages, `run` or `summary`.
        conf: the configuration file the jobs read.
        overrides: `--set` overrides passed to every job.
        jobs_dir: where the job files are.
        quiet: print nothing per job.

    Returns:
        One record per job: name, exit status, seconds, its stdout file
        (`out`) and its log (stderr: Spark's and shopseg's logging).

    Raises:
        HarnessError: the cluster is not up, or a stage failed (naming its log).
    """
    if not harness.state_file.exists():
        raise HarnessError("no cluster is up; run `make cluster-up` first")
    library_zip(harness)
    env = {**os.environ, **harness.environment()}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    results = []
    for stage in stages:
        job = jobs_dir / f"{stage}.py"
        if not job.exists():
            raise HarnessError(f"no job file {job} for stage {stage}")
        log_file = harness.folder / "logs" / f"job-{stage}.log"
        out_file = harness.folder / "logs" / f"job-{stage}.out"
        started = time.perf_counter()
        with open(log_file, "wb") as err, open(out_file, "wb") as out:
            done = subprocess.run(
                submit_command(harness, job, conf, overrides), stdout=out, stderr=err, env=env
            )
        record = {
            "stage": stage,
            "status": done.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "log": str(log_file),
            "out": str(out_file),
        }
        results.append(record)
        if not quiet:
            print(
                f"cluster: {stage} exited {done.returncode} in {record['seconds']} s ({log_file})"
            )
        if done.returncode != 0:
            raise HarnessError(
                f"stage {stage} failed on the cluster (exit {done.returncode}); see {log_file}"
            )
    return results
