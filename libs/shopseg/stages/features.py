"""Stage `features`: bronze -> silver/events, silver/user_features, silver/interactions
(and silver/items, when the catalogue is derived from the event lines).

A full run rebuilds silver/events from the committed bronze events and every
user's features from them. An incremental run (`features.mode`, docs/features.md: Daily
increments) appends only the events of ingest batches no earlier run added and
recomputes only the users whose window changed (`shopseg.increments`); its
snapshot equals a full run's on the same data. User features and interactions
are snapshots partitioned by `as_of_date`: a rerun for the same date replaces
that date's rows and keeps the others, so later stages can compare snapshots.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import features as fx
from shopseg import increments as inc
from shopseg import tables as t
from shopseg.delta import WriteResult
from shopseg.pipeline import StageContext


def ingest_log(ctx: StageContext) -> DataFrame | None:
    """bronze/ingest_log, when ingest has written one."""
    if not ctx.lakehouse.exists(t.INGEST_LOG.name):
        return None
    return ctx.read(t.INGEST_LOG.name)


def bronze_table(ctx: StageContext, table: str) -> DataFrame | None:
    """The committed rows of a bronze table (`StageContext.read`), None when it does not exist."""
    if not ctx.lakehouse.exists(table):
        return None
    return ctx.read(table)


def run(ctx: StageContext) -> None:
    conf = ctx.config.features
    log = ingest_log(ctx)
    bronze_events = bronze_table(ctx, t.BRONZE_EVENTS.name)
    if bronze_events is None:
        raise FileNotFoundError(f"stage features needs {t.BRONZE_EVENTS.name}; run `ingest` first")
    users = bronze_table(ctx, t.BRONZE_USERS.name)
    items = bronze_table(ctx, t.BRONZE_ITEMS.name)
    derive = conf.items_from_events
    if derive is not None:
        named = {"name": derive.name, "price": derive.price, "category": derive.category}
        absent = {k: v for k, v in named.items() if v and v not in bronze_events.columns}
        if absent:
            raise ValueError(
                f"features.items_from_events: {absent} are not columns of "
                f"{t.BRONZE_EVENTS.name} (columns: {sorted(bronze_events.columns)})"
            )
        catalogue = fx.build_items_from_events(
            bronze_events, derive.name, derive.price, derive.category
        )
        ctx.write(catalogue, t.ITEMS.name, "overwrite", overwrite_schema=True)
        if items is None:
            items = ctx.read(t.ITEMS.name)

    # Order ids group purchase lines into orders where the source maps them.
    orders = t.ORDER_ID in bronze_events.columns
    batches, state, reason = _state(ctx, log, orders)
    if conf.mode == "incremental" and reason is not None:
        raise ValueError(f"features.mode is incremental, but {reason}: run with mode full")
    if conf.mode == "full" or reason is not None:
        ctx.log.info("full run: %s", "features.mode is full" if conf.mode == "full" else reason)
        built = full_state(ctx, bronze_events, items, orders)
    else:
        assert state is not None
        new_batches = [b for b in batches if b not in state.batches]
        ctx.log.info(
            "incremental run after %s: %d new ingest batches", state.as_of, len(new_batches)
        )
        built = incremental_state(ctx, state, bronze_events, new_batches, items, orders)
    as_of, categories, mode = built.as_of, built.categories, built.mode

    ctx.log.info(
        "as of %s, lookback %s days; category shares for %s",
        as_of,
        conf.lookback_days if conf.lookback_days is not None else "all",
        ", ".join(categories) or "none",
    )
    ctx.run.log_params({"as_of_date": as_of.isoformat(), "categories": categories, "mode": mode})
    metrics = fx.metrics_from_totals(
        ctx.read_back(built.totals), users, as_of, categories, conf.demographics
    )
    snapshot = fx.scored_snapshot(
        metrics, conf.rfm.segments, conf.rfm.no_purchase_segment, conf.rfm.quantile_error
    )
    ctx.log.info("RFM quintile cuts among buyers: %s", snapshot.cuts)
    ctx.run.log_dict(snapshot.cuts, "rfm_cuts.json")
    ctx.write(
        snapshot.features,
        t.USER_FEATURES.name,
        "overwrite_partitions",
        partition_by=t.USER_FEATURES.partition_by,
    )
    segments = (
        ctx.read(t.USER_FEATURES.name)
        .filter(f"{t.AS_OF_DATE} = DATE'{as_of.isoformat()}'")
        .groupBy("rfm_segment")
        .count()
        .collect()
    )
    counts = {r["rfm_segment"]: r["count"] for r in segments}
    ctx.run.log_metrics({f"rfm_users.{name}": n for name, n in counts.items()})
    added, recomputed = built.added, built.recomputed
    ctx.run.log_metrics({"events_added": added, "users_recomputed": recomputed})
    ctx.log.info(
        "%s run: %d events added, %d of %d users recomputed",
        mode,
        added,
        recomputed,
        sum(counts.values()),
    )

    settings = inc.interaction_settings(conf.interaction_weights, conf.interaction_half_life_days)
    ctx.write(
        _interactions(ctx, built, state, settings),
        t.INTERACTIONS.name,
        "overwrite_partitions",
        partition_by=t.INTERACTIONS.partition_by,
    )
    snapshot.unpersist()
    run = inc.run_row(
        ctx.spark,
        as_of=as_of,
        mode=mode,
        lookback_days=conf.lookback_days,
        categories=categories,
        orders=orders,
        batches=batches,
        events_added=added,
        users_recomputed=recomputed,
        users=sum(counts.values()),
        events_version=built.events.version,
        activity_version=built.activity.version,
        interactions=settings,
    )
    if mode == "full":
        ctx.write(run, t.FEATURE_RUNS.name, "overwrite", overwrite_schema=True)
    else:
        ctx.write(run, t.FEATURE_RUNS.name, "append")
    if built.changed is not None:
        built.changed.unpersist()


def _interactions(
    ctx: StageContext, built: Built, state: inc.FeatureState | None, settings: str
) -> DataFrame:
    """silver/interactions at the run's as-of date: an incremental run continues
    the last run's snapshot when that run wrote one with the same settings
    (only the changed users' pairs are rebuilt), any other run builds it from
    the window's events."""
    conf = ctx.config.features
    window = fx.filter_window(ctx.read_back(built.events), built.as_of, conf.lookback_days)
    weights, half_life = conf.interaction_weights, conf.interaction_half_life_days
    if built.changed is None or state is None:
        return fx.build_interactions(window, built.as_of, weights, half_life)
    if state.mode == "stream" or state.interactions != settings:
        ctx.log.info(
            "silver/interactions rebuilt from the window: the last run %s",
            "wrote no snapshot (stream)" if state.mode == "stream" else "used other settings",
        )
        return fx.build_interactions(window, built.as_of, weights, half_life)
    previous = ctx.read(t.INTERACTIONS.name).filter(F.col(t.AS_OF_DATE) == F.lit(state.as_of))
    ctx.log.info(
        "silver/interactions continues the %s snapshot: %d users' pairs rebuilt",
        state.as_of,
        built.recomputed,
    )
    return inc.advance_interactions(
        previous, window, built.changed, state.as_of, built.as_of, weights, half_life
    )


def _state(
    ctx: StageContext, log: DataFrame, orders: bool
) -> tuple[list[str], inc.FeatureState | None, str | None]:
    """The committed ingest batches, the last run's state and why an increment
    cannot continue it (None when it can)."""
    conf = ctx.config.features
    batches = sorted(r[t.BATCH_ID] for r in log.select(t.BATCH_ID).distinct().collect())
    state_tables = all(
        ctx.lakehouse.exists(spec.name)
        for spec in (t.FEATURE_RUNS, t.USER_ACTIVITY, t.USER_TOTALS, t.SILVER_EVENTS)
    )
    state = inc.load_state(ctx.read(t.FEATURE_RUNS.name)) if state_tables else None
    reason = inc.why_not_incremental(
        state,
        lookback_days=conf.lookback_days,
        categories=conf.top_categories,
        orders=orders,
        as_of=conf.as_of_date,
        derive_items=conf.items_from_events is not None,
        state_tables=state_tables,
    )
    return batches, state, reason


def advance(ctx: StageContext) -> Built:
    """`shopseg stream`'s step: the events of batches no run has added go to
    silver/events and user_activity and the changed users' totals are
    recomputed, without a snapshot; recorded in silver/feature_runs as mode
    `stream`. The caller unpersists `changed`."""
    conf = ctx.config.features
    log = ingest_log(ctx)
    bronze_events = bronze_table(ctx, t.BRONZE_EVENTS.name)
    if bronze_events is None or log is None:
        raise FileNotFoundError(f"the stream needs {t.BRONZE_EVENTS.name}; run `ingest` first")
    orders = t.ORDER_ID in bronze_events.columns
    batches, state, reason = _state(ctx, log, orders)
    if reason is not None:
        raise ValueError(
            f"the stream continues the state of a features run, but {reason}: run "
            "`shopseg features` first"
        )
    assert state is not None
    items = bronze_table(ctx, t.BRONZE_ITEMS.name)
    new_batches = [b for b in batches if b not in state.batches]
    built = incremental_state(ctx, state, bronze_events, new_batches, items, orders)
    run = inc.run_row(
        ctx.spark,
        as_of=built.as_of,
        mode="stream",
        lookback_days=conf.lookback_days,
        categories=built.categories,
        orders=orders,
        batches=batches,
        events_added=built.added,
        users_recomputed=built.recomputed,
        users=built.totals.rows,
        events_version=built.events.version,
        activity_version=built.activity.version,
        # No snapshot: the next features run rebuilds silver/interactions.
        interactions=None,
    )
    ctx.write(run, t.FEATURE_RUNS.name, "append")
    return built


@dataclass(frozen=True)
class Built:
    """What a full or incremental run wrote before the snapshot."""

    mode: str
    as_of: dt.date
    categories: list[str]
    # The writes of silver/events, user_activity and user_totals.
    events: WriteResult
    activity: WriteResult
    totals: WriteResult
    recomputed: int
    # Incremental: the users recomputed (cached; the caller unpersists).
    changed: DataFrame | None = None

    @property
    def added(self) -> int:
        """Events added to silver/events (a full run: all of them)."""
        return self.events.rows


def full_state(
    ctx: StageContext, bronze_events: DataFrame, items: DataFrame | None, orders: bool
) -> Built:
    """silver/events, user_activity and user_totals rebuilt from all committed events.

    Every user is recomputed.
    """
    conf = ctx.config.features
    # Rebuilt from bronze: its schema is this version's (a lakehouse written
    # before order_id existed gains the column).
    written = ctx.write(
        fx.build_silver_events(bronze_events),
        t.SILVER_EVENTS.name,
        "overwrite",
        overwrite_schema=True,
    )
    events = ctx.read_back(written)
    as_of = conf.as_of_date or fx.default_as_of(events)
    categories = conf.top_categories
    if categories is None:
        window = fx.filter_window(events, as_of, conf.lookback_days)
        categories = fx.top_categories(window, items, conf.top_categories_n) if items else []
    keyed, categories = fx.keyed_events(events, items, categories, orders)
    activity = fx.session_days(keyed.repartition(t.USER_ID), len(categories), orders, by_batch=True)
    activity_written = ctx.write(activity, t.USER_ACTIVITY.name, "overwrite", overwrite_schema=True)
    totals = inc.totals_at(
        ctx.read_back(activity_written), as_of, conf.lookback_days, len(categories), orders
    )
    written_totals = ctx.write(totals, t.USER_TOTALS.name, "overwrite", overwrite_schema=True)
    return Built(
        "full",
        as_of,
        categories,
        written,
        activity_written,
        written_totals,
        written_totals.rows,
    )


def incremental_state(
    ctx: StageContext,
    state: inc.FeatureState,
    bronze_events: DataFrame,
    new_batches: list[str],
    items: DataFrame | None,
    orders: bool,
) -> Built:
    """The new batches' events appended to silver/events and user_activity, the
    changed users' totals recomputed."""
    conf = ctx.config.features
    new_bronze = bronze_events.filter(F.col(t.BATCH_ID).isin(new_batches))
    silver = ctx.read(t.SILVER_EVENTS.name)
    # A run that failed after appending left rows of these batches and no
    # record: they are replaced by batch, not counted again (the check costs a
    # scan on the delta-rs writer, so only then).
    replace = None
    if state.interrupted(
        ctx.lakehouse.version(t.SILVER_EVENTS.name), ctx.lakehouse.version(t.USER_ACTIVITY.name)
    ):
        ctx.log.warning("an earlier attempt left rows without a record: replacing them by batch")
        replace = (t.BATCH_ID, new_batches)
        silver = silver.filter(F.col(t.BATCH_ID).isNull() | ~F.col(t.BATCH_ID).isin(new_batches))
    # An event id already in silver (a re-export of an old event) is not added
    # twice. The new events are materialized first, so that Spark plans with
    # their real size: a day's ids are broadcast against silver's id column
    # (a scan) instead of a year's ids being shuffled for the anti join.
    candidates = fx.build_silver_events(new_bronze).cache()
    candidates.count()
    known = silver.select(t.EVENT_ID).join(candidates.select(t.EVENT_ID), t.EVENT_ID, "left_semi")
    new_events = candidates.join(known, t.EVENT_ID, "left_anti").cache()
    events = ctx.write(new_events, t.SILVER_EVENTS.name, "append", replace_rows=replace)
    last = new_events.agg(F.max(t.EVENT_DATE)).first()[0]
    as_of = conf.as_of_date or max(
        state.as_of, last + dt.timedelta(days=1) if last else state.as_of
    )
    if as_of < state.as_of:
        raise ValueError(f"features.as_of_date {as_of} is before the last run's {state.as_of}")
    keyed, _ = fx.keyed_events(new_events, items, state.categories, orders)
    new_activity = fx.session_days(keyed, len(state.categories), orders, by_batch=True)
    activity_written = ctx.write(new_activity, t.USER_ACTIVITY.name, "append", replace_rows=replace)
    activity = ctx.read_back(activity_written)
    changed = inc.changed_users(
        activity,
        new_events.select(t.USER_ID),
        state.as_of,
        as_of,
        conf.lookback_days,
    ).cache()
    recomputed = changed.count()
    totals = inc.advance_totals(
        ctx.read(t.USER_TOTALS.name),
        activity,
        changed,
        as_of,
        conf.lookback_days,
        len(state.categories),
        orders,
    )
    written = ctx.write(totals, t.USER_TOTALS.name, "overwrite")
    new_events.unpersist()
    candidates.unpersist()
    categories = list(state.categories)
    return Built(
        "incremental",
        as_of,
        categories,
        events,
        activity_written,
        written,
        recomputed,
        changed,
    )
