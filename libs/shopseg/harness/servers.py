"""Starting and stopping the servers: master, workers, the S3 store, the MLflow server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from shopseg.harness.base import (
    ACCESS_KEY,
    BUCKET,
    REGION,
    SECRET_KEY,
    Harness,
    HarnessError,
    cluster_packages,
    spark_home,
)


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
    """Resolve the cluster's packages with Spark's Ivy into `<ivy>/jars`, once (user's cache)."""
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
