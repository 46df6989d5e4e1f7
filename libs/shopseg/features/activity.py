"""The events summed per (user, day, session, order): silver/user_activity's rows,
and the per-day and per-user sums computed from them (the package docstring
says how)."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t

# --------------------------------------------------------------------------- user features


SESSION_KEY = "_session"
ORDER_KEY = "_order"
CATEGORY_INDEX = "_category"


def session_key(session_id: Column) -> Column:
    """A session id as a 64-bit hash, null for no session (grouping key, not an id)."""
    return F.when(session_id.isNotNull(), F.xxhash64(session_id))


def category_index(items: DataFrame, categories: Sequence[str]) -> DataFrame:
    """`(item_id, _category)`: each item of a listed category with that category's position."""
    listed = F.array(*[F.lit(c) for c in categories])
    position = F.array_position(listed, F.col(t.CATEGORY)).cast("int") - 1
    return items.select(t.ITEM_ID, position.alias(CATEGORY_INDEX)).where(F.col(CATEGORY_INDEX) >= 0)


def order_key(event_type: Column, order_id: Column) -> Column:
    """A purchase's order id as a 64-bit hash, null without one (grouping key)."""
    return F.when((event_type == "purchase") & order_id.isNotNull(), F.xxhash64(order_id))


SUMS = t.ACTIVITY_SUMS
ACTIVITY_KEYS = (t.USER_ID, t.EVENT_DATE, SESSION_KEY, ORDER_KEY)


def category_sums(n_categories: int) -> list[str]:
    return [f"_cat{i}" for i in range(n_categories)]


def session_days(
    events: DataFrame, n_categories: int, orders: bool = False, by_batch: bool = False
) -> DataFrame:
    """Per (user, day, session, order) sums of the events: the mergeable activity state.

    Every column is a count or a sum, so the rows of two sets of events with
    the same key add up to the rows of their union (`collapse_activity`).
    `events` must carry `SESSION_KEY`, with `orders` `ORDER_KEY` (otherwise
    the column is null) and, with categories, `CATEGORY_INDEX`. `by_batch`
    keeps the ingest batch in the key (silver/user_activity: a failed run's rows
    are replaced by batch).
    """
    kind = F.col(t.EVENT_TYPE)
    purchase = kind == "purchase"
    review = kind == "review"
    returned = kind == "return"

    def count_if(cond: Column) -> Column:
        return F.sum(F.when(cond, 1).otherwise(0)).cast("long")

    sums = {
        "n_events": F.count(F.lit(1)),
        "views": count_if(kind == "view"),
        "carts": count_if(kind == "cart"),
        "purchases": count_if(purchase),
        "amount": F.sum(F.when(purchase, F.col(t.AMOUNT))),
        "returns": count_if(returned),
        "returned_amount": F.sum(F.when(returned, F.col(t.AMOUNT))),
        "discounted": count_if(purchase & (F.col(t.DISCOUNT) > 0)),
        "dwell_sum": F.sum(t.DWELL_SECONDS),
        "dwell_n": F.count(t.DWELL_SECONDS),
        "reviews": count_if(review),
        "rating_sum": F.sum(F.when(review, F.col(t.RATING))).cast("long"),
        "rating_n": F.count(F.when(review, F.col(t.RATING))),
        **{f"_cat{i}": count_if(F.col(CATEGORY_INDEX) == i) for i in range(n_categories)},
    }
    if not orders:
        events = events.withColumn(ORDER_KEY, F.lit(None).cast("long"))
    keys = [*ACTIVITY_KEYS, *([t.BATCH_ID] if by_batch else [])]
    return events.groupBy(*keys).agg(*[value.alias(name) for name, value in sums.items()])


def collapse_activity(activity: DataFrame, n_categories: int) -> DataFrame:
    """One row per key: activity rows appended by several increments, summed."""
    return activity.groupBy(*ACTIVITY_KEYS).agg(
        *[F.sum(c).alias(c) for c in (*SUMS, *category_sums(n_categories))]
    )


def daily_sums(per_session_day: DataFrame, n_categories: int, orders: bool = False) -> DataFrame:
    """Per (user, day) sums from `session_days` rows, with `new_sessions`: sessions
    whose first day it is, and `orders`: orders whose first day it is (purchase
    lines without an order id count one each).

    The sums are taken per (user, day, session, order) first, so that distinct
    sessions and orders come from the same pass over the events rather than a
    second scan and shuffle.
    """
    sums = [*SUMS, *category_sums(n_categories)]
    session = Window.partitionBy(t.USER_ID, SESSION_KEY).orderBy(t.EVENT_DATE)
    first_day = F.col(SESSION_KEY).isNotNull() & (F.row_number().over(session) == 1)
    per_session_day = per_session_day.withColumn("_new_session", F.when(first_day, 1).otherwise(0))
    if orders:
        # An order counts on its first day; purchase lines without an id count one each.
        order = Window.partitionBy(t.USER_ID, ORDER_KEY).orderBy(t.EVENT_DATE)
        new_order = F.col(ORDER_KEY).isNotNull() & (F.row_number().over(order) == 1)
        counted = F.when(new_order, 1).when(F.col(ORDER_KEY).isNull(), F.col("purchases"))
        per_session_day = per_session_day.withColumn("_orders", F.coalesce(counted, F.lit(0)))
    else:
        per_session_day = per_session_day.withColumn("_orders", F.col("purchases"))
    return per_session_day.groupBy(t.USER_ID, t.EVENT_DATE).agg(
        *[F.sum(name).alias(name) for name in sums],
        F.sum("_new_session").alias("new_sessions"),
        F.sum("_orders").alias("orders"),
    )


def per_user_sums(daily: DataFrame, n_categories: int) -> DataFrame:
    """One row per user from `daily_sums` rows: the window's totals, the number of
    purchase days and the mean gap between them (a window over the days, no
    second shuffle)."""
    by_day = Window.partitionBy(t.USER_ID).orderBy(t.EVENT_DATE)
    bought = F.col("purchases") > 0
    previous_purchase = F.max(F.when(bought, F.col(t.EVENT_DATE))).over(
        by_day.rowsBetween(Window.unboundedPreceding, -1)
    )
    gap = F.when(bought, F.datediff(F.col(t.EVENT_DATE), previous_purchase))
    return (
        daily.withColumn("_gap", gap)
        .groupBy(t.USER_ID)
        .agg(
            F.min(t.EVENT_DATE).alias("first_event_date"),
            F.max(t.EVENT_DATE).alias("last_event_date"),
            F.max(F.when(bought, F.col(t.EVENT_DATE))).alias("last_purchase_date"),
            F.sum("orders").alias("frequency"),
            F.sum("purchases").alias("lines"),
            F.sum("amount").alias("purchased_amount"),
            F.sum("returns").alias("returns"),
            F.sum("returned_amount").alias("returned_amount"),
            F.count(F.when(bought, 1)).alias("purchase_days"),
            F.avg("_gap").alias("mean_days_between_purchases"),
            F.stddev_samp("_gap").alias("std_days_between_purchases"),
            F.count(F.lit(1)).alias("active_days"),
            F.sum("new_sessions").alias("sessions"),
            *[F.sum(c).alias(c) for c in t.TOTALS_SUMS],
            *[F.sum(f"_cat{i}").alias(f"_cat{i}") for i in range(n_categories)],
        )
    )
