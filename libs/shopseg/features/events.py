"""silver/events from bronze, the lookback window, the top categories, the catalogue
derived from event lines and silver/interactions."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg import tables as t

SILVER_EVENT_TYPES: dict[str, T.DataType] = {
    t.EVENT_ID: T.LongType(),
    t.USER_ID: T.LongType(),
    t.ITEM_ID: T.LongType(),
    t.EVENT_TYPE: T.StringType(),
    t.EVENT_TS: T.TimestampType(),
    t.SESSION_ID: T.StringType(),
    t.ORDER_ID: T.StringType(),
    t.QUANTITY: T.IntegerType(),
    t.PRICE: T.DoubleType(),
    t.AMOUNT: T.DoubleType(),
    t.DISCOUNT: T.DoubleType(),
    t.RATING: T.IntegerType(),
    t.DWELL_SECONDS: T.DoubleType(),
    t.SOURCE: T.StringType(),
}


def column_suffix(value: str) -> str:
    """A value as a column-name suffix: lower case, other characters as '_'."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


def with_missing_columns(df: DataFrame, types: Mapping[str, T.DataType]) -> DataFrame:
    """Cast the columns present to their types and add the missing ones as nulls."""
    return df.select(
        *[
            (F.col(name) if name in df.columns else F.lit(None)).cast(dtype).alias(name)
            for name, dtype in types.items()
        ],
        *[c for c in df.columns if c not in types],
    )


# --------------------------------------------------------------------------- silver events


def _text_ids(bronze_events: DataFrame) -> dict[str, T.DataType]:
    """User and item ids a source gives as text (SKUs such as `AB-0012`) stay text.

    Casting them to long would turn every one into null: each interaction lost.
    """
    return {
        field.name: T.StringType()
        for field in bronze_events.schema.fields
        if field.name in (t.USER_ID, t.ITEM_ID) and isinstance(field.dataType, T.StringType)
    }


def build_silver_events(bronze_events: DataFrame) -> DataFrame:
    """Clean events: typed, one row per event id, `amount` filled for purchases and
    returns.

    A source without event ids (a transaction log) gets ids hashed from its
    bronze record ids, so identical rows stay separate purchases. A return's
    amount is what it refunded, positive whatever sign the export writes
    (cancellation lines often carry negative quantities).
    """
    types = {
        **SILVER_EVENT_TYPES,
        **_text_ids(bronze_events),
        t.BATCH_ID: T.StringType(),
        t.RECORD_ID: T.StringType(),
    }
    df = with_missing_columns(bronze_events, types)
    kind = F.col(t.EVENT_TYPE)
    paid = F.coalesce(F.col(t.AMOUNT), F.col(t.PRICE) * F.coalesce(F.col(t.QUANTITY), F.lit(1)))
    return (
        df.withColumn(t.EVENT_ID, F.coalesce(F.col(t.EVENT_ID), F.xxhash64(F.col(t.RECORD_ID))))
        .withColumn(
            t.AMOUNT,
            F.when(kind == "purchase", paid).when(kind == "return", F.abs(paid)),
        )
        .withColumn(t.EVENT_DATE, F.to_date(F.col(t.EVENT_TS)))
        .dropDuplicates([t.EVENT_ID])
        .select(*t.SILVER_EVENTS.columns)
    )


def default_as_of(events: DataFrame) -> dt.date:
    """The day after the last event."""
    last = events.agg(F.max(t.EVENT_DATE)).first()[0]
    if last is None:
        raise ValueError("no events: cannot derive as_of_date; set features.as_of_date")
    return last + dt.timedelta(days=1)


def filter_window(events: DataFrame, as_of: dt.date, lookback_days: int | None) -> DataFrame:
    """Events before the as-of date, within the lookback window."""
    cond = F.col(t.EVENT_DATE) < F.lit(as_of)
    if lookback_days is not None:
        cond &= F.col(t.EVENT_DATE) >= F.lit(as_of - dt.timedelta(days=lookback_days))
    return events.filter(cond)


def top_categories(events: DataFrame, items: DataFrame, n: int) -> list[str]:
    """The n categories with the most events."""
    rows = (
        events.join(items.select(t.ITEM_ID, t.CATEGORY), t.ITEM_ID, "inner")
        .groupBy(t.CATEGORY)
        .count()
        .orderBy(F.desc("count"), t.CATEGORY)
        .limit(n)
        .collect()
    )
    return [r[t.CATEGORY] for r in rows if r[t.CATEGORY] is not None]


# --------------------------------------------------------------------------- catalogue


def build_items_from_events(
    bronze_events: DataFrame, name: str | None, price: str | None, category: str | None
) -> DataFrame:
    """A catalogue from the event lines, for shops that export no item file.

    Args:
        bronze_events: committed bronze events (item_id, event_ts and the
            columns named below).
        name, price, category: bronze event columns holding the item's
            description, unit price and category (each optional).

    Returns:
        One row per item: its latest non-empty name and category, the median of
        its positive unit prices, its number of events and its last event time.
    """

    def latest(column: str | None) -> Column:
        if column is None:
            return F.lit(None).cast("string")
        value = F.col(column).cast("string")
        return F.max_by(value, F.when(value.isNotNull(), F.col(t.EVENT_TS)))

    unit_price = F.col(price).cast("double") if price else F.lit(None).cast("double")
    return (
        bronze_events.filter(F.col(t.ITEM_ID).isNotNull())
        .groupBy(t.ITEM_ID)
        .agg(
            latest(name).alias(t.ITEM_NAME),
            latest(category).alias(t.CATEGORY),
            F.median(F.when(unit_price > 0, unit_price)).alias(t.PRICE),
            F.count(F.lit(1)).alias("events"),
            F.max(t.EVENT_TS).alias("last_event_ts"),
        )
        .select(*t.ITEMS.columns)
    )


# --------------------------------------------------------------------------- interactions


def build_interactions(
    events: DataFrame,
    as_of: dt.date,
    weights: Mapping[str, float],
    half_life_days: float | None,
) -> DataFrame:
    """User x item strength: weighted events (optionally decayed), from windowed events.

    An item the user returned in the window carries no weight: the pair is left
    out, however often it was viewed or bought.
    """
    weighted = [(kind, w) for kind, w in weights.items() if w > 0 and kind != "return"]
    weight = F.lit(0.0)
    for kind, w in reversed(weighted):
        weight = F.when(F.col(t.EVENT_TYPE) == kind, F.lit(w)).otherwise(weight)
    if half_life_days:
        age = F.datediff(F.lit(as_of), F.col(t.EVENT_DATE))
        weight = weight * F.pow(F.lit(0.5), age / F.lit(half_life_days))
    kinds = [*[k for k, _ in weighted], "return"]
    returned = F.col(t.EVENT_TYPE) == "return"
    return (
        events.filter(F.col(t.ITEM_ID).isNotNull() & F.col(t.EVENT_TYPE).isin(*kinds))
        .groupBy(t.USER_ID, t.ITEM_ID)
        .agg(
            F.sum(weight).alias(t.STRENGTH),
            F.count(F.when(~returned, 1)).alias("events"),
            F.max(F.when(~returned, F.col(t.EVENT_TS))).alias("last_event_ts"),
            F.max(returned).alias("_returned"),
        )
        .filter(~F.col("_returned") & (F.col("events") > 0))
        .withColumn(t.AS_OF_DATE, F.lit(as_of))
        .select(*t.INTERACTIONS.columns)
    )
