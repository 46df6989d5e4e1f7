"""Stage `uplift`: whom a campaign changes, from a past randomized send -> gold/uplift_scores.

1. Rows: the audience of `uplift.campaign`'s send (treated or held out at
   random by `audiences`), each user's outcome from `evaluate.outcomes_table`
   within `evaluate.window_days` of the send, and the user's features of the
   snapshot the audience was built from (point in time). Or, with
   `uplift.experiment`, an exported randomized experiment (one row per user).
2. A hashed `validation_share` of the rows is held out. Each learner
   (`shopseg.uplift`: T-learner, transformed outcome; MLlib GBT regressions)
   is fitted on the rest and measured on the held-out rows: Qini with a
   bootstrap interval, AUUC, uplift in the top 30%, ATE, uplift by decile.
   The highest Qini wins and is registered as `<model_name>@<alias>`.
3. The latest snapshot of silver/user_features is scored into
   gold/uplift_scores (campaign sends only: an experiment's columns are not
   the shop's features).
4. Synthetic data (raw/ground_truth/user_uplift exists): the correlation of
   predicted and planted uplift, and gold/uplift_targeting, the planted
   incremental conversions of `compare_share` of the users contacted by
   predicted uplift, by purchase propensity, by the rule of
   `compare_campaign` and at random, against the planted optimum.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import campaigns as cp
from shopseg import propensity as pr
from shopseg import segment as sg
from shopseg import tables as t
from shopseg import tracking
from shopseg import uplift as ul
from shopseg.config import SegmentFeature, load_campaigns
from shopseg.pipeline import StageContext, latest
from shopseg.spark import checkpointed
from shopseg.stages.audiences import snapshot_users, with_propensity_deciles

DO_NOT_DISTURB = "do_not_disturb"


def _campaign_rows(ctx: StageContext) -> tuple[DataFrame, dt.date, dt.date]:
    """The randomized send's users: treated, label (converted, or revenue with
    `uplift.outcome: revenue`) and the features of its snapshot."""
    conf, window = ctx.config.uplift, ctx.config.evaluate.window_days
    audiences = ctx.read(t.CAMPAIGN_AUDIENCES.name).filter(F.col("campaign_id") == conf.campaign)
    send_date = conf.send_date or latest(audiences, "send_date")
    if send_date is None:
        raise ValueError(
            f"{t.CAMPAIGN_AUDIENCES.name} has no send of campaign {conf.campaign!r} (uplift."
            "campaign): the uplift stage learns from a randomized send with a large holdout "
            "(conf/campaigns.yaml's uplift_trial); run audiences and its outcomes first"
        )
    audience = audiences.filter(F.col("send_date") == F.lit(send_date))
    as_of = latest(audience, t.AS_OF_DATE)
    if as_of is None:
        raise ValueError(f"campaign {conf.campaign!r} sent nobody on {send_date}")
    outcomes = ctx.read(ctx.config.evaluate.outcomes_table)
    last = latest(outcomes, t.EVENT_TS)
    if last is None or last.date() < send_date + dt.timedelta(days=window - 1):
        ctx.log.warning("%s ends on %s, before the %d-day outcome window of the %s send "
                        "closes: conversions so far only", ctx.config.evaluate.outcomes_table,
                        last, window, send_date)  # fmt: skip
    outcome = "converted" if conf.outcome == "conversion" else "revenue"
    converted = cp.converted_users(outcomes, send_date, window).select(t.USER_ID, outcome)
    features = ctx.read(t.USER_FEATURES.name).filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    rows = (
        audience.select(t.USER_ID, (F.col("variant") == cp.TREATMENT).cast("int").alias(ul.TREATED))
        .join(features.drop(t.AS_OF_DATE), t.USER_ID, "left")
        .join(converted, t.USER_ID, "left")
        .withColumn(ul.LABEL, F.coalesce(F.col(outcome).cast("double"), F.lit(0.0)))
        .drop(outcome)
    )
    return rows, send_date, as_of


def _experiment_rows(ctx: StageContext) -> tuple[DataFrame, list[SegmentFeature], str]:
    """An exported experiment: treated, label, the configured columns, a row key; and
    the outcome's type (binary or numeric)."""
    e = ctx.config.uplift.experiment
    assert e is not None
    options = {"header": "true", "inferSchema": "true"} if e.format == "csv" else {}
    raw = ctx.spark.read.format(e.format).options(**{**options, **e.options}).load(e.path)
    missing = sorted({e.treatment.column, e.outcome, *e.features} - set(raw.columns))
    if missing:
        raise ValueError(
            f"uplift.experiment: {e.path} has no column(s) {missing}; it has {raw.columns}"
        )
    kind = e.outcome_type
    if kind == "auto":
        kind = ul.outcome_type(raw, F.col(e.outcome))
        ctx.log.info("experiment %s: outcome %s read as %s", e.path, e.outcome, kind)
    read = ul.binary if kind == ul.BINARY else ul.numeric
    arm = F.col(e.treatment.column).cast("string")
    rows = raw.select(
        *raw.columns,
        F.when(arm == e.treatment.treated, 1).when(arm == e.treatment.control, 0).alias(ul.TREATED),
        read(F.col(e.outcome)).alias(ul.LABEL),
    )
    kept = rows.filter(F.col(ul.TREATED).isNotNull() & F.col(ul.LABEL).isNotNull())
    counts = rows.agg(
        F.count(F.lit(1)).alias("all"),
        F.sum(F.when(F.col(ul.TREATED).isNull(), 1).otherwise(0)).alias("no_arm"),
        F.sum(F.when(F.col(ul.LABEL).isNull(), 1).otherwise(0)).alias("no_outcome"),
    ).first()
    ctx.log.info("experiment %s: %d rows", e.path, counts["all"])
    if counts["no_arm"] or counts["no_outcome"]:
        ctx.log.warning(
            "experiment %s: %d rows left out with %s neither %r nor %r, %d with %s not %s",
            e.path, counts["no_arm"], e.treatment.column, e.treatment.treated,
            e.treatment.control, counts["no_outcome"], e.outcome,
            "0/1" if kind == ul.BINARY else "a number",
        )  # fmt: skip
    features, categories = ul.experiment_features(kept, e)
    for column, values in categories.items():
        ctx.log.info("experiment column %s: one-hot over %s (+ other)", column, values)
    key = F.col(e.id_column) if e.id_column else F.xxhash64(*[F.col(c) for c in raw.columns])
    return kept.withColumn(t.USER_ID, key.cast("string")), features, kind


def _counts(rows: DataFrame) -> dict[str, float]:
    """Rows, outcome sums and the spread of the outcome per arm."""
    arms = {"treated": F.col(ul.TREATED) == 1, "control": F.col(ul.TREATED) == 0}
    sums = []
    for arm, cond in arms.items():
        y = F.when(cond, F.col(ul.LABEL))
        sums += [
            F.sum(cond.cast("int")).alias(arm),
            F.sum(y).alias(f"{arm}_conversions"),
            F.stddev(y).alias(f"{arm}_spread"),
        ]
    r = rows.agg(*sums).first()
    return {k: float(v or 0) for k, v in r.asDict().items()}


def _require(what: str, counts: dict[str, float], kind: str) -> None:
    for arm in ("treated", "control"):
        n, y = counts[arm], counts[f"{arm}_conversions"]
        if kind == ul.BINARY and (n == 0 or y in (0, n)):
            raise ValueError(
                f"uplift: the {what} have {n:.0f} {arm} rows with {y:.0f} conversions; each "
                "arm needs both outcomes (a larger randomized send or validation_share)"
            )
        if kind == ul.NUMERIC and (n < 2 or counts[f"{arm}_spread"] == 0):
            raise ValueError(
                f"uplift: the {what} have {n:.0f} {arm} rows whose outcome never varies "
                f"(total {y:g}); each arm needs different outcomes (a larger randomized send "
                "or validation_share)"
            )


def _scores(model: PipelineModel, snapshot: DataFrame, campaign: str, version: str) -> DataFrame:
    scored = checkpointed(model.transform(snapshot).select(t.USER_ID, t.AS_OF_DATE, ul.UPLIFT))
    thresholds = pr.decile_thresholds(scored, ul.UPLIFT)
    return scored.select(
        t.USER_ID,
        t.AS_OF_DATE,
        F.lit(campaign).alias("campaign_id"),
        F.col(ul.UPLIFT).cast("double").alias("uplift"),
        pr.decile(F.col(ul.UPLIFT), thresholds).alias("decile"),
        F.lit(version).alias(t.MODEL_VERSION),
    )


def _compare_targeting(
    ctx: StageContext, scores: DataFrame, planted: DataFrame, as_of: dt.date
) -> pd.DataFrame | None:
    """Planted incremental conversions at equal contacts, per targeting method."""
    conf = ctx.config.uplift
    population = scores.select(t.USER_ID, "uplift").join(
        planted.select(t.USER_ID, "planted_uplift", "uplift_group"), t.USER_ID, "inner"
    )
    methods = {"uplift": "uplift"}
    if ctx.lakehouse.exists(t.PROPENSITY_SCORES.name):
        props = ctx.read(t.PROPENSITY_SCORES.name)
        props = props.filter(F.col("target") == conf.compare_propensity)
        props_as_of = latest(props, t.AS_OF_DATE, as_of)
        if props_as_of is not None:
            population = population.join(
                props.filter(F.col(t.AS_OF_DATE) == F.lit(props_as_of)).select(
                    t.USER_ID, F.col("probability").alias("_propensity")
                ),
                t.USER_ID,
                "left",
            )
            methods[f"propensity_{conf.compare_propensity}"] = "_propensity"
    population = checkpointed(population)
    users = population.count()
    n = max(1, round(conf.compare_share * users))
    rule = None
    campaigns_file = ctx.config.audiences.campaigns_file
    if conf.compare_campaign and campaigns_file and ctx.lakehouse.exists(t.USER_SEGMENTS.name):
        found = [c for c in load_campaigns(campaigns_file) if c.id == conf.compare_campaign]
        if not found:
            raise ValueError(
                f"uplift.compare_campaign {conf.compare_campaign!r} is not in {campaigns_file}"
            )
        campaign = found[0]
        if campaign.target.uplift:
            raise ValueError(f"uplift.compare_campaign {campaign.id!r} targets by uplift itself")
        segment_users, seg_as_of = snapshot_users(ctx)
        segment_users, runnable = with_propensity_deciles(ctx, segment_users, seg_as_of, [campaign])
        if not runnable:
            raise ValueError(
                f"uplift.compare_campaign {campaign.id!r} targets by a propensity "
                f"{t.PROPENSITY_SCORES.name} does not score (see the warning above)"
            )
        rule = cp.eligible(segment_users, campaign).select(t.USER_ID)
        size = rule.count()
        if size < n:
            ctx.log.info("the rule of %s selects %d users: every method contacts %d",
                         campaign.id, size, size)  # fmt: skip
            n = size
    if n == 0:
        ctx.log.warning("uplift: no users to compare targeting on")
        return None
    table = ul.compare_targeting(population, n, methods, rule, DO_NOT_DISTURB)
    population.unpersist()
    if rule is not None:
        renamed = f"segment_rule_{conf.compare_campaign}"
        table.loc[table["method"] == "segment_rule", "method"] = renamed
    return table


def _contact_cost(ctx: StageContext) -> float:
    """The cost of one contact: the experiment's, or that of the campaign's channel."""
    conf = ctx.config.uplift
    if conf.experiment is not None:
        return conf.experiment.contact_cost
    campaigns_file = ctx.config.audiences.campaigns_file
    found = [c for c in load_campaigns(campaigns_file) if c.id == conf.campaign] \
        if campaigns_file else []  # fmt: skip
    return conf.contact_cost.get(found[0].channel, 0.0) if found else 0.0


@dataclass
class _Candidate:
    name: str
    learner: str
    params: dict[str, float]
    model: PipelineModel
    evaluation: ul.Evaluation
    scored: DataFrame


def _choose(
    ctx: StageContext,
    val: DataFrame,
    prep: PipelineModel,
    vectors: DataFrame,
    share: float,
    kind: str,
) -> tuple[dict[str, _Candidate], _Candidate]:
    """Every learner at every GBT point, fitted on the training rows and measured on the
    held-out ones; the highest Qini wins."""
    conf = ctx.config.uplift
    points = ul.grid(conf.gbt)
    fixed = {k: v for k, v in points[0].items() if k not in pr.SEARCH_SPACE["gbt"]}
    points += pr.random_points(pr.SEARCH_SPACE["gbt"], conf.search_trials, conf.search_seed,
                               fixed)  # fmt: skip
    candidates: dict[str, _Candidate] = {}
    for params in points:
        models = ul.fit_learners(conf.learners, prep, vectors, share, params, conf.seed)
        for learner, model in models.items():
            name = ul.candidate_name(learner, params, len(points) == 1)
            scored = checkpointed(model.transform(val).select(ul.UPLIFT, ul.TREATED, ul.LABEL))
            ev = ul.evaluate(scored, conf.bootstrap, conf.confidence, conf.seed, kind=kind)
            candidates[name] = _Candidate(name, learner, params, model, ev, scored)
            m = ev.metrics
            ctx.log.info(
                "%s: Qini %.4f [%.4f, %.4f], AUUC %.4f (random %.4f), top-30%% uplift %+.3f, "
                "ATE %+.3f [%+.3f, %+.3f]",
                name, m["qini"], m["qini_low"], m["qini_high"], m["auuc"], m["auuc_random"],
                m["uplift_top_30pct"], m["ate"], m["ate_low"], m["ate_high"],
            )  # fmt: skip
            ctx.run.log_metrics({f"{name}.{k}": v for k, v in m.items()})
    ranked = sorted(candidates.values(), key=lambda c: -c.evaluation.metrics["qini"])
    best = ranked[0]
    for other in ranked[1:]:
        other.scored.unpersist()
    m = best.evaluation.metrics
    if len(ranked) > 1:
        runner = ranked[1].evaluation.metrics
        ctx.log.info(
            "chosen %s: the highest held-out Qini, %.4f against %.4f of %s (%s); its interval "
            "[%.4f, %.4f] %s zero",
            best.name, m["qini"], runner["qini"], ranked[1].name,
            "within the winner's interval, a close call" if runner["qini"] >= m["qini_low"]
            else "outside the winner's interval",
            m["qini_low"], m["qini_high"], "excludes" if m["qini_low"] > 0 else "includes",
        )  # fmt: skip
        ctx.run.log_metrics({"qini_gain_over_runner_up": m["qini"] - runner["qini"]})
    return candidates, best


def run(ctx: StageContext) -> None:
    conf = ctx.config.uplift
    send_date = as_of = None
    if conf.experiment is not None:
        rows, features, kind = _experiment_rows(ctx)
        campaign = f"experiment_{Path(conf.experiment.path.rstrip('/')).stem}"
    else:
        rows, send_date, as_of = _campaign_rows(ctx)
        features, campaign = conf.features, conf.campaign
        kind = ul.BINARY if conf.outcome == "conversion" else ul.NUMERIC
        ctx.log.info("campaign %s sent %s, features of %s, outcome %s", campaign, send_date,
                     as_of, conf.outcome)  # fmt: skip
    rows = checkpointed(rows)
    held = ul.holdout(F.col(t.USER_ID), conf.validation_share, conf.seed)
    train, val = rows.filter(~held), rows.filter(held)
    n_train, n_val = _counts(train), _counts(val)
    _require("training rows", n_train, kind)
    _require("held-out rows", n_val, kind)
    ctx.log.info(
        "%s: %d training rows (%d treated, mean outcome %.4g vs %.4g control), "
        "%d held out (%d treated)",
        campaign, n_train["treated"] + n_train["control"], n_train["treated"],
        n_train["treated_conversions"] / n_train["treated"],
        n_train["control_conversions"] / n_train["control"],
        n_val["treated"] + n_val["control"], n_val["treated"],
    )  # fmt: skip
    features, dropped = pr.usable_features(train, features)
    if dropped:
        ctx.log.warning("uplift: features without any value left out: %s", dropped)
    ctx.run.log_params(
        {
            "campaign": campaign,
            "send_date": str(send_date),
            "outcome_type": kind,
            "features": [f.name for f in features],
            "learners": conf.learners,
            "gbt": conf.gbt,
        }  # fmt: skip
    )
    prep = pr.fit_preparation(features, train)
    vectors = checkpointed(prep.transform(train).select(sg.SCALED, ul.TREATED, ul.LABEL))
    share = n_train["treated"] / (n_train["treated"] + n_train["control"])
    evaluations, best = _choose(ctx, val, prep, vectors, share, kind)
    vectors.unpersist()
    learner, ev, model = best.name, best.evaluation, best.model
    per_unit = conf.conversion_value if kind == ul.BINARY else conf.margin
    cost = _contact_cost(ctx)
    gain = ul.expected_gain(F.col(ul.UPLIFT), kind, F.lit(conf.conversion_value), conf.margin,
                            cost)  # fmt: skip
    targeting = ul.gain_targeting(best.scored, gain, per_unit, cost)
    best.scored.unpersist()
    ctx.log.info(
        "held out: contacting the %.1f%% with a positive expected gain (uplift x %g - %g) "
        "earns %.4g per held-out user, estimated from the arms; contacting everyone %.4g",
        100 * targeting["expected_gain_share"], per_unit, cost,
        targeting["expected_gain_value_per_user"], targeting["everyone_value_per_user"],
    )  # fmt: skip
    ctx.run.log_metrics({**ev.metrics, **{f"targeting.{k}": v for k, v in targeting.items()}})
    ctx.run.log_frame(ev.deciles, "uplift_deciles.csv")
    for r in ev.deciles.itertuples():
        ctx.log.info("decile %2d: %5d users, treated %.4g vs control %.4g, uplift %+.4g "
                     "[%+.4g, %+.4g]", r.decile, r.users, r.treated_rate, r.control_rate,
                     r.uplift, r.low, r.high)  # fmt: skip
    if conf.refit:
        every = checkpointed(prep.transform(rows).select(sg.SCALED, ul.TREATED, ul.LABEL))
        n_all = _counts(rows)
        share_all = n_all["treated"] / (n_all["treated"] + n_all["control"])
        model = ul.fit(best.learner, prep, every, share_all, best.params, conf.seed)
        every.unpersist()
        ctx.log.info("%s refitted on all %d rows", learner, n_all["treated"] + n_all["control"])
    version = tracking.register_spark_model(model, conf.model_name, conf.alias)
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {"learner": best.learner, "candidate": learner, "campaign": campaign,
            "outcome_type": kind, "qini": f"{ev.metrics['qini']:.5f}"}  # fmt: skip
    for key, value in tags.items():
        client.set_model_version_tag(conf.model_name, version, key, value)
    ctx.log.info("chosen %s (Qini %.4f), registered %s version %s", learner, ev.metrics["qini"],
                 conf.model_name, version)  # fmt: skip

    eval_date = as_of or dt.date.today()
    curve_rows = [
        (eval_date, campaign, "qini", name, float(x), float(y), None, None, None)
        for name, c in evaluations.items()
        for x, y in zip(c.evaluation.curve.x, c.evaluation.curve.qini, strict=True)
    ] + [
        (eval_date, campaign, "decile", learner, float(r.decile), float(r.uplift), float(r.low),
         float(r.high), int(r.users))
        for r in ev.deciles.itertuples()
    ]  # fmt: skip
    ctx.write(
        ctx.spark.createDataFrame(
            curve_rows,
            "as_of_date date, campaign_id string, curve string, method string, x double, "
            "y double, low double, high double, users int",
        ),
        t.UPLIFT_EVAL.name,
        "overwrite_partitions",
        partition_by=t.UPLIFT_EVAL.partition_by,
    )
    rows.unpersist()
    if conf.experiment is not None:
        ctx.log.info("an experiment's columns are not silver/user_features: no scores written")
        return

    features_table = ctx.read(t.USER_FEATURES.name)
    scored_as_of = latest(features_table, t.AS_OF_DATE)
    snapshot = features_table.filter(F.col(t.AS_OF_DATE) == F.lit(scored_as_of))
    result = ctx.write(
        _scores(model, snapshot, campaign, version).select(*t.UPLIFT_SCORES.columns),
        t.UPLIFT_SCORES.name,
        "overwrite_partitions",
        partition_by=t.UPLIFT_SCORES.partition_by,
    )
    scores = ctx.read_back(result).filter(F.col(t.AS_OF_DATE) == F.lit(scored_as_of))
    if not ctx.lakehouse.exists(t.USER_UPLIFT.name):
        return
    planted = ctx.read(t.USER_UPLIFT.name).filter(F.col("send_date") == F.lit(send_date))
    joined = scores.join(planted, t.USER_ID, "inner")
    rho = joined.agg(F.corr("uplift", "planted_uplift")).first()[0]
    if rho is None:
        ctx.log.warning("no planted uplift for the %s send: not compared", send_date)
        return
    ctx.log.info("correlation of predicted and planted uplift: %.3f", rho)
    ctx.run.log_metrics({"planted_correlation": float(rho)})
    by_group = (
        joined.groupBy("uplift_group")
        .agg(F.avg("uplift").alias("predicted"), F.avg("planted_uplift").alias("planted"))
        .toPandas()
    )
    ctx.run.log_frame(by_group, "uplift_by_planted_group.csv")
    table = _compare_targeting(ctx, scores, planted, scored_as_of)
    if table is None:
        return
    ctx.run.log_frame(table, "targeting_comparison.csv")
    for r in table.itertuples():
        ctx.log.info("targeting %-32s %6d contacts: %8.1f incremental conversions (%.0f%% of "
                     "the planted optimum), %d do-not-disturb contacted", r.method, r.contacts,
                     r.incremental_conversions, 100 * r.share_of_optimum,
                     r.do_not_disturb_contacts)  # fmt: skip
        ctx.run.log_metrics({f"targeting.{r.method}": r.incremental_conversions})
    ctx.write(
        ctx.spark.createDataFrame(
            table.assign(as_of_date=scored_as_of, campaign_id=campaign)
        ).select(*t.UPLIFT_TARGETING.columns),
        t.UPLIFT_TARGETING.name,
        "overwrite_partitions",
        partition_by=t.UPLIFT_TARGETING.partition_by,
    )
