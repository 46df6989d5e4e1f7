"""Daily increments of the user features without rescanning the history.

The events' state is `silver/user_activity`: per (user, day, session, order)
counts and sums (`features.session_days`). Every column adds up, so a run
appends the rows of its new events and readers sum the rows of one key
(`features.collapse_activity`). From these rows `features.user_totals`
computes exactly what it computes from the events themselves.

`silver/user_totals` holds one row per user: the window's counts and sums and
the lifetime dates at the last as-of date. Between as-of dates A1 <= A2 with a
lookback of L days, a user's totals change only when the user

- has new activity rows (events of the new ingest batches, late ones included),
- has activity in [A1, A2): days entering the window and the lifetime, or
- has activity in [A1 - L, A2 - L): days leaving the window.

Only those users are recomputed, from their own activity rows; everyone else
keeps their totals, and recency, inactivity and tenure move with the as-of
date because `features.metrics_from_totals` derives them from the dates.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg import features as fx
from shopseg import tables as t

RUN_SCHEMA = T.StructType(
    [
        T.StructField("run_at", T.TimestampType()),
        T.StructField(t.AS_OF_DATE, T.DateType()),
        T.StructField("mode", T.StringType()),
        T.StructField("lookback_days", T.IntegerType()),
        T.StructField("categories", T.ArrayType(T.StringType())),
        T.StructField("orders", T.BooleanType()),
        T.StructField("batches", T.ArrayType(T.StringType())),
        T.StructField("events_added", T.LongType()),
        T.StructField("users_recomputed", T.LongType()),
        T.StructField("users", T.LongType()),
        T.StructField("events_version", T.LongType()),
        T.StructField("activity_version", T.LongType()),
        # The interaction weights and half-life the run's snapshot was built
        # with (JSON): a later run continues that snapshot only with the same.
        T.StructField("interactions", T.StringType()),
    ]
)


@dataclass(frozen=True)
class FeatureState:
    """What the last features run left: the settings its state was built with and
    the ingest batches whose events are in silver/events."""

    as_of: dt.date
    lookback_days: int | None
    categories: tuple[str, ...]
    orders: bool
    batches: frozenset[str]
    # The versions of silver/events and silver/user_activity the run left.
    events_version: int | None = None
    activity_version: int | None = None
    # `full`, `incremental` (both wrote a snapshot) or `stream` (did not).
    mode: str = "full"
    interactions: str | None = None
    # Columns of RUN_SCHEMA the table lacks (written by an earlier version).
    missing_columns: tuple[str, ...] = ()

    def interrupted(self, events_version: int | None, activity_version: int | None) -> bool:
        """A later attempt wrote to the state tables without recording its run."""
        return (events_version, activity_version) != (self.events_version, self.activity_version)


def load_state(runs: DataFrame) -> FeatureState | None:
    """The state after the latest run in silver/feature_runs (None when empty).

    The table holds one small row per run; its batch ids are metadata (one per
    ingest run), not data that grows with the events.
    """
    latest = runs.orderBy(F.desc("run_at")).first()
    if latest is None:
        return None
    batches = runs.select(F.explode("batches").alias("b")).distinct().collect()
    return FeatureState(
        as_of=latest[t.AS_OF_DATE],
        lookback_days=latest["lookback_days"],
        categories=tuple(latest["categories"] or ()),
        orders=bool(latest["orders"]),
        batches=frozenset(r["b"] for r in batches),
        events_version=latest["events_version"],
        activity_version=latest["activity_version"],
        mode=latest["mode"],
        interactions=latest["interactions"] if "interactions" in runs.columns else None,
        missing_columns=tuple(c for c in RUN_SCHEMA.names if c not in runs.columns),
    )


def why_not_incremental(
    state: FeatureState | None,
    *,
    lookback_days: int | None,
    categories: Sequence[str] | None,
    orders: bool,
    as_of: dt.date | None,
    derive_items: bool,
    state_tables: bool,
) -> str | None:
    """Why this run cannot add to the last run's state (None when it can)."""
    if state is None or not state_tables:
        return "no state of an earlier run (silver/feature_runs, user_activity, user_totals)"
    if state.missing_columns:
        return (
            f"silver/feature_runs lacks {list(state.missing_columns)} (written by an earlier "
            "version)"
        )
    if derive_items:
        return "features.items_from_events rebuilds the catalogue from all events"
    if lookback_days != state.lookback_days:
        return f"lookback_days changed ({state.lookback_days} -> {lookback_days})"
    if categories is not None and tuple(categories) != state.categories:
        return f"top_categories changed ({list(state.categories)} -> {list(categories)})"
    if orders != state.orders:
        return "the events gained or lost order ids"
    if as_of is not None and as_of < state.as_of:
        return f"as_of_date {as_of} is before the last run's {state.as_of}"
    return None


def _window_start(as_of: dt.date, lookback_days: int | None) -> dt.date | None:
    return None if lookback_days is None else as_of - dt.timedelta(days=lookback_days)


def totals_at(
    activity: DataFrame,
    as_of: dt.date,
    lookback_days: int | None,
    n_categories: int,
    orders: bool,
) -> DataFrame:
    """silver/user_totals rows at `as_of` for the users of `activity` (rows summed by key)."""
    rows = fx.collapse_activity(activity, n_categories).filter(F.col(t.EVENT_DATE) < F.lit(as_of))
    start = _window_start(as_of, lookback_days)
    window = rows if start is None else rows.filter(F.col(t.EVENT_DATE) >= F.lit(start))
    lifetime = rows.groupBy(t.USER_ID).agg(
        F.min(t.EVENT_DATE).alias("first_event_date"),
        F.max(t.EVENT_DATE).alias("last_event_date"),
        F.max(F.when(F.col("purchases") > 0, F.col(t.EVENT_DATE))).alias("last_purchase_date"),
    )
    totals = fx.user_totals(window, n_categories, orders, lifetime)
    return totals.withColumn(t.AS_OF_DATE, F.lit(as_of))


def changed_users(
    activity: DataFrame,
    new_activity: DataFrame,
    previous_as_of: dt.date,
    as_of: dt.date,
    lookback_days: int | None,
) -> DataFrame:
    """`user_id` of every user whose totals differ between the two as-of dates."""
    day = F.col(t.EVENT_DATE)
    moved = (day >= F.lit(previous_as_of)) & (day < F.lit(as_of))
    if lookback_days is not None:
        old_start = _window_start(previous_as_of, lookback_days)
        new_start = _window_start(as_of, lookback_days)
        moved |= (day >= F.lit(old_start)) & (day < F.lit(new_start))
    return (
        activity.filter(moved)
        .select(t.USER_ID)
        .unionByName(new_activity.select(t.USER_ID))
        .distinct()
    )


def advance_totals(
    previous: DataFrame,
    activity: DataFrame,
    changed: DataFrame,
    as_of: dt.date,
    lookback_days: int | None,
    n_categories: int,
    orders: bool,
) -> DataFrame:
    """The totals at `as_of`: the changed users recomputed, the others kept."""
    recomputed = totals_at(
        activity.join(changed, t.USER_ID, "left_semi"), as_of, lookback_days, n_categories, orders
    )
    kept = previous.join(changed, t.USER_ID, "left_anti").withColumn(t.AS_OF_DATE, F.lit(as_of))
    return kept.unionByName(recomputed.select(*kept.columns))


def run_row(
    spark: SparkSession,
    *,
    as_of: dt.date,
    mode: str,
    lookback_days: int | None,
    categories: Sequence[str],
    orders: bool,
    batches: Sequence[str],
    events_added: int,
    users_recomputed: int,
    users: int,
    events_version: int,
    activity_version: int,
    interactions: str | None,
) -> DataFrame:
    """One silver/feature_runs row."""
    row = (
        dt.datetime.now(),
        as_of,
        mode,
        lookback_days,
        list(categories),
        orders,
        sorted(batches),
        events_added,
        users_recomputed,
        users,
        events_version,
        activity_version,
        interactions,
    )
    return spark.createDataFrame([row], RUN_SCHEMA)


def interaction_settings(weights: Mapping[str, float], half_life_days: float | None) -> str:
    """The settings silver/interactions depends on, as recorded in silver/feature_runs."""
    return json.dumps({"weights": dict(weights), "half_life_days": half_life_days}, sort_keys=True)


def advance_interactions(
    previous: DataFrame,
    window: DataFrame,
    changed: DataFrame,
    previous_as_of: dt.date,
    as_of: dt.date,
    weights: Mapping[str, float],
    half_life_days: float | None,
) -> DataFrame:
    """silver/interactions at `as_of` from the snapshot at `previous_as_of`.

    The changed users (`changed_users`: new events, days entering or leaving
    the window) get their pairs rebuilt from their windowed events; every other
    user's pairs are the previous ones, their strength decayed by the days
    between the snapshots (each event's weight is 0.5 ** (age / half-life), so
    every term of a sum ages by the same factor).
    """
    kept = previous.join(changed, t.USER_ID, "left_anti")
    days = (as_of - previous_as_of).days
    if half_life_days and days:
        kept = kept.withColumn(
            t.STRENGTH, F.col(t.STRENGTH) * F.lit(0.5 ** (days / half_life_days))
        )
    rebuilt = fx.build_interactions(
        window.join(changed, t.USER_ID, "left_semi"), as_of, weights, half_life_days
    )
    return kept.withColumn(t.AS_OF_DATE, F.lit(as_of)).select(*rebuilt.columns).unionByName(rebuilt)
