"""The per-user features: metrics from the window's sums and the lifetime dates,
silver/user_totals, the snapshot with its RFM scores."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg import tables as t
from shopseg.config import RfmRule
from shopseg.features.activity import (
    ORDER_KEY,
    SESSION_KEY,
    category_index,
    daily_sums,
    order_key,
    per_user_sums,
    session_days,
    session_key,
)
from shopseg.features.events import column_suffix, filter_window, with_missing_columns
from shopseg.features.rfm import rfm_cuts, with_rfm_scores


def _ratio(num: str | Column, den: str | Column) -> Column:
    num = F.col(num) if isinstance(num, str) else num
    den = F.col(den) if isinstance(den, str) else den
    return F.when(den > 0, num / den)


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
    per_user = per_user_sums(daily_sums(activity, n_categories, orders), n_categories)
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
