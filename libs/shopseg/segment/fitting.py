"""Fitting the clusterers: seeded restarts, K-means from given centres (the bisecting
start), and the partitioned, checkpointed input every fit of the sweep reads."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel, KMeans, KMeansModel
from pyspark.sql import DataFrame

from shopseg.segment.prepare import PREDICTION
from shopseg.spark import checkpointed, jvm_kmeans_from_centers, num_partitions


def new_clusterer(
    algorithm: str, k: int, seed: int, max_iter: int, features_col: str, init_steps: int = 5
):
    """An unfitted clusterer.

    `init_steps` is k-means||'s number of seeding rounds. Spark's default (2)
    left one seed in four at the best cost on the default data (k = 6, seeds
    42-45: costs 35,917 to 45,036); with 5 all four reached 35,917.

    K-means runs the "row" solver: with "auto" Spark first summarizes every
    column in a separate pass to choose between "row" and "block" (200k users
    x 8 features, k = 6, 2 cores: 2.57 s per fit with "auto", 2.22 s with
    "row", same cost).
    """
    if algorithm == "kmeans":
        return KMeans(
            k=k,
            seed=seed,
            maxIter=max_iter,
            initSteps=init_steps,
            solver="row",
            featuresCol=features_col,
            predictionCol=PREDICTION,
        )
    if algorithm == "bisecting":
        return BisectingKMeans(
            k=k, seed=seed, maxIter=max_iter, featuresCol=features_col, predictionCol=PREDICTION
        )
    raise ValueError(f"unknown algorithm {algorithm!r}")


def fit_restarts(
    data: DataFrame,
    algorithm: str,
    k: int,
    *,
    seed: int,
    restarts: int,
    max_iter: int,
    features_col: str,
    init_steps: int = 5,
) -> list[KMeansModel | BisectingKMeansModel]:
    """`restarts` fits seeded seed, seed+1, ...; the best is the lowest WSSSE (`best_fit`)."""
    return [
        new_clusterer(algorithm, k, seed + i, max_iter, features_col, init_steps).fit(data)
        for i in range(restarts)
    ]


def kmeans_from_centers(
    data: DataFrame, centers: Sequence[Sequence[float]], *, max_iter: int, features_col: str
) -> KMeansModel:
    """K-means (Lloyd's iterations, as spark.ml's K-means runs them) started from
    `centers` instead of k-means|| seeding.

    Through the JVM (`shopseg.spark.jvm_kmeans_from_centers`): classic Spark
    only; `seeded_start_available` says whether the session can.
    """
    return jvm_kmeans_from_centers(
        data,
        [list(map(float, c)) for c in centers],
        max_iter=max_iter,
        features_col=features_col,
        prediction_col=PREDICTION,
    )


# Fits the bisecting start adds: bisecting K-means, then K-means from its centres.
SEEDED_START_FITS = 2


def seeded_from_bisecting(
    data: DataFrame, k: int, *, seed: int, max_iter: int, features_col: str
) -> KMeansModel:
    """K-means at `k` started from bisecting K-means' centres at the same `k`.

    Bisecting K-means splits its way to k clusters and does not fall into
    k-means||'s poor optima the same way (seed 7 of the generator: every
    k-means|| start at k = 6 ended at WSSSE 44,522, bisecting reached 38,201
    and K-means from there the best, 35,848): one more restart, of another kind.
    """
    bisecting = new_clusterer("bisecting", k, seed, max_iter, features_col).fit(data)
    centers = [list(c) for c in bisecting.clusterCenters()]
    return kmeans_from_centers(data, centers, max_iter=max_iter, features_col=features_col)


def best_fit(
    fits: Sequence[KMeansModel | BisectingKMeansModel],
) -> KMeansModel | BisectingKMeansModel:
    """The fit with the lowest training cost (WSSSE); the first on a tie."""
    return min(fits, key=lambda m: m.summary.trainingCost)


def fitting_partitions(rows: int, cores: int, min_rows_per_partition: int) -> int:
    """One partition per core, but none smaller than `min_rows_per_partition` rows.

    Every K-means iteration is a Spark job with one task per partition; at a
    few thousand rows per partition scheduling costs more than the distances.
    """
    return max(1, min(cores, rows // min_rows_per_partition))


def materialize_for_fitting(df: DataFrame, partitions: int) -> DataFrame:
    """`df` in `partitions` partitions, checkpointed: computed once, not persisted.

    Not `cache()`: MLlib's K-means and bisecting K-means cache their own
    vectors only when the input DataFrame is not persisted; given a cached
    DataFrame they decode every row from the columnar cache on every
    iteration. Measured on 100k users x 8 features, k = 6, 2 cores: 8-10 s
    per K-means fit from a cached DataFrame, 2.1-2.4 s from a checkpointed
    one (bisecting: 16-17 s against 9-10 s uncached). A checkpoint also
    keeps the feature pipeline from running again for every fit.
    """
    current = num_partitions(df)
    if current is None:  # Spark Connect: the count is not known without a job
        df = df.repartition(partitions)
    elif current > partitions:
        df = df.coalesce(partitions)
    elif current < partitions:
        df = df.repartition(partitions)
    return checkpointed(df)
