"""The Spark stages measured against their peers: features, K-means, the
segment sweep, propensity, ingest and uplift (`run.py` lists them).
"""

from __future__ import annotations

from pathlib import Path

from bench_common import (
    BENCH,
    KMEANS_MAX_ITER,
    REPO,
    K,
    Peaks,
    iteration_detail,
    median,
    row,
    timed,
    timed_fits,
)


def bench_features(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> dict:
    from measure_features import compare, peer_metrics, spark_metrics

    from shopseg import features as fx
    from shopseg import tables as t

    conf = config.features
    events = lake.read(t.SILVER_EVENTS.name)
    as_of = conf.as_of_date or fx.default_as_of(events)
    window = fx.filter_window(events, as_of, conf.lookback_days)
    categories = conf.top_categories or fx.top_categories(
        window, lake.read(t.BRONZE_ITEMS.name), conf.top_categories_n
    )

    def metrics():
        return spark_metrics(lake, conf, as_of, categories)

    with Peaks(jvm) as spark_mem:
        seconds, _, warm = timed(
            lambda: metrics().write.format("noop").mode("overwrite").save(), repeats
        )
    peer = peer_metrics(lake, conf, as_of, categories)
    with Peaks(None) as peer_mem:
        peer_seconds, duck, peer_warm = timed(peer, repeats)
    mine = metrics().toArrow()  # one row per user: the comparison, not the timing
    diffs = compare(mine, duck.select(mine.column_names))
    differing = sum(diffs.values())
    return row(
        "features",
        n_events,
        seconds,
        "duckdb",
        peer_seconds,
        quality={"users": mine.num_rows, "differing_values": differing},
        peer_quality={"users": duck.num_rows, "differing_values": differing},
        equal_quality=differing == 0,
        throughput=n_events / median(seconds),
        throughput_unit="events/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={"differences": diffs},
    )


def prepared_vectors(spark, lake, config):
    from shopseg import segment as sg
    from shopseg import tables as t
    from shopseg.pipeline import latest

    conf = config.segment
    features = lake.read(t.USER_FEATURES.name)
    snapshot = features.filter(features[t.AS_OF_DATE] == latest(features, t.AS_OF_DATE))
    prep = sg.build_prep_pipeline(conf.features, conf.pca_components).fit(snapshot)
    col = sg.model_input_column(prep)
    rows = snapshot.count()
    partitions = sg.fitting_partitions(
        rows, spark.sparkContext.defaultParallelism, conf.min_rows_per_partition
    )
    return sg.materialize_for_fitting(prep.transform(snapshot).select(col), partitions), col


def bench_kmeans(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> dict:
    from pyspark.ml.functions import vector_to_array
    from sklearn.cluster import KMeans

    from shopseg import segment as sg

    data, col = prepared_vectors(spark, lake, config)
    users = data.count()
    # Each side whole and stopped after one iteration: what a fit costs besides
    # its iterations (reading the data, k-means|| seeding, the summary).
    mine = timed_fits(
        lambda max_iter: sg.new_clusterer(
            "kmeans", K, config.segment.seed, max_iter, col, config.segment.init_steps
        ).fit(data),
        KMEANS_MAX_ITER,
        repeats,
        jvm,
    )
    arrow = data.select(vector_to_array(col).alias("v")).toArrow().column("v").combine_chunks()
    x = arrow.values.to_numpy(zero_copy_only=False).reshape(len(arrow), -1)
    theirs = timed_fits(
        lambda max_iter: KMeans(
            n_clusters=K,
            n_init=1,
            max_iter=max_iter,
            random_state=config.segment.seed,
            algorithm="lloyd",
        ).fit(x),
        KMEANS_MAX_ITER,
        repeats,
        None,
    )
    iterations = [m.summary.numIter for m in mine.models]
    peer_iterations = [int(m.n_iter_) for m in theirs.models]
    cost = min(m.summary.trainingCost for m in mine.models)
    peer_cost = min(float(m.inertia_) for m in theirs.models)
    return row(
        "kmeans",
        n_events,
        [s / n for s, n in zip(mine.seconds, iterations, strict=True)],
        "scikit-learn",
        [s / n for s, n in zip(theirs.seconds, peer_iterations, strict=True)],
        quality={"inertia": cost, "iterations": iterations},
        peer_quality={"inertia": peer_cost, "iterations": peer_iterations},
        equal_quality=abs(cost - peer_cost) <= 0.01 * peer_cost,
        throughput=users * median(iterations) / median(mine.seconds),
        throughput_unit="user-iterations/s",
        mem=(mine.memory, theirs.memory),
        warmup=(
            [s / m.summary.numIter for s, m in zip(mine.warm, mine.warm_models, strict=True)],
            [s / m.n_iter_ for s, m in zip(theirs.warm, theirs.warm_models, strict=True)],
        ),
        detail={
            "users": users,
            "dimensions": int(x.shape[1]),
            "k": K,
            **iteration_detail(
                (mine.seconds, mine.one_iteration, iterations),
                (theirs.seconds, theirs.one_iteration, peer_iterations),
            ),
        },
    )


def bench_segment_sweep(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> dict:
    from measure_sweep import settings_of, sklearn_sweep, spark_sweep
    from pyspark.ml.functions import vector_to_array

    data, col = prepared_vectors(spark, lake, config)
    users = data.count()
    settings = settings_of(config)
    with Peaks(jvm) as spark_mem:
        seconds, result, warm = timed(lambda: spark_sweep(data, col, settings), repeats)
    arrow = data.select(vector_to_array(col).alias("v")).toArrow().column("v").combine_chunks()
    x = arrow.values.to_numpy(zero_copy_only=False).reshape(len(arrow), -1)
    with Peaks(None) as peer_mem:
        peer_seconds, peer, peer_warm = timed(lambda: sklearn_sweep(x, settings), repeats)
    return row(
        "segment_sweep",
        n_events,
        seconds,
        "scikit-learn",
        peer_seconds,
        quality={"k": result["k"], "wssse": round(result["wssse"], 1), "fits": result["fits"]},
        peer_quality={"k": peer["k"], "wssse": round(peer["wssse"], 1), "fits": peer["fits"]},
        equal_quality=result["k"] == peer["k"]
        and abs(result["wssse"] - peer["wssse"]) <= 0.01 * peer["wssse"],
        throughput=users / median(seconds),
        throughput_unit="users/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={
            "users": users,
            "swept_users": min(users, settings.sweep_rows),
            "ks": settings.ks,
            "restarts": settings.restarts,
            "sweep_rows": result["rows"],
            "peer_sweep_rows": peer["rows"],
        },
    )


def bench_propensity(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> list:
    """Two rows on the same vectors against the same LightGBM: MLlib's GBT of the
    same shape (xgboost.spark's fit of that shape in its detail), and the stage's
    logistic regression."""
    from measure_propensity import (
        GBT_PARAMS,
        lightgbm_gbt,
        logistic_params,
        propensity_vectors,
        spark_gbt,
        spark_logistic,
        spark_scores,
        to_numpy,
        xgboost_spark_gbt,
    )
    from sklearn.metrics import average_precision_score

    from shopseg.spark import local_cores

    seed = config.propensity.seed
    train, val = propensity_vectors(spark, lake, config)
    x, y = to_numpy(train)
    x_val, y_val = to_numpy(val)
    with Peaks(jvm) as spark_mem:
        seconds, model, warm = timed(lambda: spark_gbt(train, seed), repeats)
    with Peaks(None) as peer_mem:
        peer_seconds, peer, peer_warm = timed(lambda: lightgbm_gbt(x, y, seed), repeats)
    workers = local_cores(config.spark.master)  # barrier tasks: one per core
    xgb_seconds, xgb, xgb_warm = timed(lambda: xgboost_spark_gbt(train, seed, workers), repeats)
    params = logistic_params(config)
    with Peaks(jvm) as lr_mem:
        lr_seconds, lr, lr_warm = timed(lambda: spark_logistic(train, params, seed), repeats)

    def ap(scores) -> float:
        return round(float(average_precision_score(y_val, scores)), 4)

    gbt_ap, peer_ap, lr_ap = (
        ap(spark_scores(model, val)),
        ap(peer.predict_proba(x_val)[:, 1]),
        ap(spark_scores(lr, val)),
    )
    detail = {
        "training_rows": int(len(y)),
        "validation_rows": int(len(y_val)),
        "features": int(x.shape[1]),
        "positive_share": round(float(y.mean()), 4),
    }
    xgb_ap = ap(spark_scores(xgb, val))
    gbt = row(
        "propensity",
        n_events,
        seconds,
        "lightgbm",
        peer_seconds,
        quality={"average_precision": gbt_ap},
        peer_quality={"average_precision": peer_ap},
        equal_quality=abs(gbt_ap - peer_ap) <= 0.01,
        throughput=len(y) / median(seconds),
        throughput_unit="training rows/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={
            **detail,
            "params": GBT_PARAMS,
            "xgboost_spark": {
                "seconds": round(median(xgb_seconds), 2),
                "warmup_seconds": [round(s, 2) for s in xgb_warm],
                "average_precision": xgb_ap,
                "workers": workers,
                "ratio_to_mllib_gbt": round(median(xgb_seconds) / median(seconds), 3),
            },
        },
    )
    logistic = row(
        "propensity_logistic",
        n_events,
        lr_seconds,
        "lightgbm",
        peer_seconds,
        quality={"average_precision": lr_ap},
        peer_quality={"average_precision": peer_ap},
        equal_quality=abs(lr_ap - peer_ap) <= 0.01,
        throughput=len(y) / median(lr_seconds),
        throughput_unit="training rows/s",
        mem=(lr_mem, peer_mem),
        warmup=(lr_warm, peer_warm),
        detail={**detail, "params": params, "peer_params": GBT_PARAMS},
    )
    return [gbt, logistic]


def stage_accounting(root: Path) -> dict:
    """Records read, loaded and quarantined per reason, from what the stage wrote."""
    from deltalake import DeltaTable

    log = DeltaTable(str(root / "bronze" / "ingest_log")).to_pandas()
    quarantine = DeltaTable(str(root / "bronze" / "quarantine")).to_pandas()
    return {
        "records_read": int(log["records_read"].sum()),
        "loaded": int(log["loaded"].sum()),
        "quarantined": {k: int(v) for k, v in quarantine["reason"].value_counts().items()},
    }


def differing_counts(a: dict, b: dict) -> int:
    keys = set(a["quarantined"]) | set(b["quarantined"])
    differ = sum(a["quarantined"].get(k, 0) != b["quarantined"].get(k, 0) for k in keys)
    return differ + (a["records_read"] != b["records_read"]) + (a["loaded"] != b["loaded"])


def bench_ingest(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> dict:
    import shutil
    import tempfile

    from ingest_peer import run as peer_ingest

    from shopseg.cli import main as shopseg

    events = Path(lake.root) / "raw" / "events"
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=BENCH / "data"))
    runs = iter(range(1_000))

    def spark_ingest() -> Path:
        root = work / f"spark-{next(runs)}"
        args = ["ingest", "--conf", str(REPO / "conf" / "local.yaml")]
        for item in (f"lakehouse.root={root}", "ingest.sources=[events]",
                     f"sources.events.path={events}"):  # fmt: skip
            args += ["--set", item]
        if shopseg(args) != 0:
            raise RuntimeError(f"ingest into {root} failed")
        return root

    def peer() -> dict:
        return peer_ingest(f"{events}/*/*.txt", config.sources["events"], work / "duckdb")

    try:
        with Peaks(jvm) as spark_mem:
            seconds, root, warm = timed(spark_ingest, repeats)
        ours = stage_accounting(root)
        with Peaks(None) as peer_mem:
            peer_seconds, theirs, peer_warm = timed(peer, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    differ = differing_counts(ours, theirs)
    return row(
        "ingest",
        n_events,
        seconds,
        "duckdb",
        peer_seconds,
        quality={
            "records": ours["records_read"],
            "loaded": ours["loaded"],
            "differing_counts": differ,
        },  # fmt: skip
        peer_quality={
            "records": theirs["records_read"],
            "loaded": theirs["loaded"],
            "differing_counts": differ,
        },  # fmt: skip
        equal_quality=differ == 0,
        throughput=ours["records_read"] / median(seconds),
        throughput_unit="records/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={
            "files": len(list(events.glob("*/*.txt"))),
            "quarantined": ours["quarantined"],
            "peer_quarantined": theirs["quarantined"],
        },
    )


def bench_uplift(spark, lake, config, n_events: int, repeats: int, jvm: int | None) -> dict:
    from measure_uplift import (
        GBT_PARAMS,
        qini_scores,
        sklift_t_learner,
        spark_t_learner,
        spark_uplift,
        to_numpy,
        uplift_vectors,
        xgboost_spark_t_learner,
        xgboost_uplift,
    )

    from shopseg.spark import local_cores

    seed = config.uplift.seed
    prep, train, val = uplift_vectors(spark, lake, config)
    x, y, treated = to_numpy(train)
    x_val, y_val, treated_val = to_numpy(val)
    with Peaks(jvm) as spark_mem:
        seconds, model, warm = timed(lambda: spark_t_learner(prep, train, seed), repeats)
    with Peaks(None) as peer_mem:
        peer_seconds, peer, peer_warm = timed(
            lambda: sklift_t_learner(x, y, treated, seed), repeats
        )
    workers = local_cores(config.spark.master)  # barrier tasks: one per core
    xgb_seconds, xgb, xgb_warm = timed(
        lambda: xgboost_spark_t_learner(train, seed, workers), repeats
    )
    quality = qini_scores(spark, spark_uplift(model, val), y_val, treated_val)
    peer_quality = qini_scores(spark, peer.predict(x_val), y_val, treated_val)
    xgb_quality = qini_scores(spark, xgboost_uplift(xgb, val), y_val, treated_val)
    return row(
        "uplift",
        n_events,
        seconds,
        "scikit-uplift",
        peer_seconds,
        quality=quality,
        peer_quality=peer_quality,
        equal_quality=bool(abs(quality["qini"] - peer_quality["qini"]) <= 0.005),
        throughput=len(y) / median(seconds),
        throughput_unit="training rows/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={
            "training_rows": int(len(y)),
            "validation_rows": int(len(y_val)),
            "features": int(x.shape[1]),
            "treated_share": round(float(treated.mean()), 4),
            "conversion": round(float(y.mean()), 4),
            "params": GBT_PARAMS,
            "xgboost_spark": {
                "seconds": round(median(xgb_seconds), 2),
                "warmup_seconds": [round(s, 2) for s in xgb_warm],
                **xgb_quality,
                "workers": workers,
                "ratio_to_mllib_gbt": round(median(xgb_seconds) / median(seconds), 3),
            },
        },
    )
