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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_locally(spark, lake_root, monkeypatch, path):
    overrides = [
        f"lakehouse.root={lake_root}",
        FAST_WRITER,
        "generate.users=400",
        "generate.items=200",
        "generate.events_per_user=20",
    ]
    monkeypatch.setenv("SHOPSEG_NB_SET", ";".join(overrides))
    monkeypatch.chdir(REPO / "notebooks")
    runpy.run_path(str(path), run_name="__main__")
    assert DeltaTable(str(lake_root / "raw/ground_truth/user_personas")).version() >= 0
