"""The pipeline on a real cluster: Spark standalone, an S3 store (moto), an MLflow server.

One module-scoped harness (`shopseg.harness`) on 127.0.0.1 with
conf/cluster.yaml, exactly as `make cluster-up` / `make cluster-run` use them;
it is stopped when the module ends, whether the tests passed or not.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from shopseg import harness, tables
from shopseg.config import load_config

from .conftest import REPO
from .test_bi import TABLES as BI_TABLES
from .test_bi import doc_queries

CLUSTER_CONF = REPO / "conf" / "cluster.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The harness, up for this module; its jars resolved once into the user's jar cache."""
    h = harness.Harness(tmp_path_factory.mktemp("cluster"))
    saved = dict(os.environ)
    with harness.running(h):
        # Clients in this process (deltalake, boto3, MLflow) reach the same
        # servers through the same variables the cluster's processes get.
        os.environ.update(h.environment())
        try:
            yield h
        finally:
            os.environ.clear()
            os.environ.update(saved)
    assert not any(harness.port_in_use(p) for p in h.ports.all()), "a server outlived the harness"


@pytest.fixture(scope="module")
def pipeline(cluster):
    """Every stage of conf/cluster.yaml, submitted with spark-submit to the two workers."""
    config = load_config(CLUSTER_CONF)
    # One application (jobs/run.py): each new one costs ~40 s of start-up and
    # executor warm-up here; `make cluster-run` submits the stages one by one.
    records = harness.submit(cluster, ["run"], str(CLUSTER_CONF), jobs_dir=REPO / "jobs")
    # The run ends with the summary `make run` prints (tables, versions, rows).
    return config, records, Path(str(records[0]["out"])).read_text()


def storage_options(h: harness.Harness) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": h.s3_endpoint,
        "AWS_ACCESS_KEY_ID": harness.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": harness.SECRET_KEY,
        "AWS_REGION": harness.REGION,
        "AWS_ALLOW_HTTP": "true",
    }


def bucket_table(h: harness.Harness, name: str) -> DeltaTable:
    return DeltaTable(f"s3://{harness.BUCKET}/shopseg/{name}", storage_options=storage_options(h))


def test_the_harness_is_a_real_cluster(cluster):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ports.master_ui}/json/") as page:
        status = json.load(page)
    alive = [w for w in status["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["cores"] == 1 for w in alive)
    assert all(w["host"] == "127.0.0.1" for w in alive)


def test_every_table_reads_back_from_the_bucket_through_deltalake(cluster, pipeline):
    _, records, summary = pipeline
    assert [r["status"] for r in records] == [0]
    written = [spec.name for spec in tables.TABLES if f" {spec.name} " in f" {summary} "]
    assert {"bronze/events", "silver/user_features", "gold/user_segments"} <= set(written)
    for name in written:
        table = bucket_table(cluster, name)
        rows = table.to_pyarrow_table().num_rows
        assert rows == sum(table.get_add_actions(flatten=True).column("num_records").to_pylist())
        assert rows > 0, name


def test_no_table_has_more_files_than_its_data_needs(cluster, pipeline):
    _, _, summary = pipeline
    checked = 0
    for spec in tables.TABLES:
        if f" {spec.name} " not in f" {summary} ":
            continue
        actions = pa.table(bucket_table(cluster, spec.name).get_add_actions(flatten=True))
        if sum(actions.column("size_bytes").to_pylist()) >= 10 << 20:
            continue
        keys = [
            f"partition.{c}" for c in spec.partition_by if f"partition.{c}" in actions.column_names
        ]
        values = [tuple(a[k] for k in keys) for a in actions.to_pylist()]
        assert len(values) <= max(1, len(set(values))), (spec.name, len(values), len(set(values)))
        checked += 1
    assert checked >= 10


def test_both_models_load_by_alias_from_the_tracking_server(cluster, pipeline, spark):
    import mlflow

    config, _, _ = pipeline
    mlflow.set_tracking_uri(cluster.tracking_uri)
    try:
        for conf in (config.segment, config.recommend):
            model = mlflow.spark.load_model(f"models:/{conf.model_name}@{conf.alias}")
            assert model.stages, conf.model_name
    finally:
        mlflow.set_tracking_uri(None)


def test_bi_queries_run_against_the_bucket(cluster, pipeline):
    con = duckdb.connect()
    for name in BI_TABLES:
        con.register(name.split("/")[1], bucket_table(cluster, name).to_pyarrow_dataset())
    for heading, sql in doc_queries().items():
        assert len(con.sql(sql).fetchall()) > 0, heading


def test_two_drivers_replacing_one_partition_in_the_bucket_one_commits_one_fails(cluster, tmp_path):
    """delta-rs commits a version with S3's conditional put (If-None-Match): of two
    drivers racing for the same version exactly one wins; nothing doubles."""
    import datetime as dt
    import json
    import subprocess
    import sys

    from deltalake import write_deltalake

    root = f"s3://{harness.BUCKET}/race-{tmp_path.name}"
    old = pa.table(
        {"user_id": [0, 1, 2], "d": [dt.date(2025, 1, 1)] * 3, "tag": ["old"] * 3},
        schema=pa.schema([("user_id", pa.int64()), ("d", pa.date32()), ("tag", pa.string())]),
    )
    write_deltalake(
        f"{root}/race", old, partition_by=["d"], storage_options=storage_options(cluster)
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, **cluster.environment()}
    drivers = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "concurrent_writer.py"),
                root,
                tag,
                str(barrier),
                ":".join(cluster.classpath_jars()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("first", "second")
    ]
    outcomes = []
    for driver in drivers:
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["outcome"] for o in outcomes) == ["ConcurrentWriteError", "committed"], outcomes
    winner = next(o for o in outcomes if o["outcome"] == "committed")
    table = DeltaTable(f"{root}/race", storage_options=storage_options(cluster))
    assert table.version() == winner["version"] == 1
    rows = table.to_pyarrow_table().to_pylist()
    assert sorted((r["user_id"], r["tag"]) for r in rows) == [(u, winner["tag"]) for u in range(3)]
