"""The cluster harness and object-store paths, without starting servers (those: test_cluster.py)."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

import pytest

from shopseg import harness
from shopseg.config import load_config
from shopseg.delta import log_reader_uri
from shopseg.files import arrow_uri

from .conftest import REPO


def test_hadoop_aws_matches_the_hadoop_pyspark_ships():
    shipped = sorted((harness.spark_home() / "jars").glob("hadoop-client-api-*.jar"))
    assert shipped, "pyspark ships hadoop-client-api"
    version = shipped[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    packages = harness.cluster_packages()
    assert f"org.apache.hadoop:hadoop-aws:{version}" in packages
    assert any(p.startswith("io.delta:delta-spark_2.13:") for p in packages)


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("jackson-databind-2.13.5.jar", "jackson-databind"),
        ("delta-spark_2.13-4.4.0.jar", "delta-spark_2.13"),
        ("wildfly-openssl-2.2.5.Final.jar", "wildfly-openssl"),
        ("hadoop-client-api-3.5.0.jar", "hadoop-client-api"),
    ],
)
def test_jar_artifact_names(jar, artifact):
    assert harness.artifact_name(jar) == artifact  # noqa: SLF001


def test_jars_pyspark_already_has_stay_off_the_class_path(tmp_path):
    jars = tmp_path / "ivy" / "jars"
    jars.mkdir(parents=True)
    for name in (
        "com.fasterxml.jackson.core_jackson-databind-2.13.5.jar",
        "org.apache.hadoop_hadoop-client-api-3.4.2.jar",
        "org.apache.hadoop_hadoop-aws-3.5.0.jar",
        "io.delta_delta-spark_2.13-4.4.0.jar",
    ):
        (jars / name).touch()
    h = harness.Harness(tmp_path, jars_folder=tmp_path / "ivy")
    kept = [Path(j).name for j in h.classpath_jars()]
    assert kept == ["io.delta_delta-spark_2.13-4.4.0.jar", "org.apache.hadoop_hadoop-aws-3.5.0.jar"]


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path):
    # Every port of this harness is its own, none of the defaults: a cluster
    # already up here (`make cluster-up`, the cluster module) holds those.
    with ExitStack() as held:
        ports = []
        for _ in range(6):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        busy = sock
        busy.listen()
        port = ports[-1]
        h = harness.Harness(
            tmp_path / "cluster",
            ports=harness.Ports(ports[0], ports[1], (ports[2], ports[3]), ports[4], port),
        )
        with pytest.raises(harness.HarnessError, match=f"port\\(s\\) {port} on 127.0.0.1"):
            harness.up(h)
    assert not h.state_file.exists() and not (tmp_path / "cluster" / "logs").exists()
    assert harness.down(h) == []


def test_submit_without_a_cluster_says_so(tmp_path):
    with pytest.raises(harness.HarnessError, match="no cluster is up"):
        harness.submit(harness.Harness(tmp_path), ["ingest"], "conf/cluster.yaml")


def test_the_cluster_conf_points_at_the_harness():
    config = load_config(REPO / "conf" / "cluster.yaml")
    h = harness.Harness(Path(".cluster"))
    assert config.lakehouse.root == h.lakehouse_root
    assert config.mlflow.tracking_uri == h.tracking_uri
    assert config.spark.conf["spark.hadoop.fs.s3a.endpoint"] == h.s3_endpoint
    assert config.mlflow.artifact_root is None
    assert all(s.path.startswith(h.lakehouse_root) for s in config.sources.values())


def test_object_store_paths_map_to_the_names_arrow_and_delta_rs_use(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert log_reader_uri("/tmp/lh/gold/t") == "/tmp/lh/gold/t"
    assert log_reader_uri("file:/tmp/lh/gold/t") == "/tmp/lh/gold/t"
    # Without AWS credentials in the environment delta-rs cannot reach the
    # bucket: Spark (which holds the session's credentials) answers.
    assert log_reader_uri("s3a://b/lh/gold/t") is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    assert log_reader_uri("s3a://b/lh/gold/t") == "s3://b/lh/gold/t"
    assert log_reader_uri("abfss://c@a.dfs.core.windows.net/t") is None
    assert arrow_uri("s3a://b/lh/raw/x.json") == arrow_uri("s3n://b/lh/raw/x.json")
    assert arrow_uri("s3a://b/lh/raw/x.json") == "s3://b/lh/raw/x.json"
    assert arrow_uri("gs://b/s3a://x") == "gs://b/s3a://x"
