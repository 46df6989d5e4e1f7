"""Campaign audiences: eligibility, one campaign per user, A/B split by a salted hash.

Library functions only (DataFrames in, DataFrames out); the stage
`shopseg.stages.audiences` reads and writes the tables.

The split: a user's bucket is `xxhash64(salt, campaign id, user id)` mapped
onto [0, 1); the user is in the control group when the bucket is below the
campaign's holdout. It depends on nothing but those three values, so a
rebuild from the same inputs gives the same assignment, whatever the
partitioning, and a user keeps their group when the eligible population
changes around them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import CampaignConf, UpliftRule

TREATMENT = "treatment"
CONTROL = "control"
BUCKETS = 1_000_000


def bucket(salt: str, campaign_id: str, user_id: Column) -> Column:
    """A deterministic uniform value in [0, 1) per (salt, campaign, user)."""
    hashed = F.xxhash64(F.lit(salt), F.lit(campaign_id), user_id.cast("string"))
    return F.pmod(hashed, F.lit(BUCKETS)).cast("double") / BUCKETS


def decile_column(target: str) -> str:
    """The users' column holding their decile of a propensity target."""
    return f"propensity_decile_{target}"


def uplift_pick_column(campaign_id: str) -> str:
    """The users' column marking whom a campaign's uplift condition selects."""
    return f"uplift_pick_{campaign_id}"


def sampled(campaign_id: str, user_id: Column, share: float) -> Column:
    """A deterministic share of users, by a hash independent of the A/B split."""
    return bucket("shopseg.sample", campaign_id, user_id) < F.lit(share)


def eligible(users: DataFrame, campaign: CampaignConf, consent: bool = True) -> DataFrame:
    """Users the campaign targets, before the exclusions by contact history: every
    target condition holds and (unless `consent` is False) the user has not opted
    out, an unknown opt-out counting as out.

    Args:
        users: one row per user with `segment_name`, `rfm_segment`, the
            feature columns the campaign's predicates use and, for a
            propensity condition, `decile_column(target)` (null: not scored
            for that target, so not targeted); for an uplift condition,
            `uplift_pick_column(campaign id)` (null: not selected).
    """
    target = campaign.target
    cond = F.lit(True)
    if target.segments:
        cond = cond & F.col(t.SEGMENT_NAME).isin(*target.segments)
    if target.rfm_segments:
        cond = cond & F.col("rfm_segment").isin(*target.rfm_segments)
    if target.where:
        cond = cond & F.coalesce(F.expr(target.where), F.lit(False))
    if target.propensity:
        decile = F.col(decile_column(target.propensity.target))
        bounds = decile.between(target.propensity.min_decile, target.propensity.max_decile)
        cond = cond & F.coalesce(bounds, F.lit(False))
    if target.uplift:
        cond = cond & F.coalesce(F.col(uplift_pick_column(campaign.id)), F.lit(False))
    if target.sample is not None:
        cond = cond & sampled(campaign.id, F.col(t.USER_ID), target.sample)
    if campaign.exclude.opted_out and consent:
        cond = cond & ~opted_out(campaign)
    return users.filter(cond)


def opted_out(campaign: CampaignConf) -> Column:
    """Whether a user is out of the campaign by its `exclude.opted_out` predicate:
    where the predicate is unknown (null: no consent on record), the user is out."""
    if campaign.exclude.opted_out is None:
        return F.lit(False)
    return F.coalesce(F.expr(campaign.exclude.opted_out), F.lit(True))


def recently_contacted(
    history: DataFrame | None, send_date: dt.date, days: int
) -> DataFrame | None:
    """Users treated by any campaign sent in the `days` before `send_date` (not on it)."""
    if history is None:
        return None
    since = send_date - dt.timedelta(days=days)
    return (
        history.filter(
            (F.col("variant") == TREATMENT)
            & (F.col("send_date") >= F.lit(since))
            & (F.col("send_date") < F.lit(send_date))
        )
        .select(t.USER_ID)
        .distinct()
    )


def assign(
    users: DataFrame,
    campaigns: Sequence[CampaignConf],
    history: DataFrame | None,
    send_date: dt.date,
    salt: str,
) -> DataFrame:
    """One row per audience member: `(campaign_id, user_id, variant, bucket, priority)`.

    Each user joins at most one campaign: the eligible one with the highest
    priority (ties: the campaign listed first). `max_audience` keeps a
    deterministic random sample (a second salted hash, independent of the
    split), so treated and control shrink together.
    """
    parts = []
    for order, campaign in enumerate(campaigns):
        members = eligible(users, campaign).select(t.USER_ID)
        days = campaign.exclude.contacted_within_days
        if days:
            contacted = recently_contacted(history, send_date, days)
            if contacted is not None:
                members = members.join(contacted, on=t.USER_ID, how="left_anti")
        parts.append(
            members.select(
                F.lit(campaign.id).alias("campaign_id"),
                t.USER_ID,
                F.lit(campaign.priority).alias("priority"),
                F.lit(order).alias("_order"),
                bucket(salt, campaign.id, F.col(t.USER_ID)).alias("bucket"),
            )
        )
    if not parts:
        raise ValueError("no campaigns configured")
    every = parts[0]
    for part in parts[1:]:
        every = every.unionByName(part)
    best = Window.partitionBy(t.USER_ID).orderBy(F.col("priority").desc(), F.col("_order"))
    chosen = every.withColumn("_pick", F.row_number().over(best)).filter("_pick = 1")
    limits = {c.id: c.max_audience for c in campaigns if c.max_audience}
    if limits:
        draw = F.xxhash64(F.lit(salt), F.lit("max_audience"), "campaign_id", t.USER_ID)
        within = Window.partitionBy("campaign_id").orderBy(draw, t.USER_ID)
        limit = F.create_map(*[F.lit(x) for kv in limits.items() for x in kv])[F.col("campaign_id")]
        chosen = chosen.withColumn("_n", F.row_number().over(within)).filter(
            limit.isNull() | (F.col("_n") <= limit)
        )
    holdout = F.create_map(*[F.lit(x) for c in campaigns for x in (c.id, c.holdout)])
    variant = F.when(F.col("bucket") < holdout[F.col("campaign_id")], CONTROL).otherwise(TREATMENT)
    return chosen.select("campaign_id", t.USER_ID, variant.alias("variant"), "bucket", "priority")


def top_items(recommendations: DataFrame | None, n: int) -> DataFrame | None:
    """`(user_id, recommended_items)`: each user's first `n` recommended items, in rank order."""
    if recommendations is None:
        return None
    ranked = recommendations.filter(F.col("rank") <= n).select(
        t.USER_ID, F.struct("rank", t.ITEM_ID).alias("r")
    )
    return ranked.groupBy(t.USER_ID).agg(
        F.transform(F.array_sort(F.collect_list("r")), lambda x: x[t.ITEM_ID].cast("string")).alias(
            "recommended_items"
        )
    )


# --------------------------------------------------------------------------- outcomes


def _uniform(seed: int, salt: str, *cols: Column) -> Column:
    """A deterministic uniform value in (0, 1) per row, from a salted hash."""
    hashed = F.xxhash64(F.lit(seed), F.lit(salt), *[c.cast("string") for c in cols])
    return (F.pmod(hashed, F.lit(BUCKETS)).cast("double") + 0.5) / BUCKETS


def _by_persona(values: dict[str, float]) -> Column:
    pairs = [F.lit(x) for kv in values.items() for x in kv]
    return F.coalesce(F.create_map(*pairs)[F.col(t.PERSONA)], F.lit(0.0))


PERSONA_GROUP = "persona"


def planted_uplift(
    users: DataFrame,
    base: dict[str, float],
    lift: dict[str, float],
    rules: Sequence[UpliftRule],
) -> DataFrame:
    """`users` with `uplift_group` and `planted_uplift`, the change of their
    conversion probability if treated.

    The first rule whose predicate holds on the user's features decides the
    lift (group: the rule's name); otherwise the persona's lift (group
    `persona`). The effect is what the lift does to the persona's base
    probability kept within [0, 1], so it is exact for every user.

    Args:
        users: `persona` and the feature columns the rules read.
    """
    group = F.lit(PERSONA_GROUP)
    raw = _by_persona(lift)
    for rule in reversed(rules):
        holds = F.coalesce(F.expr(rule.where), F.lit(False))
        group = F.when(holds, F.lit(rule.name)).otherwise(group)
        raw = F.when(holds, F.lit(float(rule.lift))).otherwise(raw)
    p0 = _by_persona(base)
    p1 = F.least(F.greatest(p0 + raw, F.lit(0.0)), F.lit(1.0))
    return users.withColumn("uplift_group", group).withColumn("planted_uplift", p1 - p0)


def simulate_outcomes(
    audience: DataFrame,
    send_date: dt.date,
    seed: int,
    window_days: int,
    base: dict[str, float],
    lift: dict[str, float],
    order_value: dict[str, float],
    no_effect: Sequence[str],
) -> tuple[DataFrame, DataFrame]:
    """Purchases within `window_days` of the send, and each campaign's planted lift.

    Args:
        audience: `(campaign_id, user_id, variant, persona)` for one send date,
            and `planted_uplift` for a heterogeneous effect (`planted_uplift`);
            without it a treated user gets their persona's `lift`.

    Returns:
        `(events, truth)`: purchase events `(event_id, user_id, event_type,
        event_ts, amount)`, one per converting user; and per campaign the
        planted lift, the mean over its treated users of their lift (0 for
        `no_effect` campaigns).
    """
    per_user = "planted_uplift" in audience.columns
    planted = F.col("planted_uplift") if per_user else _by_persona(lift)
    effect = F.when(F.col("campaign_id").isin(*no_effect), F.lit(0.0)).otherwise(planted)
    treated = F.col("variant") == TREATMENT
    users = audience.withColumn("_lift", F.when(treated, effect).otherwise(F.lit(0.0)))
    user = F.col(t.USER_ID)
    converts = _uniform(seed, f"convert {send_date}", user) < _by_persona(base) + F.col("_lift")
    # Lognormal order value with sigma 0.5 around the persona's mean (Box-Muller).
    z = F.sqrt(-2 * F.log(_uniform(seed, "v1", user))) * F.cos(
        2 * 3.141592653589793 * _uniform(seed, "v2", user)
    )
    sigma = 0.5
    amount = F.exp(F.log(_by_persona(order_value)) - sigma * sigma / 2 + sigma * z)
    day = F.floor(_uniform(seed, "day", user) * window_days).cast("int")
    seconds = F.floor(_uniform(seed, "second", user) * 86400).cast("long")
    ts = (F.unix_timestamp(F.lit(send_date).cast("timestamp")) + (day * 86400) + seconds).cast(
        "timestamp"
    )
    events = users.filter(converts).select(
        F.xxhash64(F.lit(seed), F.lit("outcome"), user, F.lit(str(send_date))).alias(t.EVENT_ID),
        user,
        F.lit("purchase").alias(t.EVENT_TYPE),
        ts.alias(t.EVENT_TS),
        F.round(amount, 2).alias(t.AMOUNT),
    )
    truth = (
        users.filter(treated)
        .groupBy("campaign_id")
        .agg(F.count(F.lit(1)).alias("treated_users"), F.avg("_lift").alias("planted_lift"))
    )
    return events, truth


def converted_users(outcomes: DataFrame, send_date: dt.date, window_days: int) -> DataFrame:
    """`(user_id, revenue, converted = 1)` of the users with a purchase in
    [send date, send date + window_days)."""
    start = F.lit(send_date).cast("timestamp")
    end = F.lit(send_date + dt.timedelta(days=window_days)).cast("timestamp")
    return (
        outcomes.filter(
            (F.col(t.EVENT_TYPE) == "purchase")
            & (F.col(t.EVENT_TS) >= start)
            & (F.col(t.EVENT_TS) < end)
        )
        .groupBy(t.USER_ID)
        .agg(F.sum(F.coalesce(F.col(t.AMOUNT), F.lit(0.0))).alias("revenue"))
        .withColumn("converted", F.lit(1))
    )


def outcome_sums(
    audience: DataFrame, outcomes: DataFrame, send_date: dt.date, window_days: int
) -> DataFrame:
    """Per campaign, segment and variant: users, converters, revenue and its sum of squares.

    A user converts with at least one purchase in [send date, send date +
    window_days); revenue is the sum of those purchases' amounts. Rows for
    segment `(all)` cover each campaign's whole audience.
    """
    per_user = converted_users(outcomes, send_date, window_days)
    joined = audience.join(per_user, on=t.USER_ID, how="left").select(
        "campaign_id",
        t.SEGMENT_NAME,
        "variant",
        F.coalesce("converted", F.lit(0)).alias("converted"),
        F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
    )
    everyone = joined.withColumn(t.SEGMENT_NAME, F.lit(ALL_SEGMENTS))
    return (
        joined.unionByName(everyone)
        .groupBy("campaign_id", t.SEGMENT_NAME, "variant")
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.sum("converted").alias("converters"),
            F.sum("revenue").alias("revenue"),
            F.sum(F.col("revenue") * F.col("revenue")).alias("revenue_sq"),
        )
    )


ALL_SEGMENTS = "(all)"
# The segments of a campaign whose treated or control users are too few to show
# on their own, pooled.
SMALL_SEGMENTS = "(smaller segments)"


def uplift(
    n_t: int, conv_t: int, n_c: int, conv_c: int, z: float
) -> tuple[float, float, float, float, float]:
    """Conversion rates of treated and control, their difference and its normal interval."""
    p_t, p_c = conv_t / n_t, conv_c / n_c
    se = (p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c) ** 0.5
    diff = p_t - p_c
    return p_t, p_c, diff, diff - z * se, diff + z * se


def mean_difference(
    n_t: int, sum_t: float, sq_t: float, n_c: int, sum_c: float, sq_c: float, z: float
) -> tuple[float, float, float, float, float]:
    """Means of treated and control, their difference and its Welch-normal interval."""
    m_t, m_c = sum_t / n_t, sum_c / n_c
    var_t = max(sq_t / n_t - m_t * m_t, 0.0) * n_t / max(n_t - 1, 1)
    var_c = max(sq_c / n_c - m_c * m_c, 0.0) * n_c / max(n_c - 1, 1)
    se = (var_t / n_t + var_c / n_c) ** 0.5
    diff = m_t - m_c
    return m_t, m_c, diff, diff - z * se, diff + z * se
