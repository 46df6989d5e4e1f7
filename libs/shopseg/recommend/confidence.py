"""Confidence transforms of the interaction strengths, in Spark, before ALS.

ALS on implicit feedback weighs a pair by c = 1 + alpha x r. What r is matters
as much as alpha:

- `linear`: r = the strength (weighted, decayed events);
- `log`: r = log(1 + strength / epsilon), so c = 1 + alpha log(1 + s/eps)
  (Hu, Koren and Volinsky's second form): a user's hundredth view of an item
  counts less than their first;
- `bm25`: r = strength x (k1 + 1) / (strength + k1 (1 - b + b L_u / avg L))
  x idf_i, with L_u the user's total strength and idf_i = log(1 + (N - n_i +
  0.5) / (n_i + 0.5)) over N users, n_i of them with the item (Robertson's
  BM25 weighting, the idf in its non-negative form): items everyone takes and
  users who take everything weigh less.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import tables as t

TRANSFORMS = ("linear", "log", "bm25")
# BM25's usual constants (saturation k1, length normalisation b).
BM25_K1 = 1.2
BM25_B = 0.75


def with_confidence(
    interactions: DataFrame,
    transform: str,
    user_col: str,
    item_col: str,
    epsilon: float = 1.0,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> DataFrame:
    """`interactions` with `strength` replaced by its `transform` (module docstring)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown confidence transform {transform!r}; one of {TRANSFORMS}")
    strength = F.col(t.STRENGTH)
    if transform == "linear":
        return interactions
    if transform == "log":
        return interactions.withColumn(t.STRENGTH, F.log1p(strength / F.lit(epsilon)))
    lengths = interactions.groupBy(user_col).agg(F.sum(t.STRENGTH).alias("_length"))
    # Two numbers for everyone: a one-row aggregate joined on, not a one-partition window.
    overall = lengths.agg(F.avg("_length").alias("_mean_length"), F.count(F.lit(1)).alias("_users"))
    per_user = lengths.crossJoin(F.broadcast(overall))
    per_item = interactions.groupBy(item_col).agg(F.count(F.lit(1)).alias("_n"))
    norm = F.lit(k1) * (F.lit(1 - b) + F.lit(b) * F.col("_length") / F.col("_mean_length"))
    idf = F.log1p((F.col("_users") - F.col("_n") + 0.5) / (F.col("_n") + 0.5))
    weighted = strength * F.lit(k1 + 1) / (strength + norm) * idf
    columns = interactions.columns
    return (
        interactions.join(per_user, on=user_col, how="inner")
        .join(per_item, on=item_col, how="inner")
        .withColumn(t.STRENGTH, weighted)
        .select(*columns)
    )
