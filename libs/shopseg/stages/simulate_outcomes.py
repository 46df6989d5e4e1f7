"""Stage `simulate_outcomes` (synthetic data): purchases after a campaign send, known lift.

For the latest send date in `gold/campaign_audiences`, each audience member
buys within `window_days` with their planted persona's base probability,
plus their planted effect when treated by a campaign that has an effect.
With `effect: heterogeneous` (the default) the effect varies within
personas: the first of `uplift_rules` whose predicate holds on the user's
features at the send date sets it (a "do not disturb" group is put off,
heavy buyers buy anyway, recent discount browsers are persuadable), the
persona's lift otherwise; every user's effect goes to
`raw/ground_truth/user_uplift`. With `effect: persona` every treated user
gets their persona's lift.

Writes the purchases to `raw/simulated/outcome_events` (what `evaluate`
reads on the embedded default) and the planted lift per campaign to
`raw/ground_truth/campaign_lift`, so measured uplift and uplift models can
be checked against the truth.
"""

from __future__ import annotations

from pyspark.sql import functions as F

from shopseg import campaigns as cp
from shopseg import tables as t
from shopseg.pipeline import StageContext, latest


def run(ctx: StageContext) -> None:
    conf = ctx.config.simulate_outcomes
    if not ctx.lakehouse.exists(t.USER_PERSONAS.name):
        raise FileNotFoundError(
            f"simulate_outcomes needs {t.USER_PERSONAS.name}, the plant of synthetic data "
            "(`generate`); on real data outcomes come from silver/events"
        )
    audiences = ctx.read(t.CAMPAIGN_AUDIENCES.name)
    send_date = latest(audiences, "send_date")
    if send_date is None:
        raise ValueError(f"{t.CAMPAIGN_AUDIENCES.name} is empty; run `audiences` first")
    personas = ctx.read(t.USER_PERSONAS.name).select(t.USER_ID, t.PERSONA)
    audience = audiences.filter(F.col("send_date") == F.lit(send_date))
    if conf.effect == "heterogeneous":
        as_of = latest(audience, t.AS_OF_DATE)
        snapshot = ctx.read(t.USER_FEATURES.name).filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
        users = cp.planted_uplift(
            snapshot.join(personas, on=t.USER_ID, how="inner"),
            conf.base_conversion,
            conf.lift,
            conf.uplift_rules,
        ).select(t.USER_ID, t.PERSONA, "uplift_group", "planted_uplift")
        result = ctx.write(
            users.withColumn("send_date", F.lit(send_date)).select(*t.USER_UPLIFT.columns),
            t.USER_UPLIFT.name,
            "overwrite_partitions",
            partition_by=t.USER_UPLIFT.partition_by,
        )
        groups = (
            ctx.read_back(result)
            .filter(F.col("send_date") == F.lit(send_date))
            .groupBy("uplift_group")
            .agg(F.count(F.lit(1)).alias("users"), F.avg("planted_uplift").alias("mean"))
            .collect()
        )
        for g in sorted(groups, key=lambda r: r.uplift_group):
            ctx.log.info("planted group %-16s %7d users, mean effect %+.3f (features of %s)",
                         g.uplift_group, g.users, g.mean, as_of)  # fmt: skip
        audience = audience.join(users, on=t.USER_ID, how="left")
    else:
        audience = audience.join(personas, on=t.USER_ID, how="left")
    events, truth = cp.simulate_outcomes(
        audience,
        send_date,
        conf.seed,
        conf.window_days,
        conf.base_conversion,
        conf.lift,
        conf.order_value,
        conf.no_effect_campaigns,
    )
    ctx.log.info(
        "simulating %d days of outcomes after the %s send (seed %d)",
        conf.window_days,
        send_date,
        conf.seed,
    )
    ctx.write(
        events.withColumn("simulated_for", F.lit(send_date)).select(*t.SIMULATED_OUTCOMES.columns),
        t.SIMULATED_OUTCOMES.name,
        "overwrite_partitions",
        partition_by=t.SIMULATED_OUTCOMES.partition_by,
    )
    ctx.write(
        truth.withColumn("send_date", F.lit(send_date)).select(*t.CAMPAIGN_LIFT.columns),
        t.CAMPAIGN_LIFT.name,
        "overwrite",
    )
