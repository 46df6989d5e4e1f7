"""The k sweep: cluster statistics and validity indices, stability between restarts,
and the rule that chooses k and the algorithm (the package docstring states it);
the fits themselves are in `fitting`."""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml.clustering import BisectingKMeansModel, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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
from shopseg.segment.prepare import PREDICTION
from shopseg.spark import concurrently, num_partitions, parallelism


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


def silhouette(scored: DataFrame, features_col: str, clusters: int | None = None) -> float:
    """Silhouette (squared Euclidean, Spark's ClusteringEvaluator); NaN with one cluster.
    `clusters`: the non-empty clusters of `scored` when known (else a job counts them)."""
    if clusters is None:
        clusters = scored.select(PREDICTION).distinct().limit(2).count()
    if clusters < 2:
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


def sweep_sample(
    data: DataFrame, rows: int, total: int, seed: int, cores: int, min_rows_per_partition: int
) -> DataFrame:
    """The rows a k sweep runs on: `data` itself when it has at most `rows` rows,
    else a uniform sample of about `rows` of them, materialized for fitting.

    With the sample the sweep's cost no longer grows with the shop; the
    chosen (algorithm, k) is then fitted on every row (`refit`).
    """
    if total <= rows:
        return data
    partitions = fitting_partitions(rows, cores, min_rows_per_partition)
    return materialize_for_fitting(sample(data, rows, total, seed), partitions)


def refit(
    data: DataFrame,
    row: SweepRow,
    *,
    seed: int,
    restarts: int,
    max_iter: int,
    features_col: str,
    init_steps: int = 5,
    seed_from_bisecting: bool = False,
) -> KMeansModel | BisectingKMeansModel:
    """The swept row's algorithm and k fitted on `data`: the best of `restarts`
    seeds (and, for K-means with `seed_from_bisecting`, of the bisecting start)."""
    fits = fit_restarts(
        data, row.algorithm, row.k, seed=seed, restarts=restarts, max_iter=max_iter,
        features_col=features_col, init_steps=init_steps,
    )  # fmt: skip
    if seed_from_bisecting and row.algorithm == "kmeans":
        fits.append(
            seeded_from_bisecting(
                data, row.k, seed=seed, max_iter=max_iter, features_col=features_col
            )
        )
    return best_fit(fits)


def reproducibility(
    data: DataFrame, fits: Sequence[KMeansModel | BisectingKMeansModel], features_col: str
) -> float:
    """Highest adjusted Rand index between the best fit's labels and another fit's.

    Every other fit's contingency table with the best comes from one aggregation
    (one job, where a table per fit took one each)."""
    if len(fits) < 2:
        return float("nan")
    best = min(range(len(fits)), key=lambda i: fits[i].summary.trainingCost)
    labelled = data.select(features_col)
    for i, fit in enumerate(fits):
        labelled = fit.transform(labelled).withColumnRenamed(PREDICTION, f"_l{i}")
    others = F.explode(
        F.array(*[
            F.struct(F.lit(i).alias("fit"), F.col(f"_l{i}").alias("label"))
            for i in range(len(fits)) if i != best
        ])
    )  # fmt: skip
    tables: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    counts = (
        labelled.select(F.col(f"_l{best}").alias("best"), others.alias("o"))
        .groupBy("o.fit", "best", "o.label")
        .count()
        .collect()
    )
    for row in counts:
        tables[row["fit"]].append((row["best"], row["label"], row["count"]))
    return max(adjusted_rand_index(table) for table in tables.values())


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
    seed_from_bisecting: bool = False,
    concurrent_fits: int = 1,
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

    With `seed_from_bisecting` each K-means cell also runs K-means from
    bisecting K-means' centres at its k (`kmeans_from_centers`), a candidate
    for the lowest WSSSE beside the seeded restarts; stability still compares
    the k-means|| restarts (does a random start find it again?). That
    bisecting fit (seed `seed`) is also the bisecting cell's first restart
    when bisecting is swept: fitted once, by whichever cell comes first.

    The (algorithm, k) cells are independent: `concurrent_fits` of them run
    at once (`spark.concurrently`), their rows returned in sweep order.
    """
    started = time.perf_counter()
    total = data.count()
    partitions = num_partitions(data) or parallelism(data.sparkSession)

    def drawn(rows: int, seed_: int) -> DataFrame:
        if total <= rows:
            return data
        return materialize_for_fitting(sample(data, rows, total, seed_), partitions)

    sil_sample = drawn(silhouette_rows, seed)
    per_algorithm = {a: restarts for a in algorithms}
    if bisecting_restarts is not None and "bisecting" in per_algorithm:
        per_algorithm["bisecting"] = bisecting_restarts
    stab_sample = None
    cells = []
    for algorithm in algorithms:
        reuse = total <= stability_rows and per_algorithm[algorithm] >= 2
        if not reuse and stab_sample is None:
            stab_sample = drawn(stability_rows, seed + 1)
        cells += [(algorithm, k, None if reuse else stab_sample) for k in ks]

    bisecting_at = _Once(
        lambda k: new_clusterer("bisecting", k, seed, max_iter, features_col).fit(data)
    )

    def measure(cell) -> tuple[SweepRow, KMeansModel | BisectingKMeansModel, int]:
        algorithm, k, stability_data = cell
        n = per_algorithm[algorithm]
        fit_started = time.perf_counter()
        if algorithm == "bisecting":
            # Its first restart (seed) is the K-means cell's bisecting start: fitted once.
            first, computed = bisecting_at(k)
            fits = [first] + fit_restarts(
                data, algorithm, k, seed=seed + 1, restarts=n - 1, max_iter=max_iter,
                features_col=features_col,
            )  # fmt: skip
            fitted = computed + n - 1
        else:
            fits = fit_restarts(
                data, algorithm, k, seed=seed, restarts=n, max_iter=max_iter,
                features_col=features_col, init_steps=init_steps,
            )  # fmt: skip
            fitted = n
        fit_seconds = (time.perf_counter() - fit_started) / n
        extra = []
        if seed_from_bisecting and algorithm == "kmeans":
            start, computed = bisecting_at(k)
            centers = [list(c) for c in start.clusterCenters()]
            extra = [
                kmeans_from_centers(data, centers, max_iter=max_iter, features_col=features_col)
            ]
            fitted += 1 + computed
        model = best_fit([*fits, *extra])
        centers = [list(c) for c in model.clusterCenters()]
        stats = cluster_stats(model.transform(data), centers, features_col)
        used = sum(1 for size in stats.sizes.values() if size) if sil_sample is data else None
        sil = silhouette(model.transform(sil_sample), features_col, used)
        if stability_data is None:
            stability_data, stable_fits = data, fits
        else:
            stable_fits = fit_restarts(
                stability_data, algorithm, k, seed=seed + 1000, restarts=max(2, n),
                max_iter=max_iter, features_col=features_col, init_steps=init_steps,
            )  # fmt: skip
            fitted += max(2, n)
        stability = reproducibility(stability_data, stable_fits, features_col)
        row = SweepRow(
            algorithm, k, stats.wssse, sil, stats.calinski_harabasz, stats.davies_bouldin,
            stability, fit_seconds,
        )  # fmt: skip
        if log:
            log.info(
                "%s k=%d: WSSSE %.1f, silhouette %.3f, CH %.1f, DB %.3f, stability %.3f "
                "(%.1fs per fit)",
                algorithm, k, stats.wssse, sil, stats.calinski_harabasz,
                stats.davies_bouldin, stability, fit_seconds,
            )  # fmt: skip
        return row, model, fitted

    rows, models, n_fits = [], {}, 0
    for row, model, fitted in concurrently(measure, cells, concurrent_fits):
        rows.append(row)
        models[(row.algorithm, row.k)] = model
        n_fits += fitted
    return Sweep(rows, models, time.perf_counter() - started, n_fits)


class _Once:
    """`fn(k)` computed once per k, whichever thread asks first; the others wait for it.

    Returns the value and 1 for the call that computed it, 0 for the others
    (fits are counted where they ran).
    """

    def __init__(self, fn: Callable[[int], Any]):
        self.fn = fn
        self.guard = threading.Lock()
        self.locks: dict[int, threading.Lock] = {}
        self.values: dict[int, Any] = {}

    def __call__(self, k: int) -> tuple[Any, int]:
        with self.guard:
            lock = self.locks.setdefault(k, threading.Lock())
        with lock:
            if k in self.values:
                return self.values[k], 0
            self.values[k] = self.fn(k)
            return self.values[k], 1


@dataclass
class Segmentation:
    """A sweep, its chosen row and the model kept for it."""

    sweep: Sweep
    chosen: SweepRow
    model: KMeansModel | BisectingKMeansModel = field(repr=False)
    # Rows the sweep ran on (all of them unless a sample was drawn).
    swept_rows: int
    # Fits of the chosen (algorithm, k) on every row after a sampled sweep
    # (restarts, and the bisecting start's two for K-means).
    refits: int = 0


def sweep_and_fit(
    data: DataFrame,
    rows: int,
    *,
    sweep_rows: int,
    min_stability: float,
    min_rows_per_partition: int,
    restarts: int,
    bisecting_restarts: int | None = None,
    log=None,
    **settings,
) -> Segmentation:
    """Sweep (on a uniform sample of `sweep_rows` when `data`'s `rows` are more),
    choose by the rule, and keep the chosen model fitted on every row.

    `settings` are `sweep`'s (algorithms, ks, seed, max_iter, features_col, ...).
    """
    seed, cores = settings["seed"], parallelism(data.sparkSession)
    swept = sweep_sample(data, sweep_rows, rows, seed + 2, cores, min_rows_per_partition)
    swept_rows = rows if swept is data else swept.count()
    if log and swept is not data:
        log.info("sweeping k on a uniform sample of %d of the %d rows", swept_rows, rows)
    result = sweep(
        swept, restarts=restarts, bisecting_restarts=bisecting_restarts, log=log, **settings
    )
    chosen = choose(result.rows, min_stability)
    chosen.chosen = True
    done = Segmentation(result, chosen, result.models[(chosen.algorithm, chosen.k)], swept_rows)
    if swept is data:
        return done
    started = time.perf_counter()
    n = restarts
    if chosen.algorithm == "bisecting" and bisecting_restarts is not None:
        n = bisecting_restarts
    seeded = settings.get("seed_from_bisecting", False) and chosen.algorithm == "kmeans"
    done.model = refit(
        data, chosen, seed=seed, restarts=n, max_iter=settings["max_iter"],
        features_col=settings["features_col"], init_steps=settings.get("init_steps", 5),
        seed_from_bisecting=seeded,
    )  # fmt: skip
    done.refits = n + (SEEDED_START_FITS if seeded else 0)
    if log:
        log.info(
            "%s k=%d fitted on all %d rows (%d fits) in %.1fs: WSSSE %.1f",
            chosen.algorithm, chosen.k, rows, done.refits, time.perf_counter() - started,
            done.model.summary.trainingCost,
        )  # fmt: skip
    return done


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
