"""Segmentation: ARI, the k rule, names, trees and explanations, and the stage on planted data."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from shopseg import segment as sg
from shopseg import tables as t
from shopseg.cli import main
from shopseg.config import ConfigError, SegmentFeature, SegmentName, load_config
from shopseg.delta import Lakehouse

from .conftest import FAST_WRITER, LOCAL_CONF

# --------------------------------------------------------------------------- ARI


def ari_of(a: list, b: list) -> float:
    counts = {}
    for pair in zip(a, b, strict=True):
        counts[pair] = counts.get(pair, 0) + 1
    return sg.adjusted_rand_index((x, y, n) for (x, y), n in counts.items())


def test_ari_of_a_hand_computed_contingency_table():
    # pairs together in both: 1; in a: 1 + 0 + 0; in b: 1 + 1; n = 4 (6 pairs)
    # expected = 1 * 2 / 6; max = 1.5; ARI = (1 - 1/3) / (1.5 - 1/3) = 4/7
    assert ari_of([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(4 / 7)


def test_ari_ignores_label_names_and_is_symmetric():
    a = [0, 0, 1, 1, 2, 2, 2]
    renamed = ["x", "x", "z", "z", "y", "y", "y"]
    assert ari_of(a, renamed) == pytest.approx(1.0)
    b = [0, 1, 1, 1, 2, 2, 0]
    assert ari_of(a, b) == pytest.approx(ari_of(b, a))
    assert ari_of(a, b) < 0.5


def test_ari_of_independent_labels_is_near_zero():
    rng = random.Random(3)
    a = [rng.randrange(4) for _ in range(20_000)]
    b = [rng.randrange(4) for _ in range(20_000)]
    assert abs(ari_of(a, b)) < 0.01


def test_labels_ari_on_spark_matches_the_plain_function(spark):
    a = [0, 0, 1, 2, 2, 1, 0]
    b = [1, 1, 0, 0, 2, 2, 1]
    df = spark.createDataFrame(list(zip(a, b, strict=True)), "a int, b int")
    assert sg.labels_ari(df, "a", "b") == pytest.approx(ari_of(a, b))


# --------------------------------------------------------------------------- choosing k


def row(algorithm, k, wssse, silhouette=0.5, stability=1.0):
    return sg.SweepRow(algorithm, k, wssse, silhouette, 0.0, 0.0, stability, 0.1)


def test_elbow_finds_the_knee_of_a_cost_curve():
    ks = [2, 3, 4, 5, 6, 7, 8]
    costs = [100, 60, 25, 21, 18, 16, 14]
    assert sg.elbow(ks, costs, ks) == 4
    # Only among the candidates: without 4 the next best knee.
    assert sg.elbow(ks, costs, [2, 3, 5, 6, 7, 8]) == 5


def test_choose_skips_unstable_k_then_compares_silhouettes():
    costs = {2: 100, 3: 60, 4: 25, 5: 21, 6: 18, 7: 16, 8: 14}
    kmeans = [row("kmeans", k, c, silhouette=0.6) for k, c in costs.items()]
    kmeans[2] = row("kmeans", 4, 25, silhouette=0.6, stability=0.5)  # k=4 unstable
    bisecting = [row("bisecting", k, c + 1, silhouette=0.55) for k, c in costs.items()]
    picked = sg.choose(kmeans + bisecting, min_stability=0.8)
    # kmeans falls back to k=5 at silhouette 0.6; bisecting keeps k=4 at 0.55.
    assert (picked.algorithm, picked.k) == ("kmeans", 5)
    bisecting[2] = row("bisecting", 4, 26, silhouette=0.7)
    picked = sg.choose(kmeans + bisecting, min_stability=0.8)
    assert (picked.algorithm, picked.k) == ("bisecting", 4)


def test_indices_that_agree_overrule_a_marginal_elbow():
    # K-means on the default data (20k users), as the sweep measured it: the
    # elbow alone says k = 5 (by 0.006), all three indices say 6 (the plant).
    measured = {
        2: (115145.1, 0.478, 7788.9, 1.467),
        3: (79469.7, 0.503, 10130.9, 1.147),
        4: (58855.5, 0.559, 11453.6, 0.980),
        5: (46213.7, 0.566, 12307.0, 1.004),
        6: (35917.1, 0.631, 13813.8, 0.842),
        7: (32764.1, 0.620, 12939.3, 0.937),
        8: (31066.4, 0.598, 11852.5, 1.095),
        9: (29323.2, 0.574, 11136.5, 1.122),
        10: (28560.6, 0.549, 10221.2, 1.210),
    }
    rows = [sg.SweepRow("kmeans", k, *m, 1.0, 0.1) for k, m in measured.items()]
    assert sg.elbow(list(measured), [m[0] for m in measured.values()], list(measured)) == 5
    assert sg.choose(rows, min_stability=0.8).k == 6
    # Only one index for k = 6, the others split: the elbow decides.
    split = [
        sg.SweepRow("kmeans", k, m[0], m[1], 1.0 if k == 3 else 0.0, 0.5 if k != 9 else 0.1, 1.0, 0)
        for k, m in measured.items()
    ]
    assert sg.consensus_k(split) is None
    assert sg.choose(split, min_stability=0.8).k == 5
    # An unstable k cannot win the vote.
    unstable = [r if r.k != 6 else sg.SweepRow("kmeans", 6, *measured[6], 0.5, 0.1) for r in rows]
    assert sg.choose(unstable, min_stability=0.8).k != 6


def test_choose_uses_every_k_when_none_is_stable():
    rows = [
        row("kmeans", k, c, stability=0.1)
        for k, c in zip(range(2, 9), [9, 5, 2, 1.8, 1.6, 1.5, 1.4], strict=True)
    ]  # noqa: E501
    assert sg.choose(rows, min_stability=0.8).k == 4


# --------------------------------------------------------------------------- names

RULES = [
    SegmentName(name="High-value loyal", high=["frequency", "avg_order_value"], strategy="reward"),
    SegmentName(name="Dormant", high=["inactive_days"], strategy="win back"),
    SegmentName(name="New customers", low=["tenure_days"], strategy="onboard"),
]


def z(frequency=0.0, avg_order_value=0.0, inactive_days=0.0, tenure_days=0.0):
    return {
        "frequency": frequency,
        "avg_order_value": avg_order_value,
        "inactive_days": inactive_days,
        "tenure_days": tenure_days,
    }


def test_names_follow_the_centroids_not_the_cluster_ids():
    zs = {
        0: z(inactive_days=2.0, tenure_days=0.5),
        1: z(frequency=1.5, avg_order_value=1.0),
        2: z(tenure_days=-2.0, frequency=-1.0),
    }
    names = sg.assign_names(zs, RULES, 0.5)
    assert names == {0: "Dormant", 1: "High-value loyal", 2: "New customers"}
    shuffled = {7: zs[2], 3: zs[0], 5: zs[1]}
    assert sg.assign_names(shuffled, RULES, 0.5) == {
        7: "New customers",
        3: "Dormant",
        5: "High-value loyal",
    }


def test_names_are_unique_and_unfitting_segments_get_descriptive_ones():
    zs = {
        0: z(inactive_days=2.0),
        1: z(inactive_days=1.5),  # a second dormant-looking segment
        2: z(avg_order_value=-0.9, tenure_days=0.4),  # fits no rule well
        3: z(inactive_days=1.2),
    }
    names = sg.assign_names(zs, RULES, 0.5)
    assert names[0] == "Dormant"
    assert len(set(names.values())) == 4
    assert names[2] == "Low avg_order_value, high tenure_days"
    assert names[1] == "High inactive_days"
    assert names[3] == "High inactive_days (2)"
    assert sg.assign_names(zs, RULES, 0.5) == names


# --------------------------------------------------------------------------- trees


def test_ward_tree_merges_the_closest_clusters_first():
    centers = [[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.0, 10.2]]
    sizes = {0: 10, 1: 10, 2: 10, 3: 10}
    nodes = {n.node_id: n for n in sg.ward_tree(centers, sizes)}
    assert len(nodes) == 2 * 4 - 1
    assert nodes[-1].segment_id is None and {nodes[0].parent_id, nodes[1].parent_id} == {-1}
    assert nodes[2].parent_id == nodes[3].parent_id == -2
    root = nodes[-3]
    assert root.parent_id is None and root.depth == 0 and root.size == 40
    assert nodes[0].depth == 2 and nodes[0].segment_id == 0


def test_bisecting_tree_from_node_rows():
    rows = [
        {"index": -1, "size": 30, "cost": 9.0, "children": [-2, 2]},
        {"index": -2, "size": 20, "cost": 4.0, "children": [0, 1]},
        {"index": 0, "size": 12, "cost": 1.0, "children": []},
        {"index": 1, "size": 8, "cost": 1.0, "children": []},
        {"index": 2, "size": 10, "cost": 2.0, "children": []},
    ]
    nodes = {n.node_id: n for n in sg.bisecting_tree(rows)}
    assert nodes[-1].parent_id is None and nodes[-1].depth == 0
    assert nodes[2].parent_id == -1 and nodes[2].depth == 1 and nodes[2].segment_id == 2
    assert nodes[0].parent_id == -2 and nodes[0].depth == 2
    assert nodes[-2].segment_id is None


# --------------------------------------------------------------------------- planted data

PLANTED_AS_OF = dt.date(2025, 6, 1)
GROUP_SIZE = 250
# planted group -> the name its segment should get
EXPECTED_NAMES = {
    "loyal": "High-value loyal",
    "dormant": "Dormant",
    "new": "New customers",
    "big_spender": "Big spenders",
}
FEATURES = [
    {"name": "inactive_days", "log": False},
    {"name": "tenure_days", "log": True},
    {"name": "frequency", "log": True},
    {"name": "avg_order_value", "log": True},
]
NAMES = [
    {"name": "High-value loyal", "high": ["frequency"], "strategy": "Reward them."},
    {"name": "Dormant", "high": ["inactive_days"], "strategy": "Win them back."},
    {"name": "New customers", "low": ["tenure_days"], "strategy": "Onboard them."},
    {
        "name": "Big spenders",
        "high": ["avg_order_value"],
        "low": ["frequency"],
        "strategy": "Premium picks.",
    },
]
PLANTED_SCHEMA = (
    "user_id long, as_of_date date, frequency long, avg_order_value double, "
    "monetary double, inactive_days int, tenure_days int, planted string"
)


def planted_users(as_of: dt.date, seed: int = 7) -> list[tuple]:
    """Four well separated groups of users with user_features-like columns."""
    rng = random.Random(seed)
    out = []
    groups = ["loyal", "dormant", "new", "big_spender"]
    ids = {g: range(i * GROUP_SIZE, (i + 1) * GROUP_SIZE) for i, g in enumerate(groups)}
    for group, user_ids in ids.items():
        for uid in user_ids:
            if group == "loyal":
                freq, aov = rng.randint(8, 20), rng.lognormvariate(4.6, 0.2)
                inactive, tenure = rng.randint(1, 20), rng.randint(300, 700)
            elif group == "dormant":
                freq, aov = rng.randint(2, 4), rng.lognormvariate(3.9, 0.2)
                inactive, tenure = rng.randint(200, 300), rng.randint(400, 700)
            elif group == "new":
                freq = rng.randint(0, 1)
                aov = rng.lognormvariate(3.7, 0.2) if freq else None
                inactive, tenure = rng.randint(1, 15), rng.randint(3, 25)
            else:
                freq, aov = rng.randint(1, 2), rng.lognormvariate(6.2, 0.2)
                inactive, tenure = rng.randint(20, 80), rng.randint(200, 600)
            monetary = freq * aov if aov is not None else 0.0
            out.append((uid, as_of, freq, aov, monetary, inactive, tenure, group))
    return out


def segment_args(root, *extra: str) -> list[str]:
    sets = [
        f"lakehouse.root={root}",
        "spark.master=local[2]",
        FAST_WRITER,
        f"segment.features={json.dumps(FEATURES)}",
        f"segment.names={json.dumps(NAMES)}",
        "segment.profile_features=[frequency, avg_order_value, monetary, inactive_days]",
        "segment.k_min=2",
        "segment.k_max=6",
        "segment.restarts=2",
        *extra,
    ]
    return ["--conf", str(LOCAL_CONF), *itertools.chain.from_iterable(("--set", s) for s in sets)]


def write_planted(spark, root, rows, mode="overwrite"):
    lake = Lakehouse(spark, str(root))
    lake.write(
        spark.createDataFrame(rows, PLANTED_SCHEMA),
        t.USER_FEATURES.name,
        mode,
        partition_by=("as_of_date",),
    )
    return lake


def snapshot(lake, table, as_of, version=None):
    return lake.read(table, version=version).filter(F.col("as_of_date") == F.lit(as_of))


@pytest.mark.slow
def test_stage_recovers_planted_groups_names_them_and_refits_the_same_way(spark, lake_root):
    rows = planted_users(PLANTED_AS_OF)
    lake = write_planted(spark, lake_root, rows)
    # k is chosen on a sample of 600 of the 1,000 users (segment.sweep_sample);
    # the chosen model is then fitted on everyone.
    sampled = "segment.sweep_sample=600"
    assert main(["segment", *segment_args(lake_root, sampled)]) == 0

    sweep = lake.read("gold/segment_sweep").toPandas()
    assert set(sweep.algorithm) == {"kmeans", "bisecting"} and sorted(set(sweep.k)) == [
        2,
        3,
        4,
        5,
        6,
    ]
    chosen = sweep[sweep.chosen]
    assert len(chosen) == 1 and 3 <= int(chosen.k.iloc[0]) <= 5

    segments = snapshot(lake, "gold/user_segments", PLANTED_AS_OF).cache()
    assert segments.count() == len(rows)
    truth = spark.createDataFrame([(r[0], r[-1]) for r in rows], "user_id long, planted string")
    joined = segments.join(truth, "user_id")
    assert sg.labels_ari(joined, "segment_name", "planted") >= 0.8
    majority = {
        r.planted: r.segment_name
        for r in joined.groupBy("planted", "segment_name").count().orderBy("count").collect()
    }
    assert majority == EXPECTED_NAMES
    outliers = segments.filter("is_outlier").count() / len(rows)
    assert 0 < outliers <= 0.05
    assert segments.filter(F.col("distance") < 0).count() == 0

    profiles = snapshot(lake, "gold/segment_profiles", PLANTED_AS_OF).toPandas()
    assert profiles["size"].sum() == len(rows)
    assert profiles["share"].sum() == pytest.approx(1.0)
    loyal = profiles.set_index("segment_name").loc["High-value loyal"]
    assert loyal.strategy == "Reward them."
    assert loyal.lifts["frequency"] > 1.5 and loyal.medians["frequency"] >= 8
    assert loyal.z_scores["frequency"] > 0.5
    assert set(loyal.medians) == {"frequency", "avg_order_value", "monetary", "inactive_days"}
    assert set(loyal.z_scores) == {f["name"] for f in FEATURES}
    assert 0.8 <= loyal.tree_fidelity <= 1.0 and len(loyal.rules) >= 1
    assert any("frequency" in rule or "tenure_days" in rule for rule in loyal.rules)

    k = int(chosen.k.iloc[0])
    tree = snapshot(lake, "gold/segment_tree", PLANTED_AS_OF).toPandas()
    assert len(tree) == 2 * k - 1
    root = tree[tree.parent_id.isna()]
    assert len(root) == 1 and int(root["size"].iloc[0]) == len(rows)
    assert set(tree.segment_name.dropna()) == set(profiles.segment_name)

    mlflow.set_tracking_uri(f"sqlite:///{lake_root}/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("shopseg_segmentation", "champion")
    assert version.tags["features_table_version"] == "0"
    run = client.get_run(version.run_id).data
    assert run.params["users"] == str(len(rows)) and 500 <= int(run.params["sweep_users"]) <= 600
    # The kept model's cost is over all 1,000 users, the sweep's over the sample.
    assert run.metrics["fitted_wssse"] > 1.3 * float(chosen.wssse.iloc[0])
    assert set(json.loads(version.tags["segment_names"]).values()) == set(EXPECTED_NAMES.values())

    # Refitting the chosen algorithm and k on the same data gives every user
    # the same name (fits are seeded; names follow the centroids).
    first = lake.version("gold/user_segments")
    algorithm = chosen.algorithm.iloc[0]
    narrowed = (
        sampled,
        f"segment.algorithms=[{algorithm}]",
        f"segment.k_min={k}",
        f"segment.k_max={k}",
    )
    assert main(["segment", *segment_args(lake_root, *narrowed)]) == 0
    before = snapshot(lake, "gold/user_segments", PLANTED_AS_OF, version=first)
    after = snapshot(lake, "gold/user_segments", PLANTED_AS_OF)
    same = before.alias("b").join(after.alias("a"), "user_id")
    assert same.count() == len(rows)
    assert same.filter(F.col("b.segment_name") != F.col("a.segment_name")).count() == 0
    refit = client.get_model_version_by_alias("shopseg_segmentation", "champion").version
    assert int(refit) == int(version.version) + 1

    # gold/user_segments_current: one row per user, the refit's model version on each.
    current = lake.read("gold/user_segments_current").toPandas()
    assert len(current) == len(rows) and current.user_id.is_unique
    assert set(current.model_version.astype(str)) == {str(refit)}
    assert set(current.since) == {PLANTED_AS_OF}

    # A day later ten new customers have become loyal buyers. Scored with the
    # champion, only the users whose segment or outlier flag moved are merged.
    later = PLANTED_AS_OF + dt.timedelta(days=1)
    converts = {r[0] for r in rows if r[-1] == "new"}
    converts = set(sorted(converts)[:10])
    next_rows = [
        (r[0], later, 15, 110.0, 1650.0, 2, 400, "loyal")
        if r[0] in converts
        else (r[0], later, *r[2:])
        for r in rows
    ]
    write_planted(spark, lake_root, next_rows, mode="append")
    assert main(["segment", *segment_args(lake_root, "segment.mode=score")]) == 0
    today = snapshot(lake, "gold/user_segments", later).select(
        "user_id", F.col("segment_name").alias("now"), F.col("is_outlier").alias("now_out")
    )
    moved = {
        r.user_id
        for r in after.join(today, "user_id")
        .filter((F.col("segment_name") != F.col("now")) | (F.col("is_outlier") != F.col("now_out")))
        .collect()
    }
    assert converts <= moved and len(moved) < len(rows) / 20
    current = lake.read("gold/user_segments_current").toPandas().set_index("user_id")
    assert len(current) == len(rows)
    assert set(current.index[current.since == later]) == moved
    assert set(current.loc[sorted(converts), "segment_name"]) == {"High-value loyal"}


def test_score_mode_without_a_registered_model_says_what_to_run(spark, lake_root):
    write_planted(spark, lake_root, planted_users(PLANTED_AS_OF)[:50])
    args = segment_args(lake_root, "segment.mode=score")
    sets = [args[i + 1] for i in range(2, len(args), 2)]
    config = load_config(LOCAL_CONF, sets)
    from shopseg.pipeline import run_stages

    with pytest.raises(ValueError, match="run the segment stage in fit mode first"):
        run_stages(config, ["segment"])


def test_bisecting_splits_the_prepared_features_and_the_tree_is_read_back(spark, tmp_path):
    """Centred inputs make Spark's bisecting K-means return one cluster: guard against it."""
    df = spark.createDataFrame(planted_users(PLANTED_AS_OF), PLANTED_SCHEMA)
    features = [SegmentFeature(name=f["name"], log=f["log"]) for f in FEATURES]
    prepared = sg.build_prep_pipeline(features, None).fit(df).transform(df).cache()
    model = sg.new_clusterer("bisecting", 4, 1, 20, sg.SCALED).fit(prepared)
    scored = model.transform(prepared)
    assert scored.select(sg.PREDICTION).distinct().count() == 4
    # Greedy splits need not find all four groups, but the farthest one is a leaf alone.
    dormant = scored.groupBy(sg.PREDICTION).agg(
        F.count(F.when(F.col("planted") == "dormant", 1)).alias("dormant"),
        F.count(F.lit(1)).alias("n"),
    )
    assert (
        dormant.filter((F.col("dormant") == GROUP_SIZE) & (F.col("n") == GROUP_SIZE)).count() == 1
    )

    nodes = sg.split_tree(model, str(tmp_path / "model"))
    leaves = [n for n in nodes if n.segment_id is not None]
    assert sorted(n.segment_id for n in leaves) == [0, 1, 2, 3]
    assert len(nodes) == 7
    root = next(n for n in nodes if n.parent_id is None)
    assert root.size == prepared.count()
    sizes = {r[sg.PREDICTION]: r["count"] for r in scored.groupBy(sg.PREDICTION).count().collect()}
    assert {n.segment_id: n.size for n in leaves} == sizes

    z = sg.segment_zscores(scored, [f.name for f in features])
    weights = sizes
    for name in ("frequency", "inactive_days"):
        mean = sum(weights[s] * z[s][name] for s in z) / sum(weights.values())
        assert mean == pytest.approx(0.0, abs=1e-9), "z-scores are against the population"

    tree = sg.fit_explainer(scored, 4, 1)
    fidelity, importances, rules = sg.explain(tree, scored, [f.name for f in features], 2)
    assert fidelity >= 0.9
    assert sum(importances.values()) == pytest.approx(1.0)
    assert set(rules) == {0, 1, 2, 3}
    assert all(1 <= len(r) <= 2 for r in rules.values())
    assert all("covers" in text and "precision" in text for r in rules.values() for text in r)


def test_a_concurrent_sweep_measures_what_the_sequential_one_does(spark):
    """Cells fitted side by side on threads: the same rows, in sweep order, and the same models."""
    df = spark.createDataFrame(planted_users(PLANTED_AS_OF), PLANTED_SCHEMA)
    features = [SegmentFeature(name=f["name"], log=f["log"]) for f in FEATURES]
    prepared = sg.materialize_for_fitting(
        sg.build_prep_pipeline(features, None).fit(df).transform(df).select(sg.SCALED), 1
    )
    settings = dict(
        algorithms=["kmeans", "bisecting"], ks=[3, 4], seed=7, restarts=2, max_iter=10,
        features_col=sg.SCALED, silhouette_rows=10_000, stability_rows=10_000,
    )  # fmt: skip
    one, two = (sg.sweep(prepared, **settings, concurrent_fits=n) for n in (1, 2))

    def measured(result):
        return [{**r.__dict__, "fit_seconds": None} for r in result.rows]

    assert measured(two) == measured(one)
    assert [(r.algorithm, r.k) for r in two.rows] == [
        (a, k) for a in ("kmeans", "bisecting") for k in (3, 4)
    ]
    assert two.fits == one.fits == 8
    for cell, model in one.models.items():
        assert np.allclose(two.models[cell].clusterCenters(), model.clusterCenters()), cell
    print(f"sweep of 8 fits: {one.seconds:.1f} s one at a time, {two.seconds:.1f} s two at once")


def test_kmeans_from_given_centres_starts_there_and_keeps_the_lower_cost(spark, tmp_path):
    """Three tight groups on a line, at 0, 10 and 20. Started with two centres in the
    first group and one between the others, Lloyd's iterations stay in that poor
    optimum, so the result shows the start was used; started near the groups,
    they reach the groups. Costs are the WSSSE of the returned labels."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(c, 0.5, 300) for c in (0.0, 10.0, 20.0)])
    df = sg.materialize_for_fitting(
        spark.createDataFrame([(Vectors.dense([float(x)]),) for x in points], ["v"]), 2
    )

    def wssse(model) -> float:
        labels = model.transform(df).select(sg.PREDICTION).toPandas()[sg.PREDICTION]
        centres = np.array(model.clusterCenters())[labels.to_numpy(), 0]
        return float(((points - centres) ** 2).sum())

    poor = sg.kmeans_from_centers(df, [[-1.0], [1.0], [15.0]], max_iter=20, features_col="v")
    got = sorted(c[0] for c in poor.clusterCenters())
    assert got[0] < -0.2 and 0.2 < got[1] < 1.0 and abs(got[2] - 15.0) < 0.3, got
    assert poor.summary.trainingCost == pytest.approx(wssse(poor), rel=1e-6)
    assert poor.getK() == 3 and poor.getFeaturesCol() == "v"

    good = sg.kmeans_from_centers(df, [[1.0], [9.0], [21.0]], max_iter=20, features_col="v")
    assert np.allclose(sorted(c[0] for c in good.clusterCenters()), [0, 10, 20], atol=0.1)
    assert good.summary.trainingCost == pytest.approx(wssse(good), rel=1e-6)
    assert good.summary.trainingCost < poor.summary.trainingCost / 10
    # The lower cost is kept, whichever start it came from.
    assert sg.best_fit([poor, good]) is good
    # It saves and loads as any spark.ml K-means model (the stage registers it).
    from pyspark.ml.clustering import KMeansModel

    good.write().overwrite().save(str(tmp_path / "seeded"))
    loaded = KMeansModel.load(str(tmp_path / "seeded"))
    assert np.allclose(loaded.clusterCenters(), good.clusterCenters())
    assert loaded.getPredictionCol() == sg.PREDICTION and loaded.getK() == 3

    # In the sweep, each K-means cell adds the bisecting start (two more fits).
    settings = dict(
        algorithms=["kmeans"], ks=[3], seed=7, restarts=2, max_iter=10, features_col="v",
        silhouette_rows=10_000, stability_rows=10_000,
    )  # fmt: skip
    plain = sg.sweep(df, **settings)
    seeded = sg.sweep(df, **settings, seed_from_bisecting=True)
    assert (plain.fits, seeded.fits) == (2, 4)
    assert seeded.rows[0].wssse <= plain.rows[0].wssse * (1 + 1e-9)
    # With bisecting swept too, its first restart is the K-means cell's bisecting
    # start: one fit fewer per k, on one thread or two, and the same rows.
    both = dict(settings, algorithms=["kmeans", "bisecting"], ks=[2, 3])
    one, two = (sg.sweep(df, **both, seed_from_bisecting=True, concurrent_fits=n) for n in (1, 2))
    assert one.fits == two.fits == 2 * (2 + 1 + 2)
    alone = [sg.sweep(df, **dict(both, ks=[k]), seed_from_bisecting=True) for k in (2, 3)]
    assert [r.wssse for r in one.rows] == pytest.approx([r.wssse for r in two.rows])
    assert [r.wssse for r in one.rows if r.algorithm == "kmeans"] == pytest.approx(
        [a.rows[0].wssse for a in alone]
    )
    for k in (2, 3):
        start = sg.seeded_from_bisecting(df, k, seed=7, max_iter=10, features_col="v")
        row = next(r for r in one.rows if (r.algorithm, r.k) == ("kmeans", k))
        assert row.wssse <= start.summary.trainingCost * (1 + 1e-9)


def test_features_a_source_does_not_record_are_left_out_and_named(spark):
    # An order log without dwell times, discounts or views: the columns are null,
    # or 0 for every user; the default expressions would still vary them with the
    # number of orders or sessions, and name segments after discounts nobody got.
    df = spark.createDataFrame(
        [
            (1, dt.date(2025, 6, 1), 3, 2, 0, None, 0.0),
            (2, dt.date(2025, 6, 1), 1, 1, 0, None, 0.0),
            (3, dt.date(2025, 6, 1), 0, 4, 0, None, None),
            (4, dt.date(2025, 6, 1), 5, 9, 0, None, 0.0),
        ],
        "user_id long, as_of_date date, frequency long, sessions long, views long, "
        "mean_dwell_seconds double, discount_share double",
    )
    features = [
        SegmentFeature(name="frequency", log=True),
        SegmentFeature(
            name="discount_share",
            expr="(coalesce(discount_share, 0) * frequency + 0.5) / (frequency + 2)",
        ),
        SegmentFeature(
            name="mean_dwell_seconds",
            expr="(coalesce(mean_dwell_seconds, 0) * views + 60 * 10) / (views + 10)",
        ),
        SegmentFeature(name="views_per_session", expr="(views + 4 * 3) / (sessions + 3)"),
        # The snapshot's date is the same for everyone by design: not a reason.
        SegmentFeature(name="orders_per_month", expr="frequency / (month(as_of_date) + 1)"),
    ]
    kept, left_out, counts = sg.informative_features(df, features)
    assert [f.name for f in kept] == ["frequency", "orders_per_month"]
    assert left_out == {
        "discount_share": "discount_share: 0.0 for every user",
        "mean_dwell_seconds": "views: 0 for every user, mean_dwell_seconds: no values",
        "views_per_session": "views: 0 for every user",
    }
    assert counts == dict.fromkeys([f.name for f in features], 4)
    with pytest.raises(ValueError, match=r"no segment feature carries information .* 4 users"):
        sg.informative_features(df, features[1:4])


def test_a_name_whose_features_the_model_lacks_names_no_segment():
    rules = [
        SegmentName(name="Bargain hunters", high=["discount_share"], low=["avg_order_value"]),
        SegmentName(name="Big spenders", high=["avg_order_value"]),
    ]
    zscores = {0: {"avg_order_value": -1.5}, 1: {"avg_order_value": 1.2}}
    assert sg.assign_names(zscores, rules, 0.5) == {0: "Low avg_order_value", 1: "Big spenders"}


def test_rules_keep_the_tightest_bound_per_feature():
    conditions = [
        ("active_span_days", "<=", "27.5"),
        ("avg_order_value", ">", "26.18"),
        ("active_span_days", "<=", "14.5"),
        ("avg_order_value", ">", "34.32"),
        ("frequency", "<=", "3.5"),
        ("channel", "in", "{0.0,2.0}"),
    ]
    assert sg.simplify_conditions(conditions) == [
        "active_span_days <= 14.5",
        "avg_order_value > 34.32",
        "frequency <= 3.5",
        "channel in {0.0,2.0}",
    ]


def test_tree_leaves_parse_a_debug_string():
    text = """DecisionTreeClassificationModel: depth=2, numNodes=5, numClasses=3, numFeatures=2
  If (feature 0 <= 10.5)
   If (feature 1 <= 2.5)
    Predict: 0.0
   Else (feature 1 > 2.5)
    Predict: 1.0
  Else (feature 0 > 10.5)
   Predict: 2.0
"""
    leaves = sg.tree_leaves(text, ["frequency", "views"])
    assert leaves == [
        (["frequency <= 10.5", "views <= 2.5"], 0),
        (["frequency <= 10.5", "views > 2.5"], 1),
        (["frequency > 10.5"], 2),
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("segment.algorithms=[kmeans, dbscan]", "segment.algorithms"),
        ("segment.k_min=1", "segment.k_min"),
        ("segment.mode=predict", "segment.mode"),
        (
            "segment.names=[{name: X, high: [nonexistent]}]",
            "unknown segment feature",
        ),
        ("segment.min_rows_per_partition=0", "segment.min_rows_per_partition"),
    ],
)
def test_segment_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LOCAL_CONF, [override])


# --------------------------------------------------------------------------- planted drift

# The second snapshot: the same shop half a year (26 weeks) later, in which a
# share of the loyal customers went dormant from the first snapshot's date on
# (a quarter of silence left most of them in the loyal segment: 28 of 99).
GAP = dt.timedelta(days=182)
FIRST_AS_OF = dt.date(2026, 1, 1)


@pytest.mark.slow
def test_transitions_recover_the_drift_the_generator_planted(spark, tmp_path):
    """Fit on one snapshot, score the same shop half a year later: the planted share moves.

    The second snapshot is generated with the window moved on by 26 weeks and
    30% of the loyal customers drifting to dormant on the first snapshot's
    date. With the same seed every other user's history is the first one's,
    182 days later, so their features are the same and only the planted move
    separates the snapshots (a lifecycle shop does not stand still otherwise:
    new customers arrive, one-time buyers age). It is built in its own
    lakehouse (the same event ids, half a year later, are not new events of
    the first) and its feature snapshot joins the first lakehouse's.
    """
    from deltalake import DeltaTable

    first, second = tmp_path / "first", tmp_path / "second"
    sets = [
        "spark.master=local[2]",
        FAST_WRITER,
        # At 30 events per user k = 6 merged one-time buyers into the loyal
        # segment (28% of users); at the default 50 it holds 95% loyal users.
        "generate.users=3000",
        "generate.items=400",
        # The sweep's choice is tested on the default data; here the plant's k.
        "segment.algorithms=[kmeans]",
        "segment.k_min=6",
        "segment.k_max=6",
        "segment.restarts=2",
    ]
    later = [
        f"generate.start_date={dt.date(2025, 1, 1) + GAP}",
        f"generate.end_date={dt.date(2025, 12, 31) + GAP}",
        "generate.drift.share=0.3",
        f"generate.drift.date={FIRST_AS_OF}",
    ]

    def run(root, stage: str, *extra: str) -> None:
        args = ["--conf", str(LOCAL_CONF)]
        for s in (f"lakehouse.root={root}", *sets, *extra):
            args += ["--set", s]
        assert main([stage, *args]) == 0

    for stage in ("generate", "ingest", "features"):
        run(first, stage)
        run(second, stage, *later)
    run(first, "segment")
    lake = Lakehouse(spark, str(first))
    snapshot = Lakehouse(spark, str(second)).read(t.USER_FEATURES.name)
    lake.write(snapshot, t.USER_FEATURES.name, "overwrite_partitions", partition_by=("as_of_date",))
    run(first, "segment", "segment.mode=score")
    later_as_of = FIRST_AS_OF + GAP

    mlflow.set_tracking_uri(f"sqlite:///{first}/mlflow.db")
    client = MlflowClient()
    versions = client.search_model_versions("name='shopseg_segmentation'")
    assert len(versions) == 1, "scoring registers nothing"
    champion = client.get_model_version_by_alias("shopseg_segmentation", "champion").version

    drift = DeltaTable(str(second / t.PERSONA_DRIFT.name)).to_pandas()
    personas = DeltaTable(str(first / t.USER_PERSONAS.name)).to_pandas()
    assert set(drift.from_persona) == {"loyal_high_value"} and set(drift.to_persona) == {"dormant"}
    loyal = personas[personas.persona == "loyal_high_value"].user_id
    assert set(drift.user_id) <= set(loyal)
    planted = len(drift) / len(loyal)
    assert 0.25 <= planted <= 0.35

    # Users who did not drift have the same features in both snapshots, their
    # dates half a year later (RFM scores are ranks within the population).
    features = DeltaTable(str(first / t.USER_FEATURES.name)).to_pandas().set_index("user_id")
    date_columns = ["first_event_date", "last_purchase_date", "last_event_date"]
    by_population = ["r_score", "f_score", "m_score", "rfm_segment"]
    columns = features.columns.difference([t.AS_OF_DATE, *date_columns, *by_population])
    assert {"inactive_days", "frequency", "share_books", "channel_app"} <= set(columns)
    stayed = features.index.difference(drift.user_id).unique()
    before = features[features.as_of_date == FIRST_AS_OF].loc[stayed].sort_index()
    after = features[features.as_of_date == later_as_of].loc[stayed].sort_index()
    pd.testing.assert_frame_equal(before[columns], after[columns])
    for column in date_columns:
        assert (before[column].dropna() + GAP == after[column].dropna()).all()
        assert before[column].isna().equals(after[column].isna())

    segments = DeltaTable(str(first / t.USER_SEGMENTS.name)).to_pandas()
    dates = sorted(segments.as_of_date.unique())
    assert dates == [FIRST_AS_OF, later_as_of]
    assert set(segments.model_version) == {str(champion)}
    by_date = {d: segments[segments.as_of_date == d].set_index("user_id") for d in dates}
    transitions = DeltaTable(str(first / t.SEGMENT_TRANSITIONS.name)).to_pandas()
    latest = transitions[transitions.to_as_of == later_as_of]
    assert set(latest.from_as_of) == {FIRST_AS_OF}
    # The transitions are the user-level moves between the two snapshots.
    both = by_date[dates[0]].join(by_date[dates[1]], lsuffix="_from", how="inner")
    moves = both.groupby(["segment_name_from", "segment_name"]).size()
    table = latest.set_index(["from_segment", "to_segment"]).users
    kept = {k: v for k, v in table.items() if sg.NEW not in k and sg.GONE not in k}
    assert kept == moves.to_dict()
    # The same users in both: nobody new, nobody gone.
    assert set(by_date[dates[0]].index) == set(by_date[dates[1]].index)
    assert set(latest.from_segment) | set(latest.to_segment) <= set(segments.segment_name)
    # Only drifted users move, and the loyal segment loses to Dormant the share
    # of its users the generator planted to drift (within 2 points); against
    # the persona's share the segment's purity counts too (looser bound).
    moved = both[both.segment_name_from != both.segment_name].index
    assert set(moved) <= set(drift.user_id)
    in_segment = by_date[dates[0]].segment_name == "High-value loyal"
    loyal_segment = int(table.loc["High-value loyal"].sum())
    assert loyal_segment == in_segment.sum()
    planted_in_segment = in_segment[in_segment].index.isin(drift.user_id).mean()
    measured = table.get(("High-value loyal", "Dormant"), 0) / loyal_segment
    assert measured == pytest.approx(planted_in_segment, abs=0.02), (measured, planted_in_segment)
    assert measured == pytest.approx(planted, abs=0.05), (measured, planted)

    # Feature snapshots: one per date; a rerun replaces its own date only, and
    # a snapshot inside the history sees only what happened before its date.
    table_before = DeltaTable(str(first / t.USER_FEATURES.name))
    counts = table_before.to_pandas().groupby("as_of_date").size().to_dict()
    assert sorted(counts) == dates
    inside = dt.date(2025, 10, 1)
    run(first, "features", f"features.as_of_date={inside}")
    again = DeltaTable(str(first / t.USER_FEATURES.name))
    assert again.version() == table_before.version() + 1
    again = again.to_pandas()
    assert {d: n for d, n in again.groupby("as_of_date").size().items() if d != inside} == counts
    assert again[again.as_of_date == inside].last_purchase_date.dropna().max() < inside

    # The split tree's leaves are the segments of that date, user for user.
    tree = DeltaTable(str(first / t.SEGMENT_TREE.name)).to_pandas()
    for day in dates:
        leaves = tree[(tree.as_of_date == day) & tree.segment_id.notna()]
        sizes = segments[segments.as_of_date == day].groupby("segment_id").size()
        assert leaves.set_index("segment_id")["size"].to_dict() == sizes.to_dict()


def test_reproducibility_is_the_best_fits_highest_ari_with_another_fit(spark):
    """Uniform points have no clusters to find again: seeds disagree, ARI below 1."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.linalg import Vectors
    from sklearn.metrics import adjusted_rand_score

    rng = random.Random(5)
    points = [(Vectors.dense([rng.random(), rng.random()]),) for _ in range(600)]
    data = spark.createDataFrame(points, ["features"])
    fits = [
        KMeans(k=5, seed=s, maxIter=3, initMode="random", predictionCol=sg.PREDICTION).fit(data)
        for s in (1, 2, 3, 4)
    ]
    labels = [[r[sg.PREDICTION] for r in f.transform(data).collect()] for f in fits]
    best = min(range(4), key=lambda i: fits[i].summary.trainingCost)
    expected = max(adjusted_rand_score(labels[best], labels[i]) for i in range(4) if i != best)
    assert expected < 0.99
    assert sg.reproducibility(data, fits, "features") == pytest.approx(expected)
