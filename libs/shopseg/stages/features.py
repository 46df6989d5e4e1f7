"""Stage `features`: bronze -> silver/events, silver/user_features, silver/interactions
(and silver/items, when the catalogue is derived from the event lines).

silver/events is rebuilt from the committed bronze events on every run.
User features and interactions are snapshots partitioned by `as_of_date`:
a rerun for the same date replaces that date's rows and keeps the others,
so later stages can compare snapshots.
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from shopseg import features as fx
from shopseg import tables as t
from shopseg.ingest import committed_rows
from shopseg.pipeline import StageContext


def ingest_log(ctx: StageContext) -> DataFrame | None:
    """bronze/ingest_log, when ingest has written one."""
    if not ctx.lakehouse.exists(t.INGEST_LOG.name):
        return None
    return ctx.read(t.INGEST_LOG.name)


def bronze_table(ctx: StageContext, table: str, log: DataFrame | None) -> DataFrame | None:
    """The committed rows of a bronze table (None when it does not exist)."""
    if not ctx.lakehouse.exists(table):
        return None
    return committed_rows(ctx.read(table), log)


def run(ctx: StageContext) -> None:
    conf = ctx.config.features
    log = ingest_log(ctx)
    bronze_events = bronze_table(ctx, t.BRONZE_EVENTS.name, log)
    if bronze_events is None:
        raise FileNotFoundError(f"stage features needs {t.BRONZE_EVENTS.name}; run `ingest` first")
    users = bronze_table(ctx, t.BRONZE_USERS.name, log)
    items = bronze_table(ctx, t.BRONZE_ITEMS.name, log)
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

    # Rebuilt from bronze on every run: its schema is this version's (a lakehouse
    # written before order_id existed gains the column).
    ctx.write(
        fx.build_silver_events(bronze_events),
        t.SILVER_EVENTS.name,
        "overwrite",
        overwrite_schema=True,
    )
    # Order ids group purchase lines into orders where the source maps them.
    orders = t.ORDER_ID in bronze_events.columns
    events = ctx.read(t.SILVER_EVENTS.name)
    as_of = conf.as_of_date or fx.default_as_of(events)
    window = fx.filter_window(events, as_of, conf.lookback_days).cache()
    categories = conf.top_categories
    if categories is None:
        categories = fx.top_categories(window, items, conf.top_categories_n) if items else []
    ctx.log.info(
        "as of %s, lookback %s days; category shares for %s",
        as_of,
        conf.lookback_days if conf.lookback_days is not None else "all",
        ", ".join(categories) or "none",
    )
    ctx.run.log_params({"as_of_date": as_of.isoformat(), "categories": categories})

    snapshot = fx.build_user_features(
        events,
        users,
        items,
        as_of,
        lookback_days=conf.lookback_days,
        categories=categories,
        demographics=conf.demographics,
        rfm_rules=conf.rfm.segments,
        no_purchase_segment=conf.rfm.no_purchase_segment,
        quantile_error=conf.rfm.quantile_error,
        orders=orders,
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
    ctx.run.log_metrics({f"rfm_users.{r['rfm_segment']}": r["count"] for r in segments})

    interactions = fx.build_interactions(
        window, as_of, conf.interaction_weights, conf.interaction_half_life_days
    )
    ctx.write(
        interactions,
        t.INTERACTIONS.name,
        "overwrite_partitions",
        partition_by=t.INTERACTIONS.partition_by,
    )
    snapshot.unpersist()
    window.unpersist()
