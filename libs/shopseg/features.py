"""Silver: clean events, per-user features (RFM, behaviour, tastes), interactions.

Built-in Spark functions only. The events are shuffled by user once; every
user aggregate is computed from that one shuffle. The events are summed per
(user, day, session) first, which shrinks them many times over and gives
distinct sessions and days without a distinct count; a window marks each
session's first day, the per-day rows sum those, and a second window on the
per-day rows gives the gaps between purchase days, which the per-user
aggregation reuses without another shuffle.

Sessions are grouped by a 64-bit hash of their id and categories by their
position in the top-category list, both computed before the shuffle: fixed
width keys and values instead of strings. Measured on 10M events, 2 cores
(per-day rows, median of three): 9.7 s with the string keys, 7.6-7.8 s with
these. Two sessions of one user collide only if their ids' 64-bit hashes do:
for a user with 10,000 sessions the chance is below 3e-12.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg import tables as t
from shopseg.config import RfmRule

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
QUANTILES = (0.2, 0.4, 0.6, 0.8)


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


def _daily(per_session_day: DataFrame, n_categories: int, orders: bool = False) -> DataFrame:
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


def _per_user(daily: DataFrame, n_categories: int) -> DataFrame:
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


def _ratio(num: str | Column, den: str | Column) -> Column:
    num = F.col(num) if isinstance(num, str) else num
    den = F.col(den) if isinstance(den, str) else den
    return F.when(den > 0, num / den)


def rfm_cuts(users: DataFrame, relative_error: float) -> dict[str, list[float]]:
    """Quintile cut points of recency, frequency and monetary among buyers (one pass)."""
    buyers = users.filter(F.col("frequency") > 0)
    cols = ["recency_days", "frequency", "monetary"]
    cuts = buyers.approxQuantile(cols, list(QUANTILES), relative_error)
    return dict(zip(cols, cuts, strict=True))


def score(value: Column, cuts: Sequence[float], higher_is_better: bool) -> Column:
    """1..5 by how many quintile cuts the value passes (ties share a score)."""
    if not cuts:
        return F.lit(None).cast("int")
    passed = [F.when(value > c if higher_is_better else value < c, 1).otherwise(0) for c in cuts]
    total = passed[0]
    for p in passed[1:]:
        total = total + p
    return F.when(value.isNotNull(), (total + 1).cast("int"))


def rfm_segment(rules: Sequence[RfmRule], no_purchase: str) -> Column:
    """First rule whose R and F score ranges hold; users who never bought get `no_purchase`.

    A buyer whose purchases all fall before the window has frequency 0 but a
    recency: scored, not labelled as never having purchased.
    """
    r, f = F.col("r_score"), F.col("f_score")
    out = F.when(F.col("recency_days").isNull(), F.lit(no_purchase))
    for rule in rules:
        out = out.when(r.between(*rule.r) & f.between(*rule.f), F.lit(rule.name))
    return out


def with_rfm_scores(
    users: DataFrame,
    cuts: Mapping[str, Sequence[float]],
    rules: Sequence[RfmRule],
    no_purchase: str,
) -> DataFrame:
    return (
        users.withColumn("r_score", score(F.col("recency_days"), cuts["recency_days"], False))
        .withColumn("f_score", score(F.col("frequency"), cuts["frequency"], True))
        .withColumn("m_score", score(F.col("monetary"), cuts["monetary"], True))
        .withColumn("rfm_segment", rfm_segment(rules, no_purchase))
    )


LIFETIME_DATES = ("first_event_date", "last_event_date", "last_purchase_date")


def build_lifetime_dates(history: DataFrame) -> DataFrame:
    """Per user, over the whole history before the as-of date: first and last
    event day and last purchase day (what recency, tenure and "has ever
    purchased" are measured from, whatever the lookback window)."""
    return history.groupBy(t.USER_ID).agg(
        F.min(t.EVENT_DATE).alias("first_event_date"),
        F.max(t.EVENT_DATE).alias("last_event_date"),
        F.max(F.when(F.col(t.EVENT_TYPE) == "purchase", F.col(t.EVENT_DATE))).alias(
            "last_purchase_date"
        ),
    )


def build_user_metrics(
    events: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    as_of: dt.date,
    categories: Sequence[str],
    demographics: Mapping[str, Sequence[str]],
    lifetime: DataFrame | None = None,
    orders: bool = False,
) -> DataFrame:
    """Per-user metrics at `as_of` (before RFM scores): one row per known user.

    Args:
        events: silver events already limited to the window.
        users: user profiles (user_id, signup_ts, demographics) or None.
        items: catalogue (item_id, category) or None.
        as_of: snapshot date.
        categories: categories that get a `share_<category>` column.
        demographics: column -> values that get `<column>_<value>` 0/1 columns.
        lifetime: `build_lifetime_dates` of the whole history before `as_of`;
            when given, recency, inactivity, tenure and the date columns come
            from it (a buyer whose last purchase is older than the window is
            still a buyer), and users known only from older history get a row.
            Counts and amounts stay windowed.
        orders: the events carry order ids (`order_id`): frequency counts
            distinct orders, not purchase lines.

    Returns:
        Metrics for every user with events or a profile signed up before `as_of`.
    """
    # One shuffle of the events by user serves every aggregate below (per day,
    # the purchase-gap window, per user, sessions), where grouping by (user,
    # day) first shuffled twice: 15.7 s -> 11.1 s on 10M events, 2 cores
    # (bench/run.py, docs/benchmarks.md).
    events, categories = keyed_events(events, items, categories, orders)
    activity = session_days(events.repartition(t.USER_ID), len(categories), orders)
    totals = user_totals(activity, len(categories), orders, lifetime)
    return metrics_from_totals(totals, users, as_of, categories, demographics)


def keyed_events(
    events: DataFrame, items: DataFrame | None, categories: Sequence[str], orders: bool
) -> tuple[DataFrame, list[str]]:
    """Events with the grouping keys `session_days` needs, and the categories kept
    (none without a catalogue)."""
    events = events.withColumn(SESSION_KEY, session_key(F.col(t.SESSION_ID)))
    if orders:
        events = events.withColumn(ORDER_KEY, order_key(F.col(t.EVENT_TYPE), F.col(t.ORDER_ID)))
    if items is None or not categories:
        return events, []
    index = F.broadcast(category_index(items, categories))
    return events.join(index, t.ITEM_ID, "left"), list(categories)


def user_totals(
    activity: DataFrame, n_categories: int, orders: bool, lifetime: DataFrame | None
) -> DataFrame:
    """Per-user counts and sums from `session_days` rows of the window, with the
    lifetime dates (`build_lifetime_dates` or `lifetime_from_activity`) when given."""
    per_user = _per_user(_daily(activity, n_categories, orders), n_categories)
    if lifetime is None:
        return per_user
    return per_user.drop(*LIFETIME_DATES).join(
        lifetime.select(t.USER_ID, *LIFETIME_DATES), t.USER_ID, "full"
    )


def metrics_from_totals(
    per_user: DataFrame,
    users: DataFrame | None,
    as_of: dt.date,
    categories: Sequence[str],
    demographics: Mapping[str, Sequence[str]],
) -> DataFrame:
    """The metrics of `build_user_metrics` from per-user totals (`user_totals`):
    ratios, recency and tenure at `as_of`, profiles and one-hot demographics."""
    profile_cols = [t.SIGNUP_TS, t.AGE, t.GENDER, t.REGION, t.CHANNEL]
    if users is not None:
        profiles = with_missing_columns(
            users.select(t.USER_ID, *[c for c in profile_cols if c in users.columns]),
            {
                t.USER_ID: T.LongType(),
                t.SIGNUP_TS: T.TimestampType(),
                t.AGE: T.IntegerType(),
                t.GENDER: T.StringType(),
                t.REGION: T.StringType(),
                t.CHANNEL: T.StringType(),
            },
        ).filter(F.col(t.SIGNUP_TS).isNull() | (F.to_date(t.SIGNUP_TS) < F.lit(as_of)))
        joined = profiles.join(per_user, t.USER_ID, "full")
    else:
        joined = with_missing_columns(
            per_user,
            {
                t.SIGNUP_TS: T.TimestampType(),
                t.AGE: T.IntegerType(),
                t.GENDER: T.StringType(),
                t.REGION: T.StringType(),
                t.CHANNEL: T.StringType(),
            },
        )

    counts = ["frequency", "lines", "purchase_days", "active_days", "sessions", "views", "carts"]
    counts += ["discounted", "reviews", "n_events", "dwell_n", "rating_n", "returns"]
    counts += [f"_cat{i}" for i in range(len(categories))]
    filled = joined.fillna(0, subset=counts).fillna(
        0.0, subset=["purchased_amount", "returned_amount"]
    )
    start = F.least(F.to_date(F.col(t.SIGNUP_TS)), F.col("first_event_date"))
    as_of_lit = F.lit(as_of)
    out = filled.select(
        F.col(t.USER_ID),
        as_of_lit.alias(t.AS_OF_DATE),
        F.datediff(as_of_lit, F.col("last_purchase_date")).alias("recency_days"),
        F.datediff(as_of_lit, F.col("last_event_date")).alias("inactive_days"),
        F.col("frequency").cast("long").alias("frequency"),
        # Net of returns, whether or not the returned purchase is in the window.
        (F.col("purchased_amount") - F.col("returned_amount")).cast("double").alias("monetary"),
        # What an order is worth when placed (before returns).
        _ratio("purchased_amount", "frequency").alias("avg_order_value"),
        _ratio("lines", "frequency").alias("lines_per_order"),
        F.col("returns").cast("long").alias("returns"),
        _ratio("returned_amount", "purchased_amount").alias("return_rate"),
        F.datediff(as_of_lit, start).alias("tenure_days"),
        F.col("purchase_days").cast("long").alias("purchase_days"),
        F.col("mean_days_between_purchases"),
        F.col("std_days_between_purchases"),
        F.col("active_days").cast("long").alias("active_days"),
        F.col("sessions").cast("long").alias("sessions"),
        F.col("views").cast("long").alias("views"),
        F.col("carts").cast("long").alias("carts"),
        _ratio("carts", "views").alias("cart_rate"),
        _ratio("frequency", "views").alias("conversion_rate"),
        _ratio("dwell_sum", "dwell_n").alias("mean_dwell_seconds"),
        _ratio("discounted", "lines").alias("discount_share"),
        F.col("reviews").cast("long").alias("review_count"),
        _ratio("rating_sum", "rating_n").alias("mean_rating"),
        F.col("first_event_date"),
        F.col("last_purchase_date"),
        F.col("last_event_date"),
        F.col(t.AGE),
        F.col(t.GENDER),
        F.col(t.REGION),
        F.col(t.CHANNEL),
        *[
            _ratio(F.col(f"_cat{i}"), F.col("n_events")).alias(f"share_{column_suffix(c)}")
            for i, c in enumerate(categories)
        ],
        *[
            F.when(F.col(col) == value, 1).otherwise(0).alias(f"{col}_{column_suffix(value)}")
            for col, values in demographics.items()
            for value in values
        ],
    )
    return out


def user_feature_columns(metrics: DataFrame) -> list[str]:
    """Output order: the contract's columns with the dynamic ones before the scores."""
    fixed = list(t.USER_FEATURES.columns)
    scores = fixed[fixed.index("r_score") :]
    dynamic = [c for c in metrics.columns if c not in fixed]
    return fixed[: fixed.index("r_score")] + dynamic + scores


@dataclass(frozen=True)
class FeatureSnapshot:
    """One snapshot of user features, its RFM cuts and the cached metrics behind it."""

    features: DataFrame
    cuts: dict[str, list[float]]
    metrics: DataFrame

    def unpersist(self) -> None:
        self.metrics.unpersist()


def build_user_features(
    events: DataFrame,
    users: DataFrame | None,
    items: DataFrame | None,
    as_of: dt.date,
    *,
    lookback_days: int | None,
    categories: Sequence[str],
    demographics: Mapping[str, Sequence[str]],
    rfm_rules: Sequence[RfmRule],
    no_purchase_segment: str,
    quantile_error: float,
    orders: bool = False,
) -> FeatureSnapshot:
    """The `silver/user_features` snapshot as of `as_of`, from the events before it.

    Only events dated before `as_of` are read (the window within
    `lookback_days`; recency and tenure from the whole history before it), so
    the same function builds the current snapshot and point-in-time rows for
    an earlier cut-off (the propensity stage's training rows).

    Returns:
        The snapshot with the contract's columns and the RFM quintile cuts
        computed on it; its metrics stay cached (the cuts and the write both
        read them) until `unpersist()`.
    """
    window = filter_window(events, as_of, lookback_days)
    lifetime = build_lifetime_dates(filter_window(events, as_of, None))
    metrics = build_user_metrics(
        window, users, items, as_of, categories, demographics, lifetime, orders
    )
    return scored_snapshot(metrics, rfm_rules, no_purchase_segment, quantile_error)


def scored_snapshot(
    metrics: DataFrame,
    rfm_rules: Sequence[RfmRule],
    no_purchase_segment: str,
    quantile_error: float,
) -> FeatureSnapshot:
    """The snapshot of `metrics` with RFM scores from quintile cuts among its buyers;
    the metrics are cached until `unpersist()`."""
    metrics = metrics.cache()
    cuts = rfm_cuts(metrics, quantile_error)
    scored = with_rfm_scores(metrics, cuts, rfm_rules, no_purchase_segment)
    return FeatureSnapshot(scored.select(*user_feature_columns(scored)), cuts, metrics)


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
