"""Stage `generate`: synthetic shop exports under `raw/`, and their ground truth.

Writes the formats real exports come in: users as CSV, the catalogue as
Parquet, events as JSON lines partitioned by day (`raw/events/event_date=...`).
The ground truth (personas, taste groups, planted category preferences) goes
to Delta tables under `raw/ground_truth/`, for evaluation only.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F

from shopseg import generator, tables
from shopseg.pipeline import StageContext


def _observed(df: DataFrame, name: str) -> tuple[DataFrame, Observation]:
    """Count rows while they are written (no second pass over the data)."""
    obs = Observation(name)
    return df.observe(obs, F.count(F.lit(1)).alias("rows")), obs


def run(ctx: StageContext) -> None:
    conf = ctx.config.generate
    lake = ctx.lakehouse

    items = generator.build_items(ctx.spark, conf).cache()
    users = generator.build_users(ctx.spark, conf).cache()
    scale = generator.session_scale(users, conf)
    users = generator.with_session_counts(users, conf, scale).cache()
    ctx.log.info(
        "%d users, %d items, about %.0f events per user (session scale %.3f), seed %d",
        conf.users,
        conf.items,
        conf.events_per_user,
        scale,
        conf.seed,
    )
    ctx.run.log_metrics({"session_scale": scale})

    users_csv, users_obs = _observed(generator.users_as_csv_rows(users, conf), "users")
    users_csv.write.mode("overwrite").option("header", True).csv(lake.path(tables.RAW_USERS))
    ctx.record_files(tables.RAW_USERS, "CSV", users_obs.get["rows"])

    items_out, items_obs = _observed(generator.items_for_export(items, conf), "items")
    items_out.write.mode("overwrite").parquet(lake.path(tables.RAW_ITEMS))
    ctx.record_files(tables.RAW_ITEMS, "Parquet", items_obs.get["rows"])

    events = generator.build_events(users, conf)
    lines, events_obs = _observed(generator.events_as_json_lines(events, conf), "events")
    # One folder per day, written by the tasks that hold that day's rows.
    lines.repartition("event_date").write.mode("overwrite").partitionBy("event_date").text(
        lake.path(tables.RAW_EVENTS)
    )
    ctx.record_files(tables.RAW_EVENTS, "JSON lines, by day", events_obs.get["rows"])

    ctx.write(generator.build_user_personas(users), tables.USER_PERSONAS.name)
    if conf.drift.share > 0:
        ctx.write(generator.build_persona_drift(users, conf), tables.PERSONA_DRIFT.name)
        drifted = users.filter(F.col(generator.DRIFTED)).count()
        ctx.log.info(
            "planted drift: %d %s users become %s on %s",
            drifted,
            conf.drift.from_persona,
            conf.drift.to_persona,
            conf.drift.date,
        )
        ctx.run.log_metrics({"drifted_users": drifted})
    ctx.write(generator.build_item_groups(items), tables.ITEM_GROUPS.name)
    ctx.write(generator.build_persona_categories(ctx.spark), tables.PERSONA_CATEGORIES.name)

    personas = users.groupBy(tables.PERSONA).count().collect()
    ctx.run.log_metrics({f"users.{r[tables.PERSONA]}": r["count"] for r in personas})
    users.unpersist()
    items.unpersist()
