"""`shopseg stream`: files landing one after another reach gold/user_segments_current,
and a stream stopped and restarted counts no file twice and loses none."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from shopseg import stream
from shopseg import tables as t
from shopseg.config import ConfigError
from shopseg.pipeline import run_stages

from .test_increments import hold_back

LOYAL = "High-value loyal"
WAIT_SECONDS = 180


def lines_of(folder: Path) -> list[str]:
    return [
        line for part in sorted(folder.glob("part-*")) for line in part.read_text().splitlines()
    ]


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS) -> float:
    """Poll until `condition()` holds; the seconds it took. Fails after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s")


def logged_files(lake_root: Path) -> list[str]:
    log = DeltaTable(str(lake_root / t.INGEST_LOG.name)).to_pandas()
    return sorted(log.loc[log.source == "events", t.SOURCE_FILE])


def loyal_purchases(user_id: int, day: str, n: int) -> list[str]:
    """`n` orders of 90.00 on `day`, each in its own session: a loyal buyer's month."""
    return [
        json.dumps(
            {
                "event_id": 9_000_000_000 + user_id * 100 + i,
                "user_id": user_id,
                "item_id": 1,
                "event_type": "purchase",
                "event_ts": f"{day}T{8 + i % 12:02d}:{i % 60:02d}:00Z",
                "session_id": f"planted-{user_id}-{i}",
                "quantity": 1,
                "price": 90.0,
            }
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_landed_files_move_their_users_and_a_restart_counts_each_file_once(
    spark, small_config, lake_root, tmp_path
):
    # The sweep's choice is tested on the default data; here the plant's k,
    # as in the segment transitions (24 fits of a 4..7 sweep cost ~20 s).
    sizes = (
        "generate.users=300",
        "segment.algorithms=[kmeans]",
        "segment.k_min=6",
        "segment.k_max=6",
        "segment.restarts=2",
    )
    run_stages(small_config(*sizes), ["generate"])
    held = hold_back(lake_root / t.RAW_EVENTS, 4, tmp_path / "held")
    run_stages(small_config(*sizes), ["ingest", "features", "segment"])
    batch_files = len(logged_files(lake_root))

    # A customer with a long history and few orders, not in the loyal segment.
    features = spark.read.format("delta").load(str(lake_root / t.USER_FEATURES.name))
    current = spark.read.format("delta").load(str(lake_root / t.USER_SEGMENTS_CURRENT.name))
    planted = (
        features.filter((F.col("frequency") <= 1) & (F.col("tenure_days") > 250))
        .join(current.filter(F.col(t.SEGMENT_NAME) != LOYAL), t.USER_ID)
        .orderBy(t.USER_ID)
        .first()[t.USER_ID]
    )
    landing = tmp_path / "landing"
    landing.mkdir()
    config = small_config(
        *sizes,
        f"sources.events.path={landing}",
        "stream.trigger=1 second",
        f"stream.checkpoint={tmp_path / 'checkpoint'}",
    )
    days = [folder.name.split("=")[1] for folder in held]
    contents = [lines_of(folder) for folder in held]
    contents[0] += loyal_purchases(planted, days[0], 30)

    def segments_version() -> int:
        return DeltaTable(str(lake_root / t.USER_SEGMENTS_CURRENT.name)).version()

    query = stream.start(config)
    latencies = []
    try:
        for i in range(3):
            before = segments_version()
            (landing / f"day-{i}.json").write_text("\n".join(contents[i]) + "\n")
            latencies.append(
                wait_for(lambda b=before: segments_version() > b, f"file day-{i}.json merged")
            )
            assert query.exception() is None
        # The planted customer's orders made them a loyal buyer.
        rows = DeltaTable(str(lake_root / t.USER_SEGMENTS_CURRENT.name)).to_pandas()
        moved = rows.set_index(t.USER_ID).loc[planted]
        assert moved[t.SEGMENT_NAME] == LOYAL
        assert str(moved["since"]) > days[0] >= str(rows["since"].min())
    finally:
        query.stop()

    # Stopped; a fourth file lands; the restarted stream takes it and only it.
    (landing / "day-3.json").write_text("\n".join(contents[3]) + "\n")
    restarted = stream.start(config)
    try:
        wait_for(
            lambda: len(logged_files(lake_root)) >= batch_files + 4, "the fourth file ingested"
        )
        restarted.processAllAvailable()
    finally:
        restarted.stop()

    log = DeltaTable(str(lake_root / t.INGEST_LOG.name)).to_pandas()
    log = log[log.source == "events"]
    landed = log[log[t.SOURCE_FILE].str.contains("/landing/")]
    assert sorted(Path(f).name for f in landed[t.SOURCE_FILE]) == [
        f"day-{i}.json" for i in range(4)
    ]
    assert landed.records_read.sum() == sum(len(c) for c in contents)
    silver = spark.read.format("delta").load(str(lake_root / t.SILVER_EVENTS.name))
    assert silver.count() == silver.select(t.EVENT_ID).distinct().count() == log.loaded.sum()
    print(f"latency from a file landing to its users' segment rows: {latencies} s")


@pytest.mark.parametrize(
    "override, message",
    [
        ("stream.source=nowhere", "'nowhere' is not a configured source"),
        ("stream.source=items", "items is parquet; the stream reads line-based sources"),
    ],
)
def test_a_stream_on_a_source_it_cannot_read_says_why(small_config, override, message):
    with pytest.raises(ConfigError, match=message):
        stream.start(small_config(override))


@pytest.mark.parametrize("trigger", ["5s", "now", "every 5 seconds"])
def test_a_trigger_that_is_neither_available_now_nor_an_interval_is_refused(small_config, trigger):
    with pytest.raises(ConfigError, match="stream.trigger"):
        small_config(f"stream.trigger={trigger}")
