"""CDNOW, a real transaction log, through conf/cdnow.yaml alone, checked against pandas."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from shopseg.cli import main
from shopseg.delta import Lakehouse

from .conftest import REPO

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
    args = [
        "run",
        "--conf",
        str(REPO / "conf" / "cdnow.yaml"),
        "--set",
        f"lakehouse.root={root}",
        "--set",
        f"sources.transactions.path={CDNOW}",
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

    # Ingesting the same file again adds nothing.
    versions = lake.version("bronze/events"), lake.version("bronze/ingest_log")
    assert main([*args[:1], "--stages", "ingest", *args[1:]]) == 0
    assert (lake.version("bronze/events"), lake.version("bronze/ingest_log")) == versions
