"""Stage `segment`: silver/user_features -> gold/user_segments, profiles, transitions, tree.

`segment.mode: fit` sweeps k and the algorithms, picks by the rule in
`shopseg.segment`, registers the fitted PipelineModel as
`segment.model_name` with alias `segment.alias`, then scores the snapshot.
`segment.mode: score` loads the model behind the alias and only scores.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import segment as sg
from shopseg import tables as t
from shopseg import tracking
from shopseg.pipeline import StageContext, latest
from shopseg.spark import is_connect, is_local_master, master_of, parallelism

NAMES_TAG = "segment_names"


def _snapshot(ctx: StageContext) -> tuple[DataFrame, dt.date, int]:
    features = ctx.read(t.USER_FEATURES.name)
    version = ctx.run.inputs[-1]["version"]
    as_of = ctx.config.segment.as_of_date
    if as_of is None:
        as_of = latest(features, t.AS_OF_DATE)
        if as_of is None:
            raise ValueError(f"{t.USER_FEATURES.name} is empty; run `features` first")
    snapshot = features.filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    return snapshot, as_of, version


def _sweep_figure(rows: list[sg.SweepRow]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("wssse", "silhouette", "calinski_harabasz", "davies_bouldin", "stability")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics, strict=True):
        for algorithm in dict.fromkeys(r.algorithm for r in rows):
            mine = [r for r in rows if r.algorithm == algorithm]
            ax.plot([r.k for r in mine], [getattr(r, metric) for r in mine], "o-", label=algorithm)
            for r in mine:
                if r.chosen:
                    ax.plot(r.k, getattr(r, metric), "k*", markersize=14)
        ax.set_title(metric)
        ax.set_xlabel("k")
    axes[0].legend()
    fig.tight_layout()
    return fig


def _fit(
    ctx: StageContext, snapshot: DataFrame, as_of: dt.date, features_version: int
) -> tuple[PipelineModel, str, dict[int, str], str, int, DataFrame | None]:
    conf = ctx.config.segment
    features, left_out, counts = sg.informative_features(snapshot, conf.features)
    ctx.log.info("feature values present (non-null) per feature: %s", counts)
    if left_out:
        ctx.log.warning(
            "segment features left out, they carry no information in this snapshot: %s",
            "; ".join(f"{name} ({why})" for name, why in left_out.items()),
        )
    started = time.perf_counter()
    prep = sg.build_prep_pipeline(features, conf.pca_components).fit(snapshot)
    features_col = sg.model_input_column(prep)
    rows = snapshot.count()
    partitions = sg.fitting_partitions(rows, parallelism(ctx.spark), conf.min_rows_per_partition)
    prepared = sg.materialize_for_fitting(prep.transform(snapshot).select(features_col), partitions)
    users = prepared.count()
    ctx.log.info(
        "prepared %d users in %d partition(s) in %.1fs",
        users,
        partitions,
        time.perf_counter() - started,
    )

    ks = list(range(conf.k_min, min(conf.k_max, users - 1) + 1))
    if not ks:
        raise ValueError(f"{users} users are too few to segment with k >= {conf.k_min}")
    seeded = conf.seed_from_bisecting and not is_connect(ctx.spark)
    if conf.seed_from_bisecting and not seeded:
        ctx.log.info("segment.seed_from_bisecting is off over Spark Connect: K-means from "
                     "given centres needs the JVM; k-means|| restarts only")  # fmt: skip
    # k is chosen on a uniform sample of a large shop; only the chosen model sees everyone.
    done = sg.sweep_and_fit(
        prepared,
        users,
        sweep_rows=conf.sweep_sample,
        min_stability=conf.min_stability,
        min_rows_per_partition=conf.min_rows_per_partition,
        restarts=conf.restarts,
        bisecting_restarts=conf.bisecting_restarts,
        log=ctx.log,
        algorithms=conf.algorithms,
        ks=ks,
        seed=conf.seed,
        concurrent_fits=conf.concurrent_fits,
        max_iter=conf.max_iter,
        init_steps=conf.init_steps,
        seed_from_bisecting=seeded,
        features_col=features_col,
        silhouette_rows=conf.silhouette_sample,
        stability_rows=conf.stability_sample,
    )
    result, chosen, clusterer = done.sweep, done.chosen, done.model
    ctx.log.info(
        "sweep of %d fits in %.1fs; chosen %s k=%d (silhouette %.3f, stability %.3f)",
        result.fits,
        result.seconds,
        chosen.algorithm,
        chosen.k,
        chosen.silhouette,
        chosen.stability,
    )
    for r in result.rows:
        ctx.run.log_metrics(
            {
                f"sweep.{r.algorithm}.{m}": getattr(r, m)
                for m in ("wssse", "silhouette", "calinski_harabasz", "davies_bouldin")
            }
            | {
                f"sweep.{r.algorithm}.stability": r.stability,
                f"sweep.{r.algorithm}.fit_seconds": r.fit_seconds,
            },
            step=r.k,
        )
    ctx.run.log_params(
        {
            "algorithm": chosen.algorithm,
            "k": chosen.k,
            "users": users,
            "sweep_users": done.swept_rows,
            "features": [f.name for f in features],
            "features_left_out": sorted(left_out),
            "features_table_version": features_version,
            "as_of_date": as_of.isoformat(),
        }
    )
    ctx.run.log_metrics(
        {
            "chosen_k": chosen.k,
            "silhouette": chosen.silhouette,
            "wssse": chosen.wssse,
            # The kept model's own cost: on every user (wssse above is the sweep's).
            "fitted_wssse": clusterer.summary.trainingCost,
            "stability": chosen.stability,
            "sweep_seconds": result.seconds,
            "fit_seconds": chosen.fit_seconds,
        }
    )
    import pandas as pd

    ctx.run.log_frame(pd.DataFrame(result.as_records()), "segment_sweep.csv")
    ctx.run.log_figure(_sweep_figure(result.rows), "segment_sweep.png")
    sweep_df = ctx.spark.createDataFrame(
        [
            (
                as_of,
                r.algorithm,
                r.k,
                float(r.wssse),
                float(r.silhouette),
                float(r.calinski_harabasz),
                float(r.davies_bouldin),
                float(r.stability),
                float(r.fit_seconds),
                r.chosen,
            )
            for r in result.rows
        ],  # fmt: skip
        "as_of_date date, algorithm string, k int, wssse double, silhouette double, "
        "calinski_harabasz double, davies_bouldin double, stability double, "
        "fit_seconds double, chosen boolean",
    )

    model = PipelineModel(stages=[*prep.stages, clusterer])
    zscores = sg.segment_zscores(clusterer.transform(prepared), [f.name for f in features])
    names = sg.assign_names(zscores, conf.names, conf.min_name_score)
    ctx.log.info("segment names: %s", names)
    version = tracking.register_spark_model(model, conf.model_name, conf.alias)
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {
        NAMES_TAG: json.dumps({str(k): v for k, v in sorted(names.items())}),
        "algorithm": chosen.algorithm,
        "k": str(chosen.k),
        "features_table": t.USER_FEATURES.name,
        "features_table_version": str(features_version),
        "as_of_date": as_of.isoformat(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(conf.model_name, version, key, value)
    return model, version, names, chosen.algorithm, chosen.k, sweep_df


def load_champion(ctx: StageContext) -> tuple[PipelineModel, str, dict[int, str], str, int]:
    """The model behind `segment.alias`: model, version, names, algorithm, k."""
    from mlflow import MlflowClient

    conf = ctx.config.segment
    version = tracking.champion_version(conf.model_name, conf.alias, "segment")
    model = tracking.load_spark_model(conf.model_name, version=version)
    tags = MlflowClient().get_model_version(conf.model_name, version).tags
    names = {int(k): v for k, v in json.loads(tags[NAMES_TAG]).items()}
    ctx.run.log_params({"model_version": version, "mode": "score"})
    ctx.log.info("scoring with %s version %s (@%s)", conf.model_name, version, conf.alias)
    return model, version, names, tags.get("algorithm", ""), int(tags.get("k", len(names)))


def _tree(ctx: StageContext, clusterer: Any, centers: list, sizes: dict[int, int]) -> list:
    if type(clusterer).__name__ != "BisectingKMeansModel":
        return sg.ward_tree(centers, sizes)
    if is_local_master(master_of(ctx.spark)):
        with tempfile.TemporaryDirectory(prefix="shopseg-tree-") as folder:
            return sg.split_tree(clusterer, os.path.join(folder, "model"))
    # Executors cannot see the driver's temp folder on a cluster: use the lakehouse.
    return sg.split_tree(
        clusterer, f"{ctx.lakehouse.root.rstrip('/')}/_tmp/segment_tree/{ctx.run.run_id}"
    )


def _customer_values(ctx: StageContext, as_of: dt.date) -> DataFrame | None:
    """The latest gold/customer_value snapshot up to `as_of`, if the clv stage has run."""
    if not ctx.lakehouse.exists(t.CUSTOMER_VALUE.name):
        return None
    values = ctx.read(t.CUSTOMER_VALUE.name)
    values_as_of = latest(values, t.AS_OF_DATE, as_of)
    if values_as_of is None:
        return None
    ctx.log.info("segment profiles take CLV from the %s customer_value snapshot", values_as_of)
    return values.filter(F.col(t.AS_OF_DATE) == F.lit(values_as_of))


def _propensity_scores(ctx: StageContext, as_of: dt.date) -> DataFrame | None:
    """The gold/propensity_scores snapshot of `as_of`, if the propensity stage scored it."""
    if not ctx.lakehouse.exists(t.PROPENSITY_SCORES.name):
        return None
    scores = ctx.read(t.PROPENSITY_SCORES.name)
    if latest(scores, t.AS_OF_DATE, as_of) != as_of:
        ctx.log.info("no propensity scores of %s: profiles without mean_propensity", as_of)
        return None
    return scores.filter(F.col(t.AS_OF_DATE) == F.lit(as_of))


def update_current(ctx: StageContext, segments: DataFrame, as_of: dt.date) -> None:
    """Merge the snapshot's segments into gold/user_segments_current by user_id.

    Only users whose segment, outlier flag or model version changed are
    rewritten; a snapshot older than the table's latest change is not merged
    (a rerun of an old date must not undo newer segments).
    """
    name = t.USER_SEGMENTS_CURRENT.name
    if ctx.lakehouse.exists(name):
        newest = ctx.lakehouse.read(name).agg(F.max("since")).first()[0]
        if newest is not None and newest > as_of:
            ctx.log.info(
                "%s holds segments since %s: the %s snapshot is not merged", name, newest, as_of
            )
            return
    current = segments.select(
        t.USER_ID,
        t.SEGMENT_ID,
        t.SEGMENT_NAME,
        "is_outlier",
        t.MODEL_VERSION,
        F.col(t.AS_OF_DATE).alias("since"),
    )
    compare = [t.SEGMENT_ID, t.SEGMENT_NAME, "is_outlier", t.MODEL_VERSION]
    ctx.upsert(current, name, [t.USER_ID], compare=compare)


def run(ctx: StageContext) -> None:
    conf = ctx.config.segment
    snapshot, as_of, features_version = _snapshot(ctx)
    ctx.log.info("segmenting the %s snapshot (mode %s)", as_of, conf.mode)
    sweep_df = None
    if conf.mode == "fit":
        model, version, names, algorithm, k, sweep_df = _fit(ctx, snapshot, as_of, features_version)
    else:
        model, version, names, algorithm, k = load_champion(ctx)

    clusterer = model.stages[-1]
    features_col = clusterer.getFeaturesCol()
    centers = [list(map(float, c)) for c in clusterer.clusterCenters()]
    scored = sg.with_distance(model.transform(snapshot), centers, features_col).cache()
    feature_names = sg.model_features(model)
    zscores = sg.segment_zscores(scored, feature_names)
    unnamed = sorted(set(zscores) - set(names))
    if unnamed:
        raise ValueError(f"segments {unnamed} have no name in model version {version}")

    previous = None
    previous_as_of = None
    if ctx.lakehouse.exists(t.USER_SEGMENTS.name):
        history = ctx.read(t.USER_SEGMENTS.name)
        previous_as_of = latest(history, t.AS_OF_DATE, as_of - dt.timedelta(days=1))
        if previous_as_of is not None:
            previous = history.filter(F.col(t.AS_OF_DATE) == F.lit(previous_as_of))

    segments = sg.build_user_segments(scored, names, version, conf.outlier_percentile)
    result = ctx.write(
        segments,
        t.USER_SEGMENTS.name,
        "overwrite_partitions",
        partition_by=t.USER_SEGMENTS.partition_by,
    )
    written = ctx.read_back(result).filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    update_current(ctx, written, as_of)

    started = time.perf_counter()
    sample = sg.sample(scored, conf.tree_sample, scored.count(), conf.seed)
    tree = sg.fit_explainer(sample, conf.tree_max_depth, conf.seed)
    fidelity, importances, rules = sg.explain(tree, sample, feature_names, conf.rules_per_segment)
    ctx.log.info(
        "surrogate tree (depth %d) reproduces %.1f%% of the segments (%.1fs); importances %s",
        conf.tree_max_depth,
        100 * fidelity,
        time.perf_counter() - started,
        {k: round(v, 3) for k, v in importances.items()},
    )
    ctx.run.log_metrics({"tree_fidelity": fidelity})
    ctx.run.log_metrics({f"importance.{k}": v for k, v in importances.items()})
    ctx.run.log_dict(
        {names[s]: r for s, r in sorted(rules.items())} | {"_fidelity": fidelity},
        "segment_rules.json",
    )

    missing = [c for c in conf.profile_features if c not in snapshot.columns]
    if missing:
        raise ValueError(
            f"segment.profile_features {missing} are not columns of {t.USER_FEATURES.name}"
        )
    strategies = {n.name: n.strategy for n in conf.names}
    values = _customer_values(ctx, as_of)
    propensity = _propensity_scores(ctx, as_of)
    profiles = sg.build_profiles(
        written,
        snapshot,
        conf.profile_features,
        zscores,
        strategies,
        rules,
        fidelity,
        algorithm,
        k,
        values,
        propensity,
    )
    result = ctx.write(
        profiles,
        t.SEGMENT_PROFILES.name,
        "overwrite_partitions",
        partition_by=t.SEGMENT_PROFILES.partition_by,
    )
    for row in (
        ctx.read_back(result)
        .filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
        .orderBy(F.desc("size"))
        .collect()
    ):
        ctx.log.info(
            "segment %d %-18s %7d users (%.1f%%): %s",
            row[t.SEGMENT_ID],
            row[t.SEGMENT_NAME],
            row["size"],
            100 * row["share"],
            row["description"],
        )
        ctx.run.log_metrics({f"segment_users.{row[t.SEGMENT_NAME]}": row["size"]})

    transitions = sg.build_transitions(previous, written, previous_as_of, as_of)
    ctx.write(
        transitions,
        t.SEGMENT_TRANSITIONS.name,
        "overwrite_partitions",
        partition_by=t.SEGMENT_TRANSITIONS.partition_by,
    )

    sizes = {r[t.SEGMENT_ID]: r["count"] for r in written.groupBy(t.SEGMENT_ID).count().collect()}
    nodes = _tree(ctx, clusterer, centers, sizes)
    tree_df = ctx.spark.createDataFrame(
        [
            (
                as_of,
                n.node_id,
                n.parent_id,
                n.depth,
                n.size,
                n.cost,
                n.segment_id,
                names.get(n.segment_id) if n.segment_id is not None else None,
            )
            for n in nodes
        ],  # fmt: skip
        "as_of_date date, node_id int, parent_id int, depth int, size long, cost double, "
        "segment_id int, segment_name string",
    )
    ctx.write(tree_df, t.SEGMENT_TREE.name, "overwrite_partitions", partition_by=("as_of_date",))
    if sweep_df is not None:
        ctx.write(
            sweep_df,
            t.SEGMENT_SWEEP.name,
            "overwrite_partitions",
            partition_by=t.SEGMENT_SWEEP.partition_by,
        )
    scored.unpersist()
