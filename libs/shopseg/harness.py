"""A real cluster on this machine: standalone Spark, an S3-compatible store, an MLflow server.

`shopseg cluster up` starts, all bound to 127.0.0.1:

- a Spark standalone master and two workers (one core each, their own work
  directories), from the installed pyspark's `spark-class`;
- moto's S3 server, with the lakehouse bucket created;
- an MLflow tracking server (SQLite backend store, artifacts in the bucket,
  served through the server, so clients need no bucket credentials).

`shopseg cluster run` submits every stage with `spark-submit` to the master,
the library as a zip, the lakehouse in the bucket, MLflow over HTTP, and
prints the summary `make run` prints; `shopseg cluster down` stops what `up`
started. Pids, logs, the resolved jars and the worker folders live under one
folder (`.cluster/` by default), and `down` works from the pids written
there, whoever started them.

The jars a cluster image would carry (Delta for the Spark writer, hadoop-aws
for `s3a://`, which must match the Hadoop pyspark ships) are resolved once by
Spark's Ivy into `<folder>/ivy/jars` and put on the driver's and executors'
class path, rather than shipped with `--packages` to every executor of every
stage: the AWS SDK bundle alone is 686 MB.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shopseg.config import ShopsegError

# moto accepts any credentials; they stand for the cloud SDK's environment
# variables a real cluster sets (never a file in the repository).
ACCESS_KEY = "shopseg-harness"
SECRET_KEY = "shopseg-harness-secret"
REGION = "us-east-1"
BUCKET = "shopseg-lakehouse"
# Three JVMs (driver, two executors) share two cores here, and each new
# application's JVMs spend them compiling: C1 only (no C2) for these
# short-lived JVMs.
JIT = "-XX:TieredStopAtLevel=1"


class HarnessError(ShopsegError):
    """The local cluster cannot be started, used or stopped."""


@dataclass(frozen=True)
class Ports:
    """The ports the harness binds on 127.0.0.1 (checked free before anything starts)."""

    master: int = 7077
    master_ui: int = 18080
    worker_ui: tuple[int, ...] = (18081, 18082)
    s3: int = 19000
    mlflow: int = 15000

    def all(self) -> list[int]:
        return [self.master, self.master_ui, *self.worker_ui, self.s3, self.mlflow]


@dataclass
class Harness:
    """One local cluster: where its files live and how to reach its servers.

    Args:
        folder: pids, logs, jars, worker folders and the MLflow database.
        ports: the ports to bind.
        worker_memory: memory each worker offers its executors.
        jars_folder: Spark's Ivy folder for the cluster's jars (default
            `<folder>/ivy`); the suite shares the repository's `.cluster/ivy`.
    """

    folder: Path
    ports: Ports = field(default_factory=Ports)
    worker_memory: str = "3g"
    jars_folder: Path | None = None

    @property
    def ivy(self) -> Path:
        return self.jars_folder or self.folder / "ivy"

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.ports.master}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def lakehouse_root(self) -> str:
        return f"s3a://{BUCKET}/shopseg"

    @property
    def state_file(self) -> Path:
        return self.folder / "harness.json"

    def environment(self) -> dict[str, str]:
        """Variables every process of the cluster and its clients gets.

        The AWS ones are read by S3A (its default credential chain), by
        delta-rs and by boto3 alike; `AWS_ENDPOINT_URL` sends all of them to
        the local store.
        """
        return {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "PYSPARK_PYTHON": sys.executable,
        }

    def jars(self) -> list[str]:
        """The resolved jars (empty before `resolve_jars`)."""
        return sorted(glob.glob(str(self.ivy / "jars" / "*.jar")))

    def classpath_jars(self) -> list[str]:
        """The resolved jars pyspark does not ship already.

        Ivy also brings older copies of jars Spark has (jackson 2.13,
        hadoop-client 3.4.2, parquet 1.16): `--packages` puts them after
        Spark's own, but on the extra class path they would come first and
        break Spark (its Scala Jackson module refuses jackson-databind 2.13).
        """
        shipped = {_artifact(Path(j).name) for j in glob.glob(str(spark_home() / "jars" / "*.jar"))}
        return [j for j in self.jars() if _artifact(Path(j).name.split("_", 1)[-1]) not in shipped]

    def spark_properties(self) -> dict[str, str]:
        """What `spark-submit` passes for this cluster (besides conf/cluster.yaml's own)."""
        classpath = ":".join(self.classpath_jars())
        return {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.extraClassPath": classpath,
            "spark.executor.extraClassPath": classpath,
            "spark.pyspark.python": sys.executable,
            "spark.pyspark.driver.python": sys.executable,
            "spark.executor.memory": "2g",
            "spark.ui.enabled": "false",
            # Spark's INFO chatter (10,000 lines a stage) buries the stage's own log.
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_log4j_file()} {JIT}",
            "spark.executor.extraJavaOptions": JIT,
            **{f"spark.executorEnv.{k}": v for k, v in self.environment().items()},
        }


def _artifact(jar_name: str) -> str:
    """`jackson-databind` of `jackson-databind-2.13.5.jar`: the name without its version."""
    stem = jar_name[: -len(".jar")]
    parts = stem.split("-")
    while len(parts) > 1 and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts)


def _log4j_file() -> str:
    from importlib import resources

    return str(resources.files("shopseg") / "resources" / "log4j2.properties")


def spark_home() -> Path:
    """The installed pyspark's folder, which holds `bin/spark-class` and `jars/`."""
    import pyspark

    return Path(pyspark.__file__).parent


def hadoop_version() -> str:
    """The Hadoop version pyspark ships (hadoop-aws must be the same)."""
    found = sorted(glob.glob(str(spark_home() / "jars" / "hadoop-client-api-*.jar")))
    if not found:
        raise HarnessError(f"no hadoop-client-api jar in {spark_home() / 'jars'}")
    return Path(found[-1]).name[len("hadoop-client-api-") : -len(".jar")]


def cluster_packages() -> list[str]:
    """Maven coordinates the cluster needs: Delta's Spark package and hadoop-aws."""
    from shopseg.spark import delta_package

    packages = [f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"]
    delta = delta_package()
    if delta:
        packages.append(delta)
    return packages


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, name: str, log_file: Path, pid: int, timeout: float = 120) -> None:
    """Return once `port` accepts connections; fail naming the server and its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        if not _alive(pid):
            raise HarnessError(f"{name} exited before listening on {port}; see {log_file}")
        time.sleep(0.3)
    raise HarnessError(
        f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log_file}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that exited but was not reaped is a zombie: not alive.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _start(
    harness: Harness, name: str, command: Sequence[str], env: Mapping[str, str]
) -> dict[str, object]:
    logs = harness.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{name}.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=harness.folder,
            # Its own process group: `down` stops the server and its children.
            start_new_session=True,
        )
    return {"name": name, "pid": process.pid, "log": str(log_file)}


def resolve_jars(harness: Harness) -> list[str]:
    """Resolve the cluster's packages with Spark's Ivy into `<folder>/ivy/jars`, once."""
    packages = cluster_packages()
    have = {Path(j).name for j in harness.jars()}
    wanted = {p.replace(":", "_", 1).replace(":", "-") + ".jar" for p in packages}
    if wanted <= have:
        return harness.jars()
    script = harness.folder / "resolve_jars.py"
    script.write_text("")
    log_file = harness.folder / "logs" / "resolve-jars.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        "local[1]",
        "--conf",
        f"spark.jars.ivy={harness.ivy}",
        "--packages",
        ",".join(packages),
        str(script),
    ]
    with open(log_file, "wb") as out:
        done = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **harness.environment()},
        )
    if done.returncode != 0 or not wanted <= {Path(j).name for j in harness.jars()}:
        raise HarnessError(f"could not resolve {', '.join(packages)} from Maven; see {log_file}")
    return harness.jars()


def up(harness: Harness) -> dict[str, object]:
    """Start the master, two workers, the S3 store and the MLflow server; return the state.

    Raises:
        HarnessError: a port is taken, or a server did not come up (the
            servers already started are stopped again).
    """
    if harness.state_file.exists():
        raise HarnessError(
            f"a cluster is already up ({harness.state_file}); run `make cluster-down`"
        )
    busy = [p for p in harness.ports.all() if port_in_use(p)]
    if busy:
        raise HarnessError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use")
    harness.folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resolve_jars(harness)
    env = harness.environment()
    bin_dir = Path(sys.executable).parent
    spark_class = str(spark_home() / "bin" / "spark-class")
    processes: list[dict[str, object]] = []
    state: dict[str, object] = {
        "master": harness.master_url,
        "s3_endpoint": harness.s3_endpoint,
        "tracking_uri": harness.tracking_uri,
        "lakehouse_root": harness.lakehouse_root,
        "ports": asdict(harness.ports),
        "processes": processes,
    }
    try:
        s3 = _start(
            harness,
            "s3",
            [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(harness.ports.s3)],
            env,
        )
        processes.append(s3)
        _write_state(harness, state)
        wait_for_port(harness.ports.s3, "the S3 server", Path(str(s3["log"])), int(s3["pid"]))
        _create_bucket(harness)
        mlflow = _start(
            harness,
            "mlflow",
            [
                str(bin_dir / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(harness.ports.mlflow),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{harness.folder.resolve() / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlartifacts",
            ],
            env,
        )
        processes.append(mlflow)
        _write_state(harness, state)
        master = _start(
            harness,
            "spark-master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(harness.ports.master),
                "--webui-port",
                str(harness.ports.master_ui),
            ],
            env,
        )
        processes.append(master)
        _write_state(harness, state)
        wait_for_port(
            harness.ports.master, "the Spark master", Path(str(master["log"])), int(master["pid"])
        )
        for number, ui_port in enumerate(harness.ports.worker_ui, start=1):
            work_dir = harness.folder / "work" / f"worker-{number}"
            work_dir.mkdir(parents=True, exist_ok=True)
            worker = _start(
                harness,
                f"spark-worker-{number}",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    harness.master_url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    harness.worker_memory,
                    "--work-dir",
                    str(work_dir),
                    "--webui-port",
                    str(ui_port),
                ],
                env,
            )
            processes.append(worker)
            _write_state(harness, state)
        wait_for_port(
            harness.ports.mlflow, "the MLflow server", Path(str(mlflow["log"])), int(mlflow["pid"])
        )
        _wait_for_workers(harness, len(harness.ports.worker_ui))
    except BaseException:
        down(harness)
        raise
    state["seconds"] = round(time.perf_counter() - started, 1)
    _write_state(harness, state)
    return state


def _write_state(harness: Harness, state: Mapping[str, object]) -> None:
    harness.state_file.write_text(json.dumps(state, indent=2))


def _create_bucket(harness: Harness) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=harness.s3_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    client.create_bucket(Bucket=BUCKET)


def _wait_for_workers(harness: Harness, workers: int, timeout: float = 120) -> None:
    """Wait until the master's status page lists `workers` alive workers."""
    import urllib.request

    url = f"http://127.0.0.1:{harness.ports.master_ui}/json/"
    deadline = time.monotonic() + timeout
    alive = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                status = json.load(response)
            alive = sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")
            if alive >= workers:
                return
        time.sleep(0.5)
    raise HarnessError(
        f"{alive} of {workers} Spark workers registered with the master within {timeout:.0f} s; "
        f"see {harness.folder / 'logs'}"
    )


def down(harness: Harness, timeout: float = 20) -> list[str]:
    """Stop every process `up` started (by the pids it wrote); return their names."""
    if not harness.state_file.exists():
        return []
    state = json.loads(harness.state_file.read_text())
    stopped = []
    for process in reversed(state.get("processes", [])):
        pid = int(process["pid"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        stopped.append(process["name"])
    deadline = time.monotonic() + timeout
    for process in state.get("processes", []):
        pid = int(process["pid"])
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    harness.state_file.unlink()
    return stopped


@contextlib.contextmanager
def running(harness: Harness) -> Iterator[dict[str, object]]:
    """The cluster, up for the block and down after it, even when the block fails."""
    state = up(harness)
    try:
        yield state
    finally:
        down(harness)


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
