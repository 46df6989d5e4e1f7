"""Every notebook runs as a local script on a tiny shop (no dbutils there)."""

from __future__ import annotations

import re
import runpy

import pytest
from deltalake import DeltaTable

from .conftest import FAST_WRITER, REPO

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

# A shop small enough to run every stage in seconds: 400 users over half a
# year (fewer daily files to write and read), a two-point K-means sweep, a
# small ALS with few iterations.
TINY_SHOP = (
    FAST_WRITER,
    "generate.users=400",
    "generate.items=200",
    "generate.events_per_user=20",
    "generate.start_date=2025-07-01",
    "segment.algorithms=[kmeans]",
    "segment.k_min=3",
    "segment.k_max=4",
    "segment.restarts=1",
    "recommend.ranks=[8]",
    "recommend.alphas=[5.0]",
    "recommend.max_iter=3",
    "propensity.training_cutoffs=1",
    "propensity.models=[{kind: logistic, params: {maxIter: [20]}}, "
    "{kind: gbt, params: {maxIter: [10], maxDepth: [3]}}]",
)


@pytest.mark.slow
def test_every_notebook_runs_its_stages_on_a_tiny_shop(spark, lake_root, monkeypatch, capsys):
    """01-07 in order on one lakehouse, as a user would run them (run=yes)."""
    monkeypatch.setenv("SHOPSEG_NB_SET", ";".join([f"lakehouse.root={lake_root}", *TINY_SHOP]))
    monkeypatch.chdir(REPO / "notebooks")
    figures = lake_root / "reports" / "notebooks"
    for path in NOTEBOOKS:
        runpy.run_path(str(path), run_name="__main__")
        printed = capsys.readouterr().out
        for stage in STAGES[path.name]:
            assert re.search(rf"^{stage}: [0-9.]+ s, MLflow run \w+$", printed, re.M), (
                path.name,
                stage,
                printed[-2000:],
            )
        for name in CHARTS.get(path.name, []):
            chart = figures / f"{name}.png"
            assert chart.is_file() and chart.stat().st_size > 10_000, chart
        if path.name == "01_generate_and_ingest.py":
            assert DeltaTable(str(lake_root / "bronze/events")).to_pyarrow_dataset().count_rows()
        if path.name == "07_bi_queries.py":
            segments = DeltaTable(str(lake_root / "gold/segment_profiles")).to_pandas()
            assert any(name in printed for name in segments["segment_name"]), printed[-2000:]

    # run=no only reads: the segmentation notebook draws again without a new segment run.
    version = DeltaTable(str(lake_root / "gold/user_segments")).version()
    monkeypatch.setenv("SHOPSEG_NB_RUN", "no")
    runpy.run_path(str(REPO / "notebooks" / "03_segmentation.py"), run_name="__main__")
    assert "run=no: reading what segment last wrote" in capsys.readouterr().out
    assert DeltaTable(str(lake_root / "gold/user_segments")).version() == version


def test_notebooks_cover_every_topic():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "01_generate_and_ingest.py"
    assert set(CHARTS) | {"01_generate_and_ingest.py", "07_bi_queries.py"} == set(names)
    assert set(STAGES) == set(names)
