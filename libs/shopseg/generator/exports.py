"""What the generator writes: raw exports with their planted dirt, and the ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import GenerateConf
from shopseg.plant import CATEGORIES, PERSONAS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

from shopseg.generator.draws import (
    DIRTY_EVENT_KINDS,
    DIRTY_USER_KINDS,
    DRIFTED,
    at,
    uniform,
)

# --------------------------------------------------------------------------- raw exports


def _dirty_kind(
    seed: int, salt: str, key: Column, fraction: float, kinds: tuple[str, ...]
) -> Column:
    """Null for a clean record, else the name of the corruption planted in it."""
    which = F.floor(uniform(seed, f"{salt}:kind", key) * len(kinds))
    return F.when(uniform(seed, salt, key) < fraction, at(kinds, which))


def events_as_json_lines(events: DataFrame, conf: GenerateConf) -> DataFrame:
    """Events as JSON lines (`value`) by export day (`event_date`), dirt planted.

    A `dirty_fraction` share of events is corrupted (one of DIRTY_EVENT_KINDS),
    and another such share is exported twice (a resent record).
    """
    seed = conf.seed
    eid = F.col(t.EVENT_ID)
    kind = F.col("dirty_kind")
    record = events.withColumn(
        "dirty_kind", _dirty_kind(seed, "dirty_event", eid, conf.dirty_fraction, DIRTY_EVENT_KINDS)
    ).select(
        eid,
        F.when(kind == "missing_user", F.lit(None)).otherwise(F.col(t.USER_ID)).alias(t.USER_ID),
        F.col(t.ITEM_ID),
        F.when(kind == "unknown_event_type", F.lit("clik"))
        .otherwise(F.col(t.EVENT_TYPE))
        .alias(t.EVENT_TYPE),
        F.when(kind == "future_timestamp", F.col(t.EVENT_TS) + F.expr("INTERVAL 80 YEARS"))
        .otherwise(F.col(t.EVENT_TS))
        .alias(t.EVENT_TS),
        F.col(t.SESSION_ID),
        F.when(kind == "negative_quantity", F.lit(-3))
        .otherwise(F.col(t.QUANTITY))
        .alias(t.QUANTITY),
        *[F.col(c) for c in (t.PRICE, t.DISCOUNT, t.RATING, t.DWELL_SECONDS)],
        kind,
        F.col("event_date"),
    )
    json_line = F.to_json(
        F.struct(*[F.col(c) for c in t.RAW_EVENT_COLUMNS]),
        {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ssXXX", "ignoreNullFields": "true"},
    )
    value = (
        F.when(kind == "malformed_json", F.expr("substring(line, 1, length(line) div 2)"))
        .when(
            kind == "price_not_a_number",
            F.regexp_replace(F.col("line"), '"price":[-0-9.Ee]+', '"price":"N/A"'),
        )
        .otherwise(F.col("line"))
    )
    copies = F.when(
        uniform(seed, "duplicate_event", eid) < conf.dirty_fraction, F.array(F.lit(1), F.lit(2))
    ).otherwise(F.array(F.lit(1)))
    return (
        record.withColumn("line", json_line)
        .select(value.alias("value"), F.col("event_date"), F.explode(copies).alias("copy"))
        .select("value", "event_date")
    )


# Consent as a shop's CRM holds it: most users opted in, some out, a few never asked.
OPT_IN_SHARES = {"true": 0.92, "false": 0.05}


def _opt_in(draw: Column) -> Column:
    """`true`, `false` or null (no consent on record) by a uniform draw."""
    yes, no = OPT_IN_SHARES["true"], OPT_IN_SHARES["false"]
    return F.when(draw < yes, F.lit("true")).when(draw < yes + no, F.lit("false"))


def users_as_csv_rows(users: DataFrame, conf: GenerateConf) -> DataFrame:
    """The user export: text columns, a `dirty_fraction` share with bad ages or no id,
    and as many exported twice."""
    seed = conf.seed
    uid = F.col(t.USER_ID)
    kind = _dirty_kind(seed, "dirty_user", uid, conf.dirty_fraction, DIRTY_USER_KINDS)
    out = users.select(
        F.when(kind == "missing_user", F.lit(None)).otherwise(uid.cast("string")).alias(t.USER_ID),
        F.date_format(t.SIGNUP_TS, "yyyy-MM-dd HH:mm:ss").alias(t.SIGNUP_TS),
        F.when(kind == "age_not_a_number", F.lit("unknown"))
        .when(kind == "negative_age", F.lit("-4"))
        .otherwise(F.col(t.AGE).cast("string"))
        .alias(t.AGE),
        *[F.col(c) for c in (t.GENDER, t.REGION, t.CHANNEL)],
        _opt_in(uniform(seed, "opt_in", uid)).alias(t.MARKETING_OPT_IN),
        *[F.col(c) for c in (t.FULL_NAME, t.EMAIL, t.PHONE)],
        F.explode(
            F.when(
                uniform(seed, "duplicate_user", uid) < conf.dirty_fraction,
                F.array(F.lit(1), F.lit(2)),
            ).otherwise(F.array(F.lit(1)))
        ).alias("copy"),
    )
    return out.select(*t.RAW_USER_COLUMNS)


def items_for_export(items: DataFrame, conf: GenerateConf) -> DataFrame:
    """The catalogue export (typed Parquet); a `dirty_fraction` share has a negative price."""
    bad = uniform(conf.seed, "dirty_item", F.col(t.ITEM_ID)) < conf.dirty_fraction
    return items.select(
        t.ITEM_ID,
        t.CATEGORY,
        t.BRAND,
        F.when(bad, -F.col(t.PRICE)).otherwise(F.col(t.PRICE)).alias(t.PRICE),
    )


# --------------------------------------------------------------------------- ground truth


def build_user_personas(users: DataFrame) -> DataFrame:
    return users.select(*t.USER_PERSONAS.columns)


def build_persona_drift(users: DataFrame, conf: GenerateConf) -> DataFrame:
    """Users planted to drift: from which persona, to which, on which date."""
    return users.filter(F.col(DRIFTED)).select(
        t.USER_ID,
        F.lit(conf.drift.from_persona).alias("from_persona"),
        F.lit(conf.drift.to_persona).alias("to_persona"),
        F.lit(conf.drift.date).cast("date").alias("drift_date"),
    )


def build_item_groups(items: DataFrame) -> DataFrame:
    return items.select(*t.ITEM_GROUPS.columns)


def build_persona_categories(spark: SparkSession) -> DataFrame:
    rows = [
        (pe.name, category, float(weight))
        for pe in PERSONAS
        for category, weight in zip(CATEGORIES, pe.category_weights, strict=True)
        if weight > 0
    ]
    frame = spark.createDataFrame(rows, "persona string, category string, weight double")
    return frame.coalesce(1).select(*t.PERSONA_CATEGORIES.columns)
