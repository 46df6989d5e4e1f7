"""The `propensity` row of `make bench`: MLlib GBT against LightGBM on the same rows.

The rows are the propensity stage's own for `purchase_30d` (point-in-time
features of the validation cut-off and of the training cut-offs before it,
`conf/local.yaml`'s settings), prepared by the stage's fitted feature
pipeline; both libraries fit boosted trees of the same shape (20 rounds of
depth-4 trees, learning rate 0.1; the demo's grid stops at 10) on the same
training vectors, and both are scored by scikit-learn's average precision on
the same validation vectors.
"""

from __future__ import annotations

import numpy as np

GBT_PARAMS = {"maxIter": 20, "maxDepth": 4, "stepSize": 0.1}


def propensity_vectors(spark, lake, config):
    """(train, validation) vectors of `purchase_30d`, as the stage builds and prepares them."""
    from shopseg import features as fx
    from shopseg import propensity as pr
    from shopseg import tables as t
    from shopseg.config import PropensityTarget
    from shopseg.pipeline import latest
    from shopseg.spark import checkpointed

    conf, fconf = config.propensity, config.features
    events = lake.read(t.SILVER_EVENTS.name)
    users = lake.read(t.BRONZE_USERS.name)
    features = lake.read(t.USER_FEATURES.name)
    as_of = latest(features, t.AS_OF_DATE)
    target = PropensityTarget(kind="purchase", horizon_days=30)
    cuts = pr.plan_cutoffs(as_of, target.horizon_days, conf.cutoff_step_days, conf.training_cutoffs)

    def rows(cutoff):
        snapshot = fx.build_user_features(
            events,
            users,
            None,
            cutoff,
            lookback_days=fconf.lookback_days,
            categories=[],
            demographics=fconf.demographics,
            rfm_rules=fconf.rfm.segments,
            no_purchase_segment=fconf.rfm.no_purchase_segment,
            quantile_error=fconf.rfm.quantile_error,
        )
        outcomes = pr.build_outcomes(events, cutoff, target.horizon_days)
        return pr.build_labelled_rows(snapshot.features, outcomes, target)

    train = rows(cuts.training[0])
    for cutoff in cuts.training[1:]:
        train = train.unionByName(rows(cutoff))
    train = checkpointed(train)
    val = checkpointed(rows(cuts.validation))
    prep = pr.fit_preparation(conf.features, train)
    return (
        checkpointed(pr.prepared(prep, train)),
        checkpointed(pr.prepared(prep, val)),
    )


def to_numpy(df) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and labels (the bench's comparison, not a pipeline step)."""
    from pyspark.ml.functions import vector_to_array

    from shopseg import propensity as pr
    from shopseg import segment as sg

    table = df.select(vector_to_array(sg.SCALED).alias("v"), pr.LABEL).toArrow()
    v = table.column("v").combine_chunks()
    x = v.values.to_numpy(zero_copy_only=False).reshape(len(v), -1)
    return x, table.column(pr.LABEL).to_numpy()


def spark_gbt(train, seed: int):
    from shopseg import propensity as pr

    return pr.new_classifier("gbt", GBT_PARAMS, seed).fit(train)


def spark_scores(model, val) -> np.ndarray:
    from shopseg import propensity as pr

    scored = pr.with_score(model.transform(val)).select(pr.SCORE).toArrow()
    return scored.column(pr.SCORE).to_numpy()


def logistic_params(config) -> dict:
    """The stage's first logistic grid point (conf/local.yaml keeps the library default)."""
    from shopseg import propensity as pr

    family = next(m for m in config.propensity.models if m.kind == "logistic")
    return pr.model_grid(family)[0]


def spark_logistic(train, params: dict, seed: int):
    from shopseg import propensity as pr

    return pr.new_classifier("logistic", params, seed).fit(train)


def xgboost_spark_gbt(train, seed: int, workers: int):
    """`xgboost.spark`'s classifier of GBT_PARAMS' shape (histogram trees, `workers` tasks)."""
    from xgboost.spark import SparkXGBClassifier

    from shopseg import propensity as pr
    from shopseg import segment as sg

    return SparkXGBClassifier(
        features_col=sg.SCALED,
        label_col=pr.LABEL,
        n_estimators=GBT_PARAMS["maxIter"],
        max_depth=GBT_PARAMS["maxDepth"],
        learning_rate=GBT_PARAMS["stepSize"],
        tree_method="hist",
        num_workers=workers,
        random_state=seed,
    ).fit(train)


def lightgbm_classifier(params: dict, seed: int):
    """LightGBM boosting of the shape of MLlib's GBT `params` (rounds, depth, step)."""
    import lightgbm

    return lightgbm.LGBMClassifier(
        n_estimators=params["maxIter"],
        max_depth=params["maxDepth"],
        num_leaves=2 ** params["maxDepth"],
        learning_rate=params["stepSize"],
        random_state=seed,
        verbose=-1,
    )


def lightgbm_gbt(x: np.ndarray, y: np.ndarray, seed: int):
    return lightgbm_classifier(GBT_PARAMS, seed).fit(x, y)
