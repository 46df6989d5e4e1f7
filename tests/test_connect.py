"""The whole pipeline over Spark Connect, as Databricks serverless runs Python.

`spark.remote: local[2]` starts a local Spark Connect server (127.0.0.1, a free
port, Delta on it) and runs every stage through the Connect client, in a
process of its own: one Python process cannot hold a classic session and a
Connect one. The run is the default pipeline's (`DEFAULT_LAKE_SETS`, the
`default_lake` fixture's configuration) through Spark's Delta writer, so
every table it builds is compared, row count by row count, with the classic
run of the same configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from .conftest import (
    DEFAULT_LAKE_SETS,
    FAST_WRITER,
    HASH_KEY_ENV,
    LOCAL_CONF,
    TEST_HASH_KEY,
    table_counts,
)


@pytest.mark.slow
def test_the_pipeline_over_spark_connect_builds_what_the_classic_run_builds(default_lake, tmp_path):
    root = tmp_path / "lakehouse"
    sets = [s for s in DEFAULT_LAKE_SETS if s != FAST_WRITER]
    sets += [f"lakehouse.root={root}", "lakehouse.writer=spark", "spark.remote=local[2]"]
    shopseg = Path(sys.executable).parent / "shopseg"
    args = [str(shopseg), "run", "--conf", str(LOCAL_CONF)]
    for item in sets:
        args += ["--set", item]
    env = {**os.environ, HASH_KEY_ENV: TEST_HASH_KEY}
    env.pop("SPARK_REMOTE", None)
    done = subprocess.run(args, capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    # The run went through Connect: the runtime module says so when it starts.
    assert "Spark Connect" in done.stderr, done.stderr[:2000]

    classic = json.loads((default_lake.parent / "table_counts.json").read_text())
    connect = table_counts(root)
    assert sorted(connect) == sorted(classic), "the same tables"
    # Over Connect K-means starts without the bisecting seed (it needs the JVM; the
    # log says so), so the sweep may choose another k: the tables sized by the
    # segments (one row per segment, tree node or campaign x segment cell) and the
    # audiences drawn from them are checked against the Connect run's own choice.
    assert "seed_from_bisecting" in done.stderr
    by_segment = {t for t in classic if t.startswith("gold/segment_") and t != "gold/segment_sweep"}
    by_segment |= {
        "gold/campaign_audiences",
        "gold/campaign_results",
        "raw/simulated/outcome_events",
    }
    differing = {
        k: (classic[k], connect[k])
        for k in classic
        if classic[k] != connect[k] and k not in by_segment
    }
    assert not differing, f"rows (classic, Connect) of tables that differ: {differing}"
    sweep = DeltaTable(str(root / "gold/segment_sweep")).to_pandas()
    k = int(sweep.loc[sweep["chosen"], "k"].iloc[0])
    segments = DeltaTable(str(root / "gold/user_segments")).to_pandas()
    assert segments["segment_id"].nunique() == k == connect["gold/segment_profiles"]
    assert connect["gold/campaign_audiences"] > 0 and connect["raw/simulated/outcome_events"] > 0

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    models = {m.name: m.aliases for m in MlflowClient().search_registered_models()}
    mlflow.set_tracking_uri(f"sqlite:///{default_lake}/mlflow.db")
    expected = {m.name: m.aliases for m in MlflowClient().search_registered_models()}
    assert sorted(models) == sorted(expected)
    assert all("champion" in aliases for aliases in models.values()), models
