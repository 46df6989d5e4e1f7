"""ALS on implicit feedback (fit, random search trials) and the block scoring of
every user's top n and of similar items from the factors."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.recommend.ids import (
    ITEM_IDX,
    RANK,
    SCORE,
    USER_IDX,
)

# --------------------------------------------------------------------------- ALS


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float
    transform: str = "linear"
    """The confidence transform of the strengths (`recommend.confidence`)."""

    def label(self) -> str:
        label = f"rank={self.rank} reg={self.reg_param:g} alpha={self.alpha:g}"
        return label if self.transform == "linear" else f"{label} {self.transform}"


# Spark MLlib ALS's own defaults (rank 10, regParam 0.1, alpha 1.0): always a
# candidate of the search, so it never serves less than the library untuned.
MLLIB_DEFAULTS = AlsParams(10, 0.1, 1.0)


def random_trials(
    n: int,
    rank: Sequence[int],
    reg_param: Sequence[float],
    confidence: Sequence[float],
    median_strength: float | Mapping[str, float],
    seed: int,
    transforms: Sequence[str] = ("linear",),
) -> list[AlsParams]:
    """`n` parameter sets drawn log-uniformly within the bounds.

    alpha is drawn as a confidence per unit of the median strength: ALS's
    confidence is 1 + alpha x strength, so with purchases weighted 5 an alpha
    of 5 already means 25. Ranks are rounded to a multiple of 4. With several
    `transforms` each trial draws one, and `median_strength` maps each to the
    median of its transformed strengths.
    """
    rng = np.random.default_rng(seed)
    medians = (
        dict(median_strength)
        if isinstance(median_strength, Mapping)
        else {transforms[0]: median_strength}
    )

    def log_uniform(bounds: Sequence[float]) -> float:
        low, high = math.log(bounds[0]), math.log(bounds[1])
        return float(math.exp(rng.uniform(low, high)))

    out = []
    for _ in range(n):
        transform = transforms[int(rng.integers(len(transforms)))] if len(transforms) > 1 else (
            transforms[0]
        )  # fmt: skip
        scale = medians[transform] if medians[transform] > 0 else 1.0
        r = max(4, int(round(log_uniform(rank) / 4)) * 4)
        out.append(
            AlsParams(
                r,
                float(f"{log_uniform(reg_param):.3g}"),
                float(f"{log_uniform(confidence) / scale:.3g}"),
                transform,
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
