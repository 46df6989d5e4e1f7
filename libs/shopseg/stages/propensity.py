"""Stage `propensity`: silver/events + silver/user_features -> gold/propensity_scores.

`propensity.mode: fit`, per target (`purchase_<h>d`, `churn_<h>d`):

1. Point-in-time rows: the user features of each cut-off, built from the
   events before it by the features stage's own function, labelled from the
   h days after it. The validation cut-off is the latest whose labels end by
   the scored snapshot; the training cut-offs precede it.
2. Every configured classifier and grid point is fitted on the training rows
   and scored on the validation cut-off; the highest AUC-PR wins.
3. Isotonic calibration of the winner, fitted on a hashed share of the
   validation users, measured (Brier, ECE, log loss, before and after) on
   the others; the calibrated `PipelineModel` is registered as
   `<model_prefix>_<target>` with the alias.
4. Baselines on the same validation rows: the RFM score rule and BG/NBD's
   expected transactions (fitted on the purchases before the cut-off).

Then (and in `mode: score`, with the registered champions) the snapshot of
silver/user_features is scored into gold/propensity_scores. When the events
reach past the snapshot by a target's horizon (a back-test, as on CDNOW),
the snapshot's own labels are used to report, never to fit.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import charts, plant, tracking
from shopseg import features as fx
from shopseg import propensity as pr
from shopseg import tables as t
from shopseg.config import PropensityTarget
from shopseg.pipeline import StageContext, latest
from shopseg.spark import checkpointed, concurrently
from shopseg.stages.features import bronze_table

# The snapshot is back-tested when the events cover this share of a target's
# horizon after it (CDNOW's log ends 181 days after 1998-01-01, its target is 182 days).
BACKTEST_COVERAGE = 0.95


class _Snapshots:
    """Point-in-time user features per cut-off, built once and shared by the targets."""

    def __init__(self, ctx: StageContext, events: DataFrame):
        self.ctx, self.events, self.built = ctx, events, {}
        self.users = bronze_table(ctx, t.BRONZE_USERS.name)
        self.categories = ctx.config.features.top_categories or []
        self.items = bronze_table(ctx, t.BRONZE_ITEMS.name) if self.categories else None
        # Targets are trained on threads at once: a cut-off is built by one of them.
        self.lock = threading.Lock()
        self.building: dict[dt.date, threading.Lock] = {}

    def at(self, cutoff: dt.date) -> DataFrame:
        with self.lock:
            building = self.building.setdefault(cutoff, threading.Lock())
        with building:
            return self._build(cutoff)

    def _build(self, cutoff: dt.date) -> DataFrame:
        if cutoff not in self.built:
            conf = self.ctx.config.features
            snapshot = fx.build_user_features(
                self.events,
                self.users,
                self.items,
                cutoff,
                lookback_days=conf.lookback_days,
                categories=self.categories,
                demographics=conf.demographics,
                rfm_rules=conf.rfm.segments,
                no_purchase_segment=conf.rfm.no_purchase_segment,
                quantile_error=conf.rfm.quantile_error,
                orders=t.ORDER_ID in self.events.columns,
            )
            rows = _with_model_columns(self.ctx, self.events, snapshot.features, cutoff)
            self.built[cutoff] = checkpointed(rows)
            snapshot.unpersist()
        return self.built[cutoff]


def _with_model_columns(
    ctx: StageContext, events: DataFrame, snapshot: DataFrame, as_of: dt.date
) -> DataFrame:
    """The snapshot with the columns the stage derives for the models: the purchase
    history's (`shopseg.propensity.purchase_history`, when a feature names one) and BG/NBD's
    (`propensity.bgnbd_feature_days`: fitted on the purchases before `as_of`)."""
    conf = ctx.config.propensity
    if pr.needs_history(conf.features):
        snapshot = pr.with_purchase_history(snapshot, events, as_of)
    if conf.bgnbd_feature_days is None:
        return snapshot
    expected = pr.bgnbd_expected(events, as_of, conf.bgnbd_feature_days, ctx.config.clv.time_unit)
    return pr.with_bgnbd_expected(snapshot, expected)


def _rows(
    snapshots: _Snapshots, events: DataFrame, cutoff: dt.date, target: PropensityTarget
) -> DataFrame:
    outcomes = pr.build_outcomes(events, cutoff, target.horizon_days)
    return pr.build_labelled_rows(snapshots.at(cutoff), outcomes, target)


def _counts(rows: DataFrame) -> tuple[int, float]:
    row = rows.agg(F.count(F.lit(1)).alias("n"), F.sum(pr.LABEL).alias("positives")).first()
    return int(row["n"]), float(row["positives"] or 0.0)


class TooLittleHistory(ValueError):
    """A target's labelled rows lack a class: the events do not cover its cut-offs."""


def _require_both_classes(name: str, what: str, n: int, positives: float) -> None:
    if n == 0 or positives in (0.0, float(n)):
        raise TooLittleHistory(
            f"propensity target {name}: the {what} has {n} rows and {positives:.0f} positives; "
            "both classes are needed (more history before the cut-offs, or other "
            "propensity.cutoff_step_days / training_cutoffs / horizon)"
        )


def _baselines(
    ctx: StageContext,
    events: DataFrame,
    rows: DataFrame,
    cutoff: dt.date,
    target: PropensityTarget,
) -> dict[str, DataFrame]:
    """The validation (or snapshot) rows scored by each baseline, as `score`."""
    out = {"rfm": rows.withColumn(pr.SCORE, pr.rfm_baseline(rows, target))}
    try:
        bg = pr.bgnbd_baseline(
            events, cutoff, target.horizon_days, ctx.config.clv.time_unit, target
        )
    except ValueError as exc:
        ctx.log.warning("%s: %s", target.name, exc)
        return out
    ctx.log.info("%s: BG/NBD baseline fitted on the purchases before %s", target.name, cutoff)
    # Computed once: the metrics and gains below read it four times.
    out["bgnbd"] = checkpointed(
        rows.join(bg, t.USER_ID, "left").withColumn(
            pr.SCORE, F.coalesce(F.col("bgnbd_score"), F.lit(0.0))
        )
    )
    return out


@dataclass
class _Trained:
    """One target's chosen, calibrated model and what the run records of it."""

    target: PropensityTarget
    cuts: pr.Cutoffs
    features: list[str]
    dropped: list[str]
    candidates: list[dict]
    kind: str
    params: dict
    metrics: dict[str, float]
    curves: dict[str, pd.DataFrame]
    reliability: dict[str, pd.DataFrame]
    model: PipelineModel
    importances: dict[str, float]


def _train_or_skip(
    ctx: StageContext,
    snapshots: _Snapshots,
    events: DataFrame,
    target: PropensityTarget,
    scoring_as_of: dt.date,
) -> _Trained | str:
    """The trained target, or why the events cannot train it (a shop with a few months
    of history has no 90-day churn outcomes before its cut-offs)."""
    try:
        return _train_target(ctx, snapshots, events, target, scoring_as_of)
    except TooLittleHistory as exc:
        return str(exc)


def _train_target(
    ctx: StageContext,
    snapshots: _Snapshots,
    events: DataFrame,
    target: PropensityTarget,
    scoring_as_of: dt.date,
) -> _Trained:
    """Rows, candidates, calibration and baselines of one target: Spark work only.

    Nothing here writes to MLflow (its active run belongs to the stage's
    thread), so targets can be trained at once (`propensity.concurrent_targets`).
    """
    conf = ctx.config.propensity
    name = target.name
    cuts = pr.plan_cutoffs(
        scoring_as_of,
        target.horizon_days,
        conf.cutoff_step_days,
        conf.training_cutoffs,
        conf.last_cutoff,
    )
    train = checkpointed(_union([_rows(snapshots, events, c, target) for c in cuts.training]))
    val = checkpointed(_rows(snapshots, events, cuts.validation, target))
    n_train, pos_train = _counts(train)
    n_val, pos_val = _counts(val)
    _require_both_classes(name, f"training rows (cut-offs {list(map(str, cuts.training))})",
                          n_train, pos_train)  # fmt: skip
    _require_both_classes(name, f"validation cut-off {cuts.validation}", n_val, pos_val)
    ctx.log.info(
        "%s: %d training rows (%.1f%% positive) from cut-offs %s; validation %s: %d rows "
        "(%.1f%% positive)",
        name, n_train, 100 * pos_train / n_train, ", ".join(map(str, cuts.training)),
        cuts.validation, n_val, 100 * pos_val / n_val,
    )  # fmt: skip
    features, dropped = pr.usable_features(train, conf.features)
    if dropped:
        ctx.log.warning("%s: features without any value left out: %s", name, dropped)

    prep = pr.fit_preparation(features, train)
    weighted = conf.class_weights == "balanced"
    keep = [pr.WEIGHT] if weighted else []
    rows = pr.class_weights(train, pos_train, n_train) if weighted else train
    train_vectors = checkpointed(pr.prepared(prep, rows, *keep))
    val_vectors = checkpointed(pr.prepared(prep, val, t.USER_ID))
    candidates = []
    fitted_models: dict[int, tuple[Any, DataFrame]] = {}
    for number, spec in enumerate(conf.models):
        for params in pr.search_points(spec, conf.search_trials, conf.search_seed + number):
            fitted = pr.new_classifier(spec.kind, params, conf.seed, len(features), weighted).fit(
                train_vectors
            )
            scored = pr.with_score(fitted.transform(val_vectors))
            metrics = pr.ranking_metrics(scored, pr.SCORE)
            fitted_models[len(candidates)] = (fitted, scored)
            candidates.append({"model": spec.kind, "params": params, **metrics})
            ctx.log.info("%s: %s %s: AP %.4f, AUC-PR %.4f, AUC-ROC %.4f", name, spec.kind,
                         params, metrics["average_precision"], metrics["auc_pr"],
                         metrics["auc_roc"])  # fmt: skip
    scorers = {}
    if conf.serve_baselines:
        for method in pr.BASELINES:
            if method == "bgnbd" and pr.BGNBD_EXPECTED not in val.columns:
                continue
            scorers[len(candidates)] = pr.baseline_scorer(method, target)
            scored = scorers[len(candidates)].transform(val)
            metrics = pr.ranking_metrics(scored, pr.SCORE)
            candidates.append({"model": f"baseline_{method}", "params": {}, **metrics})
            ctx.log.info("%s: baseline %s (%s): AP %.4f, AUC-PR %.4f, AUC-ROC %.4f", name,
                         method, pr.baseline_expression(method, target),
                         metrics["average_precision"], metrics["auc_pr"],
                         metrics["auc_roc"])  # fmt: skip
    chosen = pr.serving_choice(candidates, conf.metric, conf.serve_tie)
    kind, params = candidates[chosen]["model"], candidates[chosen]["params"]
    ranking = {k: candidates[chosen][k] for k in pr.METRICS}
    best = max(candidates, key=lambda c: c[conf.metric])
    others = [c for i, c in enumerate(candidates) if i != chosen]
    runner = max(others, key=lambda c: c[conf.metric]) if others else None
    ctx.log.info(
        "%s: served %s %s, %s on the validation cut-off (%s %.4f; %s)",
        name, kind, params,
        "the best" if best is candidates[chosen] else
        f"the simplest within propensity.serve_tie {conf.serve_tie:g} of the best",
        conf.metric, ranking[conf.metric],
        "no other candidate" if runner is None
        else f"next {runner['model']} {runner[conf.metric]:.4f}",
    )  # fmt: skip
    if chosen in scorers:
        classifier, scorer = None, scorers[chosen]
        scored = checkpointed(scorer.transform(val))
    else:
        classifier, scored = fitted_models[chosen]
        scored = checkpointed(scored)
    train_vectors.unpersist()

    started = time.perf_counter()
    half = pr.calibration_half(conf.calibration_share, conf.seed)
    calibrator = pr.fit_calibrator(scored.filter(half))
    test = calibrator.transform(scored.filter(~half))
    before, reliability_before = pr.probability_metrics(test, pr.SCORE, conf.calibration_bins)
    after, reliability_after = pr.probability_metrics(test, pr.CALIBRATED, conf.calibration_bins)
    gain = pr.gains(scored, pr.SCORE)
    curves = {"model": gain}
    metrics = {
        **ranking,
        **after,
        **{f"{k}_before_calibration": v for k, v in before.items()},
        "lift_at_10pct": pr.lift_at(gain, 0.1),
        "base_rate": pos_val / n_val,
        "training_rows": float(n_train),
        "validation_rows": float(n_val),
        "served_baseline": float(classifier is None),
    }
    calibrated = time.perf_counter()
    measured = {c["model"]: c for c in candidates}
    for method, rows in _baselines(ctx, events, val, cuts.validation, target).items():
        # A baseline served as a candidate was measured on these rows already.
        known = measured.get(f"baseline_{method}")
        base = {k: known[k] for k in pr.METRICS} if known else pr.ranking_metrics(rows, pr.SCORE)
        metrics |= {f"baseline_{method}_{k}": v for k, v in base.items()}
        curves[method] = pr.gains(rows, pr.SCORE)
        metrics[f"baseline_{method}_lift_at_10pct"] = pr.lift_at(curves[method], 0.1)
    bgnbd_ap = metrics.get("baseline_bgnbd_average_precision")
    ctx.log.info(
        "%s: chosen %s %s: AP %.4f (RFM rule %.4f, BG/NBD %s), AUC-ROC %.4f, lift@10%% %.2f; "
        "calibration on %d held-out users: Brier %.4f -> %.4f, ECE %.4f -> %.4f, log loss "
        "%.4f",
        name, kind, params, metrics["average_precision"],
        metrics["baseline_rfm_average_precision"], "-" if bgnbd_ap is None else f"{bgnbd_ap:.4f}",
        metrics["auc_roc"], metrics["lift_at_10pct"], int(reliability_after["users"].sum()),
        before["brier"], after["brier"], before["ece"], after["ece"], after["log_loss"],
    )  # fmt: skip
    ctx.log.info("%s: calibration and its metrics %.1f s, baselines %.1f s", name,
                 calibrated - started, time.perf_counter() - calibrated)  # fmt: skip
    names = [f.name for f in features]
    train.unpersist()
    return _Trained(
        target, cuts, names, dropped, candidates, kind, params, metrics, curves,
        {"model_before": reliability_before, "model_after": reliability_after},
        pr.baseline_model(scorer, calibrator) if classifier is None
        else pr.calibrated_model(prep, classifier, pr.score_extractor(ctx.spark), calibrator),
        {} if classifier is None else pr.feature_importances(classifier, names),
    )  # fmt: skip


def _record_target(ctx: StageContext, trained: _Trained) -> tuple[PipelineModel, str, list[tuple]]:
    """Log a trained target in the stage's run and register its model; its chart rows."""
    conf = ctx.config.propensity
    name, cuts, metrics = trained.target.name, trained.cuts, trained.metrics
    kind, params = trained.kind, trained.params
    ctx.run.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
    ctx.run.log_dict(
        {
            "chosen": {"model": kind, "params": params},
            "validation_cutoff": cuts.validation.isoformat(),
            "training_cutoffs": [c.isoformat() for c in cuts.training],
            "features": trained.features,
            "features_left_out": trained.dropped,
            "candidates": trained.candidates,
            "feature_importances": trained.importances,
        },
        f"{name}/fit.json",
    )
    model = trained.model
    version = tracking.register_spark_model(model, f"{conf.model_prefix}_{name}", conf.alias)
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {
        "target": name,
        "model": kind,
        "params": json.dumps(params),
        "validation_cutoff": cuts.validation.isoformat(),
        "auc_pr": f"{metrics['auc_pr']:.4f}",
        "average_precision": f"{metrics['average_precision']:.4f}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(f"{conf.model_prefix}_{name}", version, key, value)

    chart_rows = [
        (name, cuts.validation, "gain", method, float(r.selected_share), float(r.positive_share),
         None)
        for method, gain in trained.curves.items()
        for r in gain.itertuples()
    ] + [
        (name, cuts.validation, "reliability", method, float(r.predicted), float(r.observed),
         int(r.users))
        for method, table in trained.reliability.items()
        for r in table.itertuples()
    ]  # fmt: skip
    return model, version, chart_rows


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _score(
    model: PipelineModel,
    snapshot: DataFrame,
    target: PropensityTarget,
    version: str,
) -> DataFrame:
    out = model.transform(pr.filter_population(snapshot, target))
    if pr.SCORE not in out.columns:  # a model registered before the score was a stage
        out = pr.with_score(out)
    scored = checkpointed(out.select(t.USER_ID, t.AS_OF_DATE, pr.SCORE, pr.CALIBRATED))
    thresholds = pr.decile_thresholds(scored, pr.SCORE)
    # The uncalibrated score stays beside the contract's columns: it ranks
    # without the ties of the calibration's steps (the back-test reads it).
    return scored.select(
        t.USER_ID,
        t.AS_OF_DATE,
        F.lit(target.name).alias("target"),
        F.col(pr.CALIBRATED).cast("double").alias("probability"),
        pr.decile(F.col(pr.SCORE), thresholds).alias("decile"),
        F.lit(version).alias(t.MODEL_VERSION),
        pr.SCORE,
    )


def _backtest(
    ctx: StageContext,
    events: DataFrame,
    snapshot: DataFrame,
    scores: DataFrame,
    target: PropensityTarget,
    as_of: dt.date,
    covered_days: int,
) -> None:
    """The snapshot's own outcome, where the events cover its horizon: report only."""
    days = min(covered_days, target.horizon_days)
    ctx.log.info(
        "%s: back-test labels from %s to %s (%d of %d days)",
        target.name, as_of, as_of + dt.timedelta(days=days - 1), days, target.horizon_days,
    )  # fmt: skip
    outcomes = pr.build_outcomes(events, as_of, days)
    rows = pr.build_labelled_rows(snapshot, outcomes, target)
    model_rows = rows.join(
        scores.filter(F.col("target") == target.name).select(t.USER_ID, pr.SCORE),
        t.USER_ID,
        "inner",
    )
    metrics = {f"snapshot_{k}": v for k, v in pr.ranking_metrics(model_rows, pr.SCORE).items()}
    metrics["snapshot_label_days"] = float(days)
    for method, scored in _baselines(ctx, events, rows, as_of, target).items():
        base = pr.ranking_metrics(scored, pr.SCORE)
        metrics |= {f"snapshot_baseline_{method}_{k}": v for k, v in base.items()}
    ctx.log.info("%s: back-test on the snapshot %s: %s", target.name, as_of,
                 {k: round(v, 4) for k, v in metrics.items()})  # fmt: skip
    ctx.run.log_metrics({f"{target.name}.{k}": v for k, v in metrics.items()})


def _planted_rank_correlation(
    ctx: StageContext, scores: DataFrame, target: PropensityTarget
) -> None:
    """Synthetic data: Spearman correlation of the purchase probability with the
    persona's planted purchase rate."""
    if target.kind != "purchase" or not ctx.lakehouse.exists(t.USER_PERSONAS.name):
        return
    rates = plant.planted_purchase_rates()
    personas = ctx.read(t.USER_PERSONAS.name)
    rate = F.create_map(*[x for p, r in rates.items() for x in (F.lit(p), F.lit(r))])
    joined = scores.filter(F.col("target") == target.name).join(
        personas.select(t.USER_ID, rate[F.col(t.PERSONA)].alias("planted_rate")),
        t.USER_ID,
        "inner",
    )
    rho = pr.spearman(joined, "probability", "planted_rate")
    ctx.log.info("%s: Spearman correlation with the planted purchase rate %.3f", target.name, rho)
    ctx.run.log_metrics({f"{target.name}.spearman_planted_rate": rho})


def run(ctx: StageContext) -> None:
    conf = ctx.config.propensity
    features = ctx.read(t.USER_FEATURES.name)
    as_of = conf.as_of_date or latest(features, t.AS_OF_DATE)
    if as_of is None:
        raise ValueError(f"{t.USER_FEATURES.name} is empty; run `features` first")
    events = ctx.read(t.SILVER_EVENTS.name)
    snapshot = _with_model_columns(
        ctx, events, features.filter(F.col(t.AS_OF_DATE) == F.lit(as_of)), as_of
    )
    ctx.run.log_params({"as_of_date": as_of.isoformat(), "mode": conf.mode})

    models: dict[str, tuple[PipelineModel, str]] = {}
    chart_rows: list[tuple] = []
    if conf.mode == "fit":
        # Every cut-off's features, labels and BG/NBD baseline read the events:
        # once from the files, then from memory.
        events = events.persist(StorageLevel.MEMORY_AND_DISK)
        snapshots = _Snapshots(ctx, events)
        attempts = concurrently(
            lambda target: _train_or_skip(ctx, snapshots, events, target, as_of),
            conf.targets,
            conf.concurrent_targets,
        )
        trained = [one for one in attempts if isinstance(one, _Trained)]
        skipped = {target.name: why for target, why in zip(conf.targets, attempts, strict=True)
                   if isinstance(why, str)}  # fmt: skip
        if skipped:
            ctx.log.warning(
                "propensity target(s) left out, the events cannot train them: %s",
                "; ".join(skipped.values()),
            )
            ctx.run.log_params({"targets_skipped": sorted(skipped)})
        if not trained:
            raise ValueError(
                "no propensity target could be trained: " + "; ".join(skipped.values())
            )
        targets = [one.target for one in trained]
        for one in trained:
            model, version, rows = _record_target(ctx, one)
            models[one.target.name] = (model, version)
            chart_rows += rows
        for frame in snapshots.built.values():
            frame.unpersist()
    else:
        targets = list(conf.targets)
        for target in targets:
            name = f"{conf.model_prefix}_{target.name}"
            version = tracking.champion_version(name, conf.alias, "propensity")
            models[target.name] = (tracking.load_spark_model(name, alias=conf.alias), version)
            ctx.log.info("scoring with %s@%s (version %s)", name, conf.alias, version)

    scores = _union(
        [
            _score(model, snapshot, target, models[target.name][1])
            for target in targets
            for model in [models[target.name][0]]
        ]
    )
    result = ctx.write(
        scores.select(*t.PROPENSITY_SCORES.columns),
        t.PROPENSITY_SCORES.name,
        "overwrite_partitions",
        partition_by=t.PROPENSITY_SCORES.partition_by,
    )
    written = ctx.read_back(result).filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    if chart_rows:
        evaluation = pd.DataFrame(
            [(as_of, *row) for row in chart_rows], columns=list(t.PROPENSITY_EVAL.columns)
        )
        ctx.run.log_figure(charts.propensity_figure(evaluation), "propensity_charts.png")
        frame = ctx.spark.createDataFrame(
            [(as_of, *row) for row in chart_rows],
            "as_of_date date, target string, cutoff date, curve string, method string, "
            "x double, y double, users int",
        )
        ctx.write(
            frame.select(*t.PROPENSITY_EVAL.columns),
            t.PROPENSITY_EVAL.name,
            "overwrite_partitions",
            partition_by=t.PROPENSITY_EVAL.partition_by,
        )
    last_day = latest(events, t.EVENT_DATE)
    covered = (last_day - as_of).days + 1 if last_day is not None else 0
    for target in targets:
        if covered >= BACKTEST_COVERAGE * target.horizon_days:
            _backtest(ctx, events, snapshot, scores, target, as_of, covered)
        _planted_rank_correlation(ctx, written, target)
    events.unpersist()
