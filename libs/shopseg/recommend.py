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
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.spark import checkpointed

# ALS needs user and item ids that fit in a 32-bit int; any long id is mapped
# to a dense 0-based index and back.
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RANK = "rank"
SCORE = "score"
GROUP = "group"

SOURCE_ALS = "als"
SOURCE_SEGMENT = "segment_popular"
SOURCE_POPULAR = "popular"
SOURCE_ITEM_ITEM = "item_item"


# --------------------------------------------------------------------------- ids


def build_index(ids: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Dense 0-based int index of the distinct non-null ids, in id order.

    Distributed: range-partition the sorted ids, number rows within each
    partition (`monotonically_increasing_id` keeps the partition in its high
    bits), and add the sizes of the partitions before. Only one count per
    partition reaches the driver. The ranged ids are checkpointed first, so the
    counts and the numbering see the same partitions.

    Returns:
        DataFrame `(id_col, idx_col)`, `idx_col` an int.
    """
    ranged = (
        ids.select(id_col)
        .where(F.col(id_col).isNotNull())
        .distinct()
        .repartitionByRange(id_col)
        .sortWithinPartitions(id_col)
        .withColumn("_mid", F.monotonically_increasing_id())
        .withColumn("_pid", F.shiftright(F.col("_mid"), 33))
        .withColumn("_pos", F.col("_mid").bitwiseAND(F.lit((1 << 33) - 1)))
    )
    ranged = checkpointed(ranged)
    counts = sorted((r["_pid"], r["count"]) for r in ranged.groupBy("_pid").count().collect())
    total = sum(c for _, c in counts)
    if total > 2**31 - 1:
        raise ValueError(f"{total} distinct {id_col} values do not fit ALS's 32-bit ids")
    offsets, start = [], 0
    for pid, count in counts:
        offsets += [F.lit(pid), F.lit(start)]
        start += count
    offset = F.create_map(*offsets)[F.col("_pid")] if offsets else F.lit(0)
    return ranged.select(id_col, (offset + F.col("_pos")).cast("int").alias(idx_col))


def with_index(df: DataFrame, index: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Add the dense index of `id_col`; rows whose id is not in the index are dropped."""
    return df.join(index, on=id_col, how="inner")


# --------------------------------------------------------------------------- split


SPLITS = ("auto", "last_days", "last_share", "last_n", "cutoff")


@dataclass(frozen=True)
class SplitSpec:
    """How events are split for evaluation (`recommend.split` and its settings)."""

    method: str = "auto"
    holdout_days: int = 30
    share: float = 0.2
    last_n: int = 1
    cutoff: dt.date | None = None


def usable_events(events: DataFrame, event_types: Sequence[str]) -> DataFrame:
    """Events that make interactions: an item and one of `event_types`."""
    return events.where(F.col(t.ITEM_ID).isNotNull() & F.col(t.EVENT_TYPE).isin(*event_types))


def median_history_days(usable: DataFrame) -> float:
    """The median user's span from first to last usable event, in days."""
    spans = usable.groupBy(t.USER_ID).agg(
        F.datediff(F.max(t.EVENT_DATE), F.min(t.EVENT_DATE)).alias("_span")
    )
    value = spans.agg(F.percentile_approx("_span", 0.5)).first()[0]
    return float(value or 0)


def resolve_split(spec: SplitSpec, usable: DataFrame) -> tuple[SplitSpec, str]:
    """`auto` made concrete, with why.

    `last_days` where the median user's history spans at least twice the
    held-out days (a year of history: the last month is held out); else
    `last_share`, since a days window would hold out whole short histories
    and leave nothing to train on.
    """
    if spec.method != "auto":
        return spec, "configured"
    median = median_history_days(usable)
    if median >= 2 * spec.holdout_days:
        why = f"median history {median:.0f} days >= 2 x holdout_days ({spec.holdout_days})"
        return replace(spec, method="last_days"), why
    why = f"median history {median:.0f} days < 2 x holdout_days ({spec.holdout_days})"
    return replace(spec, method="last_share"), why


def split_events(usable: DataFrame, spec: SplitSpec) -> tuple[DataFrame, DataFrame]:
    """Train and held-out events, by a concrete split method.

    - `last_days`: each user's events within `holdout_days` of their last day;
    - `last_share`: each user's latest `share` of events (at least one, for
      users with two or more; ordered by time, then event id);
    - `last_n`: each user's latest `last_n` events, for users with more;
    - `cutoff`: every event on or after `cutoff` (one date for everyone).

    Returns:
        (train events, held-out events), both with the columns of `usable`.
    """
    user = Window.partitionBy(t.USER_ID)
    if spec.method == "last_days":
        last = F.max(t.EVENT_DATE).over(user)
        held = F.col(t.EVENT_DATE) > F.date_sub(last, spec.holdout_days)
    elif spec.method in ("last_share", "last_n"):
        order = user.orderBy(F.col(t.EVENT_TS).desc(), F.col(t.EVENT_ID).desc())
        latest_first = F.row_number().over(order)
        count = F.count(F.lit(1)).over(user)
        if spec.method == "last_share":
            n_held = F.when(count >= 2, F.greatest(F.lit(1), F.floor(count * spec.share)))
        else:
            n_held = F.when(count > spec.last_n, F.lit(spec.last_n))
        held = F.coalesce(latest_first <= n_held, F.lit(False))
    elif spec.method == "cutoff":
        if spec.cutoff is None:
            raise ValueError("the cutoff split needs recommend.cutoff_date")
        held = F.col(t.EVENT_DATE) >= F.lit(spec.cutoff)
    else:
        raise ValueError(f"unknown split {spec.method!r}; one of {SPLITS[1:]}")
    marked = usable.withColumn("_held", held).cache()
    return marked.where(~F.col("_held")).drop("_held"), marked.where(F.col("_held")).drop("_held")


def describe_split(spec: SplitSpec) -> str:
    return {
        "last_days": f"last {spec.holdout_days} days per user held out",
        "last_share": f"latest {spec.share:.0%} of each user's events held out",
        "last_n": f"latest {spec.last_n} events per user held out",
        "cutoff": f"events from {spec.cutoff} on held out",
    }[spec.method]


def time_split(
    events: DataFrame, holdout_days: int, event_types: Sequence[str]
) -> tuple[DataFrame, DataFrame]:
    """Each user's last `holdout_days` of events (from their last event's day) held out."""
    return split_events(usable_events(events, event_types), SplitSpec("last_days", holdout_days))


def relevant_items(train: DataFrame, held: DataFrame) -> DataFrame:
    """(user, item) pairs of the held-out window the user never had before, for users with
    training interactions."""
    seen = train.select(t.USER_ID, t.ITEM_ID).distinct()
    trained_users = seen.select(t.USER_ID).distinct()
    return (
        held.select(t.USER_ID, t.ITEM_ID)
        .distinct()
        .join(seen, on=[t.USER_ID, t.ITEM_ID], how="left_anti")
        .join(trained_users, on=t.USER_ID, how="left_semi")
    )


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class RankingScores:
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    users: int

    def as_metrics(self, k: int, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}precision_at_{k}": self.precision,
            f"{prefix}recall_at_{k}": self.recall,
            f"{prefix}ndcg_at_{k}": self.ndcg,
            f"{prefix}map_at_{k}": self.map,
            f"{prefix}coverage_at_{k}": self.coverage,
        }


def _ideal_dcg(k: int) -> Column:
    """Array literal: element n (1-based) = DCG of n hits at ranks 1..n."""
    values, acc = [], 0.0
    for i in range(1, k + 1):
        acc += 1.0 / math.log2(i + 1)
        values.append(F.lit(acc))
    return F.array(*values)


def ranking_scores(
    recs: DataFrame,
    relevant: DataFrame,
    k: int,
    catalog_size: int,
    user_col: str = t.USER_ID,
    item_col: str = t.ITEM_ID,
) -> RankingScores:
    """Precision, recall, NDCG, MAP at k and coverage (module docstring), in Spark.

    Args:
        recs: `(user, item, rank)`, rank 1 = best.
        relevant: `(user, item)`; its users are the evaluated users.
        k: cut-off.
        catalog_size: items a recommender could show (coverage denominator).
    """
    # Computed once: the scores and the coverage below are two jobs, and `recs`
    # is often a whole ALS scoring (profiled on the ratings example's recommend
    # stage: 97 s of its 218 s went to computing it twice).
    top = checkpointed(recs.where(F.col(RANK) <= k).select(user_col, item_col, RANK))
    rel = relevant.select(user_col, item_col).distinct()
    per_user_rel = rel.groupBy(user_col).agg(F.count(F.lit(1)).alias("_rel"))
    hits = top.join(rel, on=[user_col, item_col], how="inner").withColumn(
        "_cum", F.row_number().over(Window.partitionBy(user_col).orderBy(RANK))
    )
    per_user_hits = hits.groupBy(user_col).agg(
        F.count(F.lit(1)).alias("_hits"),
        F.sum(1.0 / F.log2(F.col(RANK) + 1)).alias("_dcg"),
        F.sum(F.col("_cum") / F.col(RANK)).alias("_ap_sum"),
    )
    capped = F.least(F.col("_rel"), F.lit(k))
    per_user = per_user_rel.join(per_user_hits, on=user_col, how="left").fillna(
        0, subset=["_hits", "_dcg", "_ap_sum"]
    )
    row = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.avg(F.col("_hits") / k).alias("precision"),
        F.avg(F.col("_hits") / F.col("_rel")).alias("recall"),
        F.avg(F.col("_dcg") / F.element_at(_ideal_dcg(k), capped.cast("int"))).alias("ndcg"),
        F.avg(F.col("_ap_sum") / capped).alias("map"),
    ).first()
    covered = top.join(per_user_rel.select(user_col), on=user_col, how="left_semi")
    items = covered.select(item_col).distinct().count()
    top.unpersist()
    users = int(row["users"])
    if users == 0:
        raise ValueError("no user to evaluate: the relevant set is empty")
    return RankingScores(
        precision=float(row["precision"]),
        recall=float(row["recall"]),
        ndcg=float(row["ndcg"]),
        map=float(row["map"]),
        coverage=items / catalog_size if catalog_size else 0.0,
        users=users,
    )


# --------------------------------------------------------------------------- popularity


def popularity(interactions: DataFrame, group: DataFrame | None = None) -> DataFrame:
    """Items ranked by the number of users who interacted with them, per group.

    Args:
        interactions: `(user_id, item_id, ...)`.
        group: `(user_id, group)`; None ranks over everyone (one group, 0).

    Returns:
        `(group, item_id, rank, score)`, rank 1 = most users; ties by item id.
    """
    pairs = interactions.select(t.USER_ID, t.ITEM_ID).distinct()
    if group is None:
        pairs = pairs.withColumn(GROUP, F.lit(0))
    else:
        pairs = pairs.join(group.select(t.USER_ID, GROUP), on=t.USER_ID, how="inner")
    counts = pairs.groupBy(GROUP, t.ITEM_ID).agg(F.count(F.lit(1)).cast("double").alias(SCORE))
    order = Window.partitionBy(GROUP).orderBy(F.col(SCORE).desc(), F.col(t.ITEM_ID))
    return counts.withColumn(RANK, F.row_number().over(order)).select(GROUP, t.ITEM_ID, RANK, SCORE)


def top_popular_unseen(
    users: DataFrame, ranked: DataFrame, seen: DataFrame | None, n: int
) -> DataFrame:
    """Each user's `n` most popular items of their group that they have not seen.

    No users x items product: each user's seen items become their popularity
    ranks, and the answer is the first `n` ranks not among them
    (`array_except(sequence(1, n + |seen|), seen ranks)`).

    Args:
        users: `(user_id, group)`.
        ranked: `popularity(...)` output.
        seen: `(user_id, item_id)` to leave out, or None.
        n: list length (shorter when the group has fewer unseen items).

    Returns:
        `(user_id, rank, item_id, score)` with ranks 1..n per user.
    """
    base = users.select(t.USER_ID, GROUP)
    if seen is not None:
        seen_ranks = (
            seen.select(t.USER_ID, t.ITEM_ID)
            .distinct()
            .join(base, on=t.USER_ID, how="inner")
            .join(ranked.select(GROUP, t.ITEM_ID, RANK), on=[GROUP, t.ITEM_ID], how="inner")
            .groupBy(t.USER_ID)
            .agg(F.collect_list(RANK).alias("_seen"))
        )
        base = base.join(seen_ranks, on=t.USER_ID, how="left")
    else:
        base = base.withColumn("_seen", F.lit(None).cast("array<int>"))
    seen_list = F.coalesce(F.col("_seen"), F.array().cast("array<int>"))
    wanted = F.slice(
        F.array_except(F.sequence(F.lit(1), F.lit(n) + F.size(seen_list)), seen_list), 1, n
    )
    picks = base.select(t.USER_ID, GROUP, F.posexplode(wanted).alias("_pos", "_pop_rank"))
    return (
        picks.join(
            ranked.withColumnRenamed(RANK, "_pop_rank"), on=[GROUP, "_pop_rank"], how="inner"
        )
        .withColumn(RANK, F.row_number().over(Window.partitionBy(t.USER_ID).orderBy("_pos")))
        .select(t.USER_ID, RANK, t.ITEM_ID, SCORE)
    )


def with_groups(users: DataFrame, segments: DataFrame | None) -> DataFrame:
    """`(user_id, group)` from `segments` `(user_id, group)`; no segment: group -1."""
    if segments is None:
        return users.select(t.USER_ID).withColumn(GROUP, F.lit(-1))
    return (
        users.select(t.USER_ID)
        .join(segments.select(t.USER_ID, GROUP), on=t.USER_ID, how="left")
        .withColumn(GROUP, F.coalesce(F.col(GROUP), F.lit(-1)))
    )


def cold_start(
    users: DataFrame,
    segments: DataFrame | None,
    interactions: DataFrame,
    seen: DataFrame | None,
    n: int,
) -> DataFrame:
    """Recommendations for users a factor model cannot score.

    A user with a segment gets the segment's most popular items (popularity
    among the segment's users with interactions); a user without one, or
    whose segment has no interactions, the globally most popular items.

    Args:
        users: `(user_id)` to serve.
        segments: `(user_id, group)` of everyone, or None.
        interactions: `(user_id, item_id, ...)` popularity is counted on.
        seen: `(user_id, item_id)` never to recommend, or None.
        n: list length.

    Returns:
        `(user_id, rank, item_id, score, source)`, source `segment_popular` or `popular`.
    """
    grouped = with_groups(users, segments)
    parts = []
    if segments is not None:
        by_segment = popularity(interactions, segments)
        served = grouped.join(by_segment.select(GROUP).distinct(), on=GROUP, how="left_semi")
        parts.append(
            top_popular_unseen(served, by_segment, seen, n).withColumn(
                "source", F.lit(SOURCE_SEGMENT)
            )
        )
        grouped = grouped.join(served.select(t.USER_ID), on=t.USER_ID, how="left_anti")
    parts.append(
        top_popular_unseen(
            grouped.withColumn(GROUP, F.lit(0)), popularity(interactions), seen, n
        ).withColumn("source", F.lit(SOURCE_POPULAR))
    )
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out.select(t.USER_ID, RANK, t.ITEM_ID, SCORE, "source")


# --------------------------------------------------------------------------- item-item


def item_neighbours(interactions: DataFrame, n: int, max_items_per_user: int = 100) -> DataFrame:
    """Each item's `n` nearest items by cosine of their columns of the user x item matrix.

    The strengths are the matrix values. Pairs come from a self-join on the
    user, whose cost grows with the square of a user's items: each user's
    `max_items_per_user` strongest items are kept (ties by item id).

    Returns:
        `(item_id, similar_item_id, score)`, at most `n` rows per item, the
        best first; ties by similar item id.
    """
    strongest = Window.partitionBy(t.USER_ID).orderBy(F.col(t.STRENGTH).desc(), t.ITEM_ID)
    values = (
        interactions.select(t.USER_ID, t.ITEM_ID, t.STRENGTH)
        .where(F.col(t.STRENGTH) > 0)
        .withColumn("_r", F.row_number().over(strongest))
        .where(F.col("_r") <= max_items_per_user)
        .drop("_r")
    )
    norms = values.groupBy(t.ITEM_ID).agg(F.sqrt(F.sum(F.col(t.STRENGTH) ** 2)).alias("_norm"))
    left = values.select(t.USER_ID, F.col(t.ITEM_ID).alias("_a"), F.col(t.STRENGTH).alias("_sa"))
    right = values.select(t.USER_ID, F.col(t.ITEM_ID).alias("_b"), F.col(t.STRENGTH).alias("_sb"))
    dots = (
        left.join(right, on=t.USER_ID, how="inner")
        .where(F.col("_a") != F.col("_b"))
        .groupBy("_a", "_b")
        .agg(F.sum(F.col("_sa") * F.col("_sb")).alias("_dot"))
    )
    norm_a = norms.select(F.col(t.ITEM_ID).alias("_a"), F.col("_norm").alias("_na"))
    norm_b = norms.select(F.col(t.ITEM_ID).alias("_b"), F.col("_norm").alias("_nb"))
    cosine = (
        dots.join(F.broadcast(norm_a), on="_a", how="inner")
        .join(F.broadcast(norm_b), on="_b", how="inner")
        .withColumn(SCORE, F.col("_dot") / (F.col("_na") * F.col("_nb")))
    )
    best = Window.partitionBy("_a").orderBy(F.col(SCORE).desc(), F.col("_b"))
    return (
        cosine.withColumn("_r", F.row_number().over(best))
        .where(F.col("_r") <= n)
        .select(F.col("_a").alias(t.ITEM_ID), F.col("_b").alias("similar_item_id"), F.col(SCORE))
    )


def top_item_item(
    history: DataFrame, neighbours: DataFrame, seen: DataFrame | None, n: int
) -> DataFrame:
    """Each user's `n` best items by the neighbours of what they interacted with.

    An item's score is the sum over the user's items of their strength times
    its similarity to them. Items in `seen` (and, without it, in the
    history) are left out; ties by item id.

    Args:
        history: `(user_id, item_id, strength)` of the users to serve.
        neighbours: `item_neighbours(...)` output.
        seen: `(user_id, item_id)` never to recommend, or None for the history.
        n: list length (shorter when a user's items have fewer neighbours).

    Returns:
        `(user_id, rank, item_id, score)`.
    """
    candidates = (
        history.select(t.USER_ID, t.ITEM_ID, t.STRENGTH)
        .join(neighbours, on=t.ITEM_ID, how="inner")
        .groupBy(t.USER_ID, F.col("similar_item_id").alias(t.ITEM_ID))
        .agg(F.sum(F.col(t.STRENGTH) * F.col(SCORE)).alias(SCORE))
    )
    exclude = (seen if seen is not None else history).select(t.USER_ID, t.ITEM_ID)
    candidates = candidates.join(exclude, on=[t.USER_ID, t.ITEM_ID], how="left_anti")
    order = Window.partitionBy(t.USER_ID).orderBy(F.col(SCORE).desc(), F.col(t.ITEM_ID))
    return (
        candidates.withColumn(RANK, F.row_number().over(order))
        .where(F.col(RANK) <= n)
        .select(t.USER_ID, RANK, t.ITEM_ID, SCORE)
    )


# --------------------------------------------------------------------------- ALS


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float

    def label(self) -> str:
        return f"rank={self.rank} reg={self.reg_param:g} alpha={self.alpha:g}"


def random_trials(
    n: int,
    rank: Sequence[int],
    reg_param: Sequence[float],
    confidence: Sequence[float],
    median_strength: float,
    seed: int,
) -> list[AlsParams]:
    """`n` parameter sets drawn log-uniformly within the bounds.

    alpha is drawn as a confidence per unit of the median strength: ALS's
    confidence is 1 + alpha x strength, so with purchases weighted 5 an alpha
    of 5 already means 25. Ranks are rounded to a multiple of 4.
    """
    rng = np.random.default_rng(seed)

    def log_uniform(bounds: Sequence[float]) -> float:
        low, high = math.log(bounds[0]), math.log(bounds[1])
        return float(math.exp(rng.uniform(low, high)))

    scale = median_strength if median_strength > 0 else 1.0
    out = []
    for _ in range(n):
        r = max(4, int(round(log_uniform(rank) / 4)) * 4)
        out.append(
            AlsParams(
                r,
                float(f"{log_uniform(reg_param):.3g}"),
                float(f"{log_uniform(confidence) / scale:.3g}"),
            )
        )
    return out


def fit_als(
    interactions: DataFrame,
    params: AlsParams,
    *,
    max_iter: int,
    seed: int,
    blocks: int,
    checkpoint_interval: int = 10,
) -> PipelineModel:
    """`ALS(implicitPrefs=True)` on `(user_idx, item_idx, strength)`, as a PipelineModel."""
    als = ALS(
        userCol=USER_IDX,
        itemCol=ITEM_IDX,
        ratingCol=t.STRENGTH,
        implicitPrefs=True,
        rank=params.rank,
        regParam=params.reg_param,
        alpha=params.alpha,
        maxIter=max_iter,
        seed=seed,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        checkpointInterval=checkpoint_interval,
        coldStartStrategy="drop",
    )
    return Pipeline(stages=[als]).fit(interactions)


def als_of(model: PipelineModel) -> ALSModel:
    return model.stages[-1]


# --------------------------------------------------------------------------- block scoring


def _blocks(factors: DataFrame, size: int, seen: DataFrame | None) -> DataFrame:
    """Factor rows `(id, features)` gathered into blocks of `size` consecutive ids.

    A block row holds `ids` (array<int>), `factors` (the block's vectors,
    flattened) and, when `seen` is given, `seen_counts` and `seen_items` (the
    items to leave out, per id, flattened).
    """
    rows = factors.select(F.col("id"), F.col("features"))
    if seen is not None:
        per_user = seen.groupBy(F.col(USER_IDX).alias("id")).agg(
            F.collect_list(ITEM_IDX).alias("seen")
        )
        rows = rows.join(per_user, on="id", how="left")
    else:
        rows = rows.withColumn("seen", F.lit(None).cast("array<int>"))
    rows = rows.withColumn("seen", F.coalesce("seen", F.array().cast("array<int>")))
    packed = rows.groupBy((F.col("id") / size).cast("long").alias("block")).agg(
        F.collect_list(F.struct("id", "features", "seen")).alias("rows")
    )
    return packed.select(
        "block",
        F.col("rows.id").alias("ids"),
        F.flatten(F.col("rows.features")).alias("factors"),
        F.transform(F.col("rows.seen"), lambda s: F.size(s)).alias("seen_counts"),
        F.flatten(F.col("rows.seen")).alias("seen_items"),
    )


def _list_values(column: pa.ListArray, i: int) -> np.ndarray:
    offsets = column.offsets
    return column.values[offsets[i].as_py() : offsets[i + 1].as_py()].to_numpy(zero_copy_only=False)


def _row_slots(rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, int]:
    """For entries sorted by row: each one's position within its row, and the longest row."""
    counts = np.bincount(rows, minlength=n_rows)
    pos = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    return pos, max(int(counts.max(initial=0)), 1)


def _top_n_rows(
    users: np.ndarray,
    u: np.ndarray,
    items: np.ndarray,
    v: np.ndarray,
    seen_counts: np.ndarray,
    seen_items: np.ndarray,
    n: int,
) -> pa.RecordBatch:
    """Top `n` items per user of one user block x item block, best first; ties by item id.

    The items are cut into `5 n` slices; the n-th largest of a row's slice
    maxima is at most its n-th best score (n different items reach it), so
    only the few scores at or above it (about 80 per row of 2,000 on the 10M
    benchmark's factors) are kept and sorted, in a small padded matrix. No
    full-row partition or sort: 163k users x 2,000 items in one process,
    9.7-13 ns per score with `np.partition` and a sort of the survivors,
    5.0 ns this way (same output).
    """
    if len(users) == 0 or len(items) == 0:
        none = np.zeros(0, np.int64)
        return _batch(none, none, none, none)
    # Items in id order, so that among equal scores the lower item id comes first.
    by_id = np.argsort(items, kind="stable")
    items, v = items[by_id], v[by_id]
    scores = u @ v.T
    if len(seen_items):
        rows = np.repeat(np.arange(len(users)), seen_counts)
        pos = np.clip(np.searchsorted(items, seen_items), 0, len(items) - 1)
        inside = items[pos] == seen_items
        scores[rows[inside], pos[inside]] = -np.inf
    width = len(items)
    take = min(n, width)
    slices = min(width, 5 * take)
    starts = np.linspace(0, width, slices + 1).astype(np.intp)[:-1]
    maxima = np.maximum.reduceat(scores, starts, axis=1)
    floor = np.partition(maxima, slices - take, axis=1)[:, slices - take]
    flat = np.flatnonzero(scores >= floor[:, None])
    rows, cols = np.divmod(flat, width)
    # The survivors left-aligned in one row per user, padded with -inf.
    pos, longest = _row_slots(rows, len(users))
    candidates = np.full((len(users), longest), -np.inf, dtype=scores.dtype)
    candidates[rows, pos] = scores.ravel()[flat]
    candidate_cols = np.zeros((len(users), longest), dtype=cols.dtype)
    candidate_cols[rows, pos] = cols
    order = np.argsort(-candidates, axis=1, kind="stable")[:, :take]
    best = np.take_along_axis(candidates, order, axis=1)
    best_cols = np.take_along_axis(candidate_cols, order, axis=1)
    keep = np.isfinite(best)
    user_pos, rank = np.nonzero(keep)
    return _batch(users[user_pos], items[best_cols[keep]], best[keep], rank + 1)


def _batch(users: np.ndarray, items: np.ndarray, scores: np.ndarray, ranks: np.ndarray):
    return pa.RecordBatch.from_arrays(
        [
            pa.array(users.astype(np.int32)),
            pa.array(items.astype(np.int32)),
            pa.array(scores.astype(np.float32)),
            pa.array(ranks.astype(np.int32)),
        ],
        names=[USER_IDX, ITEM_IDX, SCORE, RANK],
    )


def score_top_n(
    user_factors: DataFrame,
    item_factors: DataFrame,
    n: int,
    *,
    seen: DataFrame | None = None,
    user_block: int = 4096,
    item_block: int = 16384,
) -> DataFrame:
    """Top `n` items per user by the dot product of ALS factors, computed in blocks.

    Users and items are packed into blocks of consecutive ids; every (user
    block, item block) pair is one float32 matrix product and one
    top-n selection (`_top_n_rows`) in `mapInArrow`; with several item blocks the
    per-block lists are merged by a window. Nothing reaches the driver, and
    no row-at-a-time Python runs.

    Args:
        user_factors, item_factors: `(id, features)` as `ALSModel.userFactors`.
        n: items per user.
        seen: `(user_idx, item_idx)` pairs never to recommend.
        user_block, item_block: ids per block (memory per task: about
            user_block x item_block x 4 bytes of scores).

    Returns:
        `(user_idx, item_idx, score, rank)`, ranks 1..n without gaps (fewer
        when a user has fewer unseen items).
    """
    users = _blocks(user_factors, user_block, seen).select(
        F.col("block").alias("ub"),
        F.col("ids").alias("u_ids"),
        F.col("factors").alias("u_factors"),
        "seen_counts",
        "seen_items",
    )
    items = _blocks(item_factors, item_block, None).select(
        F.col("block").alias("ib"), F.col("ids").alias("i_ids"), F.col("factors").alias("i_factors")
    )
    item_blocks = items.count()

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cols = {name: batch.column(name) for name in batch.schema.names}
            for i in range(batch.num_rows):
                u_ids = _list_values(cols["u_ids"], i).astype(np.int64)
                i_ids = _list_values(cols["i_ids"], i).astype(np.int64)
                u = _list_values(cols["u_factors"], i).astype(np.float32).reshape(len(u_ids), -1)
                v = _list_values(cols["i_factors"], i).astype(np.float32).reshape(len(i_ids), -1)
                yield _top_n_rows(
                    u_ids,
                    u,
                    i_ids,
                    v,
                    _list_values(cols["seen_counts"], i).astype(np.int64),
                    _list_values(cols["seen_items"], i).astype(np.int64),
                    n,
                )

    schema = f"{USER_IDX} int, {ITEM_IDX} int, {SCORE} float, {RANK} int"
    scored = users.crossJoin(items).mapInArrow(score, schema)
    if item_blocks <= 1:
        return scored
    best = Window.partitionBy(USER_IDX).orderBy(F.col(SCORE).desc(), F.col(ITEM_IDX))
    return (
        scored.withColumn(RANK, F.row_number().over(best))
        .where(F.col(RANK) <= n)
        .select(USER_IDX, ITEM_IDX, SCORE, RANK)
    )


def normalized(factors: DataFrame) -> DataFrame:
    """`(id, features)` scaled to unit length, so dot products are cosines."""
    norm = F.sqrt(F.aggregate(F.col("features"), F.lit(0.0), lambda acc, x: acc + x * x))
    return factors.select(
        "id",
        F.transform(
            F.col("features"), lambda x: (x / F.when(norm > 0, norm).otherwise(1.0)).cast("float")
        ).alias("features"),
    )


def similar_items(item_factors: DataFrame, n: int, *, item_block: int = 16384) -> DataFrame:
    """Each item's `n` most similar items by the cosine of their ALS factors (not itself).

    Returns:
        `(item_idx, similar_idx, score, rank)`.
    """
    unit = normalized(item_factors)
    itself = unit.select(F.col("id").alias(USER_IDX), F.col("id").alias(ITEM_IDX))
    return score_top_n(
        unit, unit, n, seen=itself, user_block=item_block, item_block=item_block
    ).select(F.col(USER_IDX).alias(ITEM_IDX), F.col(ITEM_IDX).alias("similar_idx"), SCORE, RANK)
