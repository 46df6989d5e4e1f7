"""Propensity: who will buy and who will churn, from point-in-time rows.

Pure functions over DataFrames and plain values; the stage
(`shopseg.stages.propensity`) reads the tables, calls these and writes gold.

Rows are point-in-time: the features of a cut-off are built from the events
dated before it (`features.build_user_features`), its label from the events
in the `horizon_days` from it, [cut-off, cut-off + horizon). Training rows
stack several cut-offs; the model is chosen on the latest labelled cut-off
(out of time), never on a random split of users.

The registered model is one Spark ML `PipelineModel`:

    SQLTransformer (feature expressions, log1p of skewed ones)
      -> Imputer (median) -> VectorAssembler -> StandardScaler
      -> LogisticRegression | RandomForestClassifier | GBTClassifier
      -> IsotonicRegression on P(positive) (`calibrated_probability`)

(the feature preparation is the segment stage's, `segment.build_prep_pipeline`).
Ranking (deciles, AUC, gains) reads the classifier's probability, which the
monotone calibration keeps in order but turns into steps with ties.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import (
    GBTClassifier,
    LogisticRegression,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import IsotonicRegression, IsotonicRegressionModel
from pyspark.ml.stat import Correlation
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shopseg import clv
from shopseg import segment as sg
from shopseg import tables as t
from shopseg.config import PropensityModel, PropensityTarget, SegmentFeature

LABEL = "label"
PROBABILITY = "probability"  # the classifier's output vector
SCORE = "score"  # P(positive) before calibration: what ranks users
CALIBRATED = "calibrated_probability"
PURCHASES_AFTER = "_purchases_after"
# Logged probabilities are clipped away from 0 and 1 (a calibrated step can be 0).
EPSILON = 1e-6

ESTIMATORS = {
    "logistic": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
}


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Cutoffs:
    """The cut-offs of one target: validation (latest labelled) and training (older)."""

    validation: dt.date
    training: tuple[dt.date, ...]


def plan_cutoffs(
    scoring_as_of: dt.date,
    horizon_days: int,
    step_days: int,
    n_training: int,
    last_cutoff: dt.date | None = None,
) -> Cutoffs:
    """Validation at `last_cutoff`, or the latest cut-off whose label window ends
    by the scored snapshot (`scoring_as_of - horizon`); training every
    `step_days` before it.

    Raises:
        ValueError: when `last_cutoff`'s label window reaches past the snapshot.
    """
    latest = scoring_as_of - dt.timedelta(days=horizon_days)
    if last_cutoff is not None and last_cutoff > latest:
        raise ValueError(
            f"propensity.last_cutoff {last_cutoff}: its {horizon_days}-day label window ends "
            f"after the scored snapshot {scoring_as_of}; the latest allowed is {latest}"
        )
    validation = last_cutoff or latest
    step = dt.timedelta(days=step_days)
    return Cutoffs(validation, tuple(validation - step * i for i in range(1, n_training + 1)))


def build_outcomes(events: DataFrame, cutoff: dt.date, horizon_days: int) -> DataFrame:
    """Purchases per user in [cutoff, cutoff + horizon): `user_id, _purchases_after`."""
    day = F.col(t.EVENT_DATE)
    window = (day >= F.lit(cutoff)) & (day < F.lit(cutoff + dt.timedelta(days=horizon_days)))
    return (
        events.filter((F.col(t.EVENT_TYPE) == "purchase") & window)
        .groupBy(t.USER_ID)
        .agg(F.count(F.lit(1)).alias(PURCHASES_AFTER))
    )


def filter_population(snapshot: DataFrame, target: PropensityTarget) -> DataFrame:
    """The users a target scores: everyone for purchase; for churn, the buyers
    whose last purchase lies within `active_days` before the snapshot date."""
    if target.kind == "purchase":
        return snapshot
    since = F.date_sub(F.col(t.AS_OF_DATE), target.active_days)
    return snapshot.filter(F.col("last_purchase_date") >= since)


def label_column(target: PropensityTarget) -> Column:
    """1.0 when the target happens in the label window, from `_purchases_after`."""
    bought = F.coalesce(F.col(PURCHASES_AFTER), F.lit(0)) > 0
    happened = bought if target.kind == "purchase" else ~bought
    return happened.cast("double")


def build_labelled_rows(
    snapshot: DataFrame, outcomes: DataFrame, target: PropensityTarget
) -> DataFrame:
    """The target's population of one cut-off's snapshot with its `label`."""
    return (
        filter_population(snapshot, target)
        .join(outcomes, t.USER_ID, "left")
        .withColumn(LABEL, label_column(target))
        .drop(PURCHASES_AFTER)
    )


def usable_features(
    rows: DataFrame, features: Sequence[SegmentFeature]
) -> tuple[list[SegmentFeature], list[str]]:
    """The features with at least one value in `rows`, and the names of those without.

    A source may not record some behaviour (no views in an order log); median
    imputation cannot fill a feature with no values, so it is left out.
    """
    counts = (
        rows.select(*[F.count(F.expr(f"({f.expr or f.name})")).alias(f.name) for f in features])
        .first()
        .asDict()
    )
    kept = [f for f in features if counts[f.name] > 0]
    return kept, [f.name for f in features if counts[f.name] == 0]


# --------------------------------------------------------------------------- models


def model_grid(model: PropensityModel) -> list[dict[str, float]]:
    """Every combination of the listed parameter values ([{}] for an empty grid)."""
    names = sorted(model.params)
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(model.params[n] for n in names))
    ]


def new_classifier(kind: str, params: Mapping[str, float], seed: int):
    """An unfitted classifier on the scaled features, with `params` set by Spark name."""
    estimator = ESTIMATORS[kind](featuresCol=sg.SCALED, labelCol=LABEL)
    if estimator.hasParam("seed"):
        estimator.setSeed(seed)
    for name, value in params.items():
        estimator.set(estimator.getParam(name), value)
    return estimator


def fit_preparation(features: Sequence[SegmentFeature], rows: DataFrame) -> PipelineModel:
    """The segment stage's feature preparation, fitted once per target and shared
    by every candidate classifier (imputation medians and scales of the training rows)."""
    return sg.build_prep_pipeline(features, None).fit(rows)


def prepared(prep: PipelineModel, rows: DataFrame, *keep: str) -> DataFrame:
    """`rows` as the classifiers read them: the scaled vector, the label and `keep`."""
    return prep.transform(rows).select(*keep, sg.SCALED, LABEL)


def with_score(scored: DataFrame) -> DataFrame:
    """`score`: P(positive) from the classifier's probability vector."""
    return scored.withColumn(SCORE, vector_to_array(F.col(PROBABILITY)).getItem(1))


def fit_calibrator(scored: DataFrame) -> IsotonicRegressionModel:
    """Isotonic regression of the label on P(positive), a pipeline stage."""
    return IsotonicRegression(
        featuresCol=PROBABILITY,
        featureIndex=1,
        labelCol=LABEL,
        predictionCol=CALIBRATED,
        isotonic=True,
    ).fit(scored)


def calibrated_model(
    prep: PipelineModel, classifier: Transformer, calibrator: Transformer
) -> PipelineModel:
    """What is registered: preparation, classifier and calibration in one model."""
    return PipelineModel(stages=[*prep.stages, classifier, calibrator])


def calibration_half(share: float, seed: int) -> Column:
    """True for the users (by a hash of user_id) whose rows fit the calibration."""
    u = F.pmod(F.xxhash64(F.lit(seed), F.col(t.USER_ID)), F.lit(1_000_000)) / 1_000_000
    return u < F.lit(share)


def feature_importances(classifier: Transformer, names: Sequence[str]) -> dict[str, float]:
    """Importance per feature: trees' impurity importances, or |coefficient| of the
    logistic model on scaled features; normalised to sum to 1."""
    if hasattr(classifier, "featureImportances"):
        values = np.asarray(classifier.featureImportances.toArray())
    else:
        values = np.abs(np.asarray(classifier.coefficients.toArray()))
    total = values.sum()
    if total > 0:
        values = values / total
    return {n: float(v) for n, v in zip(names, values, strict=True)}


# --------------------------------------------------------------------------- metrics


def ranking_metrics(df: DataFrame, score_col: str, label_col: str = LABEL) -> dict[str, float]:
    """AUC-ROC and AUC-PR (area under the precision-recall curve) of a score."""
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=score_col, labelCol=label_col)
    return {
        "auc_roc": evaluator.setMetricName("areaUnderROC").evaluate(df),
        "auc_pr": evaluator.setMetricName("areaUnderPR").evaluate(df),
    }


def _bin(probability: Column, bins: int) -> Column:
    return F.least(F.floor(probability * bins), F.lit(bins - 1)).cast("int")


def reliability(df: DataFrame, prob_col: str, bins: int, label_col: str = LABEL) -> pd.DataFrame:
    """Per equal-width probability bin: users, mean predicted and observed rate."""
    rows = (
        df.groupBy(_bin(F.col(prob_col), bins).alias("bin"))
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.avg(prob_col).alias("predicted"),
            F.avg(label_col).alias("observed"),
        )
        .toPandas()
    )
    return rows.sort_values("bin").reset_index(drop=True)


def probability_metrics(
    df: DataFrame, prob_col: str, bins: int, label_col: str = LABEL
) -> tuple[dict[str, float], pd.DataFrame]:
    """Brier score, log loss and expected calibration error of a probability, and
    the reliability table they come from.

    ECE: the users-weighted mean over equal-width bins of |observed rate -
    mean predicted probability|.
    """
    p = F.least(F.greatest(F.col(prob_col), F.lit(EPSILON)), F.lit(1 - EPSILON))
    y = F.col(label_col)
    totals = df.agg(
        F.avg((F.col(prob_col) - y) ** 2).alias("brier"),
        F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("log_loss"),
    ).first()
    table = reliability(df, prob_col, bins, label_col)
    weights = table["users"] / table["users"].sum()
    ece = float((weights * (table["observed"] - table["predicted"]).abs()).sum())
    metrics = {"brier": float(totals["brier"]), "log_loss": float(totals["log_loss"]), "ece": ece}
    return metrics, table


def gains(df: DataFrame, score_col: str, points: int = 10, label_col: str = LABEL) -> pd.DataFrame:
    """The cumulative gain chart: for the top 1/points, 2/points, ... of users by
    score, the share selected (ties at a threshold all go in) and the share of
    all positives they hold. Thresholds are approximate quantiles (0.1% error)."""
    quantiles = [1 - i / points for i in range(1, points)]
    thresholds = df.approxQuantile(score_col, quantiles, 0.001)
    score, y = F.col(score_col), F.col(label_col)
    sums = [F.count(F.lit(1)).alias("n"), F.sum(y).alias("positives")]
    for i, thr in enumerate(thresholds):
        sums += [
            F.sum((score >= F.lit(thr)).cast("long")).alias(f"n{i}"),
            F.sum(F.when(score >= F.lit(thr), y).otherwise(0.0)).alias(f"p{i}"),
        ]
    row = df.agg(*sums).first()
    n, positives = row["n"], row["positives"] or 0.0
    records = [
        {
            "top": (i + 1) / points,
            "selected_share": row[f"n{i}"] / n if n else 0.0,
            "positive_share": row[f"p{i}"] / positives if positives else 0.0,
        }
        for i in range(len(thresholds))
    ]
    records.append({"top": 1.0, "selected_share": 1.0, "positive_share": 1.0})
    return pd.DataFrame(records)


def lift_at(gain: pd.DataFrame, top: float = 0.1) -> float:
    """Positives' share in the top `top` of users over the base rate (from `gains`)."""
    row = gain.loc[(gain["top"] - top).abs().idxmin()]
    return float(row["positive_share"] / row["selected_share"]) if row["selected_share"] else 0.0


def spearman(df: DataFrame, a: str, b: str) -> float:
    """Spearman rank correlation of two numeric columns (Spark's, ties averaged)."""
    vectors = VectorAssembler(inputCols=[a, b], outputCol="_ab").transform(
        df.select(F.col(a).cast("double").alias(a), F.col(b).cast("double").alias(b))
    )
    matrix = Correlation.corr(vectors, "_ab", "spearman").first()[0]
    return float(matrix.toArray()[0, 1])


# --------------------------------------------------------------------------- scores


def decile_thresholds(df: DataFrame, score_col: str) -> list[float]:
    """The 90th, 80th, ..., 10th percentiles of the score (0.1% error)."""
    return df.approxQuantile(score_col, [0.9 - 0.1 * i for i in range(9)], 0.001)


def decile(score: Column, thresholds: Sequence[float]) -> Column:
    """1 for the top tenth by score ... 10 for the bottom (ties share a decile)."""
    below = F.lit(1)
    for thr in thresholds:
        below = below + F.when(score < F.lit(thr), 1).otherwise(0)
    return below.cast("int")


# --------------------------------------------------------------------------- baselines


def rfm_baseline(rows: DataFrame, target: PropensityTarget) -> Column:
    """The RFM score rule: r + f + m (0 for a user never scored); churn ranks it reversed."""
    total = sum(F.coalesce(F.col(c), F.lit(0)) for c in ("r_score", "f_score", "m_score"))
    return (total if target.kind == "purchase" else -total).cast("double")


BGNBD_EXPECTED = "bgnbd_expected_transactions"


def bgnbd_expected(events: DataFrame, cutoff: dt.date, horizon_days: int, unit: str) -> DataFrame:
    """BG/NBD fitted on the purchases before `cutoff`: per customer, expected
    transactions over the horizon (`bgnbd_expected_transactions`).

    Users with no purchase before the cut-off are no customers of the model
    and get no row (callers use 0).

    Raises:
        ValueError: when nobody bought before the cut-off.
    """
    unit_days = clv.UNIT_DAYS[unit]
    end = cutoff - dt.timedelta(days=1)
    summary = clv.customer_summary(clv.transaction_days(events, None, end), end, unit_days)
    tuples = clv.rfm_tuples(summary)
    if tuples.empty:
        raise ValueError(f"no purchases before {cutoff}: no BG/NBD fit")
    bg = clv.fit_bgnbd(tuples["x"], tuples["t_x"], tuples["T"], tuples["customers"])
    expected = clv.expected_transactions(
        bg, horizon_days / unit_days, tuples["x"], tuples["t_x"], tuples["T"]
    )
    tuples[BGNBD_EXPECTED] = np.asarray(expected, dtype=float)
    table = events.sparkSession.createDataFrame(
        tuples[["x", "t_x", "T", BGNBD_EXPECTED]].astype(
            {"x": "int64", "t_x": "float64", "T": "float64"}
        )
    )
    return summary.join(F.broadcast(table), ["x", "t_x", "T"], "inner").select(
        t.USER_ID, BGNBD_EXPECTED
    )


def bgnbd_baseline(
    events: DataFrame, cutoff: dt.date, horizon_days: int, unit: str, target: PropensityTarget
) -> DataFrame:
    """`bgnbd_expected` as a ranking score `bgnbd_score` (churn: its negative)."""
    sign = 1.0 if target.kind == "purchase" else -1.0
    expected = bgnbd_expected(events, cutoff, horizon_days, unit)
    return expected.select(t.USER_ID, (F.lit(sign) * F.col(BGNBD_EXPECTED)).alias("bgnbd_score"))


def with_bgnbd_expected(snapshot: DataFrame, expected: DataFrame) -> DataFrame:
    """The snapshot with `bgnbd_expected_transactions` (0 for users who never bought)."""
    return snapshot.join(expected, t.USER_ID, "left").withColumn(
        BGNBD_EXPECTED, F.coalesce(F.col(BGNBD_EXPECTED), F.lit(0.0))
    )
