"""Stage `recommend`: silver/interactions -> candidates -> gold/recommendations, similar items.

1. Split of the snapshot's events (`recommend.split`: each user's last days,
   latest share or latest n events, or one cut-off date; `auto` picks by the
   length of the histories), refused when too few users are evaluable
   (`shopseg.recommend` states the metrics).
2. Every candidate on the same split, with one seen-set and one k (`eval_k`,
   default `top_n`; NDCG@10 reported beside it): global and within-segment
   popularity, item-item for each similarity and history decay, EASE for each
   regularisation (below `recommend.ease.max_items`), and ALS over its grid
   (MLlib's defaults always among the points) and random trials.
3. The best ALS point is registered as `recommend.model_name` with alias
   `recommend.alias` (its factors give gold/similar_items): refitted on all
   interactions when ALS serves (or `recommend.refit_unserved_als`), else
   as fitted on the split's training side.
4. The served model is the validation winner (a tie within
   `recommend.serve_tie` goes to the cheaper method), refitted on all
   interactions; users it cannot serve get their segment's popular items,
   users without a segment the global ones.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from dataclasses import dataclass

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import recommend as rc
from shopseg import tables as t
from shopseg import tracking
from shopseg.features import build_interactions
from shopseg.pipeline import StageContext, latest
from shopseg.spark import concurrently, parallelism


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


def interaction_types(config) -> list[str]:
    """Event types that build interactions (weight above 0; returns take away)."""
    weights = config.features.interaction_weights
    return [kind for kind, w in weights.items() if w > 0 and kind != "return"]


def seen_types(config) -> list[str]:
    """Event types whose items count as seen (`recommend.seen_events`, default those
    that build interactions): left out of every list, validated and served alike."""
    wanted = config.recommend.seen_events
    return interaction_types(config) if wanted is None else list(wanted)


def _ids_to_idx(df: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    with_users = rc.with_index(df, users, t.USER_ID, rc.USER_IDX)
    return rc.with_index(with_users, items, t.ITEM_ID, rc.ITEM_IDX)


def _idx_to_ids(df: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    return df.join(users, on=rc.USER_IDX, how="inner").join(items, on=rc.ITEM_IDX, how="inner")


# NDCG@10 is reported whatever k the validation ranks by (the number most papers and
# peers quote).
REPORT_K = 10


# MLflow metric prefixes of each method's best candidate.
BASELINE_PREFIX = {
    rc.SOURCE_POPULAR: "baseline_popularity_",
    rc.SOURCE_SEGMENT: "baseline_segment_",
    rc.SOURCE_ITEM_ITEM: "baseline_item_item_",
    rc.SOURCE_EASE: "baseline_ease_",
}


@dataclass(frozen=True)
class Candidate:
    """One method and its settings, as validated and as served."""

    method: str
    params: str = ""
    similarity: str | None = None
    half_life: float | None = None
    l2: float | None = None


@dataclass(frozen=True)
class Result:
    candidate: Candidate
    scores: dict[int, rc.RankingScores]
    seconds: float


@dataclass(frozen=True)
class Choice:
    """What the validation decided: ALS's best point (refitted, registered) and the
    candidate whose lists are served."""

    als: rc.AlsParams
    served: Candidate
    rows: list[tuple]
    als_model: PipelineModel
    """ALS's best point as fitted on the split's training side."""


def serving_choice(results: list[Result], k: int, tie: float) -> tuple[Result, Result | None]:
    """The served result and the runner-up (the best of another method).

    The best NDCG@k wins; results within `tie` of it are a tie, which the
    cheapest method (`rc.SOURCE_COST`) takes.
    """
    best = max(r.scores[k].ndcg for r in results)
    tied = [r for r in results if r.scores[k].ndcg >= best - tie]
    served = min(tied, key=lambda r: (rc.SOURCE_COST.index(r.candidate.method), -r.scores[k].ndcg))
    others = [r for r in results if r.candidate.method != served.candidate.method]
    runner_up = max(others, key=lambda r: r.scores[k].ndcg, default=None)
    return served, runner_up


def _item_candidates(conf) -> list[Candidate]:
    out = []
    for half_life in conf.item_half_lives:
        decay = f" half_life={half_life:g}d" if half_life else ""
        for similarity in conf.item_similarities:
            out.append(
                Candidate(
                    rc.SOURCE_ITEM_ITEM,
                    f"{similarity} neighbours={conf.item_neighbours}{decay}",
                    similarity=similarity,
                    half_life=half_life,
                )
            )
    return out


def _dense_gram(ctx: StageContext, gram: DataFrame, what: str) -> rc.DenseGram | None:
    """The Gram matrix on the driver, or None with the reason logged (catalogue too
    large: EASE is then no candidate, item-item runs as Spark joins)."""
    limit = ctx.config.recommend.ease.max_items
    items = rc.gram_items(gram)
    if items > limit:
        ctx.log.warning(
            "EASE refused and item-item scored by joins: %d items in the %s, above "
            "recommend.ease.max_items (%d); a dense %d x %d matrix is inverted on the driver",
            items, what, limit, items, items,
        )  # fmt: skip
        ctx.run.log_params({"ease_refused": f"{items} items > max_items {limit}"})
        return None
    started = time.perf_counter()
    dense = rc.collect_gram(gram, limit)
    ctx.log.info(
        "item Gram matrix of the %s: %d items on the driver (%.1fs)",
        what, len(dense.ids), time.perf_counter() - started,
    )  # fmt: skip
    return dense


def _item_lists(
    conf,
    candidate: Candidate,
    gram: DataFrame | None,
    dense: rc.DenseGram | None,
    ease: dict[float, rc.ItemModel],
    history: DataFrame,
    seen: DataFrame | None,
    n: int,
) -> DataFrame:
    """Top `n` of an item-based candidate for the users of `history`."""
    if candidate.method == rc.SOURCE_EASE:
        return rc.score_item_model(rc.binary(history), ease[candidate.l2], seen, n)
    if dense is not None:
        model = rc.item_item_model(dense, candidate.similarity, conf.item_neighbours)
        return rc.score_item_model(history, model, seen, n)
    neighbours = rc.neighbours_from_gram(gram, conf.item_neighbours, candidate.similarity)
    return rc.top_item_item(history, neighbours, seen, n)


def _history(
    ctx: StageContext,
    interactions: DataFrame,
    events: DataFrame,
    as_of: dt.date,
    half_life: float | None,
) -> DataFrame:
    """The strengths item-item scores a user's history with: `interactions` as built,
    or rebuilt from `events` with the candidate's half-life."""
    if not half_life:
        return interactions
    return build_interactions(events, as_of, ctx.config.features.interaction_weights, half_life)


@dataclass(frozen=True)
class Split:
    """The validation split of a snapshot's events (cached frames)."""

    usable: DataFrame
    spec: rc.SplitSpec
    why: str
    train_events: DataFrame
    held: DataFrame
    train: DataFrame
    train_seen: DataFrame
    relevant: DataFrame


def validation_split(config, events: DataFrame, as_of: dt.date) -> Split:
    """The split every candidate is validated on (`recommend.split`), its training
    interactions, the seen pairs (`recommend.seen_events`) and the relevant held-out
    pairs; also what the bench compares peers on."""
    conf, fconf = config.recommend, config.features
    weights = fconf.interaction_weights
    usable = rc.usable_events(events, interaction_types(config)).cache()
    spec, why = rc.resolve_split(
        rc.SplitSpec(
            conf.split, conf.holdout_days, conf.holdout_share, conf.holdout_last_n, conf.cutoff_date
        ),
        usable,
    )
    train_events, held = rc.split_events(usable, spec)
    train = build_interactions(
        train_events, as_of, weights, fconf.interaction_half_life_days
    ).cache()
    # One definition of seen for validation and serving (`recommend.seen_events`).
    train_seen = rc.seen_pairs(train_events, seen_types(config)).cache()
    relevant = rc.relevant_items(train_events, held, train_seen).cache()
    return Split(usable, spec, why, train_events, held, train, train_seen, relevant)


def als_points(
    conf, median_strength: float | dict[str, float]
) -> tuple[list[rc.AlsParams], list[rc.AlsParams]]:
    """ALS's grid (MLlib's defaults always in it) and its random trials."""
    grid = [
        rc.AlsParams(rank, reg, alpha, transform)
        for rank, reg, alpha, transform in itertools.product(
            conf.ranks, conf.reg_params, conf.alphas, conf.transforms
        )
    ]
    if rc.MLLIB_DEFAULTS not in grid:
        grid.append(rc.MLLIB_DEFAULTS)
    search = conf.search
    trials = rc.random_trials(
        search.trials, search.rank, search.reg_param, search.confidence, median_strength,
        search.seed, search.transforms,
    )  # fmt: skip
    return grid, trials


def _evaluate(
    ctx: StageContext,
    events: DataFrame,
    as_of: dt.date,
    user_index: DataFrame,
    item_index: DataFrame,
    segments: DataFrame | None,
    blocks: int,
) -> Choice:
    conf = ctx.config.recommend
    k = eval_k(conf)
    ks = sorted({k, REPORT_K})
    list_k = ks[-1]
    split = validation_split(ctx.config, events, as_of)
    usable, spec, why = split.usable, split.spec, split.why
    train_events, held, train = split.train_events, split.held, split.train
    train_seen, relevant = split.train_seen, split.relevant
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

    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        scores, c = result.scores[k], result.candidate
        also = "".join(
            f", NDCG@{other} {result.scores[other].ndcg:.4f}" for other in ks if other != k
        )
        ctx.log.info(
            "%-16s %-32s precision@%d %.4f recall %.4f NDCG %.4f MAP %.4f coverage %.3f%s "
            "(%.1fs)",
            c.method, c.params, k, scores.precision, scores.recall, scores.ndcg, scores.map,
            scores.coverage, also, result.seconds,
        )  # fmt: skip

    def popular() -> DataFrame:
        ranked = rc.popularity(train)
        users = eval_users.withColumn(rc.GROUP, F.lit(0))
        return rc.top_popular_unseen(users, ranked, train_seen, list_k)

    def segment_popular() -> DataFrame:
        groups = rc.with_groups(train.select(t.USER_ID).distinct(), segments)
        ranked = rc.popularity(train, groups)
        return rc.top_popular_unseen(
            rc.with_groups(eval_users, segments), ranked, train_seen, list_k
        )

    gram = dense = None
    if not conf.item_item and conf.ease.enabled and catalog > conf.ease.max_items:
        # EASE alone would be refused: the Gram matrix is not built to say so.
        ctx.log.warning(
            "EASE refused: %d items in the training interactions, above "
            "recommend.ease.max_items (%d)",
            catalog, conf.ease.max_items,
        )  # fmt: skip
        ctx.run.log_params({"ease_refused": f"{catalog} items > max_items {conf.ease.max_items}"})
    elif conf.item_item or conf.ease.enabled:
        gram = rc.build_item_gram(train, blocks).cache()
        dense = _dense_gram(ctx, gram, "training interactions")
    ease: dict[float, rc.ItemModel] = {}
    if conf.ease.enabled and dense is not None:
        started = time.perf_counter()
        ease = rc.fit_ease(dense, conf.ease.l2)
        ctx.log.info(
            "EASE fitted for l2 %s x the mean users per item (%.1fs)",
            conf.ease.l2, time.perf_counter() - started,
        )  # fmt: skip

    def item_based(c: Candidate) -> DataFrame:
        interactions = train if c.method == rc.SOURCE_EASE else (
            _history(ctx, train, train_events, as_of, c.half_life)
        )  # fmt: skip
        history = interactions.join(eval_users, on=t.USER_ID, how="left_semi")
        return _item_lists(conf, c, gram, dense, ease, history, train_seen, list_k)

    methods = [
        (Candidate(rc.SOURCE_POPULAR), popular),
        (Candidate(rc.SOURCE_SEGMENT), segment_popular),
    ]
    candidates = _item_candidates(conf) if conf.item_item else []
    candidates += [Candidate(rc.SOURCE_EASE, f"l2={scale:g}", l2=scale) for scale in ease]
    methods += [(c, lambda c=c: item_based(c)) for c in candidates]

    def measured(method) -> Result:
        candidate, recommend = method
        started = time.perf_counter()
        scores = rc.ranking_scores_at(recommend(), relevant, ks, catalog)
        return Result(candidate, scores, time.perf_counter() - started)

    # The candidates without a search are independent: their small jobs run side by side.
    for result in concurrently(measured, methods, min(len(methods), 2)):
        record(result)
    # EASE's best at an edge of its l2 list: one more step beyond it, same ratio.
    for _ in range(conf.ease.extend if len(ease) > 1 else 0):
        tried = [r for r in results if r.candidate.method == rc.SOURCE_EASE]
        best_l2 = max(tried, key=lambda r: r.scores[k].ndcg).candidate.l2
        scales = sorted(ease)
        if best_l2 == scales[-1]:
            step = scales[-1] * scales[-1] / scales[-2]
        elif best_l2 == scales[0]:
            step = scales[0] * scales[0] / scales[1]
        else:
            break
        step = float(f"{step:.3g}")
        ctx.log.info("EASE's best l2 %g is at the edge of %s: trying %g", best_l2, scales, step)
        ease.update(rc.fit_ease(dense, [step]))
        extra = Candidate(rc.SOURCE_EASE, f"l2={step:g}", l2=step)
        record(measured((extra, lambda c=extra: item_based(c))))
    baselines = list(results)

    search = conf.search
    confidence: dict[str, DataFrame] = {}

    def with_confidence(transform: str) -> DataFrame:
        if transform not in confidence:
            confidence[transform] = rc.with_confidence(
                train_idx, transform, rc.USER_IDX, rc.ITEM_IDX, conf.log_epsilon
            ).cache()
        return confidence[transform]

    median: dict[str, float] = {tr: 1.0 for tr in search.transforms}
    if search.trials:
        median = {
            tr: with_confidence(tr).agg(F.percentile_approx(t.STRENGTH, 0.5)).first()[0] or 1.0
            for tr in search.transforms
        }
    grid, trials = als_points(conf, median)
    if search.trials:
        ctx.log.info(
            "search: %d grid point(s), then up to %d random trials (rank %s, reg %s, confidence "
            "%s per median strength %s), stopping after %d without a gain of %.3g",
            len(grid), search.trials, search.rank, search.reg_param, search.confidence,
            ", ".join(f"{tr} {m:.3g}" for tr, m in median.items()),
            search.patience, search.min_gain,
        )  # fmt: skip
    best: tuple[float, rc.AlsParams] | None = None
    stale = 0
    for step, params in enumerate([*grid, *trials]):
        if step >= len(grid) and stale >= search.patience:
            ctx.log.info("search stopped early after %d trials: no gain in %d", step, stale)
            break
        started = time.perf_counter()
        model = rc.fit_als(
            with_confidence(params.transform), params, max_iter=conf.max_iter, seed=conf.seed,
            blocks=blocks,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - started
        als = rc.als_of(model)
        user_factors = als.userFactors.join(
            eval_idx.withColumnRenamed(rc.USER_IDX, "id"), on="id", how="left_semi"
        )
        top = rc.score_top_n(
            user_factors,
            als.itemFactors,
            list_k,
            seen=seen_idx,
            user_block=conf.user_block,
            item_block=conf.item_block,
        )
        scores = rc.ranking_scores_at(
            _idx_to_ids(top, user_index, item_index), relevant, ks, catalog
        )
        record(Result(Candidate(rc.SOURCE_ALS, params.label()), scores, fit_seconds))
        ctx.run.log_metrics(
            {
                f"tuning.ndcg_at_{k}": scores[k].ndcg,
                "tuning.fit_seconds": fit_seconds,
                "tuning.rank": params.rank,
                "tuning.reg_param": params.reg_param,
                "tuning.alpha": params.alpha,
            },
            step=step,
        )
        if best is None or scores[k].ndcg > best[0] + search.min_gain:
            best, stale = (scores[k].ndcg, params, model), 0
        else:
            stale += 1
            if scores[k].ndcg > best[0]:
                best = (scores[k].ndcg, params, model)
    assert best is not None
    params, best_model = best[1], best[2]
    chosen_als = next(r for r in results if r.candidate == Candidate(rc.SOURCE_ALS, params.label()))
    served, runner_up = serving_choice(results, k, conf.serve_tie)
    rows = [
        (
            as_of,
            r.candidate.method,
            r.candidate.params,
            at,
            s.precision,
            s.recall,
            s.ndcg,
            s.map,
            s.coverage,
            s.users,
            r.seconds,
            r is chosen_als,
            r is served,
        )  # fmt: skip
        for r in results
        for at, s in sorted(r.scores.items())
    ]
    by_method = {r.candidate.method: r for r in reversed(baselines)}
    base_pop = by_method[rc.SOURCE_POPULAR].scores[k]
    ctx.run.log_params(
        {
            "rank": params.rank,
            "reg_param": params.reg_param,
            "alpha": params.alpha,
            "served_method": served.candidate.method,
            "served_params": served.candidate.params,
        }
    )
    best_of = {}
    for r in results:
        m = r.candidate.method
        if m not in best_of or r.scores[k].ndcg > best_of[m].scores[k].ndcg:
            best_of[m] = r
    metrics = chosen_als.scores[k].as_metrics(k) | {"eval_users": chosen_als.scores[k].users}
    for method, r in best_of.items():
        if method != rc.SOURCE_ALS:
            metrics |= r.scores[k].as_metrics(k, BASELINE_PREFIX[method])
    for at in ks:
        metrics[f"served_ndcg_at_{at}"] = served.scores[at].ndcg
    served_ndcg = served.scores[k].ndcg
    metrics["served_gain_over_popularity"] = served_ndcg - base_pop.ndcg
    if runner_up is not None:
        metrics["served_gain_over_runner_up"] = served_ndcg - runner_up.scores[k].ndcg
    ctx.run.log_metrics(metrics)
    ratio = served_ndcg / base_pop.ndcg if base_pop.ndcg else float("inf")
    why_served = f"the best NDCG@{k} on the validation split"
    top_ndcg = max(r.scores[k].ndcg for r in results)
    if served_ndcg < top_ndcg:
        why_served = (
            f"within recommend.serve_tie ({conf.serve_tie:g}) of the best NDCG@{k} "
            f"{top_ndcg:.4f}, and cheaper"
        )
    runner = (
        f"; runner-up {runner_up.candidate.method} {runner_up.candidate.params} "
        f"{runner_up.scores[k].ndcg:.4f} ({served_ndcg - runner_up.scores[k].ndcg:+.4f})"
        if runner_up is not None
        else ""
    )
    ctx.log.info(
        "serving %s %s: %s, NDCG@%d %.4f, %.2fx global popularity (%.4f, %+.4f)%s; ALS's best "
        "%s %.4f",
        served.candidate.method, served.candidate.params, why_served, k, served_ndcg, ratio,
        base_pop.ndcg, served_ndcg - base_pop.ndcg, runner, params.label(),
        chosen_als.scores[k].ndcg,
    )  # fmt: skip
    for df in (
        train,
        train_seen,
        relevant,
        eval_users,
        train_idx,
        usable,
        gram,
        *confidence.values(),
    ):
        if df is not None:
            df.unpersist()
    return Choice(params, served.candidate, rows, best_model)


def _served_lists(
    ctx: StageContext,
    served: Candidate,
    interactions: DataFrame,
    events: DataFrame,
    as_of: dt.date,
    seen: DataFrame | None,
    blocks: int,
) -> DataFrame | None:
    """The served item-based model's top N on all interactions; None for ALS (scored
    from its factors) and the popularity methods (served as cold start)."""
    conf = ctx.config.recommend
    if served.method not in (rc.SOURCE_ITEM_ITEM, rc.SOURCE_EASE):
        return None
    gram = rc.build_item_gram(interactions, blocks).cache()
    dense = _dense_gram(ctx, gram, "interactions")
    if served.method == rc.SOURCE_EASE and dense is None:
        ctx.log.warning("EASE won the validation but is refused on all interactions: serving ALS")
        gram.unpersist()
        return None
    if dense is not None:
        gram.unpersist()  # the dense models do not read it again
    ease = rc.fit_ease(dense, [served.l2]) if served.method == rc.SOURCE_EASE else {}
    history = _history(ctx, interactions, events, as_of, served.half_life)
    return _item_lists(conf, served, gram, dense, ease, history, seen, conf.top_n)


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
    blocks = conf.blocks or parallelism(ctx.spark)
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

    choice = _evaluate(ctx, events, as_of, user_index, item_index, segments, blocks)
    params, served = choice.als, choice.served

    if served.method == rc.SOURCE_ALS or conf.refit_unserved_als:
        started = time.perf_counter()
        full_idx = rc.with_confidence(
            _ids_to_idx(interactions, user_index, item_index).select(
                rc.USER_IDX, rc.ITEM_IDX, t.STRENGTH
            ),
            params.transform, rc.USER_IDX, rc.ITEM_IDX, conf.log_epsilon,
        )  # fmt: skip
        model = rc.fit_als(full_idx, params, max_iter=conf.max_iter, seed=conf.seed, blocks=blocks)
        fit_seconds = time.perf_counter() - started
        ctx.log.info("refitted ALS %s on all interactions in %.1fs", params.label(), fit_seconds)
        ctx.run.log_metrics({"final_fit_seconds": fit_seconds})
    else:
        model = choice.als_model
        ctx.log.info(
            "ALS %s is not served (%s is): its fit on the split's training side is registered "
            "and gives gold/similar_items, not refitted (recommend.refit_unserved_als)",
            params.label(), served.method,
        )  # fmt: skip
    ctx.run.log_params({"als_refitted": model is not choice.als_model})
    version = tracking.register_spark_model(model, conf.model_name, conf.alias)
    als = rc.als_of(model)

    types = seen_types(ctx.config)
    seen = rc.seen_pairs(events, types) if types else None
    ctx.log.info(
        "serving leaves out what each user has seen: items of their %s events (%s)",
        ", ".join(types) or "no", "recommend.seen_events" if conf.seen_events is not None
        else "every event type that builds interactions",
    )  # fmt: skip
    started = time.perf_counter()
    warm = _served_lists(ctx, served, interactions, events, as_of, seen, blocks)
    served_method = served.method
    if warm is None and served.method in (rc.SOURCE_ALS, rc.SOURCE_EASE):
        served_method = rc.SOURCE_ALS
        top = rc.score_top_n(
            als.userFactors,
            als.itemFactors,
            conf.top_n,
            seen=_ids_to_idx(seen, user_index, item_index) if seen is not None else None,
            user_block=conf.user_block,
            item_block=conf.item_block,
        )
        warm = _idx_to_ids(top, user_index, item_index)
    # Everyone the shop knows: users with a feature row or interactions.
    everyone = users.unionByName(interactions.select(t.USER_ID)).distinct()
    if warm is not None:
        warm = warm.withColumn("source", F.lit(served_method)).select(
            t.USER_ID, rc.RANK, t.ITEM_ID, F.col(rc.SCORE).cast("double"), "source"
        )
        cold = everyone.join(warm.select(t.USER_ID), on=t.USER_ID, how="left_anti")
    else:
        cold = everyone
    # Popularity served: the global list for everyone, segments or not.
    by_segment = None if served_method == rc.SOURCE_POPULAR else segments
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
        choice.rows,
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
