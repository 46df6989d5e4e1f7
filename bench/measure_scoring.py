"""Top-N for every user: shopseg's blocked scorer against ALS's recommendForAllUsers.

    .venv/bin/python bench/measure_scoring.py [--users 100000] [--items 10000] [--repeats 3]

Fits one implicit ALS model (rank 32, one iteration: the factors' values do
not change the cost of scoring) on random interactions, then times, in the
same process and on the same factors, `recommend.score_top_n` and
`ALSModel.recommendForAllUsers`, each `repeats` times, each result fully
computed (written to Spark's `noop` sink). Prints medians, nanoseconds per
user x item score and whether both give the same top-N. Results as JSON on
stdout's last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pyspark.ml.recommendation import ALS
from pyspark.sql import functions as F

from shopseg import recommend as rc
from shopseg.config import SparkConf
from shopseg.spark import get_spark


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    spark = get_spark("bench-scoring", SparkConf(master="local[*]", driver_memory="8g"))
    pairs = (
        spark.range(args.users * args.per_user)
        .select(
            (F.col("id") % args.users).cast("int").alias(rc.USER_IDX),
            (F.rand(1) * args.items).cast("int").alias(rc.ITEM_IDX),
            F.lit(1.0).alias("strength"),
        )
        .dropDuplicates([rc.USER_IDX, rc.ITEM_IDX])
    )
    als = ALS(
        userCol=rc.USER_IDX,
        itemCol=rc.ITEM_IDX,
        ratingCol="strength",
        implicitPrefs=True,
        rank=args.rank,
        maxIter=1,
        seed=1,
        numUserBlocks=4,
        numItemBlocks=4,
    )
    model = als.fit(pairs)
    users = model.userFactors.cache()
    items = model.itemFactors.cache()
    n_users, n_items = users.count(), items.count()
    scores = n_users * n_items

    def blocked():
        return rc.score_top_n(users, items, args.n)

    def builtin():
        return model.recommendForAllUsers(args.n)

    results = {}
    for name, make in (("blocked", blocked), ("recommendForAllUsers", builtin)):
        seconds = [
            timed(lambda make=make: make().write.format("noop").mode("overwrite").save())
            for _ in range(args.repeats)
        ]
        median = statistics.median(seconds)
        results[name] = {
            "seconds": seconds,
            "median_seconds": median,
            "ns_per_score": median / scores * 1e9,
        }
        print(f"{name}: median {median:.1f} s, {median / scores * 1e9:.2f} ns per score")

    # Same top-N: compare the item sets of a sample of users.
    sample = users.select(F.col("id").alias(rc.USER_IDX)).limit(500)
    mine = (
        blocked()
        .join(sample, rc.USER_IDX, "left_semi")
        .groupBy(rc.USER_IDX)
        .agg(F.sort_array(F.collect_list(rc.ITEM_IDX)).alias("items"))
    )
    theirs = (
        builtin()
        .join(sample, rc.USER_IDX, "left_semi")
        .select(rc.USER_IDX, F.sort_array("recommendations." + rc.ITEM_IDX).alias("items"))
    )
    same = (
        mine.join(theirs.withColumnRenamed("items", "theirs"), rc.USER_IDX, "inner")
        .filter(F.col("items") == F.col("theirs"))
        .count()
    )
    results.update(
        users=n_users,
        items=n_items,
        rank=args.rank,
        n=args.n,
        same_top_n_share=same / 500,
        ratio=results["recommendForAllUsers"]["median_seconds"]
        / results["blocked"]["median_seconds"],
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
