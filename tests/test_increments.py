"""Daily increments: 30 days added one at a time equal a full recomputation."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import features as fx
from shopseg import generator as g
from shopseg import increments as inc
from shopseg import tables as t
from shopseg.config import GenerateConf

# A shop of four months; the last 30 days arrive one by one. A 45-day window,
# so every increment also moves days out of it.
CONF = GenerateConf(
    seed=11,
    users=400,
    items=200,
    events_per_user=30,
    start_date=dt.date(2025, 1, 1),
    end_date=dt.date(2025, 4, 30),
    dirty_fraction=0.0,
)
FIRST_NEW_DAY = dt.date(2025, 4, 1)
DAYS = 30
LOOKBACK = 45
CATEGORIES = ["fashion", "electronics", "home", "books"]
# Floats are sums of the same values in another order: equal to 1e-9 relative.
RTOL = 1e-9
WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0, "review": 2.0}
HALF_LIFE = 20.0


@pytest.fixture(scope="module")
def shop(spark):
    users = g.build_users(spark, CONF)
    users = g.with_session_counts(users, CONF, g.session_scale(users, CONF))
    items = g.build_items(spark, CONF).cache()
    raw = g.build_events(users, CONF)
    day = F.to_date(t.EVENT_TS)
    # Each day's events arrive as one ingest batch; every 50th event of the
    # first week of March arrives late, with the batch of April 10th.
    late = (day >= F.lit(dt.date(2025, 3, 1))) & (day < F.lit(dt.date(2025, 3, 8)))
    late &= F.col(t.EVENT_ID) % 50 == 0
    arrival = F.when(late, F.lit(dt.date(2025, 4, 10))).otherwise(day)
    bronze = raw.withColumn(t.BATCH_ID, F.date_format(arrival, "yyyy-MM-dd")).withColumn(
        t.RECORD_ID, F.col(t.EVENT_ID).cast("string")
    )
    events = fx.build_silver_events(bronze).cache()
    yield events, items, users.select(t.USER_ID, t.SIGNUP_TS, t.AGE, t.GENDER, t.REGION)
    events.unpersist()
    items.unpersist()


def batch(events: DataFrame, first: dt.date | None, last: dt.date) -> DataFrame:
    """The events whose batch arrived in [first, last] (from the start without `first`)."""
    arrived = F.col(t.BATCH_ID) <= last.isoformat()
    if first is not None:
        arrived &= F.col(t.BATCH_ID) >= first.isoformat()
    return events.filter(arrived)


def activity_of(events: DataFrame, items: DataFrame) -> DataFrame:
    keyed, categories = fx.keyed_events(events, items, CATEGORIES, orders=False)
    return fx.session_days(keyed, len(categories), by_batch=True)


def metrics(totals: DataFrame, users: DataFrame, as_of: dt.date) -> pd.DataFrame:
    out = fx.metrics_from_totals(totals, users, as_of, CATEGORIES, {"gender": ["female"]})
    return out.toPandas().sort_values(t.USER_ID, ignore_index=True)


def full(events: DataFrame, items, users, as_of: dt.date) -> pd.DataFrame:
    """The features as the direct path computes them from every event before `as_of`."""
    window = fx.filter_window(events, as_of, LOOKBACK)
    lifetime = fx.build_lifetime_dates(fx.filter_window(events, as_of, None))
    out = fx.build_user_metrics(
        window, users, items, as_of, CATEGORIES, {"gender": ["female"]}, lifetime
    )
    return out.toPandas().sort_values(t.USER_ID, ignore_index=True)


def interactions(events: DataFrame, as_of: dt.date) -> DataFrame:
    """silver/interactions as the direct path builds it from the window's events."""
    return fx.build_interactions(
        fx.filter_window(events, as_of, LOOKBACK), as_of, WEIGHTS, HALF_LIFE
    )


def pairs(frame: DataFrame) -> pd.DataFrame:
    return frame.toPandas().sort_values([t.USER_ID, t.ITEM_ID], ignore_index=True)


def test_thirty_daily_increments_equal_a_full_recomputation(spark, shop):
    events, items, users = shop
    start = FIRST_NEW_DAY - dt.timedelta(days=1)
    history = batch(events, None, start)
    activity = activity_of(history, items).localCheckpoint()
    as_of = FIRST_NEW_DAY
    totals = inc.totals_at(activity, as_of, LOOKBACK, len(CATEGORIES), False).localCheckpoint()
    recomputed = []
    for day in range(DAYS):
        arrived = FIRST_NEW_DAY + dt.timedelta(days=day)
        new = activity_of(batch(events, arrived, arrived), items).localCheckpoint()
        activity = activity.unionByName(new).localCheckpoint()
        previous, as_of = as_of, arrived + dt.timedelta(days=1)
        changed = inc.changed_users(activity, new, previous, as_of, LOOKBACK).localCheckpoint()
        recomputed.append(changed.count())
        totals = inc.advance_totals(
            totals, activity, changed, as_of, LOOKBACK, len(CATEGORIES), False
        ).localCheckpoint()
        known = events.filter(F.col(t.BATCH_ID) <= arrived.isoformat())
        if day in (9, DAYS - 1):
            # Day 10 carries the late events of March; the last day ends the month.
            got = metrics(totals, users, as_of)
            want = full(known, items, users, as_of)
            assert list(got.columns) == list(want.columns)
            assert len(got) == len(want) > 300
            pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=RTOL)

    # Increments touch a share of the users, not all of them: the ones with
    # new events or with days entering or leaving the window.
    users_total = users.count()
    assert max(recomputed) < users_total
    assert sum(recomputed) / (DAYS * users_total) < 0.6


def test_a_week_of_batches_continues_the_interactions_of_the_last_snapshot(spark, shop):
    """A week's batches at once (the late ones of March among them): the changed
    users' pairs are rebuilt, everyone else's only age by seven days of decay,
    and the result equals the direct sums over the new window."""
    events, items, _ = shop
    previous, as_of = dt.date(2025, 4, 6), dt.date(2025, 4, 13)
    history = batch(events, None, previous - dt.timedelta(days=1))
    known = batch(events, None, as_of - dt.timedelta(days=1))
    activity = activity_of(known, items)
    new = activity_of(batch(events, previous, as_of - dt.timedelta(days=1)), items)
    changed = inc.changed_users(activity, new, previous, as_of, LOOKBACK).cache()
    got = inc.advance_interactions(
        interactions(history, previous),
        fx.filter_window(known, as_of, LOOKBACK),
        changed,
        previous,
        as_of,
        WEIGHTS,
        HALF_LIFE,
    )
    want = pairs(interactions(known, as_of))
    # Some users kept their pairs untouched (only decayed), some were rebuilt.
    assert 0 < changed.count() < want[t.USER_ID].nunique()
    assert len(want) > 1000
    pd.testing.assert_frame_equal(pairs(got), want, check_dtype=False, rtol=RTOL)
    changed.unpersist()


def test_the_late_events_reach_the_users_they_belong_to(spark, shop):
    """The late batch changes exactly the users whose old events it carries."""
    events, items, _ = shop
    history = batch(events, None, dt.date(2025, 4, 9))
    activity = activity_of(history, items)
    late = events.filter(
        (F.col(t.BATCH_ID) == "2025-04-10") & (F.col(t.EVENT_DATE) < F.lit(dt.date(2025, 4, 1)))
    )
    late_users = {r[t.USER_ID] for r in late.select(t.USER_ID).distinct().collect()}
    assert late_users
    new = activity_of(late, items)
    as_of = dt.date(2025, 4, 10)
    changed = inc.changed_users(activity.unionByName(new), new, as_of, as_of, LOOKBACK)
    assert {r[t.USER_ID] for r in changed.collect()} == late_users


def test_a_state_from_other_settings_is_not_continued():
    state = inc.FeatureState(
        as_of=dt.date(2025, 4, 1),
        lookback_days=45,
        categories=("books",),
        orders=False,
        batches=frozenset({"a"}),
    )
    same = dict(
        lookback_days=45,
        categories=None,
        orders=False,
        as_of=None,
        derive_items=False,
        state_tables=True,
    )
    assert inc.why_not_incremental(state, **same) is None
    for change, words in [
        ({"lookback_days": 30}, "lookback_days changed"),
        ({"categories": ["toys"]}, "top_categories changed"),
        ({"orders": True}, "order ids"),
        ({"as_of": dt.date(2025, 3, 1)}, "before the last run"),
        ({"derive_items": True}, "items_from_events"),
        ({"state_tables": False}, "no state"),
    ]:
        assert words in inc.why_not_incremental(state, **{**same, **change})
    assert "no state" in inc.why_not_incremental(None, **same)
    assert dataclasses.replace(state, events_version=3).interrupted(4, None)


def hold_back(raw_events, days: int, into) -> list:
    """Move the last `days` day folders of the raw events aside; return them in order."""
    folders = sorted(p for p in raw_events.iterdir() if p.name.startswith("event_date="))
    into.mkdir()
    held = []
    for folder in folders[-days:]:
        held.append(folder.rename(into / folder.name))
    return held


@pytest.mark.slow
def test_daily_runs_of_the_stage_add_only_the_new_events_and_equal_a_full_run(
    spark, small_config, lake_root, tmp_path, monkeypatch
):
    from shopseg.pipeline import run_stages

    # Exact quintiles, so that the RFM scores compare exactly too.
    config = small_config(
        "generate.users=300",
        "generate.start_date=2025-10-01",
        "features.lookback_days=60",
        "features.rfm.quantile_error=0",
    )
    run_stages(config, ["generate"])
    held = hold_back(lake_root / t.RAW_EVENTS, 3, tmp_path / "held")

    def features_run():
        run_stages(config, ["ingest", "features"])
        runs = spark.read.format("delta").load(str(lake_root / t.FEATURE_RUNS.name))
        return runs.orderBy(F.desc("run_at")).first()

    first = features_run()
    assert first["mode"] == "full"
    # A full run computes every user with events (profiles alone need no totals).
    silver = spark.read.format("delta").load(str(lake_root / t.SILVER_EVENTS.name))
    assert first["users_recomputed"] == silver.select(t.USER_ID).distinct().count() > 200

    held[0].rename(lake_root / t.RAW_EVENTS / held[0].name)
    second = features_run()
    assert second["mode"] == "incremental"
    assert second[t.AS_OF_DATE] == first[t.AS_OF_DATE] + dt.timedelta(days=1)
    assert 0 < second["users_recomputed"] < second["users"] / 2
    assert second["events_added"] > 0

    # A run that fails after appending its events leaves no record: the next
    # one replaces what it appended instead of counting it twice.
    held[1].rename(lake_root / t.RAW_EVENTS / held[1].name)

    def crash(*args, **kwargs):
        raise RuntimeError("killed after the appends")

    with monkeypatch.context() as patch:
        patch.setattr(inc, "advance_totals", crash)
        with pytest.raises(RuntimeError, match="killed after the appends"):
            run_stages(config, ["features"])
    third = features_run()
    assert third["mode"] == "incremental"

    silver = spark.read.format("delta").load(str(lake_root / t.SILVER_EVENTS.name))
    assert (
        third["events_added"]
        == silver.filter(
            F.col(t.EVENT_DATE) == F.lit(third[t.AS_OF_DATE] - dt.timedelta(days=1))
        ).count()
    )

    assert_snapshot_equals_a_full_computation(spark, config, lake_root, third, second)


def assert_snapshot_equals_a_full_computation(spark, config, lake_root, run, earlier) -> None:
    """The features and interactions of `run`'s snapshot equal the direct
    computation over every event in silver, which holds each bronze event once."""
    silver = spark.read.format("delta").load(str(lake_root / t.SILVER_EVENTS.name))
    bronze = spark.read.format("delta").load(str(lake_root / t.BRONZE_EVENTS.name))
    assert silver.count() == silver.select(t.EVENT_ID).distinct().count()
    assert silver.count() == bronze.select(t.EVENT_ID).distinct().count()
    as_of = run[t.AS_OF_DATE]
    features = spark.read.format("delta").load(str(lake_root / t.USER_FEATURES.name))
    got = features.filter(F.col(t.AS_OF_DATE) == F.lit(as_of)).toPandas()
    users = spark.read.format("delta").load(str(lake_root / t.BRONZE_USERS.name))
    items = spark.read.format("delta").load(str(lake_root / t.BRONZE_ITEMS.name))
    conf = config.features
    want = fx.build_user_features(
        silver,
        users,
        items,
        as_of,
        lookback_days=conf.lookback_days,
        categories=list(run["categories"]),
        demographics=conf.demographics,
        rfm_rules=conf.rfm.segments,
        no_purchase_segment=conf.rfm.no_purchase_segment,
        quantile_error=0.0,
    ).features.toPandas()
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(
        got.sort_values(t.USER_ID, ignore_index=True),
        want.sort_values(t.USER_ID, ignore_index=True),
        check_dtype=False,
        rtol=RTOL,
    )
    # So do the interactions, continued from the earlier runs' snapshots.
    assert run["interactions"] == earlier["interactions"] is not None
    strengths = spark.read.format("delta").load(str(lake_root / t.INTERACTIONS.name))
    want_pairs = fx.build_interactions(
        fx.filter_window(silver, as_of, conf.lookback_days),
        as_of,
        conf.interaction_weights,
        conf.interaction_half_life_days,
    )
    assert conf.interaction_half_life_days
    pd.testing.assert_frame_equal(
        pairs(strengths.filter(F.col(t.AS_OF_DATE) == F.lit(as_of))),
        pairs(want_pairs),
        check_dtype=False,
        rtol=RTOL,
    )


def delta_version(table) -> int:
    """The newest commit in a Delta table's log, as the file system holds it (-1: none)."""
    log = table / "_delta_log"
    versions = [int(p.stem) for p in log.glob("*.json")] if log.exists() else []
    return max(versions, default=-1)


def kill_when(command: list[str], moment, timeout: float = 300) -> None:
    """Run `command` in its own process group and kill -9 the whole group (the
    Spark JVM with it) as soon as `moment()` holds."""
    import os
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not moment():
            assert process.poll() is None, f"the run ended (rc {process.returncode}) unkilled"
            assert time.time() < deadline, "the moment to kill never came"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_kill_9_during_and_after_an_incremental_features_run_never_wedges_the_rerun(
    spark, lake_root, tmp_path
):
    """A features process killed -9 after its events landed in silver, and one
    killed in the stage after it: each rerun in auto mode, with new batches,
    goes on incrementally and equals the direct computation."""
    import sys

    from shopseg.config import load_config
    from shopseg.pipeline import run_stages

    from .conftest import FAST_WRITER, LOCAL_CONF

    sets = [
        f"lakehouse.root={lake_root}",
        FAST_WRITER,
        "spark.master=local[1]",
        "generate.users=300",
        "generate.items=200",
        "generate.events_per_user=30",
        "generate.start_date=2025-10-01",
        "features.lookback_days=60",
        "features.rfm.quantile_error=0",
    ]
    config = load_config(LOCAL_CONF, sets)
    cli = [sys.executable, "-m", "shopseg.cli", "run", "--conf", str(LOCAL_CONF)]
    cli += [a for s in sets for a in ("--set", s)]
    run_stages(config, ["generate"])
    held = hold_back(lake_root / t.RAW_EVENTS, 4, tmp_path / "held")
    run_stages(config, ["ingest", "features"])
    silver, runs = lake_root / t.SILVER_EVENTS.name, lake_root / t.FEATURE_RUNS.name

    def last_run():
        table = spark.read.format("delta").load(str(runs))
        return table.orderBy(F.desc("run_at")).first()

    # Killed between its silver append and its feature run: the run that
    # follows, with one more day, replaces the dead append.
    held[0].rename(lake_root / t.RAW_EVENTS / held[0].name)
    appended, recorded = delta_version(silver), delta_version(runs)
    run_stages(config, ["ingest"])
    kill_when(cli + ["--stages", "features"], lambda: delta_version(silver) > appended)
    assert delta_version(runs) == recorded, "killed too late: the feature run landed"
    held[1].rename(lake_root / t.RAW_EVENTS / held[1].name)
    run_stages(config, ["ingest", "features"])
    second = last_run()
    assert second["mode"] == "incremental"

    # Killed in the stage after features (clv), then a new day.
    recorded = delta_version(runs)
    held[2].rename(lake_root / t.RAW_EVENTS / held[2].name)
    kill_when(cli + ["--stages", "ingest,features,clv"], lambda: delta_version(runs) > recorded)
    # A rerun with no new batch appends nothing: Spark's Delta must still
    # record that commit (it skips empty ones by default), or the run's own
    # commit is missing from the history and every later run fails.
    run_stages(load_config(LOCAL_CONF, [*sets, "lakehouse.writer=spark"]), ["features"])
    assert last_run()["events_added"] == 0
    held[3].rename(lake_root / t.RAW_EVENTS / held[3].name)
    run_stages(config, ["ingest", "features"])
    third = last_run()
    assert third["mode"] == "incremental"
    assert third[t.AS_OF_DATE] == second[t.AS_OF_DATE] + dt.timedelta(days=2)
    assert_snapshot_equals_a_full_computation(spark, config, lake_root, third, second)
