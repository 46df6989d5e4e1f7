"""Stage `audiences`: campaigns (conf/campaigns.yaml) -> gold/campaign_audiences, exports.

1. The users of the latest segment snapshot, with their features (for the
   targets' RFM segments and predicates) and first recommended items.
2. Per campaign, the targeted users minus the exclusions (treated by any
   campaign within `contacted_within_days`; opted out); each user joins the
   eligible campaign with the highest priority; `max_audience` caps it.
3. Treatment or control by a salted hash (`shopseg.campaigns`).
4. `gold/campaign_audiences` gets the send date's rows (a rerun replaces
   them); each campaign's treated users go to `exports/<send_date>/<id>/`
   as CSV and Parquet, unless fewer than `privacy.min_group_size`.

`--dry-run` (`audiences.dry_run`) prints the counts and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from shopseg import campaigns as cp
from shopseg import files
from shopseg import tables as t
from shopseg import uplift as ul
from shopseg.config import CampaignConf, ConfigError, load_campaigns, local_dir
from shopseg.pipeline import StageContext, latest


def snapshot_users(ctx: StageContext) -> tuple[DataFrame, object]:
    """The users of the latest segment snapshot with their features, and its date."""
    segments = ctx.read(t.USER_SEGMENTS.name)
    as_of = latest(segments, t.AS_OF_DATE)
    if as_of is None:
        raise ValueError(f"{t.USER_SEGMENTS.name} is empty; run `segment` first")
    segments = segments.filter(F.col(t.AS_OF_DATE) == F.lit(as_of)).select(
        t.USER_ID, t.SEGMENT_NAME, t.AS_OF_DATE
    )
    features = ctx.read(t.USER_FEATURES.name).filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    users = segments.join(features.drop(t.AS_OF_DATE), on=t.USER_ID, how="left")
    return users.join(profiles(ctx, users.columns), on=t.USER_ID, how="left"), as_of


def profiles(ctx: StageContext, known: list[str]) -> DataFrame:
    """The latest profile of each user as bronze/users holds it, the columns the
    features lack (a consent flag such as `marketing_opt_in`, for `opted_out`),
    no identifier among them (dropped or hashed at bronze, left out here too)."""
    if not ctx.lakehouse.exists(t.BRONZE_USERS.name):
        return ctx.spark.createDataFrame([], f"{t.USER_ID} long")
    bronze = ctx.read(t.BRONZE_USERS.name)
    hidden = {*known, *t.DIRECT_IDENTIFIERS, *ctx.config.privacy.identifiers, *t.BRONZE_METADATA}
    extra = [c for c in bronze.columns if c not in hidden]
    return bronze.select(t.USER_ID, *extra).dropDuplicates([t.USER_ID])


def with_propensity_deciles(
    ctx: StageContext, users: DataFrame, as_of: object, campaigns: list[CampaignConf]
) -> tuple[DataFrame, list[CampaignConf]]:
    """The users with their decile of each propensity target a campaign conditions on,
    and the campaigns that can run.

    A campaign whose target the scores lack (the propensity stage leaves out a
    target the events cannot train, such as 90-day churn on a few months of
    history) is left out with a warning.
    """
    wanted = sorted({c.target.propensity.target for c in campaigns if c.target.propensity})
    if not wanted:
        return users, campaigns
    needing = [c.id for c in campaigns if c.target.propensity]
    if not ctx.lakehouse.exists(t.PROPENSITY_SCORES.name):
        raise ValueError(
            f"campaign(s) {needing} target by propensity but {t.PROPENSITY_SCORES.name} does "
            "not exist; run the propensity stage first"
        )
    scores = ctx.read(t.PROPENSITY_SCORES.name)
    scored_as_of = latest(scores, t.AS_OF_DATE, as_of)
    if scored_as_of is None:
        raise ValueError(
            f"{t.PROPENSITY_SCORES.name} has no snapshot up to the segments' {as_of}; "
            "run the propensity stage on it"
        )
    scores = scores.filter(F.col(t.AS_OF_DATE) == F.lit(scored_as_of))
    present = {r["target"] for r in scores.select("target").distinct().collect()}
    missing = [name for name in wanted if name not in present]
    if missing:
        left_out = [c.id for c in campaigns if c.target.propensity
                    and c.target.propensity.target in missing]  # fmt: skip
        ctx.log.warning(
            "campaign(s) %s target by propensity %s, which %s (%s) does not score (it has "
            "%s; see the propensity stage's log): left out of this send",
            left_out, missing, t.PROPENSITY_SCORES.name, scored_as_of, sorted(present),
        )  # fmt: skip
        campaigns = [c for c in campaigns if c.id not in left_out]
        wanted = [name for name in wanted if name in present]
    ctx.log.info("propensity deciles of %s from the scores of %s", wanted, scored_as_of)
    for name in wanted:
        deciles = scores.filter(F.col("target") == name).select(
            t.USER_ID, F.col("decile").alias(cp.decile_column(name))
        )
        users = users.join(deciles, on=t.USER_ID, how="left")
    return users, campaigns


def with_uplift_picks(
    ctx: StageContext,
    users: DataFrame,
    send_date: dt.date,
    campaigns: list[CampaignConf],
) -> tuple[DataFrame, list[CampaignConf]]:
    """The users with `uplift_pick_<campaign>` for each campaign targeting by uplift,
    and the campaigns that can run.

    Gain of a contact = predicted uplift x value of a conversion - the cost of a
    contact on the campaign's channel. The scores are the latest from before the
    send date: the uplift stage runs after `audiences` (it learns from a send's
    outcomes), so a rerun of the same send gives the same audiences. A campaign
    without such scores (the first send) is left out with a warning.
    """
    wanted = [c for c in campaigns if c.target.uplift]
    if not wanted:
        return users, campaigns
    conf = ctx.config.uplift
    scores = ctx.read(t.UPLIFT_SCORES.name) if ctx.lakehouse.exists(t.UPLIFT_SCORES.name) else None
    if scores is not None:
        scores = scores.filter(F.col(t.AS_OF_DATE) < F.lit(send_date))
    scored_as_of = latest(scores, t.AS_OF_DATE) if scores is not None else None
    if scored_as_of is None:
        ctx.log.warning(
            "campaign(s) %s target by uplift but %s has no scores from before the %s send: "
            "left out of it (the uplift stage learns from a randomized send's outcomes)",
            [c.id for c in wanted], t.UPLIFT_SCORES.name, send_date,
        )  # fmt: skip
        return users, [c for c in campaigns if not c.target.uplift]
    scores = scores.filter(F.col(t.AS_OF_DATE) == F.lit(scored_as_of))
    present = sorted(r["campaign_id"] for r in scores.select("campaign_id").distinct().collect())
    value = F.lit(conf.conversion_value)
    # A revenue uplift is valued by its margin, a conversion uplift by a conversion's value.
    kind = ul.BINARY if conf.outcome == "conversion" else ul.NUMERIC
    if kind == ul.BINARY and conf.value_from_clv and ctx.lakehouse.exists(t.CUSTOMER_VALUE.name):
        values = ctx.read(t.CUSTOMER_VALUE.name)
        values = values.filter(
            F.col(t.AS_OF_DATE) == F.lit(latest(values, t.AS_OF_DATE, send_date))
        ).select(t.USER_ID, F.col("expected_mean_value").alias("_value"))
        scores = scores.join(values, on=t.USER_ID, how="left")
        value = F.coalesce(F.col("_value"), value)
    for campaign in wanted:
        cond = campaign.target.uplift
        source = cond.campaign or (present[0] if len(present) == 1 else None)
        if source not in present:
            raise ValueError(
                f"campaign {campaign.id} targets by the uplift of {cond.campaign!r}; "
                f"{t.UPLIFT_SCORES.name} ({scored_as_of}) scores {present}"
            )
        cost = conf.contact_cost.get(campaign.channel, 0.0)
        gains = scores.filter(F.col("campaign_id") == source).select(
            t.USER_ID,
            ul.expected_gain(F.col("uplift"), kind, value, conf.margin, cost).alias("_gain"),
        )
        pick = F.lit(True)
        if cond.min_gain is not None:
            pick = pick & (F.col("_gain") >= F.lit(cond.min_gain))
        if cond.top_share is not None and cond.top_share < 1:
            [threshold] = gains.approxQuantile("_gain", [1 - cond.top_share], 0.001)
            pick = pick & (F.col("_gain") >= F.lit(threshold))
        picked = gains.select(t.USER_ID, pick.alias(cp.uplift_pick_column(campaign.id)))
        ctx.log.info("campaign %s: uplift of %s (scores of %s), contact cost %.2f on %s",
                     campaign.id, source, scored_as_of, cost, campaign.channel)  # fmt: skip
        users = users.join(picked, on=t.USER_ID, how="left")
    return users, campaigns


def _recommendations(ctx: StageContext, as_of: object) -> DataFrame | None:
    if not ctx.lakehouse.exists(t.RECOMMENDATIONS.name):
        ctx.log.warning("no %s: audience rows carry no recommended items", t.RECOMMENDATIONS.name)
        return None
    recs = ctx.read(t.RECOMMENDATIONS.name)
    recs_as_of = latest(recs, t.AS_OF_DATE, as_of)
    if recs_as_of is None:
        return None
    return recs.filter(F.col(t.AS_OF_DATE) == F.lit(recs_as_of))


# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_START = "^[=+\\-@\t\r]"


def csv_safe(column: Column) -> Column:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a
    leading apostrophe (OWASP's advice against CSV injection)."""
    return F.when(column.rlike(FORMULA_START), F.concat(F.lit("'"), column)).otherwise(column)


def _export(
    ctx: StageContext,
    campaigns: list[CampaignConf],
    audience: DataFrame,
    send_date: object,
    counts: dict[tuple[str, str], int],
) -> None:
    """Each campaign's treated users, without direct identifiers, as CSV and Parquet.

    The send date's folder is built aside and put in place whole
    (`files.publish_folder`): a campaign below `privacy.min_group_size`, or no
    longer configured, leaves nothing of an earlier run's export behind.
    `manifest.json` (campaign, rows, files with bytes and SHA-256) is written
    last: a consumer that finds it finds every file it lists.
    """
    conf = ctx.config
    base = f"{ctx.lakehouse.root}/exports/{send_date}"
    staged = f"{ctx.lakehouse.root}/exports/.staging-{send_date}-{uuid.uuid4().hex[:8]}"
    columns = [t.USER_ID, "campaign_id", "offer", "channel", "recommended_items"]
    exported: dict[str, int] = {}
    for campaign in campaigns:
        treated = counts.get((campaign.id, cp.TREATMENT), 0)
        if treated < conf.privacy.min_group_size:
            ctx.log.warning(
                "campaign %s: %d treated users, fewer than privacy.min_group_size %d: not exported",
                campaign.id,
                treated,
                conf.privacy.min_group_size,
            )
            continue
        rows = audience.filter(
            (F.col("campaign_id") == campaign.id) & (F.col("variant") == cp.TREATMENT)
        ).select(*columns)
        target = f"{staged}/{campaign.id}"
        rows.coalesce(1).write.parquet(f"{target}/parquet")
        flat = rows.withColumn("recommended_items", F.array_join("recommended_items", "|"))
        flat = flat.select(
            t.USER_ID, *[csv_safe(F.col(c)).alias(c) for c in columns if c != t.USER_ID]
        )
        # RFC 4180 quoting (a quote doubled), as spreadsheets read it; Spark's
        # default escapes with a backslash.
        options = {"header": "true", "escape": '"'}
        flat.coalesce(1).write.options(**options).csv(f"{target}/csv")
        exported[campaign.id] = treated
    if not exported:
        files.delete_folder(base)
        ctx.log.info("no campaign exported for %s; %s holds nothing", send_date, base)
        return
    files.publish_folder(staged, base)
    inventory = [f for f in files.file_inventory(base) if not f[0].endswith(".crc")]
    manifest = {
        "send_date": str(send_date),
        "campaigns": [
            {
                "campaign_id": cid,
                "rows": rows,
                "files": [
                    {"path": path, "bytes": size, "checksum": digest}
                    for path, size, digest in inventory
                    if path.startswith(f"{cid}/")
                ],
            }
            for cid, rows in exported.items()
        ],
    }
    files.write_text(f"{base}/manifest.json", json.dumps(manifest, indent=2) + "\n")
    for cid, treated in exported.items():
        ctx.record_files(f"exports/{send_date}/{cid}", "CSV + Parquet", treated)
        where = local_dir(f"{base}/{cid}") or f"{base}/{cid}"
        ctx.log.info("campaign %s: %d treated users exported to %s", cid, treated, where)


def check_consent(users: DataFrame, campaigns: list[CampaignConf]) -> None:
    """Every `opted_out` predicate can be evaluated over the users: a consent column
    the data lack stops the send instead of contacting everyone."""
    for campaign in campaigns:
        if not campaign.exclude.opted_out:
            continue
        try:
            users.select(F.expr(campaign.exclude.opted_out)).schema  # noqa: B018 - analysis
        except AnalysisException as exc:
            raise ConfigError(
                f"campaign {campaign.id}: exclude.opted_out ({campaign.exclude.opted_out!r}) "
                f"cannot be evaluated over the users' features and profiles: "
                f"{str(exc).splitlines()[0]}. Ingest the consent column with the users, or "
                "remove opted_out if the shop holds no consent data"
            ) from None


def log_consent(ctx: StageContext, users: DataFrame, campaign: CampaignConf) -> int:
    """How many of the users a campaign targets its `opted_out` predicate leaves
    out (opted out, or unknown: null, which counts as out), logged; returns the
    targeted users left, in the same one job."""
    predicate = F.expr(campaign.exclude.opted_out)
    row = (
        cp.eligible(users, campaign, consent=False)
        .agg(
            F.count_if(predicate).alias("out"),
            F.count_if(predicate.isNull()).alias("unknown"),
            F.count("*").alias("targeted"),
        )
        .first()
    )
    ctx.log.info(
        "campaign %s: %d of %d targeted users left out by opted_out (%s): %d opted out, "
        "%d with no consent on record (unknown counts as out)",
        campaign.id, row.out + row.unknown, row.targeted, campaign.exclude.opted_out,
        row.out, row.unknown,
    )  # fmt: skip
    ctx.run.log_metrics(
        {f"opted_out.{campaign.id}": row.out, f"consent_unknown.{campaign.id}": row.unknown}
    )
    return row.targeted - row.out - row.unknown


def run(ctx: StageContext) -> None:
    conf = ctx.config.audiences
    if conf.campaigns_file is None:
        raise ConfigError("audiences.campaigns_file is not set (for example campaigns.yaml)")
    campaigns = load_campaigns(conf.campaigns_file)
    ctx.log.info("%d campaigns from %s", len(campaigns), conf.campaigns_file)
    users, as_of = snapshot_users(ctx)
    send_date = conf.send_date or as_of
    check_consent(users, campaigns)
    users, campaigns = with_propensity_deciles(ctx, users, as_of, campaigns)
    users, campaigns = with_uplift_picks(ctx, users, send_date, campaigns)
    users = users.cache()
    history = (
        ctx.read(t.CAMPAIGN_AUDIENCES.name)
        if ctx.lakehouse.exists(t.CAMPAIGN_AUDIENCES.name)
        else None
    )
    assigned = cp.assign(users, campaigns, history, send_date, conf.salt).cache()
    counts = {
        (r.campaign_id, r.variant): r["count"]
        for r in assigned.groupBy("campaign_id", "variant").count().collect()
    }
    lines = [f"audiences for {send_date} (segments of {as_of}):"]
    for campaign in campaigns:
        if campaign.exclude.opted_out:
            targeted = log_consent(ctx, users, campaign)
        else:
            targeted = cp.eligible(users, campaign).count()
        treated = counts.get((campaign.id, cp.TREATMENT), 0)
        control = counts.get((campaign.id, cp.CONTROL), 0)
        share = control / (treated + control) if treated + control else 0.0
        lines.append(
            f"  {campaign.id:<20} targeted {targeted:>8,}  audience {treated + control:>8,}  "
            f"treated {treated:>8,}  control {control:>7,} ({share:.1%}, holdout "
            f"{campaign.holdout:.0%})"
        )
        ctx.run.log_metrics(
            {
                f"targeted.{campaign.id}": targeted,
                f"treated.{campaign.id}": treated,
                f"control.{campaign.id}": control,
                f"control_share.{campaign.id}": share,
            }
        )
    for line in lines:
        ctx.log.info(line)
    if conf.dry_run:
        print("\n".join(["dry run: nothing written", *lines]))
        return

    by_id = {c.id: c for c in campaigns}
    details = ctx.spark.createDataFrame(
        [(c.id, c.name, c.offer, c.channel) for c in by_id.values()],
        "campaign_id string, campaign_name string, offer string, channel string",
    )
    items = cp.top_items(_recommendations(ctx, as_of), conf.recommended_items)
    audience = assigned.join(F.broadcast(details), on="campaign_id").join(
        users.select(t.USER_ID, t.SEGMENT_NAME, t.AS_OF_DATE), on=t.USER_ID
    )
    if items is not None:
        audience = audience.join(items, on=t.USER_ID, how="left")
    else:
        audience = audience.withColumn("recommended_items", F.lit(None))
    audience = audience.withColumn(
        "recommended_items",
        F.coalesce(F.col("recommended_items"), F.array().cast("array<string>")),
    ).withColumn("send_date", F.lit(send_date))
    result = ctx.write(
        audience.select(*t.CAMPAIGN_AUDIENCES.columns),
        t.CAMPAIGN_AUDIENCES.name,
        "overwrite_partitions",
        partition_by=t.CAMPAIGN_AUDIENCES.partition_by,
    )
    written = ctx.read_back(result).filter(F.col("send_date") == F.lit(send_date))
    _export(ctx, campaigns, written, send_date, counts)
