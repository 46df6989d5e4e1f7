"""Item-based recommenders from one item x item co-occurrence matrix: item-item
with a choice of similarity (the co-occurrence family of SAR) and EASE.

The matrix (the items' Gram matrix XᵀX over users) is built in Spark once per
split and shared: users are hashed into buckets, each bucket multiplies its
own sparse user x item matrix in a vectorised pandas function
(`applyInPandas`), and the partial products are summed by item pair. That is
one shuffle of at most (buckets x non-zero pairs) rows, where a self-join on
the user shuffles every pair of every user's items.

- `cosine`: Σ s_a s_b / (‖s_a‖ ‖s_b‖) over the strengths s;
- `jaccard`: users with both / users with either;
- `lift`: users with both / (users with a x users with b), which favours
  items that co-occur more than their popularity predicts;
- EASE (Steck, "Embarrassingly Shallow Autoencoders", 2019): the closed-form
  ridge regression of each item on all the others, B = I - P diag(1/diag P),
  P = (G + λI)⁻¹, G the binary Gram matrix; inverted on the driver, so only
  below a configured number of items (`fit_ease` refuses above it), and
  scored densely per block of users (`score_item_model`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T_

from shopseg import tables as t
from shopseg.recommend.ids import RANK, SCORE

SIMILARITIES = ("cosine", "jaccard", "lift")

# The Gram matrix's columns: an item pair (a == b on the diagonal), the users
# with both (binary) and the sum of their strength products.
ITEM_A = "item_a"
ITEM_B = "item_b"
CO = "co"
DOT = "dot"
NEIGHBOUR = "similar_item_id"


def _gram_schema(item_type: T_.DataType) -> T_.StructType:
    return T_.StructType(
        [
            T_.StructField(ITEM_A, item_type),
            T_.StructField(ITEM_B, item_type),
            T_.StructField(CO, T_.DoubleType()),
            T_.StructField(DOT, T_.DoubleType()),
        ]
    )


def _bucket_gram(frame: pd.DataFrame) -> pd.DataFrame:
    """XᵀX of one bucket's users (binary and by strength), as its non-zero entries."""
    from scipy import sparse

    users, user_pos = np.unique(frame[t.USER_ID].to_numpy(), return_inverse=True)
    items, item_pos = np.unique(frame[t.ITEM_ID].to_numpy(), return_inverse=True)
    shape = (len(users), len(items))
    strength = frame[t.STRENGTH].to_numpy(float)
    weighted = sparse.csr_matrix((strength, (user_pos, item_pos)), shape=shape)
    binary = sparse.csr_matrix((np.ones_like(strength), (user_pos, item_pos)), shape=shape)
    co = (binary.T @ binary).tocoo()
    dot = (weighted.T @ weighted).tocsr()
    return pd.DataFrame(
        {
            ITEM_A: items[co.row],
            ITEM_B: items[co.col],
            CO: co.data,
            DOT: np.asarray(dot[co.row, co.col]).ravel(),
        }
    )


def build_item_gram(
    interactions: DataFrame, buckets: int, max_items_per_user: int = 100
) -> DataFrame:
    """The item x item Gram matrix of `(user_id, item_id, strength)`, diagonal included.

    Each user's `max_items_per_user` strongest items are kept (ties by item
    id): a user's cost is the square of their items.

    Returns:
        `(item_a, item_b, co, dot)` for every pair some user shares (both
        orders), `co` = users with both, `dot` = Σ strength_a x strength_b.
    """
    values = _strongest(interactions, max_items_per_user)
    partial = values.groupBy(
        F.pmod(F.xxhash64(t.USER_ID), F.lit(buckets)).alias("_b")
    ).applyInPandas(
        lambda key, frame: _bucket_gram(frame), _gram_schema(values.schema[t.ITEM_ID].dataType)
    )
    return (
        partial.groupBy(ITEM_A, ITEM_B)
        .agg(F.sum(CO).alias(CO), F.sum(DOT).alias(DOT))
        .select(ITEM_A, ITEM_B, CO, DOT)
    )


def _strongest(interactions: DataFrame, max_items_per_user: int) -> DataFrame:
    """Each user's `max_items_per_user` strongest items (ties by item id), strength > 0."""
    strongest = Window.partitionBy(t.USER_ID).orderBy(F.col(t.STRENGTH).desc(), t.ITEM_ID)
    return (
        interactions.select(t.USER_ID, t.ITEM_ID, t.STRENGTH)
        .where(F.col(t.STRENGTH) > 0)
        .withColumn("_r", F.row_number().over(strongest))
        .where(F.col("_r") <= max_items_per_user)
        .select(t.USER_ID, t.ITEM_ID, t.STRENGTH)
    )


def neighbours_from_gram(gram: DataFrame, n: int, similarity: str = "cosine") -> DataFrame:
    """Each item's `n` most similar items by `similarity` (module docstring).

    Returns:
        `(item_id, similar_item_id, score)`, the best first; ties by similar item id.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown item similarity {similarity!r}; one of {SIMILARITIES}")
    diagonal = gram.where(F.col(ITEM_A) == F.col(ITEM_B)).select(
        F.col(ITEM_A).alias("_i"), F.col(CO).alias("_n"), F.col(DOT).alias("_sq")
    )
    left = diagonal.select(
        F.col("_i").alias(ITEM_A), F.col("_n").alias("_na"), F.col("_sq").alias("_sa")
    )
    right = diagonal.select(
        F.col("_i").alias(ITEM_B), F.col("_n").alias("_nb"), F.col("_sq").alias("_sb")
    )
    pairs = (
        gram.where(F.col(ITEM_A) != F.col(ITEM_B))
        .join(F.broadcast(left), on=ITEM_A, how="inner")
        .join(F.broadcast(right), on=ITEM_B, how="inner")
    )
    score = {
        "cosine": F.col(DOT) / F.sqrt(F.col("_sa") * F.col("_sb")),
        "jaccard": F.col(CO) / (F.col("_na") + F.col("_nb") - F.col(CO)),
        "lift": F.col(CO) / (F.col("_na") * F.col("_nb")),
    }[similarity]
    best = Window.partitionBy(ITEM_A).orderBy(F.col(SCORE).desc(), F.col(ITEM_B))
    return (
        pairs.withColumn(SCORE, score)
        .withColumn("_r", F.row_number().over(best))
        .where(F.col("_r") <= n)
        .select(F.col(ITEM_A).alias(t.ITEM_ID), F.col(ITEM_B).alias(NEIGHBOUR), F.col(SCORE))
    )


def gram_items(gram: DataFrame) -> int:
    """Items on the Gram matrix's diagonal (what EASE would invert)."""
    return gram.where(F.col(ITEM_A) == F.col(ITEM_B)).count()


@dataclass(frozen=True)
class ItemModel:
    """Dense item x item weights: a user's score of item j is Σ over their items i of
    x_ui W[i, j]. `ids` are the items of the rows and columns, sorted."""

    ids: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class DenseGram:
    """The Gram matrix on the driver: `co` (binary) and `dot` (strengths), rows and
    columns the sorted `ids`."""

    ids: np.ndarray
    co: np.ndarray
    dot: np.ndarray


def collect_gram(gram: DataFrame, max_items: int) -> DenseGram:
    """`build_item_gram`'s output as dense matrices (at most `max_items`² entries each).

    Raises:
        ValueError: above `max_items` items (the message says how many).
    """
    items = gram_items(gram)
    if items > max_items:
        raise ValueError(
            f"a dense {items} x {items} item matrix on the driver is above "
            f"recommend.ease.max_items ({max_items})"
        )
    entries = gram.select(ITEM_A, ITEM_B, CO, DOT).toPandas()
    ids, codes = np.unique(
        np.concatenate([entries[ITEM_A].to_numpy(), entries[ITEM_B].to_numpy()]),
        return_inverse=True,
    )
    rows, cols = codes[: len(entries)], codes[len(entries) :]
    co, dot = np.zeros((len(ids), len(ids))), np.zeros((len(ids), len(ids)))
    co[rows, cols] = entries[CO].to_numpy(float)
    dot[rows, cols] = entries[DOT].to_numpy(float)
    return DenseGram(ids, co, dot)


def fit_ease(gram: DenseGram, l2_scales: Iterable[float]) -> dict[float, ItemModel]:
    """EASE's item weights for each regularisation, inverted with numpy.

    λ = scale x the mean diagonal of the binary Gram matrix (the mean number
    of users per item), so one scale means the same on a small and a large
    log.
    """
    mean_diagonal = float(np.diag(gram.co).mean()) if len(gram.ids) else 0.0
    return {
        scale: ItemModel(gram.ids, ease_matrix(gram.co, scale * mean_diagonal).astype(np.float32))
        for scale in l2_scales
    }


def item_item_model(gram: DenseGram, similarity: str, n: int) -> ItemModel:
    """Item-item as a dense model: each row keeps its `n` most similar items (by
    `similarity`, as `neighbours_from_gram`), zero elsewhere and on the diagonal."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown item similarity {similarity!r}; one of {SIMILARITIES}")
    users, squares = np.diag(gram.co), np.diag(gram.dot)
    with np.errstate(divide="ignore", invalid="ignore"):
        if similarity == "cosine":
            sim = gram.dot / np.sqrt(np.outer(squares, squares))
        elif similarity == "jaccard":
            sim = gram.co / (users[:, None] + users[None, :] - gram.co)
        else:
            sim = gram.co / np.outer(users, users)
    sim = np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
    np.fill_diagonal(sim, 0.0)
    if n < len(sim):
        cut = np.argpartition(-sim, n - 1, axis=1)[:, n:]
        np.put_along_axis(sim, cut, 0.0, axis=1)
    return ItemModel(gram.ids, sim.astype(np.float32))


def ease_matrix(gram: np.ndarray, l2: float) -> np.ndarray:
    """B = I - P diag(1/diag P) with P = (G + l2 I)⁻¹, its diagonal zero."""
    p = np.linalg.inv(gram + l2 * np.eye(len(gram)))
    weights = -p / np.diag(p)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def _top_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `n` best columns, best first, ties by column; -inf columns never."""
    take = min(n, scores.shape[1])
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


def score_item_model(
    history: DataFrame,
    model: ItemModel,
    seen: DataFrame | None,
    n: int,
    users_per_chunk: int = 1024,
) -> DataFrame:
    """Each user's `n` best items under a dense item model, in a vectorised pandas
    function: the users' rows of the user x item matrix times the weights, their
    seen items (`seen`, else the history) masked, the top `n` kept.

    Ties among equal scores go to the lower item id; items outside the model
    are ignored. `users_per_chunk` bounds the scores held at once (users x items).

    Returns:
        `(user_id, rank, item_id, score)`.
    """
    user_type = history.schema[t.USER_ID].dataType
    item_type = history.schema[t.ITEM_ID].dataType
    per_user = history.groupBy(t.USER_ID).agg(
        F.collect_list(t.ITEM_ID).alias("_items"), F.collect_list(t.STRENGTH).alias("_values")
    )
    exclude = (seen if seen is not None else history).select(t.USER_ID, t.ITEM_ID)
    per_user = per_user.join(
        exclude.groupBy(t.USER_ID).agg(F.collect_list(t.ITEM_ID).alias("_seen")),
        on=t.USER_ID,
        how="left",
    )
    ids, weights = model.ids, model.weights
    schema = T_.StructType(
        [
            T_.StructField(t.USER_ID, user_type),
            T_.StructField(RANK, T_.IntegerType()),
            T_.StructField(t.ITEM_ID, item_type),
            T_.StructField(SCORE, T_.DoubleType()),
        ]
    )

    def positions(lists: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, column, index into the flat values) of the lists' items in the model."""
        lengths = lists.map(lambda v: 0 if v is None else len(v)).to_numpy()
        flat = np.concatenate([np.asarray(v) for v in lists if v is not None and len(v)] or [[]])
        rows = np.repeat(np.arange(len(lists)), lengths)
        pos = np.clip(np.searchsorted(ids, flat), 0, max(len(ids) - 1, 0))
        inside = (ids[pos] == flat) if len(ids) else np.zeros(len(flat), bool)
        return rows[inside], pos[inside], np.flatnonzero(inside)

    def batches(frames):
        from scipy import sparse

        for frame in frames:
            for start in range(0, len(frame), users_per_chunk):
                chunk = frame.iloc[start : start + users_per_chunk]
                rows, cols, where = positions(chunk["_items"])
                values = np.concatenate(
                    [np.asarray(v, float) for v in chunk["_values"] if len(v)] or [[]]
                )[where]
                x = sparse.csr_matrix((values, (rows, cols)), shape=(len(chunk), len(ids)))
                scores = np.asarray(x @ weights, dtype=np.float64)
                seen_rows, seen_cols, _ = positions(chunk["_seen"])
                scores[seen_rows, seen_cols] = -np.inf
                top, best = _top_rows(scores, n)
                keep = np.isfinite(best)
                users = np.repeat(chunk[t.USER_ID].to_numpy(), top.shape[1]).reshape(top.shape)
                ranks = np.cumsum(keep, axis=1)
                yield pd.DataFrame(
                    {
                        t.USER_ID: users[keep],
                        RANK: ranks[keep].astype(np.int32),
                        t.ITEM_ID: ids[top[keep]],
                        SCORE: best[keep],
                    }
                )

    return per_user.mapInPandas(batches, schema)


def binary(history: DataFrame) -> DataFrame:
    """`(user_id, item_id, strength)` with every strength 1 (what EASE was fitted on)."""
    return history.select(t.USER_ID, t.ITEM_ID, F.lit(1.0).alias(t.STRENGTH))
