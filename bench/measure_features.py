"""Time the user metrics of `features` in Spark and in DuckDB on the same snapshot.

    .venv/bin/python bench/measure_features.py --root /tmp/bench10m/lh [--repeats 3]

Runs on a lakehouse where `ingest` and `features` have run. Both engines read
the Parquet files of the same Delta snapshots (silver/events, bronze/users,
bronze/items); each is run `repeats` times in this process and the median
is reported, with the ratio and whether both give the same values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import SPARK_SETS  # noqa: E402
from features_peer import duckdb_user_metrics, snapshot_files  # noqa: E402

from shopseg import features as fx  # noqa: E402
from shopseg import tables as t  # noqa: E402
from shopseg.config import load_config  # noqa: E402
from shopseg.delta import Lakehouse  # noqa: E402
from shopseg.spark import get_spark  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def spark_metrics(lake: Lakehouse, conf, as_of, categories):
    events = fx.filter_window(lake.read(t.SILVER_EVENTS.name), as_of, conf.lookback_days)
    return fx.build_user_metrics(
        events,
        lake.read(t.BRONZE_USERS.name),
        lake.read(t.BRONZE_ITEMS.name),
        as_of,
        categories,
        conf.demographics,
    )


def peer_metrics(lake: Lakehouse, conf, as_of, categories) -> Callable[[], pa.Table]:
    """DuckDB's user metrics over the Parquet files of the tables' current snapshots,
    as a call to time (the files are listed once, outside it)."""
    events, users, items = (
        snapshot_files(lake.path(name))
        for name in (t.SILVER_EVENTS.name, t.BRONZE_USERS.name, t.BRONZE_ITEMS.name)
    )
    return lambda: duckdb_user_metrics(
        events, users, items, as_of, conf.lookback_days, categories, conf.demographics
    )


def compare(spark_table: pa.Table, duck_table: pa.Table) -> dict[str, int]:
    """Columns where the two engines disagree (count of differing users per column)."""
    left = spark_table.to_pandas().set_index("user_id").sort_index()
    right = duck_table.to_pandas().set_index("user_id").sort_index()
    diffs = {"missing_users": len(left.index.symmetric_difference(right.index))}
    right = right.reindex(left.index)
    for col in left.columns:
        if col not in right.columns:
            diffs[f"absent:{col}"] = 1
            continue
        a, b = left[col], right[col]
        if a.dtype.kind in "fi" or b.dtype.kind in "fi":
            a = a.astype(float).to_numpy()
            b = b.astype(float).to_numpy()
            same = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
        else:
            same = (a.astype(str) == b.astype(str)).to_numpy()
        bad = int((~same).sum())
        if bad:
            diffs[col] = bad
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = load_config(REPO / "conf" / "local.yaml", [f"lakehouse.root={args.root}", *SPARK_SETS])
    spark = get_spark("measure-features", config.spark)
    lake = Lakehouse(spark, config.lakehouse.root)
    conf = config.features
    events = lake.read(t.SILVER_EVENTS.name)
    n_events = lake.row_count(t.SILVER_EVENTS.name)
    as_of = conf.as_of_date or fx.default_as_of(events)
    window = fx.filter_window(events, as_of, conf.lookback_days)
    categories = conf.top_categories or fx.top_categories(
        window, lake.read(t.BRONZE_ITEMS.name), conf.top_categories_n
    )

    spark_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        spark_metrics(lake, conf, as_of, categories).write.format("noop").mode("overwrite").save()
        spark_seconds.append(time.perf_counter() - start)

    peer = peer_metrics(lake, conf, as_of, categories)
    duck_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        duck = peer()
        duck_seconds.append(time.perf_counter() - start)

    print(f"spark {spark_seconds} duckdb {duck_seconds}", flush=True)
    spark_table = spark_metrics(lake, conf, as_of, categories).toArrow()
    diffs = compare(spark_table, duck.select(spark_table.column_names))
    spark_median = statistics.median(spark_seconds)
    duck_median = statistics.median(duck_seconds)
    print(
        json.dumps(
            {
                "events": n_events,
                "users": spark_table.num_rows,
                "spark_seconds": [round(s, 2) for s in spark_seconds],
                "duckdb_seconds": [round(s, 2) for s in duck_seconds],
                "spark_median": round(spark_median, 2),
                "duckdb_median": round(duck_median, 2),
                "ratio": round(spark_median / duck_median, 2),
                "spark_events_per_second": round(n_events / spark_median),
                "differences": diffs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
