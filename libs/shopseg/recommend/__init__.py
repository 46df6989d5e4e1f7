"""Recommendations: ALS on implicit feedback, a time-split evaluation, baselines, block scoring.

Pure functions over DataFrames and plain values; the stage
(`shopseg.stages.recommend`) reads the tables, calls these and writes gold.

Ranking metrics at k, per evaluated user, then averaged over users (the
definitions of Spark's `RankingMetrics`, which the tests check against):

- precision@k = hits in the top k / k (a list shorter than k is not excused);
- recall@k = hits in the top k / relevant items;
- NDCG@k, binary relevance: sum over hits at rank i of 1 / log2(i + 1),
  divided by the same sum over ranks 1..min(relevant, k);
- MAP@k: sum over hits at rank i of precision@i, divided by min(relevant, k);
- catalog coverage: distinct items in anyone's top k / items in the catalogue.

Evaluated users are those with interactions both before and inside their
held-out window; the relevant items are the ones they interacted with in the
window and never before (what a recommender should discover). Every method
ranks only items the user had no training interaction with.

The package: `ids` (column names, dense ids), `evaluation` (the split and the
metrics), `baselines` (popularity, cold start, item-item) and `als` (the fit and
the block scoring), `cooccurrence` (the item Gram matrix, item-item similarities
and EASE); every name is importable from `shopseg.recommend`.
"""

from shopseg.recommend.als import (
    MLLIB_DEFAULTS,
    AlsParams,
    _top_n_rows,
    als_of,
    fit_als,
    normalized,
    random_trials,
    score_top_n,
    similar_items,
)
from shopseg.recommend.baselines import (
    cold_start,
    item_neighbours,
    popularity,
    top_item_item,
    top_popular_unseen,
    with_groups,
)
from shopseg.recommend.confidence import TRANSFORMS, with_confidence
from shopseg.recommend.cooccurrence import (
    SIMILARITIES,
    DenseGram,
    ItemModel,
    binary,
    build_item_gram,
    collect_gram,
    fit_ease,
    gram_items,
    item_item_model,
    neighbours_from_gram,
    score_item_model,
)
from shopseg.recommend.evaluation import (
    SPLITS,
    RankingScores,
    SplitSpec,
    describe_split,
    median_history_days,
    ranking_scores,
    ranking_scores_at,
    relevant_items,
    resolve_split,
    seen_pairs,
    split_events,
    time_split,
    usable_events,
)
from shopseg.recommend.ids import (
    GROUP,
    ITEM_IDX,
    RANK,
    SCORE,
    SOURCE_ALS,
    SOURCE_COST,
    SOURCE_EASE,
    SOURCE_ITEM_ITEM,
    SOURCE_POPULAR,
    SOURCE_SEGMENT,
    USER_IDX,
    build_index,
    with_index,
)

__all__ = [
    "MLLIB_DEFAULTS",
    "_top_n_rows",
    "als_of",
    "AlsParams",
    "binary",
    "build_index",
    "build_item_gram",
    "cold_start",
    "describe_split",
    "collect_gram",
    "DenseGram",
    "fit_ease",
    "item_item_model",
    "ItemModel",
    "fit_als",
    "GROUP",
    "gram_items",
    "ITEM_IDX",
    "item_neighbours",
    "median_history_days",
    "neighbours_from_gram",
    "normalized",
    "popularity",
    "random_trials",
    "RANK",
    "ranking_scores",
    "ranking_scores_at",
    "RankingScores",
    "relevant_items",
    "seen_pairs",
    "resolve_split",
    "SCORE",
    "score_item_model",
    "score_top_n",
    "similar_items",
    "SIMILARITIES",
    "SOURCE_ALS",
    "SOURCE_COST",
    "SOURCE_EASE",
    "SOURCE_ITEM_ITEM",
    "SOURCE_POPULAR",
    "SOURCE_SEGMENT",
    "split_events",
    "SPLITS",
    "SplitSpec",
    "time_split",
    "top_item_item",
    "TRANSFORMS",
    "top_popular_unseen",
    "usable_events",
    "USER_IDX",
    "with_groups",
    "with_confidence",
    "with_index",
]
