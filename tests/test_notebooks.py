"""Every notebook runs as a local script on a tiny shop (no dbutils there)."""

from __future__ import annotations

import re
import runpy
import shutil

import pytest
from deltalake import DeltaTable

from .conftest import DEFAULT_LAKE_SETS, HASH_KEY_ENV, REPO, TEST_HASH_KEY

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def test_notebooks_are_in_databricks_source_format():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        text = path.read_text()
        assert text.startswith("# Databricks notebook source\n"), path.name
        assert "# COMMAND ----------" in text, path.name


# Charts each notebook saves where Databricks' display is absent.
CHARTS = {
    "02_features_and_rfm.py": ["rfm_grid"],
    "03_segmentation.py": ["segment_sweep", "segment_profiles", "segment_pca", "segment_sizes"],
    "04_recommendations.py": ["recommendation_metrics"],
    "05_customer_value.py": ["customer_value", "propensity"],
    "06_campaigns.py": ["campaign_uplift", "uplift_model"],
}


# A table each notebook's stages write: a run=no pass leaves them all as they were.
WRITTEN = (
    "bronze/events",
    "silver/feature_runs",
    "silver/user_features",
    "gold/user_segments",
    "gold/recommendations",
    "gold/customer_value",
    "gold/propensity_scores",
    "gold/campaign_audiences",
    "gold/campaign_results",
    "gold/uplift_scores",
)

# Each notebook's stage cell, as it prints it (`<stage>: <seconds> s, MLflow run <id>`).
STAGES = {
    "01_generate_and_ingest.py": ["generate", "ingest"],
    "02_features_and_rfm.py": ["features"],
    "03_segmentation.py": ["segment"],
    "04_recommendations.py": ["recommend"],
    "05_customer_value.py": ["clv", "propensity"],
    "06_campaigns.py": ["audiences", "simulate_outcomes", "evaluate", "uplift"],
    "07_bi_queries.py": [],
}


@pytest.mark.slow
def test_every_notebook_reads_the_default_lakehouse_and_runs_its_stages(
    default_lake, tmp_path, monkeypatch, capsys
):
    """01-07 in order on a copy of the default pipeline's lakehouse, as a user would
    open them after `make run`: with run=no each reads what its stages last wrote and
    draws its charts; then 02 with run=yes runs its stage and reads the result.

    Every stage the notebooks call is the pipeline's own (`run_stages`), run in
    the `default_lake` fixture; a tiny shop run through all seven with run=yes
    cost 218 s of the suite and tested the same stage code a second time.
    """
    lake_root = tmp_path / "lakehouse"
    shutil.copytree(default_lake, lake_root)
    monkeypatch.setenv(HASH_KEY_ENV, TEST_HASH_KEY)
    monkeypatch.setenv(
        "SHOPSEG_NB_SET", ";".join([*DEFAULT_LAKE_SETS, f"lakehouse.root={lake_root}"])
    )
    monkeypatch.setenv("SHOPSEG_NB_RUN", "no")
    monkeypatch.chdir(REPO / "notebooks")
    figures = lake_root / "reports" / "notebooks"
    versions = {name: DeltaTable(str(lake_root / name)).version() for name in WRITTEN}

    for path in NOTEBOOKS:
        runpy.run_path(str(path), run_name="__main__")
        printed = capsys.readouterr().out
        if STAGES[path.name]:
            reading = f"run=no: reading what {', '.join(STAGES[path.name])} last wrote"
            assert reading in printed, (path.name, printed[-2000:])
        for name in CHARTS.get(path.name, []):
            chart = figures / f"{name}.png"
            assert chart.is_file() and chart.stat().st_size > 10_000, chart
        if path.name == "07_bi_queries.py":
            segments = DeltaTable(str(lake_root / "gold/segment_profiles")).to_pandas()
            assert any(name in printed for name in segments["segment_name"]), printed[-2000:]
    # run=no only reads.
    assert {name: DeltaTable(str(lake_root / name)).version() for name in WRITTEN} == versions

    # run=yes: the stage cell runs the notebook's stage and prints its time and run.
    monkeypatch.setenv("SHOPSEG_NB_RUN", "yes")
    runpy.run_path(str(REPO / "notebooks" / "02_features_and_rfm.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert re.search(r"^features: [0-9.]+ s, MLflow run \w+$", printed, re.M), printed[-2000:]
    runs = DeltaTable(str(lake_root / "silver/feature_runs"))
    assert runs.version() == versions["silver/feature_runs"] + 1
    assert (figures / "rfm_grid.png").is_file()


def test_notebooks_cover_every_topic():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "01_generate_and_ingest.py"
    assert set(CHARTS) | {"01_generate_and_ingest.py", "07_bi_queries.py"} == set(names)
    assert set(STAGES) == set(names)
