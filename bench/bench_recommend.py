"""ALS against `implicit` and top-N for every user against NumPy (`run.py`)."""

from __future__ import annotations

import numpy as np
from bench_common import (
    ALS_ALPHA,
    ALS_ITER,
    ALS_RANK,
    ALS_REG,
    PEER_ALS_ALPHA,
    SAMPLE_USERS,
    TOP_N,
    Peaks,
    iteration_detail,
    median,
    row,
    timed,
    timed_fits,
)


class AlsData:
    """The recommend stage's time split of the latest snapshot, indexed."""

    def __init__(self, spark, lake, config):
        from pyspark.sql import functions as F

        from shopseg import recommend as rc
        from shopseg import tables as t
        from shopseg.features import build_interactions
        from shopseg.pipeline import latest

        fconf, conf = config.features, config.recommend
        events = lake.read(t.SILVER_EVENTS.name)
        interactions = lake.read(t.INTERACTIONS.name)
        self.as_of = latest(interactions, t.AS_OF_DATE)
        weighted = [kind for kind, w in fconf.interaction_weights.items() if w > 0]
        window = events.where(F.col(t.EVENT_DATE) < F.lit(self.as_of))
        train_events, held = rc.time_split(window, conf.holdout_days, weighted)
        train = build_interactions(
            train_events, self.as_of, fconf.interaction_weights, fconf.interaction_half_life_days
        )
        self.user_index = rc.build_index(train, t.USER_ID, rc.USER_IDX).cache()
        self.item_index = rc.build_index(train, t.ITEM_ID, rc.ITEM_IDX).cache()
        self.train_idx = (
            rc.with_index(
                rc.with_index(train, self.user_index, t.USER_ID, rc.USER_IDX),
                self.item_index,
                t.ITEM_ID,
                rc.ITEM_IDX,
            )
            .select(rc.USER_IDX, rc.ITEM_IDX, t.STRENGTH)
            .cache()
        )
        self.pairs = self.train_idx.count()
        self.relevant = rc.relevant_items(train_events, held).cache()
        self.eval_idx = (
            self.relevant.select(t.USER_ID)
            .distinct()
            .join(self.user_index, t.USER_ID)
            .select(rc.USER_IDX)
            .cache()
        )
        self.catalog = self.item_index.count()
        self.n_users = self.user_index.count()

    def ndcg(self, top_idx) -> float:
        """NDCG@10 of `(user_idx, item_idx, rank)` recommendations on the held-out items."""
        from shopseg import recommend as rc
        from shopseg import tables as t

        recs = top_idx.join(self.user_index, rc.USER_IDX).join(self.item_index, rc.ITEM_IDX)
        recs = recs.select(t.USER_ID, t.ITEM_ID, rc.RANK)
        return rc.ranking_scores(recs, self.relevant, 10, self.catalog).ndcg


def bench_als(spark, lake, config, n_events: int, repeats: int, jvm: int | None):
    """ALS against `implicit`, then top-N for all users against NumPy (two rows)."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from pyspark.sql import functions as F
    from threadpoolctl import threadpool_limits

    from shopseg import recommend as rc
    from shopseg import tables as t

    data = AlsData(spark, lake, config)
    blocks = spark.sparkContext.defaultParallelism
    params = rc.AlsParams(ALS_RANK, ALS_REG, ALS_ALPHA)

    mine = timed_fits(
        lambda max_iter: rc.als_of(
            rc.fit_als(data.train_idx, params, max_iter=max_iter, seed=42, blocks=blocks)
        ),
        ALS_ITER,
        repeats,
        jvm,
    )
    model = mine.models[-1]
    seen = data.train_idx.select(rc.USER_IDX, rc.ITEM_IDX)
    eval_users = model.userFactors.join(
        data.eval_idx.withColumnRenamed(rc.USER_IDX, "id"), "id", "left_semi"
    )
    eval_seen = seen.join(data.eval_idx, rc.USER_IDX, "left_semi")
    ndcg = data.ndcg(rc.score_top_n(eval_users, model.itemFactors, 10, seen=eval_seen))

    # The peer reads the same training pairs as a users x items CSR matrix.
    pairs = data.train_idx.toArrow()
    matrix = sp.csr_matrix(
        (
            pairs.column(t.STRENGTH).to_numpy().astype(np.float32),
            (pairs.column(rc.USER_IDX).to_numpy(), pairs.column(rc.ITEM_IDX).to_numpy()),
        ),
        shape=(data.n_users, data.catalog),
    )

    def peer_fit(iterations: int):
        peer = AlternatingLeastSquares(
            factors=ALS_RANK,
            regularization=ALS_REG,
            alpha=PEER_ALS_ALPHA,
            iterations=iterations,
            random_state=42,
        )
        peer.fit(matrix, show_progress=False)
        return peer

    # implicit asks for a single-threaded BLAS (its own threads do the work).
    with threadpool_limits(1, "blas"):
        theirs = timed_fits(peer_fit, ALS_ITER, repeats, None)
    peer = theirs.models[-1]
    eval_ids = data.eval_idx.toArrow().column(rc.USER_IDX).to_numpy()
    ids, _ = peer.recommend(eval_ids, matrix[eval_ids], N=10, filter_already_liked_items=True)
    peer_recs = spark.createDataFrame(_pandas(eval_ids, ids, rc)).where(F.col(rc.ITEM_IDX) >= 0)
    peer_ndcg = data.ndcg(peer_recs)
    als_row = row(
        "als",
        n_events,
        [s / ALS_ITER for s in mine.seconds],
        "implicit",
        [s / ALS_ITER for s in theirs.seconds],
        quality={"ndcg_at_10": ndcg},
        peer_quality={"ndcg_at_10": peer_ndcg},
        equal_quality=abs(ndcg - peer_ndcg) <= 0.005,
        throughput=data.pairs * ALS_ITER / median(mine.seconds),
        throughput_unit="pair-iterations/s",
        mem=(mine.memory, theirs.memory),
        warmup=([s / ALS_ITER for s in mine.warm], [s / ALS_ITER for s in theirs.warm]),
        detail={
            "training_pairs": data.pairs,
            "users": data.n_users,
            "items": data.catalog,
            "evaluated_users": len(eval_ids),
            "rank": ALS_RANK,
            "reg": ALS_REG,
            "alpha": ALS_ALPHA,
            "peer_alpha": PEER_ALS_ALPHA,
            "iterations": ALS_ITER,
            **iteration_detail(
                (mine.seconds, mine.one_iteration, [ALS_ITER]),
                (theirs.seconds, theirs.one_iteration, [ALS_ITER]),
            ),
        },
    )
    top_row = bench_recommend_all(spark, model, n_events, repeats, jvm)
    for df in (data.train_idx, data.relevant, data.eval_idx, data.user_index, data.item_index):
        df.unpersist()
    return [als_row, top_row]


def _pandas(eval_ids, ids, rc):
    import pandas as pd

    return pd.DataFrame(
        {
            rc.USER_IDX: np.repeat(eval_ids, ids.shape[1]).astype(np.int32),
            rc.ITEM_IDX: ids.reshape(-1).astype(np.int32),
            rc.RANK: np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(eval_ids)),
        }
    )


def numpy_top_n(users: np.ndarray, items: np.ndarray, n: int, block: int = 4096) -> np.ndarray:
    """Top-n item positions per user (best first): blocked float32 product + argpartition."""
    out = np.empty((len(users), n), dtype=np.int64)
    items_t = np.ascontiguousarray(items.T)
    for start in range(0, len(users), block):
        scores = users[start : start + block] @ items_t
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start : start + block] = np.take_along_axis(part, order, axis=1)
    return out


def factors(df) -> tuple[np.ndarray, np.ndarray]:
    table = df.orderBy("id").toArrow()
    vectors = table.column("features").combine_chunks()
    values = vectors.values.to_numpy(zero_copy_only=False).astype(np.float32)
    return table.column("id").to_numpy(), values.reshape(len(vectors), -1)


def bench_recommend_all(spark, model, n_events: int, repeats: int, jvm: int | None) -> dict:
    from pyspark.sql import functions as F

    from shopseg import recommend as rc

    users_df, items_df = model.userFactors.cache(), model.itemFactors.cache()
    n_users, n_items = users_df.count(), items_df.count()
    scores = n_users * n_items

    def blocked():
        return rc.score_top_n(users_df, items_df, TOP_N)

    with Peaks(jvm) as spark_mem:
        seconds, _, warm = timed(
            lambda: blocked().write.format("noop").mode("overwrite").save(), repeats
        )
    user_ids, user_vectors = factors(users_df)
    item_ids, item_vectors = factors(items_df)
    with Peaks(None) as peer_mem:
        peer_seconds, top, peer_warm = timed(
            lambda: numpy_top_n(user_vectors, item_vectors, TOP_N), repeats
        )
    rng = np.random.default_rng(0)
    sample = rng.choice(len(user_ids), size=min(SAMPLE_USERS, len(user_ids)), replace=False)
    mine = (
        blocked()
        .where(F.col(rc.USER_IDX).isin([int(user_ids[i]) for i in sample]))
        .groupBy(rc.USER_IDX)
        .agg(F.sort_array(F.collect_list(rc.ITEM_IDX)).alias("items"))
        .toPandas()
        .set_index(rc.USER_IDX)["items"]
    )
    same = sum(
        sorted(mine.get(int(user_ids[i]), [])) == sorted(int(x) for x in item_ids[top[i]])
        for i in sample
    )
    share = same / len(sample)
    out = row(
        "recommend_all",
        n_events,
        seconds,
        "numpy",
        peer_seconds,
        quality={"same_top_n_share": share},
        peer_quality={"same_top_n_share": share},
        equal_quality=share >= 0.99,
        throughput=scores / median(seconds),
        throughput_unit="scores/s",
        mem=(spark_mem, peer_mem),
        warmup=(warm, peer_warm),
        detail={"users": n_users, "items": n_items, "n": TOP_N, "rank": ALS_RANK},
    )
    out["ns_per_score"] = round(median(seconds) / scores * 1e9, 3)
    out["peer_ns_per_score"] = round(median(peer_seconds) / scores * 1e9, 3)
    users_df.unpersist()
    items_df.unpersist()
    return out
