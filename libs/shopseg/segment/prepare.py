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


def check_feature_coverage(users: DataFrame, features: Sequence[SegmentFeature]) -> dict[str, int]:
    """Non-null count of each feature expression; fails naming an all-null feature.

    Median imputation cannot fill a feature with no values at all (a source
    without views, for instance); the error names the feature so the
    configuration can drop it.
    """
    counts = (
        users.select(
            *[F.count(F.expr(f"({f.expr or f.name})")).alias(f.name) for f in features],
            F.count(F.lit(1)).alias("_rows"),
        )
        .first()
        .asDict()
    )
    rows = counts.pop("_rows")
    empty = [name for name, n in counts.items() if n == 0]
    if rows == 0:
        raise ValueError("no users to segment in this snapshot")
    if empty:
        raise ValueError(
            f"segment feature(s) {empty} have no values in this snapshot of {rows} users; "
            "remove them from segment.features (this source may not record them)"
        )
    return counts
