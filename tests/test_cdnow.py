"""CDNOW, a real transaction log, through conf/cdnow.yaml alone, checked against pandas."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest

from shopseg.cli import main
from shopseg.delta import Lakehouse

from .conftest import FAST_WRITER, REPO

CDNOW = REPO.parent / "shared" / "datasets" / "cdnow" / "CDNOW_master.txt"
AS_OF = dt.date(1998, 7, 1)


def independent_rfm(path: Path) -> pd.DataFrame:
    """RFM straight from the file with pandas: each row is one order."""
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": int, "date": str})
    raw["day"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    out = raw.groupby("customer_id").agg(
        last=("day", "max"), frequency=("day", "size"), monetary=("dollar_value", "sum")
    )
    out["recency_days"] = (pd.Timestamp(AS_OF) - out["last"]).dt.days
    return out


@pytest.mark.slow
def test_cdnow_rfm_matches_pandas_for_every_customer(spark, tmp_path):
    if not CDNOW.exists():
        pytest.fail(f"{CDNOW} is missing: the CDNOW data set must sit in ../shared/datasets")
    root = tmp_path / "cdnow"
    # A path with every character that Spark's URIs and Hadoop's globs treat
    # specially: the file must still be read whole.
    awkward = tmp_path / "in dir [x] {a} #+%é" / "cdnow été 100% [1]+#.txt"
    awkward.parent.mkdir()
    shutil.copy(CDNOW, awkward)
    args = [
        "run",
        "--conf",
        str(REPO / "conf" / "cdnow.yaml"),
        "--set",
        f"lakehouse.root={root}",
        "--set",
        f"sources.transactions.path={awkward.parent}",
        # The segments' shape and the sweep are tested on synthetic data; here
        # every customer needs one, so one k will do.
        "--set",
        FAST_WRITER,
        "--set",
        "segment.algorithms=[kmeans]",
        "--set",
        "segment.k_min=5",
        "--set",
        "segment.k_max=5",
        "--set",
        "segment.restarts=2",
    ]
    assert main(args) == 0
    lake = Lakehouse(spark, str(root))

    log = lake.read("bronze/ingest_log").first()
    assert (log.records_read, log.loaded, log.quarantined, log.unchanged) == (69_659, 69_659, 0, 0)
    # Identical rows are separate purchases: none may be lost.
    assert lake.read("silver/events").count() == 69_659

    want = independent_rfm(CDNOW)
    got = (
        lake.read("silver/user_features")
        .select("user_id", "recency_days", "frequency", "monetary", "rfm_segment")
        .toPandas()
        .set_index("user_id")
        .sort_index()
    )
    assert len(got) == len(want) == 23_570
    assert (got.index == want.index).all()
    assert (got["recency_days"] == want["recency_days"]).all()
    assert (got["frequency"] == want["frequency"]).all()
    assert got["monetary"].to_numpy() == pytest.approx(want["monetary"].to_numpy(), abs=1e-6)
    assert got["rfm_segment"].notna().all()

    # Segments and named profiles for every customer, from conf/cdnow.yaml's features.
    segments = lake.read("gold/user_segments")
    assert segments.count() == 23_570
    assert segments.select("user_id").distinct().count() == 23_570
    profiles = lake.read("gold/segment_profiles").toPandas()
    assert profiles["size"].sum() == 23_570
    assert profiles["segment_name"].is_unique
    assert set(profiles["segment_name"]) == {
        r.segment_name for r in segments.select("segment_name").distinct().collect()
    }
    named = profiles[profiles["strategy"].str.len() > 0]
    assert len(named) >= 2, "conf/cdnow.yaml's names fit at least two segments"
    assert profiles["medians"].map(lambda m: dict(m)["monetary"]).notna().all()
    assert lake.read("gold/segment_sweep").filter("chosen").count() == 1

    # Ingesting the same file again adds nothing.
    versions = lake.version("bronze/events"), lake.version("bronze/ingest_log")
    assert main([*args[:1], "--stages", "ingest", *args[1:]]) == 0
    assert (lake.version("bronze/events"), lake.version("bronze/ingest_log")) == versions
