"""The segmentation's feature pipeline: feature expressions (log1p where configured),
imputation, assembly, scaling and optional PCA, and the column names it adds."""

from __future__ import annotations

import re
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
    log without prices or discounts no discount share. A feature is left out when
    its expression has no values at all (median imputation has nothing to fill
    it with), or when a column of `users` it names is null or one value for
    every user: the default shrunk discount share, views per session or dwell
    time would otherwise vary with the number of orders or sessions alone and
    name segments after behaviour the data never showed.
    """
    # The snapshot's date is one value for every user by design, the id never is.
    columns = [c for c in users.columns if c not in (t.AS_OF_DATE, t.USER_ID)]
    named = {
        f.name: [c for c in columns if re.search(rf"\b{re.escape(c)}\b", f.expr or f.name)]
        for f in features
    }
    referenced = sorted({c for cols in named.values() for c in cols})
    stats = (
        users.select(
            *[F.count(F.expr(f"({f.expr or f.name})")).alias(f.name) for f in features],
            *[F.min(F.col(c)).alias(f"_min_{c}") for c in referenced],
            *[F.max(F.col(c)).alias(f"_max_{c}") for c in referenced],
            F.count(F.lit(1)).alias("_rows"),
        )
        .first()
        .asDict()
    )
    if stats["_rows"] == 0:
        raise ValueError("no users to segment in this snapshot")
    constant = {
        c: "no values" if stats[f"_min_{c}"] is None else f"{stats[f'_min_{c}']!r} for every user"
        for c in referenced
        if stats[f"_min_{c}"] == stats[f"_max_{c}"]
    }
    counts = {f.name: stats[f.name] for f in features}
    left_out = {}
    for f in features:
        if counts[f.name] == 0:
            left_out[f.name] = "no values"
        elif dull := [c for c in named[f.name] if c in constant]:
            left_out[f.name] = ", ".join(f"{c}: {constant[c]}" for c in dull)
    kept = [f for f in features if f.name not in left_out]
    if not kept:
        raise ValueError(
            f"no segment feature carries information in this snapshot of {stats['_rows']} "
            f"users ({left_out}); choose segment.features this source records"
        )
    return kept, left_out, counts
