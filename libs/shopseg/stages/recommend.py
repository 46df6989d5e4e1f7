"""Stage `recommend`: silver/interactions -> ALS -> gold/recommendations, similar items.

1. Time split of the snapshot's events: each user's last `holdout_days` are
   held out (`shopseg.recommend` states the metrics).
2. Grid search over rank, regParam and alpha on the split, next to two
   baselines on the same split (global and within-segment popularity).
3. The best grid point (NDCG@eval_k) is refitted on all interactions and
   registered as `recommend.model_name` with alias `recommend.alias`.
4. Top N per user by block scoring; users without interactions get their
   segment's popular items, users without a segment the global ones.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import recommend as rc
from shopseg import tables as t
from shopseg import tracking
from shopseg.features import build_interactions
from shopseg.pipeline import StageContext, latest


def _segments(ctx: StageContext, as_of: dt.date) -> DataFrame | None:
    """`(user_id, group)`: each user's segment in the latest snapshot up to `as_of`."""
    if not ctx.lakehouse.exists(t.USER_SEGMENTS.name):
        ctx.log.warning(
            "no %s: users without interactions get the global popular items",
            t.USER_SEGMENTS.name,
        )
        return None
    segments = ctx.read(t.USER_SEGMENTS.name)
    seg_as_of = latest(segments, t.AS_OF_DATE, as_of)
    if seg_as_of is None:
        ctx.log.warning("no segment snapshot on or before %s; global popularity only", as_of)
        return None
    ctx.log.info("segments of the %s snapshot for popularity within a segment", seg_as_of)
    return segments.filter(F.col(t.AS_OF_DATE) == F.lit(seg_as_of)).select(
        t.USER_ID, F.col(t.SEGMENT_ID).alias(rc.GROUP)
    )


def _ids_to_idx(df: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    with_users = rc.with_index(df, users, t.USER_ID, rc.USER_IDX)
    return rc.with_index(with_users, items, t.ITEM_ID, rc.ITEM_IDX)


def _idx_to_ids(df: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    return df.join(users, on=rc.USER_IDX, how="inner").join(items, on=rc.ITEM_IDX, how="inner")


def _evaluate(
    ctx: StageContext,
    events: DataFrame,
    as_of: dt.date,
    user_index: DataFrame,
    item_index: DataFrame,
    segments: DataFrame | None,
    blocks: int,
) -> tuple[rc.AlsParams, list[tuple]]:
    conf = ctx.config.recommend
    fconf = ctx.config.features
    k = conf.eval_k
    weighted = [kind for kind, w in fconf.interaction_weights.items() if w > 0]
    train_events, held = rc.time_split(events, conf.holdout_days, weighted)
    train = build_interactions(
        train_events, as_of, fconf.interaction_weights, fconf.interaction_half_life_days
    ).cache()
    relevant = rc.relevant_items(train_events, held).cache()
    eval_users = relevant.select(t.USER_ID).distinct().cache()
    n_eval = eval_users.count()
    catalog = train.select(t.ITEM_ID).distinct().count()
    ctx.log.info(
        "time split (last %d days per user held out): %d training pairs, %d held-out "
        "(user, new item) pairs, %d users evaluated, %d items in the catalogue",
        conf.holdout_days,
        train.count(),
        relevant.count(),
        n_eval,
        catalog,
    )
    if n_eval == 0:
        raise ValueError(
            f"no user has interactions both before and within the last {conf.holdout_days} "
            "days; lower recommend.holdout_days"
        )
    train_idx = (
        _ids_to_idx(train, user_index, item_index)
        .select(rc.USER_IDX, rc.ITEM_IDX, t.STRENGTH)
        .cache()
    )
    eval_idx = eval_users.join(user_index, on=t.USER_ID, how="inner").select(rc.USER_IDX)
    seen_idx = train_idx.join(eval_idx, on=rc.USER_IDX, how="left_semi").select(
        rc.USER_IDX, rc.ITEM_IDX
    )

    rows: list[tuple] = []

    def record(method: str, params: str, scores: rc.RankingScores, seconds: float) -> None:
        rows.append(
            (
                as_of,
                method,
                params,
                k,
                scores.precision,
                scores.recall,
                scores.ndcg,
                scores.map,
                scores.coverage,
                scores.users,
                seconds,
                False,
            )  # fmt: skip
        )
        ctx.log.info(
            "%-16s %-28s precision@%d %.4f recall %.4f NDCG %.4f MAP %.4f coverage %.3f (%.1fs)",
            method, params, k, scores.precision, scores.recall, scores.ndcg, scores.map,
            scores.coverage, seconds,
        )  # fmt: skip

    started = time.perf_counter()
    popular = rc.popularity(train)
    recs = rc.top_popular_unseen(eval_users.withColumn(rc.GROUP, F.lit(0)), popular, train, k)
    base_pop = rc.ranking_scores(recs, relevant, k, catalog)
    record(rc.SOURCE_POPULAR, "", base_pop, time.perf_counter() - started)

    started = time.perf_counter()
    groups = rc.with_groups(train.select(t.USER_ID).distinct(), segments)
    by_segment = rc.popularity(train, groups)
    recs = rc.top_popular_unseen(rc.with_groups(eval_users, segments), by_segment, train, k)
    base_seg = rc.ranking_scores(recs, relevant, k, catalog)
    record(rc.SOURCE_SEGMENT, "", base_seg, time.perf_counter() - started)

    best: tuple[float, rc.AlsParams, rc.RankingScores] | None = None
    grid = [
        rc.AlsParams(rank, reg, alpha)
        for rank, reg, alpha in itertools.product(conf.ranks, conf.reg_params, conf.alphas)
    ]
    for step, params in enumerate(grid):
        started = time.perf_counter()
        model = rc.fit_als(train_idx, params, max_iter=conf.max_iter, seed=conf.seed, blocks=blocks)
        fit_seconds = time.perf_counter() - started
        als = rc.als_of(model)
        user_factors = als.userFactors.join(
            eval_idx.withColumnRenamed(rc.USER_IDX, "id"), on="id", how="left_semi"
        )
        top = rc.score_top_n(
            user_factors,
            als.itemFactors,
            k,
            seen=seen_idx,
            user_block=conf.user_block,
            item_block=conf.item_block,
        )
        scores = rc.ranking_scores(_idx_to_ids(top, user_index, item_index), relevant, k, catalog)
        record(rc.SOURCE_ALS, params.label(), scores, fit_seconds)
        ctx.run.log_metrics(
            {f"tuning.ndcg_at_{k}": scores.ndcg, "tuning.fit_seconds": fit_seconds}, step=step
        )
        if best is None or scores.ndcg > best[0]:
            best = (scores.ndcg, params, scores)
    assert best is not None
    _, params, scores = best
    for i, row in enumerate(rows):
        if row[1] == rc.SOURCE_ALS and row[2] == params.label():
            rows[i] = (*row[:-1], True)
    ctx.run.log_params({"rank": params.rank, "reg_param": params.reg_param, "alpha": params.alpha})
    ctx.run.log_metrics(
        scores.as_metrics(k)
        | base_pop.as_metrics(k, "baseline_popularity_")
        | base_seg.as_metrics(k, "baseline_segment_")
        | {"eval_users": scores.users}
    )
    ratio = scores.ndcg / base_pop.ndcg if base_pop.ndcg else float("inf")
    ctx.log.info(
        "chosen ALS %s: NDCG@%d %.4f, %.2fx global popularity (%.4f), segment popularity %.4f",
        params.label(), k, scores.ndcg, ratio, base_pop.ndcg, base_seg.ndcg,
    )  # fmt: skip
    for df in (train, relevant, eval_users, train_idx):
        df.unpersist()
    return params, rows


def run(ctx: StageContext) -> None:
    conf = ctx.config.recommend
    interactions_all = ctx.read(t.INTERACTIONS.name)
    as_of = conf.as_of_date or latest(interactions_all, t.AS_OF_DATE)
    if as_of is None:
        raise ValueError(f"{t.INTERACTIONS.name} is empty; run `features` first")
    interactions = interactions_all.filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
    lookback = ctx.config.features.lookback_days
    events = ctx.read(t.SILVER_EVENTS.name).filter(F.col(t.EVENT_DATE) < F.lit(as_of))
    if lookback:
        events = events.filter(F.col(t.EVENT_DATE) >= F.date_sub(F.lit(as_of), lookback))
    features = ctx.read(t.USER_FEATURES.name)
    users = features.filter(F.col(t.AS_OF_DATE) == F.lit(as_of)).select(t.USER_ID)
    segments = _segments(ctx, as_of)
    blocks = conf.blocks or ctx.spark.sparkContext.defaultParallelism
    ctx.log.info("recommending for the %s snapshot (ALS blocks %d)", as_of, blocks)

    started = time.perf_counter()
    user_index = rc.build_index(interactions, t.USER_ID, rc.USER_IDX)
    item_index = rc.build_index(interactions, t.ITEM_ID, rc.ITEM_IDX)
    ctx.log.info(
        "indexed %d users and %d items to 32-bit ids (%.1fs)",
        user_index.count(),
        item_index.count(),
        time.perf_counter() - started,
    )

    params, eval_rows = _evaluate(ctx, events, as_of, user_index, item_index, segments, blocks)

    started = time.perf_counter()
    full_idx = _ids_to_idx(interactions, user_index, item_index).select(
        rc.USER_IDX, rc.ITEM_IDX, t.STRENGTH
    )
    model = rc.fit_als(full_idx, params, max_iter=conf.max_iter, seed=conf.seed, blocks=blocks)
    fit_seconds = time.perf_counter() - started
    ctx.log.info("refitted ALS %s on all interactions in %.1fs", params.label(), fit_seconds)
    ctx.run.log_metrics({"final_fit_seconds": fit_seconds})
    version = tracking.register_spark_model(model, conf.model_name, conf.alias)
    als = rc.als_of(model)

    bought = None
    if conf.exclude_purchased:
        bought = (
            events.filter(F.col(t.EVENT_TYPE) == "purchase")
            .select(t.USER_ID, t.ITEM_ID)
            .where(F.col(t.ITEM_ID).isNotNull())
            .distinct()
        )
    started = time.perf_counter()
    top = rc.score_top_n(
        als.userFactors,
        als.itemFactors,
        conf.top_n,
        seen=_ids_to_idx(bought, user_index, item_index) if bought is not None else None,
        user_block=conf.user_block,
        item_block=conf.item_block,
    )
    from_als = (
        _idx_to_ids(top, user_index, item_index)
        .withColumn("source", F.lit(rc.SOURCE_ALS))
        .select(t.USER_ID, rc.RANK, t.ITEM_ID, F.col(rc.SCORE).cast("double"), "source")
    )
    # Everyone the shop knows: users with a feature row or interactions.
    everyone = users.unionByName(interactions.select(t.USER_ID)).distinct()
    cold = everyone.join(from_als.select(t.USER_ID), on=t.USER_ID, how="left_anti")
    fallback = rc.cold_start(cold, segments, interactions, bought, conf.top_n)
    recs = from_als.unionByName(fallback)
    recs = (
        recs.withColumn(t.AS_OF_DATE, F.lit(as_of))
        .withColumn(t.MODEL_VERSION, F.lit(version))
        .select(*t.RECOMMENDATIONS.columns)
    )
    result = ctx.write(
        recs, t.RECOMMENDATIONS.name, "overwrite_partitions", partition_by=(t.AS_OF_DATE,)
    )
    ctx.log.info(
        "scored %d rows of recommendations in %.1fs", result.rows, time.perf_counter() - started
    )
    by_source = (
        ctx.read_back(result)
        .filter(F.col(t.AS_OF_DATE) == F.lit(as_of))
        .filter(F.col(rc.RANK) == 1)
        .groupBy("source")
        .count()
        .collect()
    )
    for row in sorted(by_source, key=lambda r: r["source"]):
        ctx.log.info("users served by %s: %d", row["source"], row["count"])
        ctx.run.log_metrics({f"users.{row['source']}": row["count"]})

    similar = rc.similar_items(als.itemFactors, conf.similar_items, item_block=conf.item_block)
    similar = (
        similar.join(item_index, on=rc.ITEM_IDX, how="inner")
        .join(
            item_index.select(
                F.col(rc.ITEM_IDX).alias("similar_idx"), F.col(t.ITEM_ID).alias("similar_item_id")
            ),
            on="similar_idx",
            how="inner",
        )
        .withColumn(t.AS_OF_DATE, F.lit(as_of))
        .withColumn(t.MODEL_VERSION, F.lit(version))
        .select(
            t.AS_OF_DATE,
            t.ITEM_ID,
            rc.RANK,
            "similar_item_id",
            F.col(rc.SCORE).cast("double").alias(rc.SCORE),
            t.MODEL_VERSION,
        )
    )
    ctx.write(similar, t.SIMILAR_ITEMS.name, "overwrite_partitions", partition_by=(t.AS_OF_DATE,))

    evaluation = ctx.spark.createDataFrame(
        eval_rows,
        "as_of_date date, method string, params string, k int, precision double, "
        "recall double, ndcg double, map double, coverage double, users long, "
        "fit_seconds double, chosen boolean",
    ).select(*t.RECOMMENDATION_EVAL.columns)
    ctx.write(
        evaluation,
        t.RECOMMENDATION_EVAL.name,
        "overwrite_partitions",
        partition_by=(t.AS_OF_DATE,),
    )
