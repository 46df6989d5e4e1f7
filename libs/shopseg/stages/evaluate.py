"""Stage `evaluate`: the measured uplift of each campaign, per segment, with intervals.

For one send date (default the latest), outcome purchases within
`evaluate.window_days` of the send are counted for the treated and the
control users of each campaign: conversion (share of users with a
purchase) and revenue per user, their difference (treatment minus control)
and a normal-approximation interval at `evaluate.confidence` (for revenue
with Welch's unequal variances). Per segment and over all of a campaign's
users (`(all)`), into `gold/campaign_results` and MLflow; segments with fewer
than `privacy.min_group_size` treated or control users are pooled into
`(smaller segments)`, and a cell still that small is not shown.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import functions as F
from scipy.stats import norm

from shopseg import campaigns as cp
from shopseg import tables as t
from shopseg.pipeline import StageContext, latest


@dataclass(frozen=True)
class Sums:
    """One variant's outcome sums in a cell (campaign x segment); they add up."""

    users: int
    converters: int
    revenue: float
    revenue_sq: float

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.users + other.users,
            self.converters + other.converters,
            self.revenue + other.revenue,
            self.revenue_sq + other.revenue_sq,
        )


def suppress_small_cells(
    ctx: StageContext, cells: dict[tuple[str, str], dict[str, Sums]], min_group: int
) -> dict[tuple[str, str], dict[str, Sums]]:
    """No cell with fewer than `min_group` treated or control users: a campaign's
    small segments are pooled into `(smaller segments)`, which is left out, like
    a campaign's `(all)`, if it is still too small. Logged with what was left out."""

    def small(variants: dict[str, Sums]) -> bool:
        return any(variants.get(v, Sums(0, 0, 0, 0)).users < min_group
                   for v in (cp.TREATMENT, cp.CONTROL))  # fmt: skip

    out: dict[tuple[str, str], dict[str, Sums]] = {}
    pooled: dict[str, dict[str, Sums]] = {}
    for (campaign_id, segment), variants in cells.items():
        if segment == cp.ALL_SEGMENTS or not small(variants):
            out[(campaign_id, segment)] = variants
            continue
        into = pooled.setdefault(campaign_id, {})
        for variant, sums in variants.items():
            into[variant] = into[variant] + sums if variant in into else sums
        ctx.log.info("%s / %s: fewer than %d treated or control users (privacy."
                     "min_group_size): pooled into %s", campaign_id, segment, min_group,
                     cp.SMALL_SEGMENTS)  # fmt: skip
    for campaign_id, variants in pooled.items():
        out[(campaign_id, cp.SMALL_SEGMENTS)] = variants
    kept = {}
    for key, variants in out.items():
        if small(variants):
            ctx.log.warning("%s / %s: fewer than %d treated or control users: not shown "
                            "(privacy.min_group_size)", *key, min_group)  # fmt: skip
        else:
            kept[key] = variants
    ctx.run.log_metrics({"cells_suppressed": len(out) - len(kept),
                         "segments_pooled": sum(1 for k in cells if k not in out)})  # fmt: skip
    return kept


def run(ctx: StageContext) -> None:
    conf = ctx.config.evaluate
    audiences = ctx.read(t.CAMPAIGN_AUDIENCES.name)
    send_date = conf.send_date or latest(audiences, "send_date")
    if send_date is None:
        raise ValueError(f"{t.CAMPAIGN_AUDIENCES.name} is empty; run `audiences` first")
    audience = audiences.filter(F.col("send_date") == F.lit(send_date))
    outcomes = ctx.read(conf.outcomes_table)
    last = latest(outcomes, t.EVENT_TS)
    end = send_date + dt.timedelta(days=conf.window_days)
    if last is None or last.date() < end - dt.timedelta(days=1):
        ctx.log.warning(
            "%s ends on %s, before the %d-day window after the %s send closes (%s): "
            "the uplift counts only the outcomes so far",
            conf.outcomes_table,
            last,
            conf.window_days,
            send_date,
            end,
        )
    sums = cp.outcome_sums(audience, outcomes, send_date, conf.window_days).collect()
    z = float(norm.ppf(0.5 + conf.confidence / 2))
    cells: dict[tuple[str, str], dict[str, Sums]] = {}
    for r in sums:
        cells.setdefault((r.campaign_id, r.segment_name), {})[r.variant] = Sums(
            r.users, r.converters, r.revenue, r.revenue_sq
        )
    cells = suppress_small_cells(ctx, cells, ctx.config.privacy.min_group_size)
    rows = []
    for (campaign_id, segment), variants in sorted(cells.items()):
        treated, control = variants[cp.TREATMENT], variants[cp.CONTROL]
        p_t, p_c, diff, low, high = cp.uplift(
            treated.users, treated.converters, control.users, control.converters, z
        )
        r_t, r_c, rdiff, rlow, rhigh = cp.mean_difference(
            treated.users, treated.revenue, treated.revenue_sq,
            control.users, control.revenue, control.revenue_sq, z,
        )  # fmt: skip
        rows.append(
            (send_date, campaign_id, segment, treated.users, control.users, p_t, p_c, diff,
             low, high, r_t, r_c, rdiff, rlow, rhigh, conf.window_days, conf.confidence)
        )  # fmt: skip
        if segment == cp.ALL_SEGMENTS:
            ctx.log.info(
                "%s: conversion %.2f%% treated vs %.2f%% control, uplift %+.2f points "
                "[%+.2f, %+.2f]; revenue per user %+.2f [%+.2f, %+.2f]",
                campaign_id, 100 * p_t, 100 * p_c, 100 * diff, 100 * low, 100 * high,
                rdiff, rlow, rhigh,
            )  # fmt: skip
            ctx.run.log_metrics(
                {
                    f"uplift.{campaign_id}": diff,
                    f"uplift_low.{campaign_id}": low,
                    f"uplift_high.{campaign_id}": high,
                    f"revenue_uplift.{campaign_id}": rdiff,
                    f"treated_conversion.{campaign_id}": p_t,
                    f"control_conversion.{campaign_id}": p_c,
                }
            )
    schema = ", ".join(
        f"{name} {kind}"
        for name, kind in zip(
            t.CAMPAIGN_RESULTS.columns,
            ["date", "string", "string", "long", "long"] + ["double"] * 10 + ["int", "double"],
            strict=True,
        )
    )
    ctx.write(
        ctx.spark.createDataFrame(rows, schema),
        t.CAMPAIGN_RESULTS.name,
        "overwrite_partitions",
        partition_by=t.CAMPAIGN_RESULTS.partition_by,
    )
