"""docs/bi.md: its queries run without Spark (DuckDB and Polars over delta-rs) and are right."""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from .conftest import REPO

DOC = REPO / "docs" / "bi.md"
TABLES = (
    "gold/user_segments",
    "gold/segment_profiles",
    "gold/recommendations",
    "gold/campaign_audiences",
    "gold/campaign_results",
    "silver/user_features",
)


def doc_queries() -> dict[str, str]:
    """Each ```sql block of docs/bi.md under the heading it follows."""
    text = DOC.read_text()
    out = {}
    for match in re.finditer(r"^## (.+?)$(.*?)(?=^## |\Z)", text, re.S | re.M):
        heading, body = match.groups()
        for sql in re.findall(r"```sql\n(.*?)```", body, re.S):
            out[heading.strip()] = sql
    return out


@pytest.fixture(scope="module")
def con(default_lake):
    connection = duckdb.connect()
    for name in TABLES:
        dataset = DeltaTable(str(default_lake / name)).to_pyarrow_dataset()
        connection.register(name.split("/")[1], dataset)
    return connection


def test_the_doc_has_the_queries_the_tests_check():
    assert set(doc_queries()) >= {
        "Segment sizes over time",
        "What defines each segment",
        "Top recommended items per segment",
        "Campaign audiences",
        "Campaign uplift",
        "The RFM grid",
    }


@pytest.mark.slow
def test_segment_sizes_over_time_match_the_segment_table(con, default_lake):
    sizes = con.sql(doc_queries()["Segment sizes over time"]).df()
    sizes["as_of_date"] = sizes["as_of_date"].astype(str).str[:10]
    segments = DeltaTable(str(default_lake / "gold/user_segments")).to_pandas()
    segments["as_of_date"] = segments["as_of_date"].astype(str)
    want = segments.groupby(["as_of_date", "segment_name"]).size()
    got = sizes.set_index(["as_of_date", "segment_name"])["users"]
    assert got.sort_index().to_dict() == want.sort_index().to_dict()
    assert sizes.groupby("as_of_date")["share"].sum().round(2).eq(1.0).all()


@pytest.mark.slow
def test_segment_definitions_come_from_the_profiles(con, default_lake):
    defined = con.sql(doc_queries()["What defines each segment"]).df()
    profiles = DeltaTable(str(default_lake / "gold/segment_profiles")).to_pandas()
    latest = profiles[profiles["as_of_date"] == profiles["as_of_date"].max()]
    assert sorted(defined["segment_name"]) == sorted(latest["segment_name"])
    assert defined["size"].is_monotonic_decreasing
    assert defined["median_orders"].notna().all() and defined["strategy"].str.len().gt(0).all()


@pytest.mark.slow
def test_top_recommended_items_per_segment_match_pandas(con, default_lake):
    top = con.sql(doc_queries()["Top recommended items per segment"]).df()
    recs = DeltaTable(str(default_lake / "gold/recommendations")).to_pandas()
    segs = DeltaTable(str(default_lake / "gold/user_segments")).to_pandas()
    recs = recs[(recs["as_of_date"] == recs["as_of_date"].max()) & (recs["rank"] <= 5)]
    segs = segs[segs["as_of_date"] == segs["as_of_date"].max()]
    joined = recs.merge(segs[["user_id", "segment_name"]], on="user_id")
    counts = joined.groupby(["segment_name", "item_id"]).size().rename("users").reset_index()
    counts = counts.sort_values(["segment_name", "users", "item_id"], ascending=[True, False, True])
    want = counts.groupby("segment_name").head(3).reset_index(drop=True)
    got = top[["segment_name", "item_id", "users"]].reset_index(drop=True)
    assert got.astype({"users": "int64"}).equals(want.astype({"users": "int64"}))


@pytest.mark.slow
def test_rfm_grid_covers_every_scored_buyer(con, default_lake):
    grid = con.sql(doc_queries()["The RFM grid"]).df()
    features = pl.read_delta(str(default_lake / "silver/user_features"))
    latest = features.filter(pl.col("as_of_date") == pl.col("as_of_date").max())
    scored = latest.filter(pl.col("r_score").is_not_null())
    assert int(grid["users"].sum()) == scored.height
    assert set(grid["r_score"]) <= {1, 2, 3, 4, 5} and set(grid["f_score"]) <= {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_campaign_audience_counts_match_the_table(con, default_lake):
    got = con.sql(doc_queries()["Campaign audiences"]).df()
    rows = DeltaTable(str(default_lake / "gold/campaign_audiences")).to_pandas()
    want = rows.groupby(["campaign_id", "variant"]).size().unstack(fill_value=0)
    got = got.set_index("campaign_id")
    assert got["treated"].to_dict() == want["treatment"].to_dict()
    assert got["control"].to_dict() == want["control"].to_dict()


@pytest.mark.slow
def test_campaign_uplift_reads_the_results_of_the_latest_send(con, default_lake):
    got = con.sql(doc_queries()["Campaign uplift"]).df()
    results = DeltaTable(str(default_lake / "gold/campaign_results")).to_pandas()
    overall = results[results["segment_name"] == "(all)"].set_index("campaign_id")
    assert sorted(got["campaign_id"]) == sorted(overall.index)
    assert got["uplift_points"].is_monotonic_decreasing
    for row in got.itertuples():
        want = overall.loc[row.campaign_id]
        assert row.uplift_points == pytest.approx(100 * want.uplift, abs=0.006)
        assert row.low_points <= row.uplift_points <= row.high_points
