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
"""

from __future__ import annotations

import collections
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import DecisionTreeClassificationModel, DecisionTreeClassifier
from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel, KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import SegmentFeature, SegmentName
from shopseg.spark import checkpointed

# Columns the feature pipeline adds to the user features.
LOG_PREFIX = "seg_f_"  # transformed (log1p where configured) feature, before imputation
RAW_PREFIX = "seg_u_"  # untransformed feature expression, for the explanation tree
IMPUTED = "_imp"
RAW_VECTOR = "seg_raw"
SCALED = "seg_scaled"
REDUCED = "seg_pca"
UNSCALED = "seg_unscaled"
PREDICTION = t.SEGMENT_ID

NEW = "(new)"
GONE = "(gone)"


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


# --------------------------------------------------------------------------- clustering


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
    current = df.rdd.getNumPartitions()
    if current > partitions:
        df = df.coalesce(partitions)
    elif current < partitions:
        df = df.repartition(partitions)
    return checkpointed(df)


def centers_column(centers: Sequence[Sequence[float]], prediction: Column) -> Column:
    """The centroid (array<double>) of each row's cluster."""
    literal = F.array(*[F.array(*[F.lit(float(v)) for v in c]) for c in centers])
    return F.element_at(literal, prediction + 1)


def squared_distance(x: Column, c: Column) -> Column:
    """Squared Euclidean distance of two array<double> columns (built-ins only)."""
    return F.aggregate(
        F.zip_with(x, c, lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda acc, v: acc + v
    )


def with_distance(
    scored: DataFrame, centers: Sequence[Sequence[float]], features_col: str
) -> DataFrame:
    """Adds `distance`: Euclidean distance to the row's centroid."""
    x = vector_to_array(F.col(features_col))
    c = centers_column(centers, F.col(PREDICTION))
    return scored.withColumn("distance", F.sqrt(squared_distance(x, c)))


@dataclass
class ClusterStats:
    """Quality measures of one clustering, from one aggregation."""

    wssse: float
    calinski_harabasz: float
    davies_bouldin: float
    sizes: dict[int, int]


def cluster_stats(
    scored: DataFrame, centers: Sequence[Sequence[float]], features_col: str
) -> ClusterStats:
    """WSSSE, Calinski-Harabasz and Davies-Bouldin with one Spark aggregation.

    Per cluster: size, mean vector, sum of squared and of plain distances to
    the model's centroid. CH = (B / (k-1)) / (W / (n-k)) with B the size-weighted
    squared distances of the cluster means to the overall mean and W the
    WSSSE; DB = mean over clusters of max_j (S_i + S_j) / |c_i - c_j| with S
    the mean distance to the centroid.
    """
    x = vector_to_array(F.col(features_col))
    d2 = squared_distance(x, centers_column(centers, F.col(PREDICTION)))
    rows = (
        scored.select(PREDICTION, features_col, d2.alias("_d2"))
        .groupBy(PREDICTION)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("_d2").alias("ss"),
            F.sum(F.sqrt("_d2")).alias("s"),
            Summarizer.mean(F.col(features_col)).alias("mean"),
        )
        .collect()
    )
    k = len(centers)
    n = sum(r["n"] for r in rows)
    wssse = sum(r["ss"] for r in rows)
    dim = len(centers[0])
    overall = [sum(r["n"] * r["mean"][d] for r in rows) / n for d in range(dim)]
    between = sum(r["n"] * sum((r["mean"][d] - overall[d]) ** 2 for d in range(dim)) for r in rows)
    used = len(rows)
    ch = (between / (used - 1)) / (wssse / (n - used)) if used > 1 and n > used and wssse else 0.0
    spread = {r[PREDICTION]: r["s"] / r["n"] for r in rows}
    db_terms = []
    for i in spread:
        ratios = [
            (spread[i] + spread[j]) / max(math.dist(centers[i], centers[j]), 1e-12)
            for j in spread
            if j != i
        ]
        if ratios:
            db_terms.append(max(ratios))
    db = sum(db_terms) / len(db_terms) if db_terms else 0.0
    sizes = {r[PREDICTION]: r["n"] for r in rows}
    return ClusterStats(wssse, ch, db, {i: sizes.get(i, 0) for i in range(k)})


def silhouette(scored: DataFrame, features_col: str) -> float:
    """Silhouette (squared Euclidean, Spark's ClusteringEvaluator); NaN with one cluster."""
    if scored.select(PREDICTION).distinct().limit(2).count() < 2:
        return float("nan")
    evaluator = ClusteringEvaluator(
        featuresCol=features_col, predictionCol=PREDICTION, metricName="silhouette"
    )
    return evaluator.evaluate(scored)


def adjusted_rand_index(counts: Iterable[tuple[object, object, int]]) -> float:
    """ARI from a contingency table given as (label_a, label_b, count) triples."""
    cells = list(counts)
    n = sum(c for _, _, c in cells)
    if n < 2:
        return 1.0

    def pairs(x: float) -> float:
        return x * (x - 1) / 2

    a: collections.Counter = collections.Counter()
    b: collections.Counter = collections.Counter()
    for la, lb, c in cells:
        a[la] += c
        b[lb] += c
    index = sum(pairs(c) for _, _, c in cells)
    sum_a = sum(pairs(v) for v in a.values())
    sum_b = sum(pairs(v) for v in b.values())
    expected = sum_a * sum_b / pairs(n)
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def labels_ari(df: DataFrame, a: str, b: str) -> float:
    """ARI between two label columns of a DataFrame (the contingency table is k x k)."""
    return adjusted_rand_index((r[0], r[1], r[2]) for r in df.groupBy(a, b).count().collect())


@dataclass
class SweepRow:
    algorithm: str
    k: int
    wssse: float
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    stability: float
    fit_seconds: float
    chosen: bool = False


@dataclass
class Sweep:
    rows: list[SweepRow]
    models: dict[tuple[str, int], KMeansModel | BisectingKMeansModel] = field(repr=False)
    seconds: float = 0.0
    # Models fitted, restarts and stability fits included.
    fits: int = 0

    def as_records(self) -> list[dict]:
        return [r.__dict__.copy() for r in self.rows]


def sample(df: DataFrame, rows: int, total: int, seed: int) -> DataFrame:
    """About `rows` rows of `df` (all when it is smaller)."""
    if total <= rows:
        return df
    return df.sample(fraction=min(1.0, rows * 1.05 / total), seed=seed).limit(rows)


def reproducibility(
    data: DataFrame, fits: Sequence[KMeansModel | BisectingKMeansModel], features_col: str
) -> float:
    """Highest adjusted Rand index between the best fit's labels and another fit's."""
    if len(fits) < 2:
        return float("nan")
    best = min(range(len(fits)), key=lambda i: fits[i].summary.trainingCost)
    labelled = data.select(features_col)
    for i, fit in enumerate(fits):
        labelled = fit.transform(labelled).withColumnRenamed(PREDICTION, f"_l{i}")
    labelled = labelled.drop(features_col).cache()
    try:
        return max(
            labels_ari(labelled, f"_l{best}", f"_l{i}") for i in range(len(fits)) if i != best
        )
    finally:
        labelled.unpersist()


def sweep(
    data: DataFrame,
    *,
    algorithms: Sequence[str],
    ks: Sequence[int],
    seed: int,
    restarts: int,
    max_iter: int,
    features_col: str,
    silhouette_rows: int,
    stability_rows: int,
    init_steps: int = 5,
    bisecting_restarts: int | None = None,
    log=None,
) -> Sweep:
    """Fit every (algorithm, k) and measure it.

    `data` should be materialized, not cached (`materialize_for_fitting`); the
    samples drawn from it are materialized the same way.

    `bisecting_restarts`, when given, replaces `restarts` for bisecting
    K-means. Stability is `reproducibility` of the restarts on the stability sample.
    When every row is in that sample the restarts themselves are used (no
    extra fitting); otherwise `max(2, restarts)` more fits run on the sample
    (seeds from seed+1000).
    """
    started = time.perf_counter()
    total = data.count()
    partitions = data.rdd.getNumPartitions()

    def drawn(rows: int, seed_: int) -> DataFrame:
        if total <= rows:
            return data
        return materialize_for_fitting(sample(data, rows, total, seed_), partitions)

    sil_sample = drawn(silhouette_rows, seed)
    per_algorithm = {a: restarts for a in algorithms}
    if bisecting_restarts is not None and "bisecting" in per_algorithm:
        per_algorithm["bisecting"] = bisecting_restarts
    stab_sample = None
    n_fits = 0
    rows, models = [], {}
    for algorithm in algorithms:
        restarts = per_algorithm[algorithm]
        reuse_restarts = total <= stability_rows and restarts >= 2
        if not reuse_restarts and stab_sample is None:
            stab_sample = drawn(stability_rows, seed + 1)
        sample_for_stability = data if reuse_restarts else stab_sample
        for k in ks:
            fit_started = time.perf_counter()
            fits = fit_restarts(
                data,
                algorithm,
                k,
                seed=seed,
                restarts=restarts,
                max_iter=max_iter,
                features_col=features_col,
                init_steps=init_steps,
            )
            fit_seconds = (time.perf_counter() - fit_started) / restarts
            model = best_fit(fits)
            centers = [list(c) for c in model.clusterCenters()]
            stats = cluster_stats(model.transform(data), centers, features_col)
            sil = silhouette(model.transform(sil_sample), features_col)
            n_fits += restarts
            if reuse_restarts:
                stable_fits = fits
            else:
                n_fits += max(2, restarts)
                stable_fits = fit_restarts(
                    sample_for_stability,
                    algorithm,
                    k,
                    seed=seed + 1000,
                    restarts=max(2, restarts),
                    max_iter=max_iter,
                    features_col=features_col,
                    init_steps=init_steps,
                )
            stability = reproducibility(sample_for_stability, stable_fits, features_col)
            row = SweepRow(
                algorithm, k, stats.wssse, sil, stats.calinski_harabasz, stats.davies_bouldin,
                stability, fit_seconds,
            )  # fmt: skip
            rows.append(row)
            models[(algorithm, k)] = model
            if log:
                log.info(
                    "%s k=%d: WSSSE %.1f, silhouette %.3f, CH %.1f, DB %.3f, stability %.3f "
                    "(%.1fs per fit)",
                    algorithm, k, stats.wssse, sil, stats.calinski_harabasz,
                    stats.davies_bouldin, stability, fit_seconds,
                )  # fmt: skip
    return Sweep(rows, models, time.perf_counter() - started, n_fits)


def elbow(ks: Sequence[int], costs: Sequence[float], candidates: Sequence[int]) -> int:
    """Kneedle: the candidate k whose normalised cost lies farthest below the chord.

    The chord runs from the first to the last k of the whole sweep; costs are
    scaled to [0, 1]. With fewer than three k (no curve) the candidate with
    the lowest cost per k, i.e. the largest, is taken.
    """
    if len(ks) < 3:
        return max(candidates)
    lo, hi = min(costs), max(costs)
    span_k = ks[-1] - ks[0]

    def below_chord(k: int) -> float:
        i = list(ks).index(k)
        x = (k - ks[0]) / span_k
        y = (costs[i] - lo) / (hi - lo) if hi > lo else 0.0
        return (1 - x) - y

    return max(candidates, key=lambda k: (below_chord(k), -k))


def consensus_k(rows: Sequence[SweepRow]) -> int | None:
    """The k that at least two of silhouette (max), Calinski-Harabasz (max) and
    Davies-Bouldin (min) pick, or None. An index whose best value is tied, or
    not a number, does not vote."""

    def vote(values: dict[int, float], best) -> int | None:
        values = {k: v for k, v in values.items() if not math.isnan(v)}
        if not values:
            return None
        top = best(values.values())
        winners = [k for k, v in values.items() if v == top]
        return winners[0] if len(winners) == 1 else None

    votes = [
        vote({r.k: r.silhouette for r in rows}, max),
        vote({r.k: r.calinski_harabasz for r in rows}, max),
        vote({r.k: r.davies_bouldin for r in rows}, min),
    ]
    counts = collections.Counter(v for v in votes if v is not None)
    if not counts:
        return None
    k, n = counts.most_common(1)[0]
    return k if n >= 2 else None


def choose(rows: Sequence[SweepRow], min_stability: float) -> SweepRow:
    """The documented rule (module docstring): per algorithm the stable k that
    the validity indices agree on, else the stable elbow; then silhouette."""
    picks = []
    for algorithm in dict.fromkeys(r.algorithm for r in rows):
        mine = sorted((r for r in rows if r.algorithm == algorithm), key=lambda r: r.k)
        ks = [r.k for r in mine]
        stable = [r.k for r in mine if r.stability >= min_stability] or ks
        k = consensus_k([r for r in mine if r.k in stable])
        if k is None:
            k = elbow(ks, [r.wssse for r in mine], stable)
        picks.append(next(r for r in mine if r.k == k))

    def rank(r: SweepRow) -> tuple[float, float]:
        sil = r.silhouette if not math.isnan(r.silhouette) else -1.0
        return (sil, -r.wssse)

    return max(picks, key=rank)


# --------------------------------------------------------------------------- names


def segment_zscores(scored: DataFrame, names: Sequence[str]) -> dict[int, dict[str, float]]:
    """Mean standardised value of each feature per segment, against the population.

    The scaled vector is divided by the standard deviation but not centred,
    so the population mean (size-weighted mean of the segment means) is
    subtracted here: 0 = like everyone, +1 = one standard deviation above.
    """
    rows = (
        scored.groupBy(PREDICTION)
        .agg(Summarizer.mean(F.col(SCALED)).alias("m"), F.count(F.lit(1)).alias("n"))
        .collect()
    )
    total = sum(r["n"] for r in rows)
    overall = [sum(r["n"] * r["m"][d] for r in rows) / total for d in range(len(names))]
    return {
        r[PREDICTION]: {name: float(r["m"][d] - overall[d]) for d, name in enumerate(names)}
        for r in rows
    }


def name_score(z: Mapping[str, float], rule: SegmentName) -> float:
    """Mean of the z-scores a rule wants high, and of minus those it wants low."""
    terms = [z[f] for f in rule.high] + [-z[f] for f in rule.low]
    return sum(terms) / len(terms)


def describe(z: Mapping[str, float], top: int = 2, threshold: float = 0.3) -> str:
    """'high frequency, low views': the features that set a segment apart most."""
    ranked = sorted(z.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    parts = [f"{'high' if v > 0 else 'low'} {k}" for k, v in ranked[:top] if abs(v) >= threshold]
    return ", ".join(parts) or "close to average"


def assign_names(
    zscores: Mapping[int, Mapping[str, float]],
    rules: Sequence[SegmentName],
    min_score: float,
) -> dict[int, str]:
    """Unique, deterministic names: best (segment, rule) pairs first, greedily.

    A segment no rule fits (score below `min_score`) is named after the
    features that set it apart ("High tenure_days, low views"), with a
    numeric suffix should that repeat. Ties are broken by segment id and
    rule order, so the same centroids always give the same names.
    """
    pairs = sorted(
        (
            (name_score(z, rule), seg, i)
            for seg, z in zscores.items()
            for i, rule in enumerate(rules)
        ),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    names: dict[int, str] = {}
    used_rules: set[int] = set()
    for score_, seg, i in pairs:
        if score_ < min_score:
            break
        if seg in names or i in used_rules:
            continue
        names[seg] = rules[i].name
        used_rules.add(i)
    taken = set(names.values())
    for seg in sorted(zscores):
        if seg in names:
            continue
        base = describe(zscores[seg])
        base = base[0].upper() + base[1:]
        name, n = base, 2
        while name in taken:
            name, n = f"{base} ({n})", n + 1
        names[seg] = name
        taken.add(name)
    return names


def names_column(names: Mapping[int, str]) -> Column:
    """segment_id -> segment_name as a map lookup (no join, no UDF)."""
    pairs = [x for seg, name in sorted(names.items()) for x in (F.lit(seg), F.lit(name))]
    return F.element_at(F.create_map(*pairs), F.col(PREDICTION))


# --------------------------------------------------------------------------- outputs


def build_user_segments(
    scored: DataFrame,
    names: Mapping[int, str],
    model_version: str,
    outlier_percentile: float,
) -> DataFrame:
    """gold/user_segments from scored users (with `distance`)."""
    by_segment = Window.partitionBy(PREDICTION)
    cutoff = F.percentile_approx("distance", outlier_percentile, 10_000).over(by_segment)
    return (
        scored.withColumn(t.SEGMENT_NAME, names_column(names))
        .withColumn("is_outlier", F.col("distance") > cutoff)
        .withColumn(t.MODEL_VERSION, F.lit(model_version))
        .select(*t.USER_SEGMENTS.columns)
    )


def _map_of(pairs: Sequence[tuple[str, Column]]) -> Column:
    """map<string, double> from (key, value column) pairs."""
    return F.create_map(*[x for key, value in pairs for x in (F.lit(key), value.cast("double"))])


def build_profiles(
    segments: DataFrame,
    features: DataFrame,
    profile_features: Sequence[str],
    zscores: Mapping[int, Mapping[str, float]],
    strategies: Mapping[str, str],
    rules: Mapping[int, list[str]],
    tree_fidelity: float,
    algorithm: str,
    k: int,
    values: DataFrame | None = None,
    propensity: DataFrame | None = None,
) -> DataFrame:
    """gold/segment_profiles: size, share, medians and lift per segment, plus the explanations.

    Lift is the segment mean over the population mean (1.0 = like everyone;
    null where the population mean is 0 or null). Medians, lifts and
    z-scores are maps keyed by feature name, so the table's schema does not
    depend on which features are configured. With `values` (one snapshot of
    gold/customer_value), the mean and median CLV and the share at high
    churn risk of the segment's customers who have a value; else null. With
    `propensity` (one snapshot of gold/propensity_scores), the mean calibrated
    probability per target of the segment's scored users (`mean_propensity`).
    """
    joined = segments.join(features.select(t.USER_ID, *profile_features), on=t.USER_ID, how="inner")
    if values is not None:
        joined = joined.join(
            values.select(
                t.USER_ID,
                F.col("clv").alias("_clv"),
                (F.col("churn_risk") == "high").cast("double").alias("_at_risk"),
            ),
            on=t.USER_ID,
            how="left",
        )
    else:
        joined = joined.withColumn("_clv", F.lit(None).cast("double")).withColumn(
            "_at_risk", F.lit(None).cast("double")
        )
    population = joined.agg(*[F.avg(c).alias(c) for c in profile_features]).first().asDict()
    total = F.sum("size").over(Window.partitionBy())
    per_segment = joined.groupBy(t.AS_OF_DATE, PREDICTION, t.SEGMENT_NAME, t.MODEL_VERSION).agg(
        F.count(F.lit(1)).alias("size"),
        F.count(F.when(F.col("is_outlier"), 1)).alias("outliers"),
        *[F.percentile_approx(c, 0.5, 10_000).alias(f"_median_{c}") for c in profile_features],
        *[F.avg(c).alias(f"_mean_{c}") for c in profile_features],
        F.avg("_clv").alias("mean_clv"),
        F.percentile_approx("_clv", 0.5, 10_000).cast("double").alias("median_clv"),
        F.avg("_at_risk").alias("at_risk_share"),
    )
    z_names = sorted(next(iter(zscores.values())).keys()) if zscores else []
    extra = segments.sparkSession.createDataFrame(
        [
            (
                seg,
                describe(zscores[seg]),
                list(rules.get(seg, [])),
                {n: float(zscores[seg][n]) for n in z_names},
            )
            for seg in sorted(zscores)
        ],
        f"{PREDICTION} int, description string, rules array<string>, z_scores map<string, double>",
    )
    strategy = F.element_at(
        F.create_map(
            *[x for name, s in sorted(strategies.items()) for x in (F.lit(name), F.lit(s))]
        )
        if strategies
        else F.create_map(F.lit(""), F.lit("")),
        F.col(t.SEGMENT_NAME),
    )
    medians = _map_of([(c, F.col(f"_median_{c}")) for c in profile_features])
    lifts = _map_of(
        [
            (c, F.col(f"_mean_{c}") / F.lit(population[c]) if population[c] else F.lit(None))
            for c in profile_features
        ]
    )
    if propensity is not None:
        per_target = (
            segments.select(t.USER_ID, PREDICTION)
            .join(propensity.select(t.USER_ID, "target", "probability"), t.USER_ID, "inner")
            .groupBy(PREDICTION, "target")
            .agg(F.avg("probability").alias("p"))
        )
        means = per_target.groupBy(PREDICTION).agg(
            F.map_from_entries(F.collect_list(F.struct("target", "p"))).alias("mean_propensity")
        )
        per_segment = per_segment.join(means, on=PREDICTION, how="left")
    else:
        per_segment = per_segment.withColumn(
            "mean_propensity", F.lit(None).cast("map<string, double>")
        )
    return (
        per_segment.join(extra, on=PREDICTION, how="left")
        .withColumn("share", F.col("size") / total)
        .withColumn("strategy", F.coalesce(strategy, F.lit("")))
        .withColumn("tree_fidelity", F.lit(float(tree_fidelity)))
        .withColumn("algorithm", F.lit(algorithm))
        .withColumn("k", F.lit(k))
        .withColumn("medians", medians)
        .withColumn("lifts", lifts)
        .select(*t.SEGMENT_PROFILES.columns)
    )


def build_transitions(
    previous: DataFrame | None, current: DataFrame, from_as_of, to_as_of
) -> DataFrame:
    """Users per (previous segment name -> current segment name), with (new) and (gone)."""
    cur = current.select(t.USER_ID, F.col(t.SEGMENT_NAME).alias("to_segment"))
    if previous is None:
        moved = cur.withColumn("from_segment", F.lit(NEW))
    else:
        prev = previous.select(t.USER_ID, F.col(t.SEGMENT_NAME).alias("from_segment"))
        moved = prev.join(cur, on=t.USER_ID, how="full").select(
            F.coalesce("from_segment", F.lit(NEW)).alias("from_segment"),
            F.coalesce("to_segment", F.lit(GONE)).alias("to_segment"),
        )
    return (
        moved.groupBy("from_segment", "to_segment")
        .agg(F.count(F.lit(1)).alias("users"))
        .withColumn("from_as_of", F.lit(from_as_of).cast("date"))
        .withColumn("to_as_of", F.lit(to_as_of).cast("date"))
        .select(*t.SEGMENT_TRANSITIONS.columns)
    )


@dataclass(frozen=True)
class TreeNode:
    node_id: int
    parent_id: int | None
    depth: int
    size: int
    cost: float
    segment_id: int | None


def bisecting_tree(nodes: Sequence[Mapping]) -> list[TreeNode]:
    """Split tree from a saved bisecting K-means model's node rows.

    Spark persists every node of the tree (`index`, `size`, `cost`,
    `children`); leaves carry the cluster index (>= 0), inner nodes negative
    indices. Node ids here are the persisted indices.
    """
    by_index = {int(n["index"]): n for n in nodes}
    parent = {int(c): i for i, n in by_index.items() for c in (n["children"] or [])}
    roots = [i for i in by_index if i not in parent]
    out: list[TreeNode] = []

    def walk(i: int, depth: int) -> None:
        n = by_index[i]
        out.append(
            TreeNode(
                i, parent.get(i), depth, int(n["size"]), float(n["cost"]), i if i >= 0 else None
            )
        )
        for c in n["children"] or []:
            walk(int(c), depth + 1)

    for r in sorted(roots):
        walk(r, 0)
    return out


def split_tree(model: BisectingKMeansModel, path: str) -> list[TreeNode]:
    """The split tree of a bisecting K-means model, read from its saved form at `path`.

    Spark has no API for the tree; its saved model holds every node (at most
    2k - 1 rows), which is what this reads.
    """
    model.write().overwrite().save(path)
    nodes = SparkSession.active().read.parquet(f"{path}/data/data").collect()
    return bisecting_tree([n.asDict() for n in nodes])


def ward_tree(centers: Sequence[Sequence[float]], sizes: Mapping[int, int]) -> list[TreeNode]:
    """Merge tree of final clusters (Ward: the merge adding least within-cluster SS first).

    Gives K-means the same drill-down a bisecting split tree gives: inner
    nodes get ids -1, -2, ... in merge order, the root is the last merge.
    Cost of a node is the Ward merge cost that created it.
    """
    active = {i: (list(map(float, c)), sizes.get(i, 0)) for i, c in enumerate(centers)}
    parent: dict[int, int] = {}
    costs: dict[int, float] = {i: 0.0 for i in active}
    node_sizes = {i: s for i, (_, s) in active.items()}
    next_id = -1
    while len(active) > 1:
        best = None
        ids = sorted(active)
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                (ca, na), (cb, nb) = active[ids[x]], active[ids[y]]
                merge = na * nb / max(na + nb, 1) * math.dist(ca, cb) ** 2
                if best is None or merge < best[0]:
                    best = (merge, ids[x], ids[y])
        merge, a, b = best
        (ca, na), (cb, nb) = active.pop(a), active.pop(b)
        total = na + nb
        center = [(u * na + v * nb) / max(total, 1) for u, v in zip(ca, cb, strict=True)]
        active[next_id] = (center, total)
        parent[a] = parent[b] = next_id
        costs[next_id] = merge
        node_sizes[next_id] = total
        next_id -= 1
    depth: dict[int, int] = {}

    def depth_of(i: int) -> int:
        if i not in depth:
            depth[i] = 0 if i not in parent else depth_of(parent[i]) + 1
        return depth[i]

    return sorted(
        (
            TreeNode(i, parent.get(i), depth_of(i), node_sizes[i], costs[i], i if i >= 0 else None)
            for i in node_sizes
        ),
        key=lambda n: (n.depth, n.node_id),
    )


# --------------------------------------------------------------------------- explanations


def fit_explainer(scored: DataFrame, max_depth: int, seed: int) -> DecisionTreeClassificationModel:
    """Surrogate tree predicting the segment from the unscaled feature values."""
    return DecisionTreeClassifier(
        featuresCol=UNSCALED,
        labelCol=PREDICTION,
        predictionCol="seg_tree_prediction",
        probabilityCol="seg_tree_probability",
        rawPredictionCol="seg_tree_raw",
        leafCol="seg_tree_leaf",
        maxDepth=max_depth,
        seed=seed,
    ).fit(scored)


_SPLIT = re.compile(r"^\s*(If|Else) \(feature (\d+) (<=|>|in|not in) (.+)\)\s*$")
_LEAF = re.compile(r"^\s*Predict: ([-\d.E]+)\s*$")


def simplify_conditions(conditions: Sequence[tuple[str, str, str]]) -> list[str]:
    """One condition per feature and direction: the tightest `<=` and `>` bound.

    A path "x <= 27.5 AND x <= 14.5" reads "x <= 14.5". Other operators
    (categorical `in`) are kept as they are. Order: first appearance.
    """
    upper: dict[str, float] = {}
    lower: dict[str, float] = {}
    order: list[tuple[str, str]] = []
    other: dict[tuple[str, str], str] = {}
    for feature, op, value in conditions:
        try:
            number = float(value)
        except ValueError:
            number = None
        if op == "<=" and number is not None:
            upper[feature] = min(number, upper.get(feature, math.inf))
        elif op == ">" and number is not None:
            lower[feature] = max(number, lower.get(feature, -math.inf))
        else:
            other[(feature, f"{op} {value}")] = f"{feature} {op} {value}"
        key = (feature, op if number is not None else f"{op} {value}")
        if key not in order:
            order.append(key)
    out = []
    for feature, op in order:
        if op == "<=":
            out.append(f"{feature} <= {upper[feature]:.4g}")
        elif op == ">":
            out.append(f"{feature} > {lower[feature]:.4g}")
        else:
            out.append(other[(feature, op)])
    return out


def tree_leaves(debug_string: str, feature_names: Sequence[str]) -> list[tuple[list[str], int]]:
    """Leaves of a tree's `toDebugString`, left to right: (conditions, predicted class).

    Spark numbers leaves in the same depth-first, left-to-right order, which
    is what the model's `leafCol` reports. Conditions are simplified to one
    bound per feature and direction (`simplify_conditions`).
    """
    leaves: list[tuple[list[str], int]] = []
    path: list[tuple[int, tuple[str, str, str]]] = []  # (indent, condition)
    for line in debug_string.splitlines():
        indent = len(line) - len(line.lstrip())
        split = _SPLIT.match(line)
        if split:
            path = [p for p in path if p[0] < indent]
            _, index, op, value = split.groups()
            path.append((indent, (feature_names[int(index)], op, value.strip())))
            continue
        leaf = _LEAF.match(line)
        if leaf:
            conditions = [c for depth, c in path if depth < indent]
            leaves.append((simplify_conditions(conditions), int(float(leaf.group(1)))))
    return leaves


def explain(
    tree: DecisionTreeClassificationModel,
    scored: DataFrame,
    feature_names: Sequence[str],
    rules_per_segment: int,
) -> tuple[float, dict[str, float], dict[int, list[str]]]:
    """Fidelity, feature importances and the top rules per segment of a surrogate tree.

    A rule is the path to a leaf predicting the segment, ranked by how many
    of the segment's users it covers, with its coverage and precision.
    """
    predicted = tree.transform(scored)
    counts = (
        predicted.groupBy("seg_tree_leaf", "seg_tree_prediction", PREDICTION)
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    )
    leaves = tree_leaves(tree.toDebugString, feature_names)
    in_leaf: collections.Counter = collections.Counter()
    per_segment: collections.Counter = collections.Counter()
    hits: collections.Counter = collections.Counter()
    correct = 0
    for r in counts:
        leaf, seg, n = int(r["seg_tree_leaf"]), int(r[PREDICTION]), int(r["n"])
        if leaves[leaf][1] != int(r["seg_tree_prediction"]):
            raise RuntimeError(
                "decision tree leaf numbering differs from its debug string; "
                "cannot attach rules to leaves"
            )
        in_leaf[leaf] += n
        per_segment[seg] += n
        hits[(leaf, seg)] += n
        correct += n if seg == int(r["seg_tree_prediction"]) else 0
    total = sum(per_segment.values())
    fidelity = correct / total if total else float("nan")
    rules: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for i, (conditions, cls) in enumerate(leaves):
        covered = hits[(i, cls)]
        if not covered:
            continue
        text = " AND ".join(conditions) or "all users"
        coverage = covered / per_segment[cls]
        precision = covered / in_leaf[i]
        rules[cls].append(
            (covered, f"{text} (covers {coverage:.0%} of segment, precision {precision:.0%})")
        )
    top = {
        seg: [text for _, text in sorted(found, key=lambda x: -x[0])[:rules_per_segment]]
        for seg, found in rules.items()
    }
    importances = {name: float(tree.featureImportances[i]) for i, name in enumerate(feature_names)}
    return fidelity, importances, top
