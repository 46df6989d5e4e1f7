"""The column names of the recommender's frames and the dense integer ids ALS needs."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

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
SOURCE_EASE = "ease"

# The cheaper of two methods that tie on the validation split is served.
SOURCE_COST = (SOURCE_POPULAR, SOURCE_SEGMENT, SOURCE_ITEM_ITEM, SOURCE_EASE, SOURCE_ALS)


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
