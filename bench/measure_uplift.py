"""The `uplift` row of `make bench`: the stage's T-learner against scikit-uplift's.

The rows: every user of the bench shop's latest feature snapshot in a
randomized trial (half treated, by a salted hash), their outcome drawn by
`simulate_outcomes`' own plant (conf/local.yaml's uplift rules, persona base
rates), prepared by the stage's feature pipeline; the stage's hashed 30% held
out. MLlib fits the stage's T-learner (a GBTRegressor per arm, 20 depth-3
trees, rate 0.1); scikit-uplift's `TwoModels` fits two LightGBM classifiers
of the same shape on the same training vectors (sklift needs classifiers for
a binary outcome). Both are scored on the same held-out vectors by
scikit-uplift's `qini_auc_score` and by the stage's own Qini coefficient.
Beside it (the row's detail): a T-learner of two `xgboost.spark` regressors of
the same shape on the same vectors (classic Spark only, as for propensity).
"""

from __future__ import annotations

import numpy as np

GBT_PARAMS = {"maxIter": 20, "maxDepth": 3, "stepSize": 0.1}
SALT = "bench uplift trial"


def uplift_vectors(spark, lake, config):
    """(train, held-out) prepared rows: `seg_scaled`, `treated`, `label`."""
    from pyspark.sql import functions as F

    from shopseg import campaigns as cp
    from shopseg import propensity as pr
    from shopseg import segment as sg
    from shopseg import tables as t
    from shopseg import uplift as ul
    from shopseg.pipeline import latest
    from shopseg.spark import checkpointed

    so, conf = config.simulate_outcomes, config.uplift
    features = lake.read(t.USER_FEATURES.name)
    as_of = latest(features, t.AS_OF_DATE)
    snapshot = features.filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    personas = lake.read(t.USER_PERSONAS.name).select(t.USER_ID, t.PERSONA)
    users = cp.planted_uplift(
        snapshot.join(personas, t.USER_ID), so.base_conversion, so.lift, so.uplift_rules
    )
    variant = F.when(cp.bucket(SALT, "trial", F.col(t.USER_ID)) < 0.5, cp.CONTROL).otherwise(
        cp.TREATMENT
    )
    audience = users.select(
        F.lit("trial").alias("campaign_id"),
        t.USER_ID,
        variant.alias("variant"),
        t.PERSONA,
        "planted_uplift",
    )
    events, _ = cp.simulate_outcomes(
        audience, as_of, so.seed, so.window_days, so.base_conversion, so.lift,
        so.order_value, [],
    )  # fmt: skip
    rows = (
        users.join(audience.select(t.USER_ID, "variant"), t.USER_ID)
        .join(events.select(t.USER_ID, F.lit(1.0).alias("_bought")), t.USER_ID, "left")
        .withColumn(ul.TREATED, (F.col("variant") == cp.TREATMENT).cast("int"))
        .withColumn(ul.LABEL, F.coalesce(F.col("_bought"), F.lit(0.0)))
    )
    rows = checkpointed(rows)
    held = ul.holdout(F.col(t.USER_ID), conf.validation_share, conf.seed)
    train, val = rows.filter(~held), rows.filter(held)
    prep = pr.fit_preparation(conf.features, train)
    keep = [sg.SCALED, ul.TREATED, ul.LABEL]
    return (
        prep,
        checkpointed(prep.transform(train).select(*keep)),
        checkpointed(prep.transform(val).select(*keep)),
    )


def to_numpy(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, outcomes and treatment flags (the bench's comparison only)."""
    from pyspark.ml.functions import vector_to_array

    from shopseg import segment as sg
    from shopseg import uplift as ul

    table = df.select(vector_to_array(sg.SCALED).alias("v"), ul.LABEL, ul.TREATED).toArrow()
    v = table.column("v").combine_chunks()
    x = v.values.to_numpy(zero_copy_only=False).reshape(len(v), -1)
    return x, table.column(ul.LABEL).to_numpy(), table.column(ul.TREATED).to_numpy()


def spark_t_learner(prep, train, seed: int):
    from shopseg import uplift as ul

    return ul.fit_t_learner(prep, train, GBT_PARAMS, seed)


def spark_uplift(model, val) -> np.ndarray:
    """Predicted uplift of the held-out vectors (the model's regressions and difference)."""
    from pyspark.ml import PipelineModel

    from shopseg import uplift as ul

    # The preparation stages read raw features; the held-out rows are prepared already.
    fitted = PipelineModel(model.stages[-3:])
    return fitted.transform(val).select(ul.UPLIFT).toArrow().column(ul.UPLIFT).to_numpy()


def xgboost_spark_t_learner(train, seed: int, workers: int):
    """Two `xgboost.spark` regressions of the outcome, one per arm, of GBT_PARAMS' shape."""
    from pyspark.sql import functions as F
    from xgboost.spark import SparkXGBRegressor

    from shopseg import segment as sg
    from shopseg import uplift as ul

    def fit(arm: int, prediction: str):
        return SparkXGBRegressor(
            features_col=sg.SCALED,
            label_col=ul.LABEL,
            prediction_col=prediction,
            n_estimators=GBT_PARAMS["maxIter"],
            max_depth=GBT_PARAMS["maxDepth"],
            learning_rate=GBT_PARAMS["stepSize"],
            tree_method="hist",
            num_workers=workers,
            random_state=seed,
        ).fit(train.filter(F.col(ul.TREATED) == arm))

    return fit(1, "_mu1"), fit(0, "_mu0")


def xgboost_uplift(models, val) -> np.ndarray:
    from pyspark.sql import functions as F

    mu1, mu0 = models
    scored = mu0.transform(mu1.transform(val))
    table = scored.select((F.col("_mu1") - F.col("_mu0")).alias("u")).toArrow()
    return table.column("u").to_numpy()


def sklift_t_learner(x: np.ndarray, y: np.ndarray, treated: np.ndarray, seed: int):
    from measure_propensity import lightgbm_classifier
    from sklift.models import TwoModels

    return TwoModels(
        estimator_trmnt=lightgbm_classifier(GBT_PARAMS, seed),
        estimator_ctrl=lightgbm_classifier(GBT_PARAMS, seed),
        method="vanilla",
    ).fit(x, y, treated)


def qini_scores(spark, uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> dict:
    """scikit-uplift's normalized Qini AUC and the stage's Qini coefficient."""
    import pandas as pd
    from sklift.metrics import qini_auc_score

    from shopseg import uplift as ul

    frame = pd.DataFrame({ul.UPLIFT: uplift, ul.TREATED: treated.astype(int), ul.LABEL: y})
    ours = ul.evaluate(spark.createDataFrame(frame), replicates=0, confidence=0.95, seed=0)
    return {
        "sklift_qini_auc": round(float(qini_auc_score(y, uplift, treated)), 4),
        "qini": round(float(ours.metrics["qini"]), 5),
    }
