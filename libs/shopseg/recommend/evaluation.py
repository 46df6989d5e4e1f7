"""The time split of the interactions and the ranking metrics at k (the package
docstring gives their definitions)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.recommend.ids import (
    RANK,
)
from shopseg.spark import checkpointed

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


def seen_pairs(events: DataFrame, event_types: Sequence[str]) -> DataFrame:
    """`(user_id, item_id)` a user has seen: the items of their events of `event_types`
    (`recommend.seen_events`), never recommended to them again."""
    return (
        events.where(F.col(t.ITEM_ID).isNotNull() & F.col(t.EVENT_TYPE).isin(*event_types))
        .select(t.USER_ID, t.ITEM_ID)
        .distinct()
    )


def relevant_items(train: DataFrame, held: DataFrame, seen: DataFrame | None = None) -> DataFrame:
    """(user, item) pairs of the held-out window the user had not seen before (`seen`,
    default every training pair), for users with training interactions."""
    trained_users = train.select(t.USER_ID).distinct()
    seen = (seen if seen is not None else train).select(t.USER_ID, t.ITEM_ID).distinct()
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
    return ranking_scores_at(recs, relevant, [k], catalog_size, user_col, item_col)[k]


def ranking_scores_at(
    recs: DataFrame,
    relevant: DataFrame,
    ks: Sequence[int],
    catalog_size: int,
    user_col: str = t.USER_ID,
    item_col: str = t.ITEM_ID,
) -> dict[int, RankingScores]:
    """`ranking_scores` at each cut-off of `ks`, from the same lists in one aggregation."""
    ks = sorted(set(ks))
    # Computed once: the scores and the coverage below are two jobs, and `recs`
    # is often a whole ALS scoring (profiled on the ratings example's recommend
    # stage: 97 s of its 218 s went to computing it twice).
    top = checkpointed(recs.where(F.col(RANK) <= ks[-1]).select(user_col, item_col, RANK))
    rel = relevant.select(user_col, item_col).distinct()
    per_user_rel = rel.groupBy(user_col).agg(F.count(F.lit(1)).alias("_rel"))
    hits = top.join(rel, on=[user_col, item_col], how="inner").withColumn(
        "_cum", F.row_number().over(Window.partitionBy(user_col).orderBy(RANK))
    )
    within = {k: F.col(RANK) <= k for k in ks}
    per_user_hits = hits.groupBy(user_col).agg(
        *[
            agg.alias(f"{name}_{k}")
            for k in ks
            for name, agg in (
                ("_hits", F.count(F.when(within[k], 1))),
                ("_dcg", F.sum(F.when(within[k], 1.0 / F.log2(F.col(RANK) + 1)))),
                ("_ap_sum", F.sum(F.when(within[k], F.col("_cum") / F.col(RANK)))),
            )
        ]
    )
    per_user = per_user_rel.join(per_user_hits, on=user_col, how="left")
    per_user = per_user.fillna(0, subset=[c for c in per_user.columns if c.startswith("_")])
    aggregates = [F.count(F.lit(1)).alias("users")]
    for k in ks:
        capped = F.least(F.col("_rel"), F.lit(k))
        hits_k, dcg_k, ap_k = F.col(f"_hits_{k}"), F.col(f"_dcg_{k}"), F.col(f"_ap_sum_{k}")
        aggregates += [
            F.avg(hits_k / k).alias(f"precision_{k}"),
            F.avg(hits_k / F.col("_rel")).alias(f"recall_{k}"),
            F.avg(dcg_k / F.element_at(_ideal_dcg(k), capped.cast("int"))).alias(f"ndcg_{k}"),
            F.avg(ap_k / capped).alias(f"map_{k}"),
        ]
    row = per_user.agg(*aggregates).first()
    covered = top.join(per_user_rel.select(user_col), on=user_col, how="left_semi")
    items = covered.agg(
        *[F.count_distinct(F.when(within[k], F.col(item_col))).alias(f"items_{k}") for k in ks]
    ).first()
    top.unpersist()
    users = int(row["users"])
    if users == 0:
        raise ValueError("no user to evaluate: the relevant set is empty")
    return {
        k: RankingScores(
            precision=float(row[f"precision_{k}"]),
            recall=float(row[f"recall_{k}"]),
            ndcg=float(row[f"ndcg_{k}"]),
            map=float(row[f"map_{k}"]),
            coverage=items[f"items_{k}"] / catalog_size if catalog_size else 0.0,
            users=users,
        )
        for k in ks
    }
