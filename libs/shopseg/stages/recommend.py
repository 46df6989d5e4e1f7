"""Stage `recommend`: silver/interactions -> ALS -> gold/recommendations, similar items.

1. Split of the snapshot's events (`recommend.split`: each user's last days,
   latest share or latest n events, or one cut-off date; `auto` picks by the
   length of the histories), refused when too few users are evaluable
   (`shopseg.recommend` states the metrics).
2. Grid search over rank, regParam and alpha on the split (MLlib's defaults
   always among the points), next to three
   baselines on the same split (global and within-segment popularity,
   item-item co-occurrence).
3. The best grid point (NDCG at `eval_k`, default `top_n`) is refitted on all interactions and
   registered as `recommend.model_name` with alias `recommend.alias`.
4. Top N per user from whichever method was best on the split (ALS by
   block scoring unless a baseline beat it); users it cannot serve get their
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
from shopseg.spark import concurrently


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


def eval_k(conf) -> int:
    """The cut-off of the validation metrics: `recommend.eval_k`, default the list
    length served (`top_n`)."""
    return conf.eval_k if conf.eval_k is not None else conf.top_n


def interaction_types(ctx: StageContext) -> list[str]:
    """Event types that build interactions (weight above 0; returns take away)."""
    weights = ctx.config.features.interaction_weights
    return [kind for kind, w in weights.items() if w > 0 and kind != "return"]


def seen_types(ctx: StageContext) -> list[str]:
    """Event types whose items count as seen (`recommend.seen_events`, default those
    that build interactions): left out of every list, validated and served alike."""
    wanted = ctx.config.recommend.seen_events
    return interaction_types(ctx) if wanted is None else list(wanted)


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
) -> tuple[rc.AlsParams, list[tuple], str]:
    conf = ctx.config.recommend
    fconf = ctx.config.features
    k = eval_k(conf)
    weighted = interaction_types(ctx)
    usable = rc.usable_events(events, weighted).cache()
    spec, why = rc.resolve_split(
        rc.SplitSpec(
            conf.split, conf.holdout_days, conf.holdout_share, conf.holdout_last_n, conf.cutoff_date
        ),
        usable,
    )
    train_events, held = rc.split_events(usable, spec)
    train = build_interactions(
        train_events, as_of, fconf.interaction_weights, fconf.interaction_half_life_days
    ).cache()
    # One definition of seen for validation and serving (`recommend.seen_events`).
    train_seen = rc.seen_pairs(train_events, seen_types(ctx)).cache()
    relevant = rc.relevant_items(train_events, held, train_seen).cache()
    eval_users = relevant.select(t.USER_ID).distinct().cache()
    n_eval = eval_users.count()
    n_users = usable.select(t.USER_ID).distinct().count()
    catalog = train.select(t.ITEM_ID).distinct().count()
    sizes = {
        "split_users": n_users,
        "split_train_users": train.select(t.USER_ID).distinct().count(),
        "split_train_pairs": train.count(),
        "split_heldout_users": held.select(t.USER_ID).distinct().count(),
        "split_heldout_pairs": relevant.count(),
        "split_eval_users": n_eval,
    }
    share = n_eval / n_users if n_users else 0.0
    ctx.log.info(
        "split %s (%s; %s): %d of %d users evaluable (%.0f%%); train %d pairs of %d users, "
        "held out %d (user, new item) pairs of %d users; %d items in the catalogue",
        spec.method, rc.describe_split(spec), why, n_eval, n_users, 100 * share,
        sizes["split_train_pairs"], sizes["split_train_users"], sizes["split_heldout_pairs"],
        sizes["split_heldout_users"], catalog,
    )  # fmt: skip
    ctx.run.log_params({"split": spec.method, "split_reason": why})
    ctx.run.log_metrics({**sizes, "split_eval_share": share})
    if share < conf.min_evaluable_share or n_eval == 0:
        raise ValueError(
            f"split {spec.method} ({rc.describe_split(spec)}) leaves {n_eval} of {n_users} users "
            f"evaluable ({share:.0%}), below recommend.min_evaluable_share "
            f"({conf.min_evaluable_share:.0%}): a user needs interactions on both sides. Try "
            "recommend.split: last_share or last_n (histories short in time), or a smaller "
            "recommend.holdout_days"
        )
    train_idx = (
        _ids_to_idx(train, user_index, item_index)
        .select(rc.USER_IDX, rc.ITEM_IDX, t.STRENGTH)
        .cache()
    )
    eval_idx = eval_users.join(user_index, on=t.USER_ID, how="inner").select(rc.USER_IDX)
    seen_idx = (
        _ids_to_idx(train_seen, user_index, item_index)
        .join(eval_idx, on=rc.USER_IDX, how="left_semi")
        .select(rc.USER_IDX, rc.ITEM_IDX)
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
                False,
            )  # fmt: skip
        )
        ctx.log.info(
            "%-16s %-28s precision@%d %.4f recall %.4f NDCG %.4f MAP %.4f coverage %.3f (%.1fs)",
            method, params, k, scores.precision, scores.recall, scores.ndcg, scores.map,
            scores.coverage, seconds,
        )  # fmt: skip

    def popular() -> DataFrame:
        ranked = rc.popularity(train)
        users = eval_users.withColumn(rc.GROUP, F.lit(0))
        return rc.top_popular_unseen(users, ranked, train_seen, k)

    def segment_popular() -> DataFrame:
        groups = rc.with_groups(train.select(t.USER_ID).distinct(), segments)
        ranked = rc.popularity(train, groups)
        return rc.top_popular_unseen(rc.with_groups(eval_users, segments), ranked, train_seen, k)

    def item_item() -> DataFrame:
        neighbours = rc.item_neighbours(train, conf.item_neighbours)
        history = train.join(eval_users, on=t.USER_ID, how="left_semi")
        return rc.top_item_item(history, neighbours, train_seen, k)

    methods = [(rc.SOURCE_POPULAR, "", popular), (rc.SOURCE_SEGMENT, "", segment_popular)]
    if conf.item_item:
        methods.append((rc.SOURCE_ITEM_ITEM, f"neighbours={conf.item_neighbours}", item_item))

    def measured(method) -> tuple[str, str, rc.RankingScores, float]:
        name, params, recommend = method
        started = time.perf_counter()
        scores = rc.ranking_scores(recommend(), relevant, k, catalog)
        return name, params, scores, time.perf_counter() - started

    # The baselines are independent: their small jobs run side by side.
    baselines = []
    for name, params, scores, seconds in concurrently(measured, methods, len(methods)):
        record(name, params, scores, seconds)
        baselines.append((name, scores))

    best: tuple[float, rc.AlsParams, rc.RankingScores] | None = None
    grid = [
        rc.AlsParams(rank, reg, alpha)
        for rank, reg, alpha in itertools.product(conf.ranks, conf.reg_params, conf.alphas)
    ]
    if rc.MLLIB_DEFAULTS not in grid:
        grid.append(rc.MLLIB_DEFAULTS)
    search = conf.search
    trials: list[rc.AlsParams] = []
    if search.trials:
        median = train.agg(F.percentile_approx(t.STRENGTH, 0.5)).first()[0] or 1.0
        trials = rc.random_trials(
            search.trials, search.rank, search.reg_param, search.confidence, median, search.seed
        )
        ctx.log.info(
            "search: %d grid point(s), then up to %d random trials (rank %s, reg %s, confidence "
            "%s per median strength %.3g), stopping after %d without a gain of %.3g",
            len(grid), search.trials, search.rank, search.reg_param, search.confidence, median,
            search.patience, search.min_gain,
        )  # fmt: skip
    stale = 0
    for step, params in enumerate([*grid, *trials]):
        if step >= len(grid) and stale >= search.patience:
            ctx.log.info("search stopped early after %d trials: no gain in %d", step, stale)
            break
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
            {
                f"tuning.ndcg_at_{k}": scores.ndcg,
                "tuning.fit_seconds": fit_seconds,
                "tuning.rank": params.rank,
                "tuning.reg_param": params.reg_param,
                "tuning.alpha": params.alpha,
            },
            step=step,
        )
        if best is None or scores.ndcg > best[0] + search.min_gain:
            best, stale = (scores.ndcg, params, scores), 0
        else:
            stale += 1
            if scores.ndcg > best[0]:
                best = (scores.ndcg, params, scores)
    assert best is not None
    _, params, scores = best
    # The best on the validation split is served; a baseline must beat ALS outright.
    served, served_ndcg = rc.SOURCE_ALS, scores.ndcg
    for method, baseline in baselines:
        if baseline.ndcg > served_ndcg:
            served, served_ndcg = method, baseline.ndcg
    for i, row in enumerate(rows):
        chosen = row[1] == rc.SOURCE_ALS and row[2] == params.label()
        is_served = row[1] == served and (served != rc.SOURCE_ALS or chosen)
        rows[i] = (*row[:-2], chosen, is_served)
    by_method = dict(baselines)
    base_pop, base_seg = by_method[rc.SOURCE_POPULAR], by_method[rc.SOURCE_SEGMENT]
    ctx.run.log_params({"rank": params.rank, "reg_param": params.reg_param, "alpha": params.alpha})
    ctx.run.log_metrics(
        scores.as_metrics(k)
        | base_pop.as_metrics(k, "baseline_popularity_")
        | base_seg.as_metrics(k, "baseline_segment_")
        | (
            by_method[rc.SOURCE_ITEM_ITEM].as_metrics(k, "baseline_item_item_")
            if conf.item_item
            else {}
        )
        | {"eval_users": scores.users, f"served_ndcg_at_{k}": served_ndcg}
    )
    ctx.run.log_params({"served_method": served})
    ratio = scores.ndcg / base_pop.ndcg if base_pop.ndcg else float("inf")
    ctx.log.info(
        "chosen ALS %s: NDCG@%d %.4f, %.2fx global popularity (%.4f); %s",
        params.label(), k, scores.ndcg, ratio, base_pop.ndcg,
        ", ".join(f"{m} {b.ndcg:.4f}" for m, b in baselines[1:]),
    )  # fmt: skip
    if served != rc.SOURCE_ALS:
        ctx.log.warning(
            "ALS loses to the %s baseline on the validation split (NDCG@%d %.4f against %.4f): "
            "serving %s recommendations; ALS is still registered for its factors",
            served, k, scores.ndcg, served_ndcg, served,
        )  # fmt: skip
    for df in (train, train_seen, relevant, eval_users, train_idx, usable):
        df.unpersist()
    return params, rows, served


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

    params, eval_rows, served = _evaluate(
        ctx, events, as_of, user_index, item_index, segments, blocks
    )

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

    types = seen_types(ctx)
    seen = rc.seen_pairs(events, types) if types else None
    ctx.log.info(
        "serving leaves out what each user has seen: items of their %s events (%s)",
        ", ".join(types) or "no", "recommend.seen_events" if conf.seen_events is not None
        else "every event type that builds interactions",
    )  # fmt: skip
    started = time.perf_counter()
    warm = None
    if served == rc.SOURCE_ALS:
        top = rc.score_top_n(
            als.userFactors,
            als.itemFactors,
            conf.top_n,
            seen=_ids_to_idx(seen, user_index, item_index) if seen is not None else None,
            user_block=conf.user_block,
            item_block=conf.item_block,
        )
        warm = _idx_to_ids(top, user_index, item_index)
    elif served == rc.SOURCE_ITEM_ITEM:
        neighbours = rc.item_neighbours(interactions, conf.item_neighbours)
        warm = rc.top_item_item(interactions, neighbours, seen, conf.top_n)
    # Everyone the shop knows: users with a feature row or interactions.
    everyone = users.unionByName(interactions.select(t.USER_ID)).distinct()
    if warm is not None:
        warm = warm.withColumn("source", F.lit(served)).select(
            t.USER_ID, rc.RANK, t.ITEM_ID, F.col(rc.SCORE).cast("double"), "source"
        )
        cold = everyone.join(warm.select(t.USER_ID), on=t.USER_ID, how="left_anti")
    else:
        cold = everyone
    # Popularity served: the global list for everyone, segments or not.
    by_segment = None if served == rc.SOURCE_POPULAR else segments
    fallback = rc.cold_start(cold, by_segment, interactions, seen, conf.top_n)
    recs = fallback if warm is None else warm.unionByName(fallback)
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
        "fit_seconds double, chosen boolean, served boolean",
    ).select(*t.RECOMMENDATION_EVAL.columns)
    ctx.write(
        evaluation,
        t.RECOMMENDATION_EVAL.name,
        "overwrite_partitions",
        partition_by=(t.AS_OF_DATE,),
    )
