"""The shop's tables as Spark DataFrames: items, users with their hidden plan, events."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import GenerateConf
from shopseg.plant import CATEGORIES, PERSONA_NAMES, PERSONAS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

from shopseg.generator.draws import (
    CHANNELS,
    DRIFTED,
    FIRST_NAMES,
    GENDER_WEIGHTS,
    GENDERS,
    ITEMS_PER_GROUP,
    LAST_NAMES,
    MAX_EVENTS_PER_SESSION,
    MAX_SESSIONS,
    MIN_ITEMS,
    REGIONS,
    SESSION_GAP_SECONDS,
    at,
    cumulative,
    day_start_seconds,
    group_in_category,
    item_category_index,
    item_group,
    item_in_group,
    item_price,
    normal,
    per_persona,
    per_persona_array,
    pick,
    uniform,
)

# --------------------------------------------------------------------------- tables


def build_items(spark: SparkSession, conf: GenerateConf) -> DataFrame:
    """The catalogue: `item_id`, `category`, `brand`, `price` (+ hidden `taste_group`)."""
    _check_sizes(conf)
    seed = conf.seed
    item_id = F.col("id") + 1
    category = at(CATEGORIES, item_category_index(item_id))
    brand_no = F.floor(uniform(seed, "brand", item_id) * 12).cast("int")
    return spark.range(conf.items, numPartitions=_partitions(conf, conf.items, 200_000)).select(
        item_id.alias(t.ITEM_ID),
        category.alias(t.CATEGORY),
        F.format_string("%s-brand-%02d", category, brand_no).alias(t.BRAND),
        item_price(seed, item_id).alias(t.PRICE),
        item_group(item_id).alias(t.TASTE_GROUP),
    )


def _check_sizes(conf: GenerateConf) -> None:
    if conf.items < MIN_ITEMS:
        raise ValueError(
            f"generate.items is {conf.items}; at least {MIN_ITEMS} are needed "
            f"({len(CATEGORIES)} categories x {ITEMS_PER_GROUP}-item taste groups)"
        )


def _partitions(conf: GenerateConf, rows: int, rows_per_partition: int) -> int:
    return conf.output_partitions or max(2, math.ceil(rows / rows_per_partition))


def persona_weights(conf: GenerateConf) -> tuple[float, ...]:
    return tuple(float(conf.personas.get(name, 0.0)) for name in PERSONA_NAMES)


def build_users(spark: SparkSession, conf: GenerateConf) -> DataFrame:
    """Users with profile columns, direct identifiers and hidden planning columns.

    Hidden columns (persona, taste group, activity window, session count)
    drive `build_events` and the ground truth; they are not exported.
    """
    _check_sizes(conf)
    seed = conf.seed
    start_s, end_s = day_start_seconds(conf.start_date), day_start_seconds(conf.end_date) + 86_399
    n_groups = math.ceil(conf.items / ITEMS_PER_GROUP)
    uid = F.col(t.USER_ID)
    p = F.col("persona_idx")

    signup_far = per_persona(p, tuple(pe.signup_days_before_end[0] for pe in PERSONAS))
    signup_near = per_persona(p, tuple(pe.signup_days_before_end[1] for pe in PERSONAS))
    days_before_end = signup_near + uniform(seed, "signup", uid) * (signup_far - signup_near)
    signup = F.lit(end_s) - (days_before_end * 86_400).cast("long")
    active_start = F.greatest(F.col("signup_s"), F.lit(start_s))
    quiet = per_persona(p, tuple(pe.quiet_days for pe in PERSONAS))
    active_end = F.lit(end_s) - quiet * 86_400
    span_days = F.greatest((F.col("active_end_s") - F.col("active_start_s")) / 86_400, F.lit(1.0))
    planned_span_days = F.greatest((active_end - F.col("active_start_s")) / 86_400, F.lit(1.0))
    rate = per_persona(p, tuple(pe.sessions_per_30_days for pe in PERSONAS))
    # Activity differs from user to user: log-normal factor with mean 1.
    activity = F.exp(F.lit(0.35) * normal(seed, "activity", uid) - F.lit(0.06125))

    category_cum = tuple(cumulative(pe.category_weights) for pe in PERSONAS)
    taste_category = pick(uniform(seed, "taste_cat", uid), per_persona_array(p, category_cum))
    # Tastes spread evenly over a category's groups; browsing favours popular ones.
    taste_group = group_in_category(taste_category, uniform(seed, "taste_grp", uid), n_groups, 1)

    age = F.round(
        per_persona(p, tuple(pe.age_mean for pe in PERSONAS))
        + per_persona(p, tuple(pe.age_sd for pe in PERSONAS)) * normal(seed, "age", uid)
    )
    channel_cum = tuple(cumulative(pe.channel_weights) for pe in PERSONAS)
    drift = conf.drift
    if drift.share > 0:
        drifted = (p == PERSONA_NAMES.index(drift.from_persona)) & (
            uniform(seed, "drift", uid) < drift.share
        )
        to = PERSONAS[PERSONA_NAMES.index(drift.to_persona)]
        drift_s = day_start_seconds(drift.date)
        to_end = end_s - to.quiet_days * 86_400
    else:
        drifted, to, drift_s, to_end = F.lit(False), PERSONAS[0], end_s, end_s
    # After the drift date a drifted user follows the target persona's rate
    # until that persona's activity ends (none at all for dormant).
    drift_span_days = F.greatest(
        F.lit(to_end) - F.greatest(F.col("active_start_s"), F.lit(drift_s)), F.lit(0)
    ) / F.lit(86_400)
    first = at(FIRST_NAMES, F.floor(uniform(seed, "first", uid) * len(FIRST_NAMES)))
    last = at(LAST_NAMES, F.floor(uniform(seed, "last", uid) * len(LAST_NAMES)))
    users = (
        spark.range(
            conf.users,
            numPartitions=_partitions(conf, int(conf.users * conf.events_per_user), 1_000_000),
        )
        .select((F.col("id") + 1).alias(t.USER_ID))
        .withColumn("persona_idx", pick(uniform(seed, "persona", uid), persona_weights(conf)))
        .withColumn("signup_s", signup)
        .withColumn("active_start_s", active_start)
        .withColumn(DRIFTED, drifted)
        .withColumn(
            "active_end_s",
            F.when(F.col(DRIFTED), F.least(active_end, F.lit(drift_s))).otherwise(active_end),
        )
        .withColumn("expected_sessions", rate * span_days / 30.0)
        # Sessions as if nobody drifted: the scale comes from these alone, so
        # users who do not drift are generated identically whatever the drift.
        .withColumn("planned_sessions", rate * planned_span_days / 30.0)
        .withColumn(
            "drift_start_s", F.greatest(F.col("active_start_s"), F.lit(drift_s)).cast("long")
        )
        .withColumn("drift_end_s", F.lit(to_end).cast("long"))
        .withColumn(
            "drift_expected_sessions",
            F.when(
                F.col(DRIFTED), F.lit(to.sessions_per_30_days) * drift_span_days / 30.0
            ).otherwise(0.0),
        )
        .withColumn("activity", activity)
        .withColumn(
            "no_sessions",
            uniform(seed, "no_sessions", uid)
            < per_persona(p, tuple(pe.p_no_sessions for pe in PERSONAS)),
        )
        .withColumn(t.TASTE_GROUP, taste_group)
        .withColumn(
            t.PERSONA,
            F.when(F.col(DRIFTED), F.lit(to.name)).otherwise(at(PERSONA_NAMES, p)),
        )
        .withColumn(t.SIGNUP_TS, F.timestamp_seconds(F.col("signup_s")))
        .withColumn(t.AGE, F.greatest(F.lit(18), F.least(F.lit(85), age)).cast("int"))
        .withColumn(t.GENDER, at(GENDERS, pick(uniform(seed, "gender", uid), GENDER_WEIGHTS)))
        .withColumn(t.REGION, at(REGIONS, F.floor(uniform(seed, "region", uid) * len(REGIONS))))
        .withColumn(
            t.CHANNEL,
            at(CHANNELS, pick(uniform(seed, "channel", uid), per_persona_array(p, channel_cum))),
        )
        .withColumn(t.FULL_NAME, F.concat_ws(" ", first, last))
        .withColumn(
            t.EMAIL,
            F.lower(F.concat(first, F.lit("."), last, F.lit("."), uid, F.lit("@example.com"))),
        )
        .withColumn(
            t.PHONE,
            F.format_string(
                "+1-555-%07d", F.floor(uniform(seed, "phone", uid) * 10_000_000).cast("int")
            ),
        )
    )
    return users


def with_session_counts(users: DataFrame, conf: GenerateConf, scale: float) -> DataFrame:
    """Add `n_sessions`, scaled so the average user makes about `events_per_user` events."""
    p = F.col("persona_idx")
    min_sessions = per_persona(p, tuple(pe.min_sessions for pe in PERSONAS))
    n = F.round(F.col("expected_sessions") * F.col("activity") * F.lit(scale)).cast("int")
    n = F.least(F.greatest(n, min_sessions), F.lit(MAX_SESSIONS))
    drift_n = F.round(F.col("drift_expected_sessions") * F.col("activity") * F.lit(scale)).cast(
        "int"
    )
    return users.withColumn("n_sessions", F.when(F.col("no_sessions"), 0).otherwise(n)).withColumn(
        "n_drift_sessions",
        F.when(F.col("no_sessions"), 0).otherwise(F.least(drift_n, F.lit(MAX_SESSIONS) - n)),
    )


def session_scale(users: DataFrame, conf: GenerateConf) -> float:
    """Factor on session rates that makes the mean events per user `events_per_user`.

    One aggregation over users (not events): planned sessions times the
    persona's expected events per session. The plan ignores drift (a drifted
    user's sessions are what the drift leaves of it), so the factor, and with
    it every user who does not drift, is the same with and without drift.
    """
    p = F.col("persona_idx")
    per_session = per_persona(p, tuple(pe.events_per_session() for pe in PERSONAS))
    sessions = F.col("planned_sessions") * per_session
    expected = users.agg(
        F.avg(F.when(F.col("no_sessions"), 0.0).otherwise(sessions * F.col("activity")))
    ).first()[0]
    return conf.events_per_user / expected if expected else 1.0


def activity_phases(users: DataFrame, conf: GenerateConf) -> DataFrame:
    """One row per user and stretch of behaviour: the persona, its window and its sessions.

    Every user has one phase; a drifted user has a second, as the target
    persona from the drift date, whose sessions are numbered after the first's.
    """
    cols = (t.USER_ID, t.TASTE_GROUP)
    phases = users.select(
        *cols,
        "persona_idx",
        "active_start_s",
        "active_end_s",
        F.lit(1).alias("first_session"),
        "n_sessions",
    )
    if conf.drift.share <= 0:
        return phases
    drifted = users.filter(F.col(DRIFTED)).select(
        *cols,
        F.lit(PERSONA_NAMES.index(conf.drift.to_persona)).alias("persona_idx"),
        F.col("drift_start_s").alias("active_start_s"),
        F.col("drift_end_s").alias("active_end_s"),
        (F.col("n_sessions") + 1).alias("first_session"),
        F.col("n_drift_sessions").alias("n_sessions"),
    )
    return phases.unionByName(drifted)


def build_events(users: DataFrame, conf: GenerateConf) -> DataFrame:
    """Clean events of every user: sessions of views, then maybe a cart, purchase and review.

    Args:
        users: output of `with_session_counts(build_users(...))`.
        conf: generation settings.

    Returns:
        Events with the raw event columns plus `event_date` (the export day).
    """
    seed = conf.seed
    end_s = day_start_seconds(conf.end_date) + 86_399
    n_groups = math.ceil(conf.items / ITEMS_PER_GROUP)
    p = F.col("persona_idx")
    uid = F.col(t.USER_ID)
    sid = F.col("session_idx")
    skey = (uid, sid)

    single = per_persona(p, tuple(pe.single_purchase for pe in PERSONAS))
    p_cart = per_persona(p, tuple(pe.p_cart for pe in PERSONAS))
    p_buy = per_persona(p, tuple(pe.p_buy_given_cart for pe in PERSONAS))
    p_review = per_persona(p, tuple(pe.p_review for pe in PERSONAS))
    views_mean = per_persona(p, tuple(pe.views_per_session for pe in PERSONAS))
    first_session = sid == 1
    has_cart = F.when(single & first_session, True).otherwise(uniform(seed, "cart", *skey) < p_cart)
    has_purchase = F.when(single, first_session).otherwise(
        F.col("has_cart") & (uniform(seed, "buy", *skey) < p_buy)
    )
    has_review = F.col("has_purchase") & (uniform(seed, "review", *skey) < p_review)
    n_views = F.least(
        F.lit(MAX_EVENTS_PER_SESSION - 3),
        F.lit(1)
        + F.floor(-F.log(F.lit(1.0) - uniform(seed, "views", *skey)) * (views_mean - 1.0)).cast(
            "int"
        ),
    )
    span = F.col("active_end_s") - F.col("active_start_s")
    session_start = F.col("active_start_s") + F.floor(
        uniform(seed, "session_ts", *skey) * span
    ).cast("long")

    sessions = (
        activity_phases(users, conf)
        .filter(F.col("n_sessions") > 0)
        .select(
            t.USER_ID,
            "persona_idx",
            t.TASTE_GROUP,
            "active_start_s",
            "active_end_s",
            F.explode(
                F.sequence(F.col("first_session"), F.col("first_session") + F.col("n_sessions") - 1)
            ).alias("session_idx"),
        )
        .withColumn("n_views", n_views)
        .withColumn("has_cart", has_cart)
        .withColumn("has_purchase", has_purchase)
        .withColumn("has_review", has_review)
        .withColumn("session_start_s", session_start)
        .withColumn(
            "n_events",
            F.col("n_views")
            + F.col("has_cart").cast("int")
            + F.col("has_purchase").cast("int")
            + F.col("has_review").cast("int"),
        )
    )

    k = F.col("k")
    view_k = F.least(k, F.col("n_views") - 1)
    ekey = (uid, sid, view_k)
    category_cum = tuple(cumulative(pe.category_weights) for pe in PERSONAS)
    browse_category = pick(uniform(seed, "browse_cat", *ekey), per_persona_array(p, category_cum))
    browse_group = group_in_category(
        browse_category, uniform(seed, "browse_grp", *ekey), n_groups, 2
    )
    p_taste = per_persona(p, tuple(pe.p_taste for pe in PERSONAS))
    group = F.when(uniform(seed, "taste", *ekey) < p_taste, F.col(t.TASTE_GROUP)).otherwise(
        browse_group
    )
    item = item_in_group(group, uniform(seed, "item", *ekey), conf.items)

    event_type = (
        F.when(k < F.col("n_views"), "view")
        .when(k == F.col("n_views"), "cart")
        .when(k == F.col("n_views") + 1, "purchase")
        .otherwise("review")
    )
    ts = (
        F.col("session_start_s")
        + k * SESSION_GAP_SECONDS
        + F.floor(uniform(seed, "jitter", uid, sid, k) * 30).cast("long")
    )
    review_ts = ts + F.lit(3600) * (1 + F.floor(uniform(seed, "review_ts", uid, sid) * 48))
    # Sessions that start late on the last day do not spill past the window.
    ts = F.least(F.when(F.col(t.EVENT_TYPE) == "review", review_ts).otherwise(ts), F.lit(end_s))
    # Carts and purchases carry the paid unit price after any discount.
    discounted = uniform(seed, "discount", uid, sid) < per_persona(
        p, tuple(pe.p_discount for pe in PERSONAS)
    )
    discount = F.when(
        discounted, F.round(F.lit(0.1) + uniform(seed, "discount_pct", uid, sid) * 0.3, 2)
    ).otherwise(F.lit(0.0))
    is_order_line = F.col(t.EVENT_TYPE).isin("cart", "purchase")
    list_price = item_price(seed, F.col(t.ITEM_ID))
    quantity = F.lit(1) + F.floor(
        -F.log(F.lit(1.0) - uniform(seed, "qty", uid, sid))
        * per_persona(p, tuple(pe.extra_quantity for pe in PERSONAS))
    ).cast("int")
    rating_mean = per_persona(p, tuple(pe.rating_mean for pe in PERSONAS))
    rating = F.least(
        F.lit(5),
        F.greatest(F.lit(1), F.round(rating_mean + 0.8 * normal(seed, "rating", uid, sid))),
    ).cast("int")
    dwell = F.round(
        -F.log(F.lit(1.0) - uniform(seed, "dwell", uid, sid, k))
        * per_persona(p, tuple(pe.dwell_seconds for pe in PERSONAS)),
        1,
    )

    return (
        sessions.select("*", F.explode(F.sequence(F.lit(0), F.col("n_events") - 1)).alias("k"))
        .withColumn(t.EVENT_TYPE, event_type)
        .withColumn(t.ITEM_ID, item)
        .withColumn("ts_s", ts)
        .select(
            (uid * 10_000_000 + sid * 1_000 + k).alias(t.EVENT_ID),
            uid.alias(t.USER_ID),
            F.col(t.ITEM_ID),
            F.col(t.EVENT_TYPE),
            F.timestamp_seconds(F.col("ts_s")).alias(t.EVENT_TS),
            F.format_string("s%d-%d", uid, sid).alias(t.SESSION_ID),
            F.when(is_order_line, quantity).cast("int").alias(t.QUANTITY),
            F.when(
                F.col(t.EVENT_TYPE) != "review",
                F.round(list_price * (1 - F.when(is_order_line, discount).otherwise(0.0)), 2),
            ).alias(t.PRICE),
            F.when(is_order_line, discount).alias(t.DISCOUNT),
            F.when(F.col(t.EVENT_TYPE) == "review", rating).alias(t.RATING),
            F.when(F.col(t.EVENT_TYPE) == "view", dwell).alias(t.DWELL_SECONDS),
            F.to_date(F.timestamp_seconds(F.col("ts_s"))).alias("event_date"),
        )
    )
