"""The segmentation's feature pipeline: feature expressions (log1p where configured),
imputation, assembly, scaling and optional PCA, and the column names it adds."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import SegmentFeature

# Columns the feature pipeline adds to the user features.
LOG_PREFIX = "seg_f_"  # transformed (log1p where configured) feature, before imputation
RAW_PREFIX = "seg_u_"  # untransformed feature expression, for the explanation tree
IMPUTED = "_imp"
RAW_VECTOR = "seg_raw"
SCALED = "seg_scaled"
REDUCED = "seg_pca"
UNSCALED = "seg_unscaled"
PREDICTION = t.SEGMENT_ID


# --------------------------------------------------------------------------- pipeline


def feature_select(features: Sequence[SegmentFeature]) -> str:
    """The SQLTransformer statement: each feature's expression, raw and transformed."""
    parts = ["*"]
    for f in features:
        expr = f"CAST(({f.expr or f.name}) AS DOUBLE)"
        parts.append(f"{expr} AS {RAW_PREFIX}{f.name}")
        # Not greatest(x, 0): it skips nulls, turning a missing value into 0.
        transformed = f"log1p(CASE WHEN {expr} < 0D THEN 0D ELSE {expr} END)" if f.log else expr
        parts.append(f"{transformed} AS {LOG_PREFIX}{f.name}")
    return f"SELECT {', '.join(parts)} FROM __THIS__"


def build_prep_pipeline(features: Sequence[SegmentFeature], pca_components: int | None) -> Pipeline:
    """Feature expressions -> median imputation -> vector -> standard scaling (-> PCA)."""
    names = [f.name for f in features]
    inputs = [f"{LOG_PREFIX}{n}" for n in names] + [f"{RAW_PREFIX}{n}" for n in names]
    stages = [
        SQLTransformer(statement=feature_select(features)),
        Imputer(inputCols=inputs, outputCols=[c + IMPUTED for c in inputs], strategy="median"),
        VectorAssembler(
            inputCols=[f"{LOG_PREFIX}{n}{IMPUTED}" for n in names], outputCol=RAW_VECTOR
        ),
        # No centring: see the module docstring (bisecting cannot split a root at 0).
        StandardScaler(inputCol=RAW_VECTOR, outputCol=SCALED, withMean=False, withStd=True),
        VectorAssembler(inputCols=[f"{RAW_PREFIX}{n}{IMPUTED}" for n in names], outputCol=UNSCALED),
    ]
    if pca_components:
        stages.append(PCA(k=pca_components, inputCol=SCALED, outputCol=REDUCED))
    return Pipeline(stages=stages)


def model_input_column(prep: PipelineModel) -> str:
    """The vector the clusterer reads: PCA output when PCA is configured."""
    return REDUCED if _has_pca(prep) else SCALED


def _has_pca(prep: PipelineModel) -> bool:
    return any(type(s).__name__ == "PCAModel" for s in prep.stages)


def model_features(model: PipelineModel) -> list[str]:
    """The feature names a fitted preparation (or a model holding one) uses, in order."""
    for stage in model.stages:
        if isinstance(stage, VectorAssembler) and stage.getOutputCol() == RAW_VECTOR:
            return [c[len(LOG_PREFIX) : -len(IMPUTED)] for c in stage.getInputCols()]
    raise ValueError(f"the model has no {RAW_VECTOR} assembler: not a segmentation model")


def informative_features(
    users: DataFrame, features: Sequence[SegmentFeature]
) -> tuple[list[SegmentFeature], dict[str, str], dict[str, int]]:
    """The features that carry information in `users`; those left out, with why; and each
    feature's number of values (non-null).

    A source may not record some behaviour: an order log has no views, an event
    log without prices or discounts no discount share. Such a feature has no
    values at all (median imputation has nothing to fill it with), or its
    column in the user features (a feature named after one) holds one value
    for every user, so the expression built on it (the default discount share
    shrunk by the number of orders, for one) would only repeat other features
    and name segments after behaviour the data never showed. Both are left out.
    """
    columns = set(users.columns)
    own = [f.name for f in features if f.name in columns]
    stats = (
        users.select(
            *[F.count(F.expr(f"({f.expr or f.name})")).alias(f.name) for f in features],
            *[F.min(F.col(n)).alias(f"_min_{n}") for n in own],
            *[F.max(F.col(n)).alias(f"_max_{n}") for n in own],
            F.count(F.lit(1)).alias("_rows"),
        )
        .first()
        .asDict()
    )
    if stats["_rows"] == 0:
        raise ValueError("no users to segment in this snapshot")
    counts = {f.name: stats[f.name] for f in features}
    left_out = {}
    for f in features:
        if counts[f.name] == 0:
            left_out[f.name] = "no values"
        elif f.name in columns and stats[f"_min_{f.name}"] == stats[f"_max_{f.name}"]:
            value = stats[f"_min_{f.name}"]
            left_out[f.name] = "no values" if value is None else f"{value!r} for every user"
    kept = [f for f in features if f.name not in left_out]
    if not kept:
        raise ValueError(
            f"no segment feature carries information in this snapshot of {stats['_rows']} "
            f"users ({left_out}); choose segment.features this source records"
        )
    return kept, left_out, counts
