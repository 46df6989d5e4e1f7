"""Stage `simulate_outcomes` (synthetic data): purchases after a campaign send, known lift.

For the latest send date in `gold/campaign_audiences`, each audience member
buys within `window_days` with their planted persona's base probability,
plus the persona's lift when treated by a campaign that has an effect.
Writes the purchases to `raw/simulated/outcome_events` (what `evaluate`
reads on the embedded default) and the planted lift per campaign to
`raw/ground_truth/campaign_lift`, so the measured uplift can be checked
against the truth.
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
    audience = audiences.filter(F.col("send_date") == F.lit(send_date)).join(
        personas, on=t.USER_ID, how="left"
    )
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
