"""What ALS is measured against and falls back to: popularity (overall and per
segment), the cold-start lists and item-item neighbours."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.recommend.cooccurrence import build_item_gram, neighbours_from_gram
from shopseg.recommend.ids import (
    GROUP,
    RANK,
    SCORE,
    SOURCE_POPULAR,
    SOURCE_SEGMENT,
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


def item_neighbours(
    interactions: DataFrame,
    n: int,
    similarity: str = "cosine",
    max_items_per_user: int = 100,
    buckets: int = 2,
) -> DataFrame:
    """Each item's `n` nearest items by `similarity` (cosine of their columns of the
    user x item matrix, Jaccard or lift: `shopseg.recommend.cooccurrence`).

    Each user's `max_items_per_user` strongest items are kept; `buckets` is
    the number of parallel partial Gram matrices.

    Returns:
        `(item_id, similar_item_id, score)`, at most `n` rows per item, the
        best first; ties by similar item id.
    """
    gram = build_item_gram(interactions, buckets, max_items_per_user)
    return neighbours_from_gram(gram, n, similarity)


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
