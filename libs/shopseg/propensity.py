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
         | MultilayerPerceptronClassifier
      -> `score`: P(positive), the probability vector's second entry
      -> centred isotonic calibration of `score` (`calibrated_probability`)

(the feature preparation is the segment stage's, `segment.build_prep_pipeline`),
or, when a baseline wins the validation, the baseline's formula as `score`
(an SQLTransformer) and its calibration. Isotonic regression (pool adjacent
violators) fits a step function, which would tie every user of a step and
lose the ranking inside it; the calibration served is the centred isotonic
regression (Oron and Flournoy 2017): the line through the centres of the
steps, strictly increasing, so the calibrated probability ranks users as
the score does. Both the score's extraction and the calibration are stock
`IsotonicRegressionModel`s (Spark interpolates linearly between its
boundaries), so the model is pure MLlib.
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
    MultilayerPerceptronClassifier,
    RandomForestClassifier,
)
from pyspark.ml.feature import Bucketizer, SQLTransformer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.ml.regression import IsotonicRegression, IsotonicRegressionModel
from pyspark.ml.stat import Correlation
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StructField, StructType

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

WEIGHT = "_class_weight"
ESTIMATORS = {
    "logistic": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
    "mlp": MultilayerPerceptronClassifier,
}
BASELINES = ("rfm", "bgnbd")
# Simplest first: a tie on the validation metric goes to the earlier.
SIMPLICITY = ("baseline_rfm", "baseline_bgnbd", "logistic", "random_forest", "gbt", "mlp")
METRICS = ("average_precision", "auc_roc", "auc_pr")


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


# The random search's space per family: (scale, low, high); `int` rounds the draw.
SEARCH_SPACE: dict[str, dict[str, tuple[str, float, float]]] = {
    "logistic": {"regParam": ("log", 1e-4, 1.0), "elasticNetParam": ("uniform", 0.0, 1.0)},
    "random_forest": {
        "numTrees": ("int_log", 20, 200),
        "maxDepth": ("int", 3, 12),
        "minInstancesPerNode": ("int_log", 1, 100),
        "subsamplingRate": ("uniform", 0.5, 1.0),
    },
    "gbt": {
        "maxIter": ("int_log", 10, 100),
        "maxDepth": ("int", 2, 7),
        "stepSize": ("log", 0.02, 0.3),
        "minInstancesPerNode": ("int_log", 1, 100),
        "subsamplingRate": ("uniform", 0.5, 1.0),
    },
    "mlp": {
        "hidden": ("int_log", 4, 64),
        "maxIter": ("int_log", 50, 300),
        "stepSize": ("log", 0.005, 0.1),
    },
}


def random_points(
    space: Mapping[str, tuple[str, float, float]],
    n: int,
    seed: int,
    fixed: Mapping[str, float] | None = None,
) -> list[dict[str, float]]:
    """`n` parameter sets drawn from `space` (log scales log-uniformly, `int*` rounded),
    each with the `fixed` values of the parameters the space does not draw."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        point = dict(fixed or {})
        for name, (scale, low, high) in space.items():
            if scale.endswith("log"):
                value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            else:
                value = float(rng.uniform(low, high))
            point[name] = float(round(value)) if scale.startswith("int") else float(f"{value:.3g}")
        out.append(point)
    return out


def search_points(model: PropensityModel, trials: int, seed: int) -> list[dict[str, float]]:
    """The family's grid, then `trials` random points of its `SEARCH_SPACE` (the grid's
    first values for the parameters the space does not draw)."""
    grid = model_grid(model)
    if not trials:
        return grid
    fixed = {k: v for k, v in grid[0].items() if k not in SEARCH_SPACE[model.kind]}
    return grid + random_points(SEARCH_SPACE[model.kind], trials, seed, fixed)


def new_classifier(
    kind: str, params: Mapping[str, float], seed: int, n_features: int = 0, weighted: bool = False
):
    """An unfitted classifier on the scaled features, with `params` set by Spark name.

    The perceptron's `hidden` is the width of its one hidden layer (layers:
    n_features, hidden, 2); `weighted` reads the class weights of `class_weights`
    (not the perceptron, which takes no weights).
    """
    params = dict(params)
    estimator = ESTIMATORS[kind](featuresCol=sg.SCALED, labelCol=LABEL)
    if kind == "mlp":
        hidden = int(params.pop("hidden", max(2, n_features)))
        estimator.setLayers([n_features, hidden, 2])
    if estimator.hasParam("seed"):
        estimator.setSeed(seed)
    if weighted and estimator.hasParam("weightCol"):
        estimator.set(estimator.getParam("weightCol"), WEIGHT)
    for name, value in params.items():
        param = estimator.getParam(name)
        estimator.set(param, int(value) if name in _INTEGER_PARAMS else value)
    return estimator


_INTEGER_PARAMS = {"maxIter", "maxDepth", "numTrees", "minInstancesPerNode", "blockSize"}


def class_weights(rows: DataFrame, positives: float, n: int) -> DataFrame:
    """`rows` with balanced class weights: each class weighs half the rows in total."""
    w_pos, w_neg = n / (2 * positives), n / (2 * (n - positives))
    return rows.withColumn(WEIGHT, F.when(F.col(LABEL) == 1, F.lit(w_pos)).otherwise(F.lit(w_neg)))


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


def score_extractor(spark) -> IsotonicRegressionModel:
    """A pipeline stage writing P(positive), the probability vector's second entry, as
    the double column `score`: the isotonic fit of the two points (0, 0) and (1, 1),
    which Spark interpolates as the identity on [0, 1]."""
    points = spark.createDataFrame(
        [(Vectors.dense([1.0, 0.0]), 0.0), (Vectors.dense([0.0, 1.0]), 1.0)],
        StructType([StructField(PROBABILITY, VectorUDT()), StructField(LABEL, DoubleType())]),
    )
    return IsotonicRegression(
        featuresCol=PROBABILITY, featureIndex=1, labelCol=LABEL, predictionCol=SCORE
    ).fit(points)


def centred_points(
    boundaries: Sequence[float], levels: Sequence[float], unit: bool
) -> list[tuple[float, float]]:
    """The centred isotonic regression of a pool-adjacent-violators fit: one point per
    step (the centre of its score range, its level). With `unit` (scores in [0, 1]) the
    line runs from (0, 0) to (1, 1): a step at level 0 or 1 gives way to those ends, so
    the line increases strictly everywhere (a step at 0 would tie its users)."""
    points: list[tuple[float, float]] = []
    start = 0
    for i in range(1, len(levels) + 1):
        if i == len(levels) or levels[i] != levels[start]:
            centre = (float(boundaries[start]) + float(boundaries[i - 1])) / 2
            points.append((centre, float(levels[start])))
            start = i
    if unit:
        inner = [(x, y) for x, y in points if 0 < x < 1 and 0 < y < 1]
        points = [(0.0, 0.0), *inner, (1.0, 1.0)]
    return points


def fit_calibrator(scored: DataFrame, unit: bool = True) -> IsotonicRegressionModel:
    """The centred isotonic calibration of `score` (a pipeline stage writing
    `calibrated_probability`): isotonic regression of the label on the score, then the
    isotonic fit of its step centres (already increasing: Spark keeps them as they are
    and interpolates between them)."""
    steps = IsotonicRegression(
        featuresCol=SCORE, labelCol=LABEL, predictionCol=CALIBRATED, isotonic=True
    ).fit(scored.select(F.col(SCORE).cast("double").alias(SCORE), LABEL))
    points = centred_points(list(steps.boundaries), list(steps.predictions), unit)
    frame = scored.sparkSession.createDataFrame(points, f"{SCORE} double, {LABEL} double")
    return IsotonicRegression(
        featuresCol=SCORE, labelCol=LABEL, predictionCol=CALIBRATED, isotonic=True
    ).fit(frame)


def calibrated_model(
    prep: PipelineModel, classifier: Transformer, extractor: Transformer, calibrator: Transformer
) -> PipelineModel:
    """What is registered: preparation, classifier, score and calibration in one model."""
    return PipelineModel(stages=[*prep.stages, classifier, extractor, calibrator])


def baseline_expression(method: str, target: PropensityTarget) -> str:
    """A baseline's score as SQL over the snapshot's columns, in [0, 1) and increasing
    in what the target predicts: x / (1 + x) of the RFM score sum (r + f + m, 0 for a
    user never scored) or of BG/NBD's expected transactions; churn takes 1 / (1 + x)."""
    x = {
        "rfm": "(coalesce(r_score, 0) + coalesce(f_score, 0) + coalesce(m_score, 0))",
        "bgnbd": f"greatest(coalesce({BGNBD_EXPECTED}, 0), 0)",
    }[method]
    return f"{x} / (1 + {x})" if target.kind == "purchase" else f"1 / (1 + {x})"


def baseline_scorer(method: str, target: PropensityTarget) -> SQLTransformer:
    """A pipeline stage adding a baseline's `score` (`baseline_expression`)."""
    expr = baseline_expression(method, target)
    return SQLTransformer(statement=f"SELECT *, CAST({expr} AS DOUBLE) AS {SCORE} FROM __THIS__")


def baseline_model(scorer: Transformer, calibrator: Transformer) -> PipelineModel:
    """What is registered when a baseline wins: its formula and its calibration."""
    return PipelineModel(stages=[scorer, calibrator])


def calibration_half(share: float, seed: int) -> Column:
    """True for the users (by a hash of user_id) whose rows fit the calibration."""
    u = F.pmod(F.xxhash64(F.lit(seed), F.col(t.USER_ID)), F.lit(1_000_000)) / 1_000_000
    return u < F.lit(share)


def feature_importances(classifier: Transformer, names: Sequence[str]) -> dict[str, float]:
    """Importance per feature: trees' impurity importances, or |coefficient| of the
    logistic model on scaled features; normalised to sum to 1 (none for the perceptron)."""
    if hasattr(classifier, "featureImportances"):
        values = np.asarray(classifier.featureImportances.toArray())
    elif hasattr(classifier, "coefficients"):
        values = np.abs(np.asarray(classifier.coefficients.toArray()))
    else:  # the perceptron: no importance per input
        return {}
    total = values.sum()
    if total > 0:
        values = values / total
    return {n: float(v) for n, v in zip(names, values, strict=True)}


def serving_choice(candidates: Sequence[Mapping], metric: str, tie: float) -> int:
    """The index of the candidate to serve: the simplest (`SIMPLICITY`) of those within
    `tie` of the best `metric`, the better of equally simple ones."""
    best = max(c[metric] for c in candidates)
    tied = [i for i, c in enumerate(candidates) if c[metric] >= best - tie]
    return min(tied, key=lambda i: (SIMPLICITY.index(candidates[i]["model"]),
                                    -candidates[i][metric]))  # fmt: skip


# --------------------------------------------------------------------------- metrics


def score_groups(
    df: DataFrame, score_col: str, label_col: str = LABEL, bins: int = 10_000
) -> pd.DataFrame:
    """`(n, positives)` per distinct score, highest score first, in one aggregation.

    Users of one score count together (ties), as scikit-learn's metrics do. A score
    with more than `bins` distinct values is grouped by `bins` approximate quantiles
    instead (a second job), so what reaches the driver stays bounded whatever the rows.
    """
    scores = df.select(
        F.col(score_col).cast("double").alias("_s"), F.col(label_col).cast("double").alias("_y")
    ).filter(F.col("_s").isNotNull())

    def grouped(frame: DataFrame, key: str) -> DataFrame:
        return frame.groupBy(key).agg(F.count(F.lit(1)).alias("n"), F.sum("_y").alias("positives"))

    groups = grouped(scores, "_s").limit(bins + 1).toPandas()
    if len(groups) > bins:
        thresholds = scores.approxQuantile(
            "_s", [i / bins for i in range(bins + 1)], 1 / (4 * bins)
        )
        # Bucket i holds [split i, split i + 1): each threshold starts its own group.
        splits = [-float("inf"), *sorted(set(thresholds)), float("inf")]
        bucketed = Bucketizer(splits=splits, inputCol="_s", outputCol="_g").transform(scores)
        groups = grouped(bucketed, "_g").withColumnRenamed("_g", "_s").toPandas()
    return groups.sort_values("_s", ascending=False, ignore_index=True)


def metrics_of_groups(groups: pd.DataFrame) -> dict[str, float]:
    """AUC-ROC, AUC-PR and average precision of `score_groups`' table.

    Each group is one threshold: the ROC and precision-recall curves step
    through the groups, ties on a straight line (the trapezoid), as
    scikit-learn's `roc_auc_score` draws them; AUC-PR is the trapezoidal area
    from recall 0 at the first threshold's precision (Spark's
    `areaUnderPR`); average precision is the mean over positives of the
    precision at their score (`average_precision_score`).
    """
    n = groups["n"].to_numpy(dtype=float)
    pos = groups["positives"].to_numpy(dtype=float)
    tp, seen = np.cumsum(pos), np.cumsum(n)
    fp = seen - tp
    total_pos, total_neg = (tp[-1], fp[-1]) if len(tp) else (0.0, 0.0)
    if not total_pos:
        return {"auc_roc": float("nan"), "auc_pr": float("nan"), "average_precision": float("nan")}
    precision = tp / seen
    recall = tp / total_pos
    fpr = fp / total_neg if total_neg else np.zeros_like(fp)
    tpr = np.concatenate([[0.0], recall])
    roc = float(np.trapezoid(tpr, np.concatenate([[0.0], fpr]))) if total_neg else float("nan")
    pr_auc = float(
        np.trapezoid(np.concatenate([[precision[0]], precision]), np.concatenate([[0.0], recall]))
    )
    return {
        "auc_roc": roc,
        "auc_pr": pr_auc,
        "average_precision": float((pos / total_pos * precision).sum()),
    }


def ranking_metrics(df: DataFrame, score_col: str, label_col: str = LABEL) -> dict[str, float]:
    """AUC-ROC, AUC-PR and average precision of a score, from one table of counts per
    score (`score_groups`): one Spark job where three evaluators ran a dozen."""
    return metrics_of_groups(score_groups(df, score_col, label_col))


def average_precision(
    df: DataFrame, score_col: str, label_col: str = LABEL, bins: int = 10_000
) -> float:
    """Average precision: the mean over positives of the precision among the users
    scored at least as high (users of one score count together, as scikit-learn's
    `average_precision_score` does). Exact when the score has at most `bins` distinct
    values; beyond, users are grouped by `bins` approximate quantiles of the score."""
    groups = score_groups(df, score_col, label_col, bins)
    return metrics_of_groups(groups)["average_precision"]


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
BGNBD_P_ALIVE = "bgnbd_p_alive"


def bgnbd_expected(events: DataFrame, cutoff: dt.date, horizon_days: int, unit: str) -> DataFrame:
    """BG/NBD fitted on the purchases before `cutoff`: per customer, expected
    transactions over the horizon (`bgnbd_expected_transactions`) and the
    probability of being alive (`bgnbd_p_alive`).

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
    tuples[BGNBD_P_ALIVE] = np.asarray(
        clv.probability_alive(bg, tuples["x"], tuples["t_x"], tuples["T"]), dtype=float
    )
    table = events.sparkSession.createDataFrame(
        tuples[["x", "t_x", "T", BGNBD_EXPECTED, BGNBD_P_ALIVE]].astype(
            {"x": "int64", "t_x": "float64", "T": "float64"}
        )
    )
    return summary.join(F.broadcast(table), ["x", "t_x", "T"], "inner").select(
        t.USER_ID, BGNBD_EXPECTED, BGNBD_P_ALIVE
    )


def bgnbd_baseline(
    events: DataFrame, cutoff: dt.date, horizon_days: int, unit: str, target: PropensityTarget
) -> DataFrame:
    """`bgnbd_expected` as a ranking score `bgnbd_score` (churn: its negative)."""
    sign = 1.0 if target.kind == "purchase" else -1.0
    expected = bgnbd_expected(events, cutoff, horizon_days, unit)
    return expected.select(t.USER_ID, (F.lit(sign) * F.col(BGNBD_EXPECTED)).alias("bgnbd_score"))


def with_bgnbd_expected(snapshot: DataFrame, expected: DataFrame) -> DataFrame:
    """The snapshot with `bgnbd_expected_transactions` and `bgnbd_p_alive` (0 for users
    who never bought: no customers of the model)."""
    return (
        snapshot.join(expected, t.USER_ID, "left")
        .withColumn(BGNBD_EXPECTED, F.coalesce(F.col(BGNBD_EXPECTED), F.lit(0.0)))
        .withColumn(BGNBD_P_ALIVE, F.coalesce(F.col(BGNBD_P_ALIVE), F.lit(0.0)))
    )


# --------------------------------------------------------------------------- purchase history

HISTORY_COLUMNS = (
    "days_since_2nd_last_purchase",
    "days_since_3rd_last_purchase",
    "purchase_days_30d",
    "purchase_days_90d",
    "purchase_days_365d",
    "trend_30d_365d",
    "trend_90d_365d",
)


def purchase_history(events: DataFrame, as_of: dt.date) -> DataFrame:
    """Per user with a purchase before `as_of`: days since the 2nd and 3rd last purchase
    day (null with fewer), purchase days in the last 30, 90 and 365 days, and the trends:
    the rate of the last 30 (90) days over the rate of the year (1 = steady, 0 = none
    lately, null without a purchase in the year)."""
    from pyspark.sql import Window

    days = (
        events.filter((F.col(t.EVENT_TYPE) == "purchase") & (F.col(t.EVENT_DATE) < F.lit(as_of)))
        .select(t.USER_ID, F.datediff(F.lit(as_of), F.col(t.EVENT_DATE)).alias("_ago"))
        .distinct()
    )
    ranked = days.withColumn(
        "_rank", F.row_number().over(Window.partitionBy(t.USER_ID).orderBy("_ago"))
    )
    within = {n: F.sum(F.when(F.col("_ago") <= n, 1).otherwise(0)) for n in (30, 90, 365)}
    history = ranked.groupBy(t.USER_ID).agg(
        F.min(F.when(F.col("_rank") == 2, F.col("_ago"))).alias(HISTORY_COLUMNS[0]),
        F.min(F.when(F.col("_rank") == 3, F.col("_ago"))).alias(HISTORY_COLUMNS[1]),
        *[within[n].alias(f"purchase_days_{n}d") for n in (30, 90, 365)],
    )
    year = F.col("purchase_days_365d") / 365
    return history.select(
        "*",
        *[
            F.when(year > 0, F.col(f"purchase_days_{n}d") / n / year).alias(f"trend_{n}d_365d")
            for n in (30, 90)
        ],
    )


def needs_history(features: Sequence[SegmentFeature]) -> bool:
    """Whether a feature reads a `purchase_history` column."""
    text = " ".join(f"{f.name} {f.expr or ''}" for f in features)
    return any(column in text for column in HISTORY_COLUMNS)


def with_purchase_history(snapshot: DataFrame, events: DataFrame, as_of: dt.date) -> DataFrame:
    """The snapshot with the `purchase_history` columns (counts 0 for users who never
    bought; the days since and trends stay null, for the model's imputation)."""
    out = snapshot.join(purchase_history(events, as_of), t.USER_ID, "left")
    for n in (30, 90, 365):
        out = out.withColumn(f"purchase_days_{n}d", F.coalesce(F.col(f"purchase_days_{n}d"),
                                                               F.lit(0)))  # fmt: skip
    return out
