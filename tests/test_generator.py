"""The synthetic shop: deterministic, sized as asked, personas and tastes really planted."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import generator as g
from shopseg import tables as t
from shopseg.config import DriftConf, GenerateConf
from shopseg.plant import PERSONA_NAMES

CONF = GenerateConf(seed=7, users=3000, items=400, events_per_user=30, dirty_fraction=0.0)


def build(spark, conf: GenerateConf = CONF) -> tuple[DataFrame, DataFrame, DataFrame]:
    items = g.build_items(spark, conf)
    users = g.build_users(spark, conf)
    users = g.with_session_counts(users, conf, g.session_scale(users, conf))
    return users, items, g.build_events(users, conf)


@pytest.fixture(scope="module")
def shop(spark):
    users, items, events = build(spark)
    users, items, events = users.cache(), items.cache(), events.cache()
    yield users, items, events
    for df in (users, items, events):
        df.unpersist()


@pytest.fixture(scope="module")
def per_persona(shop) -> dict[str, dict]:
    users, _, events = shop
    is_purchase = (F.col(t.EVENT_TYPE) == "purchase").cast("int")
    rows = (
        users.select(t.USER_ID, t.PERSONA, "signup_s")
        .join(events, t.USER_ID, "left")
        .groupBy(t.PERSONA)
        .agg(
            F.countDistinct(t.USER_ID).alias("users"),
            (F.count(t.EVENT_ID) / F.countDistinct(t.USER_ID)).alias("events_per_user"),
            (F.sum(is_purchase) / F.countDistinct(t.USER_ID)).alias("purchases_per_user"),
            (F.sum(is_purchase) / F.sum((F.col(t.EVENT_TYPE) == "view").cast("int"))).alias(
                "conversion"
            ),
            F.avg(F.when(is_purchase == 1, (F.col(t.DISCOUNT) > 0).cast("int"))).alias(
                "discount_share"
            ),
            F.avg(F.when(is_purchase == 1, F.col(t.PRICE) * F.col(t.QUANTITY))).alias("aov"),
            F.avg(t.DWELL_SECONDS).alias("dwell"),
            F.max(t.EVENT_TS).alias("last_event"),
            F.min(F.unix_timestamp(t.EVENT_TS) - F.col("signup_s")).alias("min_after_signup"),
            F.min("signup_s").alias("first_signup"),
        )
        .collect()
    )
    return {r[t.PERSONA]: r.asDict() for r in rows}


def test_same_seed_same_data_any_partitioning(spark, shop):
    _, _, events = shop
    other = CONF.model_copy(update={"output_partitions": 5})
    _, _, again = build(spark, other)
    assert again.rdd.getNumPartitions() != events.rdd.getNumPartitions()
    assert events.exceptAll(again).count() == 0
    assert again.exceptAll(events).count() == 0


def test_another_seed_other_data(spark, shop):
    _, _, events = shop
    _, _, other = build(spark, CONF.model_copy(update={"seed": 8}))
    assert events.exceptAll(other).count() > 0.9 * events.count()


def test_the_same_shop_a_quarter_later_with_drift(spark, shop):
    """Window moved on by 13 weeks, 40% of loyal users drifted: nobody else changes.

    Every event of a user who did not drift comes back 91 days later and
    otherwise identical; drifted users have no event after the drift date.
    """
    users, _, events = shop
    shift = dt.timedelta(days=91)
    drift = DriftConf(share=0.4, date=CONF.end_date + dt.timedelta(days=1))
    later = CONF.model_copy(
        update=dict(start_date=CONF.start_date + shift, end_date=CONF.end_date + shift, drift=drift)
    )
    moved_users, _, moved = build(spark, later)
    drifted = moved_users.filter(g.DRIFTED).select(t.USER_ID)
    assert drifted.count() > 0.3 * users.filter(f"{t.PERSONA} = 'loyal_high_value'").count()

    def stay(df: DataFrame) -> DataFrame:
        return df.join(drifted, t.USER_ID, "left_anti")

    shifted_back = (
        stay(moved)
        .withColumn(t.EVENT_TS, F.col(t.EVENT_TS) - F.expr("INTERVAL 91 DAYS"))
        .withColumn("event_date", F.to_date(t.EVENT_TS))
    )
    columns = [c for c in events.columns if c != "event_date"]
    assert stay(events).count() > 0
    assert stay(events).select(columns).exceptAll(shifted_back.select(columns)).count() == 0
    assert shifted_back.select(columns).exceptAll(stay(events).select(columns)).count() == 0
    after = moved.join(drifted, t.USER_ID).filter(F.col(t.EVENT_TS) >= F.lit(drift.date))
    assert after.count() == 0


def test_sizes_follow_the_conf(shop):
    users, items, events = shop
    assert users.count() == CONF.users
    assert items.count() == CONF.items
    target = CONF.users * CONF.events_per_user
    assert 0.85 * target < events.count() < 1.15 * target
    assert events.select(t.EVENT_ID).distinct().count() == events.count()


def test_every_persona_is_there_in_proportion(per_persona):
    weights = g.persona_weights(CONF)
    total = sum(weights)
    for name, weight in zip(PERSONA_NAMES, weights, strict=True):
        share = per_persona[name]["users"] / CONF.users
        assert share == pytest.approx(weight / total, abs=0.03), name


def test_planted_behaviour_separates_personas(per_persona):
    p = per_persona
    purchases = {k: v["purchases_per_user"] for k, v in p.items()}
    assert purchases["loyal_high_value"] > 2 * purchases["bargain_hunter"]
    assert purchases["bargain_hunter"] > purchases["dormant"] > purchases["window_shopper"]
    assert purchases["one_time_buyer"] == pytest.approx(1.0, abs=0.01)
    assert min(p, key=lambda k: p[k]["conversion"]) == "window_shopper"
    assert max(p, key=lambda k: p[k]["dwell"]) == "window_shopper"
    assert max(p, key=lambda k: p[k]["events_per_user"]) == "window_shopper"
    assert max(p, key=lambda k: p[k]["discount_share"]) == "bargain_hunter"
    assert p["bargain_hunter"]["discount_share"] > 0.6
    assert p["loyal_high_value"]["aov"] > 2 * p["bargain_hunter"]["aov"]


def test_dormant_and_new_customers_by_time(per_persona):
    end = dt.datetime(2025, 12, 31, 23, 59, 59)
    dormant_last = per_persona["dormant"]["last_event"]
    # Sessions stop 180 days before the end; a review follows its purchase by up to 48 h.
    assert (end - dormant_last).days >= 180 - 2
    new_first_signup = dt.datetime.fromtimestamp(
        per_persona["new_customer"]["first_signup"], dt.UTC
    )
    assert new_first_signup.replace(tzinfo=None) >= end - dt.timedelta(days=31)
    for name, row in per_persona.items():
        assert row["min_after_signup"] >= 0, f"{name} has events before signup"


def test_events_stay_in_the_window_and_catalogue(shop):
    _, _, events = shop
    stats = events.agg(
        F.min(t.EVENT_TS), F.max(t.EVENT_TS), F.min(t.ITEM_ID), F.max(t.ITEM_ID)
    ).first()
    assert stats[0] >= dt.datetime(2025, 1, 1)
    assert stats[1] <= dt.datetime(2025, 12, 31, 23, 59, 59)
    assert stats[2] >= 1 and stats[3] <= CONF.items
    bad = events.filter(
        (F.col(t.EVENT_TYPE).isin("cart", "purchase") & (F.col(t.QUANTITY) < 1))
        | ((F.col(t.EVENT_TYPE) == "review") & ~F.col(t.RATING).between(1, 5))
        | ((F.col(t.EVENT_TYPE) != "review") & (F.col(t.PRICE) <= 0))
    )
    assert bad.count() == 0


def test_users_favour_their_taste_group(shop):
    users, items, events = shop
    views = events.filter(F.col(t.EVENT_TYPE) == "view").join(
        items.select(t.ITEM_ID, F.col(t.TASTE_GROUP).alias("item_group")), t.ITEM_ID
    )
    in_taste = (
        views.join(users.select(t.USER_ID, t.TASTE_GROUP), t.USER_ID)
        .agg(F.avg((F.col("item_group") == F.col(t.TASTE_GROUP)).cast("int")))
        .first()[0]
    )
    # 60% of views come from the taste group, plus what browsing lands there.
    assert in_taste > 0.6
    # Tastes spread over every group of the catalogue, none holding many users.
    groups = users.groupBy(t.TASTE_GROUP).count()
    assert groups.count() == CONF.items // g.ITEMS_PER_GROUP
    assert groups.agg(F.max("count")).first()[0] < 0.12 * CONF.users


def test_dirty_exports_carry_every_kind_of_dirt(spark, shop):
    users, items, events = shop
    conf = CONF.model_copy(update={"dirty_fraction": 0.02})
    lines = g.events_as_json_lines(events, conf).cache()
    n_events, n_lines = events.count(), lines.count()
    assert 1.01 * n_events < n_lines < 1.03 * n_events
    parsed = spark.read.schema(
        "event_id long, user_id long, event_type string, event_ts timestamp, quantity int, "
        "price double, _corrupt_record string"
    ).json(lines.select("value").rdd.map(lambda r: r[0]))
    parsed = parsed.cache()
    assert parsed.filter(F.col("_corrupt_record").isNotNull()).count() > 0
    assert parsed.filter(F.col(t.EVENT_TYPE) == "clik").count() > 0
    assert parsed.filter(F.col(t.QUANTITY) < 0).count() > 0
    assert parsed.filter(F.col(t.EVENT_TS) > F.lit("2100-01-01")).count() > 0
    assert parsed.filter(F.col(t.USER_ID).isNull() & F.col("_corrupt_record").isNull()).count() > 0
    assert parsed.select(t.EVENT_ID).distinct().count() < n_lines
    clean = g.events_as_json_lines(events, CONF.model_copy(update={"dirty_fraction": 0.0}))
    assert clean.count() == n_events
    lines.unpersist()
    parsed.unpersist()

    csv = g.users_as_csv_rows(users, conf)
    assert csv.count() > CONF.users
    assert csv.filter(F.col(t.AGE) == "unknown").count() > 0
    assert csv.filter(F.col(t.USER_ID).isNull()).count() > 0
    assert g.items_for_export(items, conf).filter(F.col(t.PRICE) < 0).count() >= 1


def test_too_few_items_is_refused(spark):
    with pytest.raises(ValueError, match="at least 200"):
        g.build_items(spark, CONF.model_copy(update={"items": 50}))
