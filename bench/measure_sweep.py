"""The `segment_sweep` row of `make bench`: the segment stage's whole k sweep against
scikit-learn running the same sweep on the same vectors.

Spark side, as the stage runs it (`conf/local.yaml`'s segment settings, K-means
only): the prepared vectors, a uniform sample of `segment.sweep_sample` users
when the shop has more (`segment.sweep_sample`), every k of `k_min..k_max`
with `restarts` seeded fits and, with `seed_from_bisecting`, K-means started
from bisecting K-means' centres (lowest WSSSE kept), the silhouette on
`silhouette_sample` rows, Calinski-Harabasz, Davies-Bouldin and the restarts'
stability, the documented choice (`segment.choose`), then the chosen k fitted
on every user when the sweep ran on a sample.

Peer, on the same vectors as NumPy: the same sample size, k range, restarts
(scikit-learn's Lloyd `KMeans`, k-means++, one init per seed, the same
iteration cap; scikit-learn's `BisectingKMeans` and `KMeans` from its
centres for the bisecting start) and indices from `sklearn.metrics` (silhouette on the same
number of rows, squared Euclidean as Spark's `ClusteringEvaluator`;
Calinski-Harabasz; Davies-Bouldin; the adjusted Rand index between the best
restart and the others), the same choice rule on its rows, and the same refit.

Equal quality: the same chosen k, and the kept model's WSSSE on every user
within 1% of the peer's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Seeds of the stability fits on a sample start here above `seed`, as in `segment.sweep`.
STABILITY_SEED_OFFSET = 1000


@dataclass
class SweepSettings:
    ks: list[int]
    restarts: int
    seed: int
    max_iter: int
    init_steps: int
    sweep_rows: int
    silhouette_rows: int
    stability_rows: int
    min_stability: float
    concurrent_fits: int
    min_rows_per_partition: int
    seed_from_bisecting: bool


def settings_of(config) -> SweepSettings:
    conf = config.segment
    return SweepSettings(
        ks=list(range(conf.k_min, conf.k_max + 1)),
        restarts=conf.restarts,
        seed=conf.seed,
        max_iter=conf.max_iter,
        init_steps=conf.init_steps,
        sweep_rows=conf.sweep_sample,
        silhouette_rows=conf.silhouette_sample,
        stability_rows=conf.stability_sample,
        min_stability=conf.min_stability,
        concurrent_fits=conf.concurrent_fits,
        min_rows_per_partition=conf.min_rows_per_partition,
        seed_from_bisecting=conf.seed_from_bisecting,
    )


def spark_sweep(data, col: str, s: SweepSettings) -> dict:
    """The stage's sweep, choice and refit on `data` (materialized prepared vectors)."""
    from shopseg import segment as sg

    done = sg.sweep_and_fit(
        data, data.count(), sweep_rows=s.sweep_rows, min_stability=s.min_stability,
        min_rows_per_partition=s.min_rows_per_partition, restarts=s.restarts,
        algorithms=["kmeans"], ks=s.ks, seed=s.seed, max_iter=s.max_iter, features_col=col,
        silhouette_rows=s.silhouette_rows, stability_rows=s.stability_rows,
        init_steps=s.init_steps, concurrent_fits=s.concurrent_fits,
        seed_from_bisecting=s.seed_from_bisecting,
    )  # fmt: skip
    return {
        "k": done.chosen.k,
        "wssse": float(done.model.summary.trainingCost),
        "fits": done.sweep.fits + done.refits,
        "rows": [r.__dict__ for r in done.sweep.rows],
    }


def _fits(x: np.ndarray, k: int, seeds: range, max_iter: int):
    from sklearn.cluster import KMeans

    return [
        KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed, algorithm="lloyd").fit(
            x
        )
        for seed in seeds
    ]


def _bisecting_start(x: np.ndarray, k: int, s: SweepSettings) -> list:
    """K-means from bisecting K-means' centres at `k`, when the stage fits it too."""
    from sklearn.cluster import BisectingKMeans, KMeans

    if not s.seed_from_bisecting:
        return []
    bisecting = BisectingKMeans(n_clusters=k, random_state=s.seed, max_iter=s.max_iter)
    centres = bisecting.fit(x).cluster_centers_
    lloyd = KMeans(n_clusters=k, init=centres, n_init=1, max_iter=s.max_iter, algorithm="lloyd")
    return [lloyd.fit(x)]


def _rows(x: np.ndarray, rows: int, seed: int) -> np.ndarray:
    if len(x) <= rows:
        return x
    return x[np.random.default_rng(seed).choice(len(x), rows, replace=False)]


def sklearn_sweep(x: np.ndarray, s: SweepSettings) -> dict:
    """The same sweep, indices, choice and refit with scikit-learn on `x`."""
    from sklearn import metrics
    from sklearn.metrics import silhouette_score as silhouette

    from shopseg import segment as sg

    swept = _rows(x, s.sweep_rows, s.seed + 2)
    sil_rows = _rows(swept, s.silhouette_rows, s.seed)
    reuse = len(swept) <= s.stability_rows and s.restarts >= 2
    stab_rows = swept if reuse else _rows(swept, s.stability_rows, s.seed + 1)
    rows, fits = [], 0
    for k in s.ks:
        restarts = _fits(swept, k, range(s.seed, s.seed + s.restarts), s.max_iter)
        seeded = _bisecting_start(swept, k, s)
        best = min(restarts + seeded, key=lambda m: m.inertia_)
        labels = best.labels_
        if reuse:
            # The k-means++ restarts, as the stage compares its k-means|| ones.
            stable = restarts
        else:
            offset = s.seed + STABILITY_SEED_OFFSET
            stable = _fits(stab_rows, k, range(offset, offset + max(2, s.restarts)), s.max_iter)
        fits += s.restarts + sg.SEEDED_START_FITS * len(seeded) + (0 if reuse else len(stable))
        stable_best = min(stable, key=lambda m: m.inertia_)
        anchor = stable_best.predict(stab_rows)
        stability = max(
            (metrics.adjusted_rand_score(anchor, m.predict(stab_rows)))
            for m in stable
            if m is not stable_best
        )
        rows.append(
            sg.SweepRow(
                "kmeans",
                k,
                float(best.inertia_),
                float(silhouette(sil_rows, best.predict(sil_rows), metric="sqeuclidean")),
                float(metrics.calinski_harabasz_score(swept, labels)),
                float(metrics.davies_bouldin_score(swept, labels)),
                float(stability),
                0.0,
            )
        )
    chosen = sg.choose(rows, s.min_stability)
    chosen.chosen = True
    wssse = chosen.wssse
    if len(swept) < len(x):
        seeded = _bisecting_start(x, chosen.k, s)
        refits = _fits(x, chosen.k, range(s.seed, s.seed + s.restarts), s.max_iter) + seeded
        wssse = float(min(m.inertia_ for m in refits))
        fits += s.restarts + sg.SEEDED_START_FITS * len(seeded)
    return {
        "k": chosen.k,
        "wssse": wssse,
        "fits": fits,
        "rows": [r.__dict__ for r in rows],
    }
