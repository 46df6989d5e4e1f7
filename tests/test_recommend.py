"""Recommendations: id index, metrics, popularity baselines, block scoring, ALS, the stage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import functions as F

from shopseg import recommend as rc
from shopseg import tables as t
from shopseg.config import load_config
from shopseg.delta import Lakehouse

from .conftest import DEFAULT_LAKE_SETS, LOCAL_CONF

# --------------------------------------------------------------------------- index


def test_index_is_dense_in_id_order_across_partitions(spark):
    ids = [10**12, -5, 7, 7, None, 3_000_000_000, 42] + list(range(100, 160))
    df = spark.createDataFrame([(i,) for i in ids], "user_id long").repartition(5)
    got = {r.user_id: r.user_idx for r in rc.build_index(df, "user_id", "user_idx").collect()}
    distinct = sorted({i for i in ids if i is not None})
    assert got == {v: i for i, v in enumerate(distinct)}
    schema = rc.build_index(df, "user_id", "user_idx").schema
    assert schema["user_idx"].dataType.simpleString() == "int"


# --------------------------------------------------------------------------- metrics


def test_ranking_scores_by_hand(spark):
    recs = spark.createDataFrame(
        [(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 5, 1), (2, 6, 2), (3, 9, 1)],
        "user_id long, item_id long, rank int",
    )
    # User 3 has no relevant items, so it is not evaluated; user 4 has no list.
    relevant = spark.createDataFrame([(1, 2), (1, 4), (2, 5), (4, 7)], "user_id long, item_id long")
    got = rc.ranking_scores(recs, relevant, k=3, catalog_size=10)
    idcg2 = 1 + 1 / math.log2(3)
    # user 1: hit at rank 2 of 2 relevant; user 2: hit at rank 1 of 1; user 4: nothing.
    assert got.users == 3
    assert got.precision == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert got.recall == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert got.ndcg == pytest.approx(((1 / math.log2(3)) / idcg2 + 1 + 0) / 3)
    assert got.map == pytest.approx(((1 / 2) / 2 + 1 + 0) / 3)
    # Items shown to evaluated users (1, 2, 3, 5, 6), not user 3's item 9.
    assert got.coverage == pytest.approx(5 / 10)


def test_ranking_scores_agree_with_spark_ranking_evaluator(spark):
    rng = np.random.default_rng(3)
    recs, relevant = [], []
    for user in range(60):
        items = rng.choice(40 if user % 2 else 10, size=8, replace=False)
        recs += [(user, int(item), rank) for rank, item in enumerate(items, start=1)]
        relevant += [(user, int(i)) for i in rng.choice(40, size=rng.integers(1, 9), replace=False)]
    recs_df = spark.createDataFrame(recs, "user_id long, item_id long, rank int")
    rel_df = spark.createDataFrame(relevant, "user_id long, item_id long")
    # Several cut-offs from the same lists in one call, each as Spark's at that k.
    at = rc.ranking_scores_at(recs_df, rel_df, [8, 3, 5], catalog_size=40)
    assert sorted(at) == [3, 5, 8]

    lists = (
        recs_df.groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "item_id"))).alias("r"))
        .select("user_id", F.col("r.item_id").cast("array<double>").alias("prediction"))
        .join(
            rel_df.groupBy("user_id").agg(
                F.collect_list(F.col("item_id").cast("double")).alias("label")
            ),
            on="user_id",
            how="inner",
        )
    )

    for k, ours in at.items():

        def spark_metric(name: str, k: int = k) -> float:
            return RankingEvaluator(metricName=name, k=k).evaluate(lists)

        assert ours.precision == pytest.approx(spark_metric("precisionAtK"))
        assert ours.recall == pytest.approx(spark_metric("recallAtK"))
        assert ours.ndcg == pytest.approx(spark_metric("ndcgAtK"))
        assert ours.map == pytest.approx(spark_metric("meanAveragePrecisionAtK"))
        assert ours.coverage == len({i for _, i, r in recs if r <= k}) / 40


# --------------------------------------------------------------------------- popularity


@pytest.fixture
def shop(spark):
    """Users 1-4 in segment 0 like items 10-13; users 5-6 in segment 1 like 20-21."""
    pairs = [(1, 10), (2, 10), (3, 10), (4, 10), (1, 11), (2, 11), (3, 11), (1, 12), (2, 12)]
    pairs += [(1, 13), (5, 20), (6, 20), (5, 21), (6, 10)]
    interactions = spark.createDataFrame(
        [(u, i, 1.0) for u, i in pairs], "user_id long, item_id long, strength double"
    )
    segments = spark.createDataFrame(
        [(u, 0) for u in (1, 2, 3, 4, 7)] + [(5, 1), (6, 1), (8, 1)],
        "user_id long, group int",
    )
    return interactions, segments


def lists(df) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in df.orderBy("user_id", "rank").collect():
        out.setdefault(r.user_id, []).append(r.item_id)
    return out


def test_popular_unseen_skips_what_each_user_has_seen(spark, shop):
    interactions, _ = shop
    ranked = rc.popularity(interactions)
    # 10: 5 users, 11: 3, then 12 and 20 with 2 each (ties by item id).
    assert [r.item_id for r in ranked.orderBy("rank").collect()][:4] == [10, 11, 12, 20]
    users = spark.createDataFrame([(1, 0), (4, 0), (9, 0)], "user_id long, group int")
    got = rc.top_popular_unseen(users, ranked, interactions, 3)
    assert lists(got) == {1: [20, 21], 4: [11, 12, 20], 9: [10, 11, 12]}
    ranks = {r.user_id: sorted(r.ranks) for r in got.groupBy("user_id")
             .agg(F.collect_list("rank").alias("ranks")).collect()}  # fmt: skip
    assert ranks == {1: [1, 2], 4: [1, 2, 3], 9: [1, 2, 3]}


def test_cold_start_uses_the_segment_then_the_whole_shop(spark, shop):
    interactions, segments = shop
    # 7 and 8 have segments but no interactions; 9 has neither.
    cold = spark.createDataFrame([(7,), (8,), (9,)], "user_id long")
    got = rc.cold_start(cold, segments, interactions, None, 2)
    assert lists(got) == {7: [10, 11], 8: [20, 10], 9: [10, 11]}
    sources = {r.user_id: r.source for r in got.select("user_id", "source").distinct().collect()}
    assert sources == {7: "segment_popular", 8: "segment_popular", 9: "popular"}
    # Without segments everyone gets the global list.
    plain = rc.cold_start(cold, None, interactions, None, 2)
    assert {r.source for r in plain.collect()} == {"popular"}


# --------------------------------------------------------------------------- scoring


def brute_force_top(u, v, n, seen):
    scores = u @ v.T
    for user, item in seen:
        scores[user, item] = -np.inf
    out = {}
    for user in range(len(u)):
        order = np.argsort(-scores[user], kind="stable")
        out[user] = [int(i) for i in order[:n] if np.isfinite(scores[user, i])]
    return out


@pytest.mark.parametrize(("user_block", "item_block"), [(4096, 16384), (7, 9)])
def test_block_scoring_matches_a_full_matrix_product(spark, user_block, item_block):
    rng = np.random.default_rng(11)
    u = rng.normal(size=(23, 4)).astype(np.float32)
    v = rng.normal(size=(31, 4)).astype(np.float32)
    pairs = zip(rng.integers(0, 23, 60), rng.integers(0, 31, 60), strict=True)
    seen = {(int(a), int(b)) for a, b in pairs}
    # User 0 has seen all but two items: a short list, still ranked 1, 2.
    seen |= {(0, i) for i in range(29)}
    factors = "id int, features array<float>"
    users = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(u)], factors)
    items = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(v)], factors)
    seen_df = spark.createDataFrame(sorted(seen), "user_idx int, item_idx int")
    got = rc.score_top_n(
        users, items, 5, seen=seen_df, user_block=user_block, item_block=item_block
    )
    rows = got.collect()
    by_user: dict[int, list] = {}
    for r in rows:
        by_user.setdefault(r.user_idx, []).append(r)
    want = brute_force_top(u.astype(np.float64), v.astype(np.float64), 5, seen)
    for user, ranked in by_user.items():
        ranked.sort(key=lambda r: r.rank)
        assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
        assert [r.item_idx for r in ranked] == want[user]
        assert all((user, r.item_idx) not in seen for r in ranked)
    assert set(by_user) == set(range(23))
    assert len(by_user[0]) == 2


def test_block_top_n_breaks_ties_by_item_id_whatever_the_item_order():
    # Small integer factors give many exactly equal scores; the block's items
    # arrive in shuffled id order, as collect_list may deliver them.
    rng = np.random.default_rng(5)
    u = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    v = rng.integers(-2, 3, size=(300, 3)).astype(np.float32)
    item_ids = rng.permutation(np.arange(1000, 1300))
    user_ids = np.arange(40) * 3
    seen = {
        (int(a), int(b))
        for a, b in zip(rng.integers(0, 40, 200), rng.integers(0, 300, 200), strict=True)
    }
    seen_sorted = sorted(seen)
    counts = np.bincount([a for a, _ in seen_sorted], minlength=40)
    seen_items = item_ids[[b for _, b in seen_sorted]]
    got = rc._top_n_rows(user_ids, u, item_ids, v, counts, seen_items, 7).to_pydict()
    scores = u.astype(np.float64) @ v.T.astype(np.float64)
    for a, b in seen:
        scores[a, b] = -np.inf
    for row in range(40):
        # Best score first; among equal scores the lower item id.
        ranked = sorted(
            (k for k in range(300) if np.isfinite(scores[row, k])),
            key=lambda k: (-scores[row, k], item_ids[k]),
        )[:7]
        mine = [
            (i, r)
            for uid, i, r in zip(got["user_idx"], got["item_idx"], got["rank"], strict=True)
            if uid == user_ids[row]
        ]
        assert [i for i, _ in mine] == [int(item_ids[k]) for k in ranked]
        assert [r for _, r in mine] == list(range(1, 8))


def test_similar_items_are_cosine_neighbours_without_the_item_itself(spark):
    vectors = [[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.1]]
    items = spark.createDataFrame(list(enumerate(vectors)), "id int, features array<float>")
    rows = rc.similar_items(items, 2).collect()
    got = {(r.item_idx, r.rank): (r.similar_idx, r.score) for r in rows}
    # Item 0's nearest by angle is item 1 (scale does not matter), then item 2.
    assert got[(0, 1)][0] == 1 and got[(0, 2)][0] == 2
    assert got[(0, 1)][1] == pytest.approx(10 / math.sqrt(101), rel=1e-5)
    assert all(item != similar for (item, _), (similar, _) in got.items())


# --------------------------------------------------------------------------- ALS


def test_als_finds_a_planted_preference(spark):
    """Two taste groups of 10 items; each user touched 6 of their group's items.

    The 4 they did not touch must come first in their top 4, although the
    other group's items are as popular.
    """
    rng = np.random.default_rng(5)
    rows = []
    for user in range(120):
        group = user % 2
        for item in rng.choice(10, size=6, replace=False):
            rows.append((user, int(group * 10 + item), float(rng.integers(1, 5))))
    train = spark.createDataFrame(rows, "user_idx int, item_idx int, strength double")
    model = rc.fit_als(
        train, rc.AlsParams(rank=4, reg_param=0.05, alpha=10.0), max_iter=10, seed=1, blocks=2
    )
    als = rc.als_of(model)
    seen = train.select("user_idx", "item_idx")
    top = rc.score_top_n(als.userFactors, als.itemFactors, 4, seen=seen).collect()
    in_group = sum(1 for r in top if r.item_idx // 10 == r.user_idx % 2)
    assert len(top) == 120 * 4
    assert in_group / len(top) >= 0.95


# --------------------------------------------------------------------------- the stage


@pytest.mark.slow
@pytest.mark.slow
def test_recommend_stage_end_to_end(spark, default_lake):
    lake = Lakehouse(spark, str(default_lake))

    recs = lake.read(t.RECOMMENDATIONS.name).toPandas()
    conf = load_config(LOCAL_CONF, DEFAULT_LAKE_SETS).recommend
    top_n = conf.top_n
    assert conf.eval_k is None, "validated at the k served"
    # Ranks 1..N without gaps for every user.
    per_user = recs.groupby("user_id")["rank"].agg(["min", "max", "count", "nunique"])
    assert (per_user["min"] == 1).all()
    assert (per_user["max"] == per_user["count"]).all()
    assert (per_user["count"] == per_user["nunique"]).all()
    assert (per_user["count"] <= top_n).all()
    assert (per_user["count"] == top_n).mean() > 0.99

    # Nothing a user has seen: no item of any event that builds interactions.
    seen = (
        lake.read(t.SILVER_EVENTS.name)
        .where("event_type IN ('view', 'cart', 'purchase', 'review') AND item_id IS NOT NULL")
        .select("user_id", "item_id")
        .distinct()
        .toPandas()
    )
    again = recs.merge(seen, on=["user_id", "item_id"], how="inner")
    assert again.empty, again.head()

    # Every user with a feature row is served; those without interactions by their segment.
    features = lake.read(t.USER_FEATURES.name).select("user_id").toPandas()
    assert set(recs["user_id"]) == set(features["user_id"])
    interacted = set(lake.read(t.INTERACTIONS.name).select("user_id").toPandas()["user_id"])
    evaluation = lake.read(t.RECOMMENDATION_EVAL.name).toPandas()
    assert set(evaluation["k"]) == {10}, "validated at the k served, which is 10"
    assert set(evaluation["method"]) == {"als", "ease", "popular", "segment_popular"}
    # The validation winner is served (a tie within serve_tie to the cheaper one).
    assert evaluation["served"].sum() == 1
    served = evaluation[evaluation["served"]].iloc[0]
    assert served["ndcg"] >= evaluation["ndcg"].max() - conf.serve_tie
    assert (evaluation[evaluation["method"].str.contains("popular")]["ndcg"] < served["ndcg"]).all()
    sources = recs.groupby("user_id")["source"].first()
    cold = sources[~sources.index.isin(interacted)]
    assert len(cold) > 0, "the synthetic data has users without interactions"
    assert (cold == "segment_popular").all()
    assert (sources[sources.index.isin(interacted)] == served["method"]).all()
    grid = load_config(LOCAL_CONF, DEFAULT_LAKE_SETS).recommend
    points = len(grid.ranks) * len(grid.reg_params) * len(grid.alphas)
    # ... and MLlib's defaults, always a candidate.
    assert len(evaluation[evaluation["method"] == "als"]) == points + 1
    assert "rank=10 reg=0.1 alpha=1" in set(evaluation["params"])
    assert evaluation["chosen"].sum() == 1
    chosen = evaluation[evaluation["chosen"]].iloc[0]
    assert chosen["ndcg"] == evaluation[evaluation["method"] == "als"]["ndcg"].max()

    similar = lake.read(t.SIMILAR_ITEMS.name).toPandas()
    assert (similar["item_id"] != similar["similar_item_id"]).all()
    assert similar.groupby("item_id")["rank"].max().max() == 10

    # The default lake's own store (other tests point MLflow elsewhere since).
    store = f"sqlite:///{default_lake / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("shopseg_recommender", "champion")
    assert set(recs["model_version"]) == {str(version.version)}
    run = client.get_run(version.run_id)
    for name in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10"):
        assert run.data.metrics[name] == pytest.approx(chosen[name.split("_at_")[0]])
        assert f"baseline_popularity_{name}" in run.data.metrics
        assert f"baseline_segment_{name}" in run.data.metrics
    assert run.data.params["served_method"] == served["method"]
    assert run.data.metrics["served_ndcg_at_10"] == pytest.approx(served["ndcg"])
    assert run.data.params["input.silver/interactions.version"] == "0"


@pytest.mark.slow
def test_any_interaction_log_by_configuration_alone(spark, tmp_path):
    """conf/interactions_example.yaml: an order CSV with its own column names."""
    from shopseg.cli import main

    from .conftest import REPO

    conf = REPO / "conf" / "interactions_example.yaml"
    root = tmp_path / "lh"
    assert main(["run", "--conf", str(conf), "--set", f"lakehouse.root={root}"]) == 0
    lake = Lakehouse(spark, str(root))
    raw = pd.read_csv(REPO / "tests" / "data" / "interactions_example.csv", sep=";")
    recs = lake.read(t.RECOMMENDATIONS.name).toPandas()
    assert set(recs["user_id"]) == set(raw["customer_no"]), "every customer is served"
    assert set(recs["item_id"]) <= set(raw["article_no"])
    ranks = recs.groupby("user_id")["rank"].agg(lambda r: sorted(r) == [1, 2, 3, 4, 5])
    assert ranks.all(), "ranks 1..5 for every customer"
    bought = recs.merge(
        raw.rename(columns={"customer_no": "user_id", "article_no": "item_id"}),
        on=["user_id", "item_id"],
    )
    assert bought.empty, "nothing a customer already ordered"
    evaluation = lake.read(t.RECOMMENDATION_EVAL.name).toPandas()
    assert set(evaluation["method"]) >= {"als", "popular"}


# --------------------------------------------------------------------------- splits


def short_histories(spark, users: int = 200):
    """Every user active on one or two days of 2025, 4-8 events on 40 items."""
    rng = np.random.default_rng(3)
    rows, event_id = [], 0
    for user in range(users):
        first = pd.Timestamp("2025-01-01") + pd.Timedelta(days=int(rng.integers(0, 330)))
        days = [first, first + pd.Timedelta(days=int(rng.integers(1, 4)))][: rng.integers(1, 3)]
        for i, item in enumerate(rng.choice(40, size=rng.integers(4, 9), replace=False)):
            event_id += 1
            ts = days[i % len(days)] + pd.Timedelta(minutes=int(i))
            rows.append((event_id, user, int(item), "purchase", ts.to_pydatetime()))
    df = spark.createDataFrame(
        rows, "event_id long, user_id long, item_id long, event_type string, event_ts timestamp"
    )
    return df.withColumn(t.EVENT_DATE, F.to_date(t.EVENT_TS))


def evaluable_share(events, spec: rc.SplitSpec) -> float:
    train, held = rc.split_events(events, spec)
    evaluable = rc.relevant_items(train, held).select(t.USER_ID).distinct().count()
    return evaluable / events.select(t.USER_ID).distinct().count()


def test_short_histories_get_a_split_that_leaves_most_users_evaluable(spark):
    events = short_histories(spark).cache()
    # The per-days split holds out whole histories: nothing left to train on.
    assert evaluable_share(events, rc.SplitSpec("last_days", holdout_days=30)) < 0.05
    spec, why = rc.resolve_split(rc.SplitSpec("auto", holdout_days=30), events)
    assert spec.method == "last_share", why
    assert evaluable_share(events, spec) > 0.9
    assert evaluable_share(events, rc.SplitSpec("last_n", last_n=2)) > 0.9
    # One user's six events: the latest 20% is one event, the latest 2 two.
    one = events.filter("user_id = 0")
    n = one.count()
    for spec, held_n in (
        (rc.SplitSpec("last_share", share=0.2), max(1, int(n * 0.2))),
        (rc.SplitSpec("last_n", last_n=2), 2),
    ):
        train, held = rc.split_events(one, spec)
        latest = sorted((r.event_ts, r.event_id) for r in one.collect())[-held_n:]
        assert sorted((r.event_ts, r.event_id) for r in held.collect()) == latest
        assert train.count() == n - held_n
    events.unpersist()


def test_long_histories_keep_the_days_split_and_a_cutoff_is_one_date(spark):
    rows = [
        (u * 10 + d, u, d, "view", pd.Timestamp("2025-01-01") + pd.Timedelta(days=40 * d))
        for u in range(5)
        for d in range(6)
    ]
    events = spark.createDataFrame(
        [(*r[:4], r[4].to_pydatetime()) for r in rows],
        "event_id long, user_id long, item_id long, event_type string, event_ts timestamp",
    ).withColumn(t.EVENT_DATE, F.to_date(t.EVENT_TS))
    spec, _ = rc.resolve_split(rc.SplitSpec("auto", holdout_days=30), events)
    assert spec.method == "last_days"
    cutoff = pd.Timestamp("2025-06-01").date()
    train, held = rc.split_events(events, rc.SplitSpec("cutoff", cutoff=cutoff))
    assert {r.item_id for r in held.collect()} == {4, 5}
    assert {r.item_id for r in train.collect()} == {0, 1, 2, 3}


# --------------------------------------------------------------------------- item-item


def test_item_item_neighbours_stay_within_a_planted_taste_group(spark):
    # Three taste groups of five items; each user takes four items of their
    # group and, once in a while, one item of another group.
    rng = np.random.default_rng(11)
    rows = []
    for user in range(90):
        group = user % 3
        for item in rng.choice(5, size=4, replace=False):
            rows.append((user, int(group * 5 + item), float(rng.integers(1, 4))))
        if user % 10 == 0:
            rows.append((user, int(((group + 1) % 3) * 5), 1.0))
    interactions = spark.createDataFrame(rows, "user_id long, item_id long, strength double")
    neighbours = rc.item_neighbours(interactions, 3).toPandas()
    assert len(neighbours) == 15 * 3
    same = neighbours["item_id"] // 5 == neighbours["similar_item_id"] // 5
    assert same.all(), neighbours[~same]
    # Recommendations for a user with two items of group 1: the other three.
    history = spark.createDataFrame(
        [(500, 5, 1.0), (500, 6, 1.0)], "user_id long, item_id long, strength double"
    )
    recs = rc.top_item_item(history, rc.item_neighbours(interactions, 3), None, 3).collect()
    assert sorted(r.item_id for r in recs) == [7, 8, 9]
    assert [r.rank for r in sorted(recs, key=lambda r: r.rank)] == [1, 2, 3]


def test_random_trials_are_log_uniform_within_bounds_and_alpha_follows_the_strength_scale():
    trials = rc.random_trials(400, [8, 64], [0.01, 1.0], [0.1, 100.0], 5.0, seed=1)
    assert trials == rc.random_trials(400, [8, 64], [0.01, 1.0], [0.1, 100.0], 5.0, seed=1)
    ranks = np.array([p.rank for p in trials])
    regs = np.array([p.reg_param for p in trials])
    confidence = np.array([p.alpha for p in trials]) * 5.0
    assert ranks.min() >= 8 and ranks.max() <= 64 and (ranks % 4 == 0).all()
    assert regs.min() >= 0.00999 and regs.max() <= 1.001
    assert confidence.min() >= 0.0999 and confidence.max() <= 100.1
    # Log-uniform: about half of the draws below the geometric middle.
    assert 0.4 < (confidence < 10**0.5).mean() < 0.6
    assert 0.4 < (regs < 0.1).mean() < 0.6


def _random_log(spark, users=60, items=12, seed=3):
    rng = np.random.default_rng(seed)
    rows = {}
    for user in range(users):
        for item in rng.choice(items, size=int(rng.integers(1, 6)), replace=False):
            rows[(user, int(item))] = float(rng.integers(1, 5))
    pdf = pd.DataFrame(
        [(u, i, s) for (u, i), s in rows.items()], columns=["user_id", "item_id", "strength"]
    )
    return pdf, spark.createDataFrame(pdf, "user_id long, item_id long, strength double")


def test_item_gram_equals_the_matrix_product_over_users(spark):
    pdf, interactions = _random_log(spark)
    got = rc.build_item_gram(interactions, buckets=3).toPandas()
    matrix = pdf.pivot_table(index="user_id", columns="item_id", values="strength", fill_value=0)
    dot = matrix.T.to_numpy() @ matrix.to_numpy()
    co = (matrix.T.to_numpy() > 0).astype(float) @ (matrix.to_numpy() > 0).astype(float)
    ids = list(matrix.columns)
    a = got["item_a"].map(ids.index).to_numpy()
    b = got["item_b"].map(ids.index).to_numpy()
    np.testing.assert_allclose(got["dot"], dot[a, b])
    np.testing.assert_allclose(got["co"], co[a, b])
    # Every non-zero pair is there, once.
    assert len(got) == int((co > 0).sum())


def test_jaccard_and_lift_neighbours_by_hand(spark):
    # Item 1: users a, b, c; item 2: a, b; item 3: c, d, e, f.
    rows = [(u, 1) for u in "abc"] + [(u, 2) for u in "ab"] + [(u, 3) for u in "cdef"]
    interactions = spark.createDataFrame(
        [(ord(u), i, 1.0) for u, i in rows], "user_id long, item_id long, strength double"
    )
    pairs = {}
    for similarity in ("jaccard", "lift"):
        got = rc.item_neighbours(interactions, 5, similarity).collect()
        pairs[similarity] = {(r.item_id, r.similar_item_id): r.score for r in got}
    assert pairs["jaccard"] == pytest.approx(
        {(1, 2): 2 / 3, (2, 1): 2 / 3, (1, 3): 1 / 6, (3, 1): 1 / 6}
    )
    assert pairs["lift"] == pytest.approx(
        {(1, 2): 2 / 6, (2, 1): 2 / 6, (1, 3): 1 / 12, (3, 1): 1 / 12}
    )
    with pytest.raises(ValueError, match="unknown item similarity 'pearson'"):
        rc.item_neighbours(interactions, 5, "pearson")


def test_ease_weights_are_each_items_ridge_regression_on_the_others(spark):
    from sklearn.linear_model import Ridge

    pdf, interactions = _random_log(spark, users=80, items=8, seed=5)
    gram = rc.build_item_gram(interactions, buckets=2)
    x = pdf.pivot_table(index="user_id", columns="item_id", values="strength", fill_value=0) > 0
    x = x.astype(float)
    l2 = 0.5 * x.sum(axis=0).mean()  # scale 0.5 of the mean users per item
    model = rc.fit_ease(rc.collect_gram(gram, max_items=8), [0.5])[0.5]
    assert list(model.ids) == list(x.columns)
    for j, target in enumerate(model.ids):
        others = [i for i in model.ids if i != target]
        ridge = Ridge(alpha=l2, fit_intercept=False).fit(x[others], x[target])
        rows = [i for i in range(len(model.ids)) if i != j]
        np.testing.assert_allclose(model.weights[rows, j], ridge.coef_, atol=1e-5)
        assert model.weights[j, j] == 0
    with pytest.raises(
        ValueError, match="8 x 8 item matrix .* above recommend.ease.max_items \\(7\\)"
    ):
        rc.collect_gram(gram, max_items=7)


@pytest.mark.parametrize("similarity", ["cosine", "jaccard", "lift"])
def test_dense_item_item_scores_as_the_spark_joins_do(spark, similarity):
    pdf, interactions = _random_log(spark, users=70, items=15, seed=9)
    gram = rc.build_item_gram(interactions, buckets=2).cache()
    n = 4
    model = rc.item_item_model(rc.collect_gram(gram, 100), similarity, n)
    joined = rc.neighbours_from_gram(gram, n, similarity).toPandas()
    # Each row keeps its n best: the same weights (up to ties at the n-th).
    for item, group in joined.groupby("item_id"):
        row = model.weights[list(model.ids).index(item)]
        kept = np.sort(row[row > 0])[::-1]
        np.testing.assert_allclose(kept[: len(group)], group["score"].to_numpy(), rtol=1e-5)
    history = interactions.where("user_id < 20")
    dense = rc.score_item_model(history, model, None, 3).toPandas()
    neighbours = spark.createDataFrame(
        [
            (int(a), int(b), float(model.weights[i, j]))
            for i, a in enumerate(model.ids)
            for j, b in enumerate(model.ids)
            if model.weights[i, j] > 0
        ],
        "item_id long, similar_item_id long, score double",
    )
    joins = rc.top_item_item(history, neighbours, None, 3).toPandas()
    merged = dense.merge(joins, on=["user_id", "rank"], suffixes=("", "_joins"))
    assert len(merged) == len(joins) > 0
    np.testing.assert_allclose(merged["score"], merged["score_joins"], rtol=1e-5)
    # Nothing a user already has is scored.
    assert dense.merge(pdf, on=["user_id", "item_id"]).empty


def test_the_validation_winner_is_served_and_a_tie_goes_to_the_cheaper_method():
    from shopseg.stages.recommend import Candidate, Result, serving_choice

    def result(method: str, ndcg: float, params: str = "") -> Result:
        scores = rc.RankingScores(0.1, 0.1, ndcg, 0.1, 0.5, 100)
        return Result(Candidate(method, params), {10: scores}, 1.0)

    pop, ii, ease = result("popular", 0.10), result("item_item", 0.150), result("ease", 0.200)
    als = result("als", 0.2005, "rank=10")
    served, runner_up = serving_choice([pop, ii, ease, als], 10, tie=0.0)
    assert (served, runner_up) == (als, ease)
    # Within the tie margin the cheaper EASE is served; ALS is then the runner-up.
    served, runner_up = serving_choice([pop, ii, ease, als], 10, tie=0.001)
    assert (served, runner_up) == (ease, als)
    # The runner-up is another method's best, not a second point of the winner's.
    als2 = result("als", 0.19, "rank=32")
    assert serving_choice([pop, als2, als, ii], 10, tie=0.0) == (als, ii)


def test_confidence_transforms_by_hand(spark):
    # Users 1 and 2; item 10 everyone has, item 11 only user 1.
    rows = [(1, 10, 3.0), (1, 11, 3.0), (2, 10, 1.0)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, strength double")

    def values(transform):
        out = rc.with_confidence(df, transform, rc.USER_IDX, rc.ITEM_IDX).collect()
        return {(r.user_idx, r.item_idx): r.strength for r in out}

    assert values("linear") == {(1, 10): 3.0, (1, 11): 3.0, (2, 10): 1.0}
    assert values("log") == pytest.approx(
        {(1, 10): math.log(4.0), (1, 11): math.log(4.0), (2, 10): math.log(2.0)}
    )
    # BM25: N = 2 users, lengths 6 and 1 (mean 3.5), k1 1.2, b 0.75.
    idf = {10: math.log(1 + 0.5 / 2.5), 11: math.log(1 + 1.5 / 1.5)}

    def bm25(s, length, item):
        return s * 2.2 / (s + 1.2 * (0.25 + 0.75 * length / 3.5)) * idf[item]

    assert values("bm25") == pytest.approx(
        {(1, 10): bm25(3, 6, 10), (1, 11): bm25(3, 6, 11), (2, 10): bm25(1, 1, 10)}
    )
    # The rare item weighs more than the common one at the same strength.
    assert values("bm25")[(1, 11)] > values("bm25")[(1, 10)]
    with pytest.raises(ValueError, match="unknown confidence transform 'sqrt'"):
        rc.with_confidence(df, "sqrt", rc.USER_IDX, rc.ITEM_IDX)


@pytest.mark.slow
def test_ease_above_its_item_limit_is_refused_by_name_and_not_a_candidate(tmp_path, caplog):
    import logging
    import re

    from deltalake import DeltaTable

    from shopseg.cli import main

    from .conftest import FAST_WRITER, REPO

    conf = str(REPO / "conf" / "ratings_example.yaml")
    root = tmp_path / "lh"
    sets = ["--set", f"lakehouse.root={root}", "--set", FAST_WRITER]
    sets += ["--set", "recommend.item_item=false", "--set", "recommend.ease.max_items=10"]
    sets += ["--set", "recommend.search.trials=0"]
    # The shopseg loggers do not propagate (shopseg.logs): caplog listens on them directly.
    shopseg_log = logging.getLogger("shopseg")
    shopseg_log.addHandler(caplog.handler)
    try:
        assert main(["run", "--conf", conf, *sets]) == 0
    finally:
        shopseg_log.removeHandler(caplog.handler)
    refused = re.search(r"EASE refused: (\d+) items in the training interactions", caplog.text)
    assert refused and int(refused.group(1)) > 10
    evaluation = DeltaTable(str(root / "gold" / "recommendation_eval")).to_pandas()
    assert set(evaluation["method"]) == {"als", "popular", "segment_popular"}
