"""Names, profiles and trees: segment z-scores against the population, the
marketer's names, user segment rows, profiles, transitions between snapshots and
the segment hierarchy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.ml.clustering import BisectingKMeansModel
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shopseg import tables as t
from shopseg.config import SegmentName
from shopseg.segment.prepare import PREDICTION, SCALED

# Transition rows for users who entered or left between snapshots.
NEW = "(new)"
GONE = "(gone)"


# --------------------------------------------------------------------------- names


def segment_zscores(scored: DataFrame, names: Sequence[str]) -> dict[int, dict[str, float]]:
    """Mean standardised value of each feature per segment, against the population.

    The scaled vector is divided by the standard deviation but not centred,
    so the population mean (size-weighted mean of the segment means) is
    subtracted here: 0 = like everyone, +1 = one standard deviation above.
    """
    rows = (
        scored.groupBy(PREDICTION)
        .agg(Summarizer.mean(F.col(SCALED)).alias("m"), F.count(F.lit(1)).alias("n"))
        .collect()
    )
    total = sum(r["n"] for r in rows)
    overall = [sum(r["n"] * r["m"][d] for r in rows) / total for d in range(len(names))]
    return {
        r[PREDICTION]: {name: float(r["m"][d] - overall[d]) for d, name in enumerate(names)}
        for r in rows
    }


def name_score(z: Mapping[str, float], rule: SegmentName) -> float:
    """Mean of the z-scores a rule wants high, and of minus those it wants low; -inf
    when the model lacks one of its features (the data did not record it)."""
    if not set(rule.high + rule.low) <= set(z):
        return float("-inf")
    terms = [z[f] for f in rule.high] + [-z[f] for f in rule.low]
    return sum(terms) / len(terms)


def describe(z: Mapping[str, float], top: int = 2, threshold: float = 0.3) -> str:
    """'high frequency, low views': the features that set a segment apart most."""
    ranked = sorted(z.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    parts = [f"{'high' if v > 0 else 'low'} {k}" for k, v in ranked[:top] if abs(v) >= threshold]
    return ", ".join(parts) or "close to average"


def assign_names(
    zscores: Mapping[int, Mapping[str, float]],
    rules: Sequence[SegmentName],
    min_score: float,
) -> dict[int, str]:
    """Unique, deterministic names: best (segment, rule) pairs first, greedily.

    A segment no rule fits (score below `min_score`) is named after the
    features that set it apart ("High tenure_days, low views"), with a
    numeric suffix should that repeat. Ties are broken by segment id and
    rule order, so the same centroids always give the same names.
    """
    pairs = sorted(
        (
            (name_score(z, rule), seg, i)
            for seg, z in zscores.items()
            for i, rule in enumerate(rules)
        ),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    names: dict[int, str] = {}
    used_rules: set[int] = set()
    for score_, seg, i in pairs:
        if score_ < min_score:
            break
        if seg in names or i in used_rules:
            continue
        names[seg] = rules[i].name
        used_rules.add(i)
    taken = set(names.values())
    for seg in sorted(zscores):
        if seg in names:
            continue
        base = describe(zscores[seg])
        base = base[0].upper() + base[1:]
        name, n = base, 2
        while name in taken:
            name, n = f"{base} ({n})", n + 1
        names[seg] = name
        taken.add(name)
    return names


def names_column(names: Mapping[int, str]) -> Column:
    """segment_id -> segment_name as a map lookup (no join, no UDF)."""
    pairs = [x for seg, name in sorted(names.items()) for x in (F.lit(seg), F.lit(name))]
    return F.element_at(F.create_map(*pairs), F.col(PREDICTION))


# --------------------------------------------------------------------------- outputs


def build_user_segments(
    scored: DataFrame,
    names: Mapping[int, str],
    model_version: str,
    outlier_percentile: float,
) -> DataFrame:
    """gold/user_segments from scored users (with `distance`)."""
    by_segment = Window.partitionBy(PREDICTION)
    cutoff = F.percentile_approx("distance", outlier_percentile, 10_000).over(by_segment)
    return (
        scored.withColumn(t.SEGMENT_NAME, names_column(names))
        .withColumn("is_outlier", F.col("distance") > cutoff)
        .withColumn(t.MODEL_VERSION, F.lit(model_version))
        .select(*t.USER_SEGMENTS.columns)
    )


def _map_of(pairs: Sequence[tuple[str, Column]]) -> Column:
    """map<string, double> from (key, value column) pairs."""
    return F.create_map(*[x for key, value in pairs for x in (F.lit(key), value.cast("double"))])


def build_profiles(
    segments: DataFrame,
    features: DataFrame,
    profile_features: Sequence[str],
    zscores: Mapping[int, Mapping[str, float]],
    strategies: Mapping[str, str],
    rules: Mapping[int, list[str]],
    tree_fidelity: float,
    algorithm: str,
    k: int,
    values: DataFrame | None = None,
    propensity: DataFrame | None = None,
) -> DataFrame:
    """gold/segment_profiles: size, share, medians and lift per segment, plus the explanations.

    Lift is the segment mean over the population mean (1.0 = like everyone;
    null where the population mean is 0 or null). Medians, lifts and
    z-scores are maps keyed by feature name, so the table's schema does not
    depend on which features are configured. With `values` (one snapshot of
    gold/customer_value), the mean and median CLV and the share at high
    churn risk of the segment's customers who have a value; else null. With
    `propensity` (one snapshot of gold/propensity_scores), the mean calibrated
    probability per target of the segment's scored users (`mean_propensity`).
    """
    joined = segments.join(features.select(t.USER_ID, *profile_features), on=t.USER_ID, how="inner")
    if values is not None:
        joined = joined.join(
            values.select(
                t.USER_ID,
                F.col("clv").alias("_clv"),
                (F.col("churn_risk") == "high").cast("double").alias("_at_risk"),
            ),
            on=t.USER_ID,
            how="left",
        )
    else:
        joined = joined.withColumn("_clv", F.lit(None).cast("double")).withColumn(
            "_at_risk", F.lit(None).cast("double")
        )
    population = joined.agg(*[F.avg(c).alias(c) for c in profile_features]).first().asDict()
    total = F.sum("size").over(Window.partitionBy())
    per_segment = joined.groupBy(t.AS_OF_DATE, PREDICTION, t.SEGMENT_NAME, t.MODEL_VERSION).agg(
        F.count(F.lit(1)).alias("size"),
        F.count(F.when(F.col("is_outlier"), 1)).alias("outliers"),
        *[F.percentile_approx(c, 0.5, 10_000).alias(f"_median_{c}") for c in profile_features],
        *[F.avg(c).alias(f"_mean_{c}") for c in profile_features],
        F.avg("_clv").alias("mean_clv"),
        F.percentile_approx("_clv", 0.5, 10_000).cast("double").alias("median_clv"),
        F.avg("_at_risk").alias("at_risk_share"),
    )
    z_names = sorted(next(iter(zscores.values())).keys()) if zscores else []
    extra = segments.sparkSession.createDataFrame(
        [
            (
                seg,
                describe(zscores[seg]),
                list(rules.get(seg, [])),
                {n: float(zscores[seg][n]) for n in z_names},
            )
            for seg in sorted(zscores)
        ],
        f"{PREDICTION} int, description string, rules array<string>, z_scores map<string, double>",
    )
    strategy = F.element_at(
        F.create_map(
            *[x for name, s in sorted(strategies.items()) for x in (F.lit(name), F.lit(s))]
        )
        if strategies
        else F.create_map(F.lit(""), F.lit("")),
        F.col(t.SEGMENT_NAME),
    )
    medians = _map_of([(c, F.col(f"_median_{c}")) for c in profile_features])
    lifts = _map_of(
        [
            (c, F.col(f"_mean_{c}") / F.lit(population[c]) if population[c] else F.lit(None))
            for c in profile_features
        ]
    )
    if propensity is not None:
        per_target = (
            segments.select(t.USER_ID, PREDICTION)
            .join(propensity.select(t.USER_ID, "target", "probability"), t.USER_ID, "inner")
            .groupBy(PREDICTION, "target")
            .agg(F.avg("probability").alias("p"))
        )
        means = per_target.groupBy(PREDICTION).agg(
            F.map_from_entries(F.collect_list(F.struct("target", "p"))).alias("mean_propensity")
        )
        per_segment = per_segment.join(means, on=PREDICTION, how="left")
    else:
        per_segment = per_segment.withColumn(
            "mean_propensity", F.lit(None).cast("map<string, double>")
        )
    return (
        per_segment.join(extra, on=PREDICTION, how="left")
        .withColumn("share", F.col("size") / total)
        .withColumn("strategy", F.coalesce(strategy, F.lit("")))
        .withColumn("tree_fidelity", F.lit(float(tree_fidelity)))
        .withColumn("algorithm", F.lit(algorithm))
        .withColumn("k", F.lit(k))
        .withColumn("medians", medians)
        .withColumn("lifts", lifts)
        .select(*t.SEGMENT_PROFILES.columns)
    )


def build_transitions(
    previous: DataFrame | None, current: DataFrame, from_as_of, to_as_of
) -> DataFrame:
    """Users per (previous segment name -> current segment name), with (new) and (gone)."""
    cur = current.select(t.USER_ID, F.col(t.SEGMENT_NAME).alias("to_segment"))
    if previous is None:
        moved = cur.withColumn("from_segment", F.lit(NEW))
    else:
        prev = previous.select(t.USER_ID, F.col(t.SEGMENT_NAME).alias("from_segment"))
        moved = prev.join(cur, on=t.USER_ID, how="full").select(
            F.coalesce("from_segment", F.lit(NEW)).alias("from_segment"),
            F.coalesce("to_segment", F.lit(GONE)).alias("to_segment"),
        )
    return (
        moved.groupBy("from_segment", "to_segment")
        .agg(F.count(F.lit(1)).alias("users"))
        .withColumn("from_as_of", F.lit(from_as_of).cast("date"))
        .withColumn("to_as_of", F.lit(to_as_of).cast("date"))
        .select(*t.SEGMENT_TRANSITIONS.columns)
    )


@dataclass(frozen=True)
class TreeNode:
    node_id: int
    parent_id: int | None
    depth: int
    size: int
    cost: float
    segment_id: int | None


def bisecting_tree(nodes: Sequence[Mapping]) -> list[TreeNode]:
    """Split tree from a saved bisecting K-means model's node rows.

    Spark persists every node of the tree (`index`, `size`, `cost`,
    `children`); leaves carry the cluster index (>= 0), inner nodes negative
    indices. Node ids here are the persisted indices.
    """
    by_index = {int(n["index"]): n for n in nodes}
    parent = {int(c): i for i, n in by_index.items() for c in (n["children"] or [])}
    roots = [i for i in by_index if i not in parent]
    out: list[TreeNode] = []

    def walk(i: int, depth: int) -> None:
        n = by_index[i]
        out.append(
            TreeNode(
                i, parent.get(i), depth, int(n["size"]), float(n["cost"]), i if i >= 0 else None
            )
        )
        for c in n["children"] or []:
            walk(int(c), depth + 1)

    for r in sorted(roots):
        walk(r, 0)
    return out


def split_tree(model: BisectingKMeansModel, path: str) -> list[TreeNode]:
    """The split tree of a bisecting K-means model, read from its saved form at `path`.

    Spark has no API for the tree; its saved model holds every node (at most
    2k - 1 rows), which is what this reads.
    """
    model.write().overwrite().save(path)
    nodes = SparkSession.active().read.parquet(f"{path}/data/data").collect()
    return bisecting_tree([n.asDict() for n in nodes])


def ward_tree(centers: Sequence[Sequence[float]], sizes: Mapping[int, int]) -> list[TreeNode]:
    """Merge tree of final clusters (Ward: the merge adding least within-cluster SS first).

    Gives K-means the same drill-down a bisecting split tree gives: inner
    nodes get ids -1, -2, ... in merge order, the root is the last merge.
    Cost of a node is the Ward merge cost that created it.
    """
    active = {i: (list(map(float, c)), sizes.get(i, 0)) for i, c in enumerate(centers)}
    parent: dict[int, int] = {}
    costs: dict[int, float] = {i: 0.0 for i in active}
    node_sizes = {i: s for i, (_, s) in active.items()}
    next_id = -1
    while len(active) > 1:
        best = None
        ids = sorted(active)
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                (ca, na), (cb, nb) = active[ids[x]], active[ids[y]]
                merge = na * nb / max(na + nb, 1) * math.dist(ca, cb) ** 2
                if best is None or merge < best[0]:
                    best = (merge, ids[x], ids[y])
        merge, a, b = best
        (ca, na), (cb, nb) = active.pop(a), active.pop(b)
        total = na + nb
        center = [(u * na + v * nb) / max(total, 1) for u, v in zip(ca, cb, strict=True)]
        active[next_id] = (center, total)
        parent[a] = parent[b] = next_id
        costs[next_id] = merge
        node_sizes[next_id] = total
        next_id -= 1
    depth: dict[int, int] = {}

    def depth_of(i: int) -> int:
        if i not in depth:
            depth[i] = 0 if i not in parent else depth_of(parent[i]) + 1
        return depth[i]

    return sorted(
        (
            TreeNode(i, parent.get(i), depth_of(i), node_sizes[i], costs[i], i if i >= 0 else None)
            for i in node_sizes
        ),
        key=lambda n: (n.depth, n.node_id),
    )
