"""Every notebook runs as a local script on tiny data (no dbutils there)."""

from __future__ import annotations

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
    "05_campaigns.py": ["campaign_uplift"],
    "06_customer_value.py": ["customer_value"],
}


@pytest.mark.slow
def test_the_first_notebook_generates_and_ingests(spark, lake_root, monkeypatch):
    overrides = [
        f"lakehouse.root={lake_root}",
        FAST_WRITER,
        "generate.users=400",
        "generate.items=200",
        "generate.events_per_user=20",
    ]
    monkeypatch.setenv("SHOPSEG_NB_SET", ";".join(overrides))
    monkeypatch.chdir(REPO / "notebooks")
    runpy.run_path(str(REPO / "notebooks" / "01_generate_and_ingest.py"), run_name="__main__")
    assert DeltaTable(str(lake_root / "raw/ground_truth/user_personas")).version() >= 0
    assert DeltaTable(str(lake_root / "bronze/events")).to_pyarrow_dataset().count_rows() > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.name)
def test_notebook_reads_the_default_pipeline(spark, default_lake, monkeypatch, capsys, path):
    """Notebooks 02-07 with run=no on the default pipeline's lakehouse: they read and draw.

    (Their one `run_stages` cell is the call notebook 01 makes, on stages
    tested on their own; running them here would rebuild the whole pipeline.)
    """
    figures = default_lake / "reports" / "notebooks"
    for name in CHARTS.get(path.name, []):
        (figures / f"{name}.png").unlink(missing_ok=True)
    monkeypatch.setenv("SHOPSEG_NB_SET", f"lakehouse.root={default_lake};{FAST_WRITER}")
    monkeypatch.setenv("SHOPSEG_NB_RUN", "no")
    monkeypatch.chdir(REPO / "notebooks")
    runpy.run_path(str(path), run_name="__main__")
    for name in CHARTS.get(path.name, []):
        chart = figures / f"{name}.png"
        assert chart.is_file() and chart.stat().st_size > 10_000, chart
    printed = capsys.readouterr().out
    assert "Traceback" not in printed
    if path.name == "07_bi_queries.py":
        assert "High-value loyal" in printed and "users" in printed


def test_notebooks_cover_every_topic():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "01_generate_and_ingest.py"
    assert set(CHARTS) | {"01_generate_and_ingest.py", "07_bi_queries.py"} == set(names)
