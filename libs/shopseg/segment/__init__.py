"""Customer segmentation: the feature pipeline, the k sweep, names, profiles, explanations.

Pure functions over DataFrames and plain values; the stage
(`shopseg.stages.segment`) reads the tables, calls these and writes gold.

The clustering model is one Spark ML `PipelineModel`:

    SQLTransformer (feature expressions, log1p of skewed ones)
      -> Imputer (median) -> VectorAssembler -> StandardScaler
      -> PCA (optional) -> KMeans (k-means||) or BisectingKMeans

The scaler divides by the standard deviation but does not subtract the mean:
Euclidean distances (and so both clusterers) do not change under a shift, and
Spark's BisectingKMeans splits a cluster by nudging its centre by 1e-4 times
the centre's norm; at the origin, where mean-centred data puts the root, that
nudge is zero and the root never splits (one cluster for every k). Z-scores
for names and profiles subtract the population mean instead (`segment_zscores`).

How k and the algorithm are chosen (`choose`):

1. Sweep k over [k_min, k_max] for every configured algorithm. Per k keep the
   best of `restarts` seeded fits (lowest WSSSE) and measure WSSSE,
   silhouette (sample), Calinski-Harabasz, Davies-Bouldin and stability: how
   reproducible the best solution is, as the highest adjusted Rand index
   between the best restart's labels and any other restart's (on the
   stability sample). A k whose best solution no other seed finds again is
   unstable; one seed stuck in a worse local optimum does not make a k
   unstable when another seed reaches the same best solution. (Measured on
   the default data, K-means k = 6, seeds 42-51: nine of ten seeds reach
   WSSSE 35,917, seed 43 stops at 45,035; ARI between seeds 42 and 43 alone
   said 0.72 and dropped the planted k.)
2. Per algorithm, among the k whose stability reaches `min_stability` (all k
   when none does), take the k that at least two of the three validity
   indices pick (highest silhouette, highest Calinski-Harabasz, lowest
   Davies-Bouldin). Without such a majority, take the elbow of the WSSSE
   curve: the k whose normalised WSSSE lies farthest below the chord from
   the first to the last k of the sweep (the "Kneedle" rule). The elbow
   alone is fragile: on the default data it put K-means at k = 5 by a
   margin of 0.006 while all three indices pick the planted k = 6.
3. Between algorithms, the higher silhouette at its elbow k wins; on a tie,
   the lower WSSSE.

The package: `prepare` (the feature pipeline), `selection` (fits, indices, stability,
the choice of k), `profiles` (names, profiles, transitions, trees) and `explanation`
(the surrogate tree's rules). Every public name is importable from `shopseg.segment`.
"""

from shopseg.segment.explanation import (
    explain,
    fit_explainer,
    simplify_conditions,
    tree_leaves,
)
from shopseg.segment.fitting import (
    SEEDED_START_FITS,
    best_fit,
    fit_restarts,
    fitting_partitions,
    kmeans_from_centers,
    materialize_for_fitting,
    new_clusterer,
    seeded_from_bisecting,
)
from shopseg.segment.prepare import (
    IMPUTED,
    LOG_PREFIX,
    PREDICTION,
    RAW_PREFIX,
    RAW_VECTOR,
    REDUCED,
    SCALED,
    UNSCALED,
    build_prep_pipeline,
    feature_select,
    informative_features,
    model_features,
    model_input_column,
)
from shopseg.segment.profiles import (
    GONE,
    NEW,
    TreeNode,
    assign_names,
    bisecting_tree,
    build_profiles,
    build_transitions,
    build_user_segments,
    describe,
    name_score,
    names_column,
    segment_zscores,
    split_tree,
    ward_tree,
)
from shopseg.segment.selection import (
    ClusterStats,
    Segmentation,
    Sweep,
    SweepRow,
    adjusted_rand_index,
    centers_column,
    choose,
    cluster_stats,
    consensus_k,
    elbow,
    labels_ari,
    refit,
    reproducibility,
    sample,
    silhouette,
    squared_distance,
    sweep,
    sweep_and_fit,
    sweep_sample,
    with_distance,
)

__all__ = [
    "SEEDED_START_FITS",
    "ClusterStats",
    "Segmentation",
    "GONE",
    "IMPUTED",
    "LOG_PREFIX",
    "NEW",
    "PREDICTION",
    "RAW_PREFIX",
    "RAW_VECTOR",
    "REDUCED",
    "SCALED",
    "Sweep",
    "SweepRow",
    "TreeNode",
    "UNSCALED",
    "adjusted_rand_index",
    "assign_names",
    "best_fit",
    "bisecting_tree",
    "build_prep_pipeline",
    "build_profiles",
    "build_transitions",
    "build_user_segments",
    "centers_column",
    "informative_features",
    "model_features",
    "choose",
    "cluster_stats",
    "consensus_k",
    "describe",
    "elbow",
    "explain",
    "feature_select",
    "fit_explainer",
    "fit_restarts",
    "fitting_partitions",
    "kmeans_from_centers",
    "labels_ari",
    "materialize_for_fitting",
    "model_input_column",
    "name_score",
    "names_column",
    "new_clusterer",
    "reproducibility",
    "refit",
    "sample",
    "seeded_from_bisecting",
    "sweep_sample",
    "segment_zscores",
    "silhouette",
    "simplify_conditions",
    "split_tree",
    "squared_distance",
    "sweep",
    "sweep_and_fit",
    "tree_leaves",
    "ward_tree",
    "with_distance",
]
