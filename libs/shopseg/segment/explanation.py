"""Explanations: a shallow decision tree fitted to the segment labels, its leaves
as simplified rules a marketer reads."""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Sequence

from pyspark.ml.classification import DecisionTreeClassificationModel, DecisionTreeClassifier
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg.segment.prepare import PREDICTION, UNSCALED

# --------------------------------------------------------------------------- explanations


def fit_explainer(scored: DataFrame, max_depth: int, seed: int) -> DecisionTreeClassificationModel:
    """Surrogate tree predicting the segment from the unscaled feature values."""
    return DecisionTreeClassifier(
        featuresCol=UNSCALED,
        labelCol=PREDICTION,
        predictionCol="seg_tree_prediction",
        probabilityCol="seg_tree_probability",
        rawPredictionCol="seg_tree_raw",
        leafCol="seg_tree_leaf",
        maxDepth=max_depth,
        seed=seed,
    ).fit(scored)


_SPLIT = re.compile(r"^\s*(If|Else) \(feature (\d+) (<=|>|in|not in) (.+)\)\s*$")
_LEAF = re.compile(r"^\s*Predict: ([-\d.E]+)\s*$")


def simplify_conditions(conditions: Sequence[tuple[str, str, str]]) -> list[str]:
    """One condition per feature and direction: the tightest `<=` and `>` bound.

    A path "x <= 27.5 AND x <= 14.5" reads "x <= 14.5". Other operators
    (categorical `in`) are kept as they are. Order: first appearance.
    """
    upper: dict[str, float] = {}
    lower: dict[str, float] = {}
    order: list[tuple[str, str]] = []
    other: dict[tuple[str, str], str] = {}
    for feature, op, value in conditions:
        try:
            number = float(value)
        except ValueError:
            number = None
        if op == "<=" and number is not None:
            upper[feature] = min(number, upper.get(feature, math.inf))
        elif op == ">" and number is not None:
            lower[feature] = max(number, lower.get(feature, -math.inf))
        else:
            other[(feature, f"{op} {value}")] = f"{feature} {op} {value}"
        key = (feature, op if number is not None else f"{op} {value}")
        if key not in order:
            order.append(key)
    out = []
    for feature, op in order:
        if op == "<=":
            out.append(f"{feature} <= {upper[feature]:.4g}")
        elif op == ">":
            out.append(f"{feature} > {lower[feature]:.4g}")
        else:
            out.append(other[(feature, op)])
    return out


def tree_leaves(debug_string: str, feature_names: Sequence[str]) -> list[tuple[list[str], int]]:
    """Leaves of a tree's `toDebugString`, left to right: (conditions, predicted class).

    Spark numbers leaves in the same depth-first, left-to-right order, which
    is what the model's `leafCol` reports. Conditions are simplified to one
    bound per feature and direction (`simplify_conditions`).
    """
    leaves: list[tuple[list[str], int]] = []
    path: list[tuple[int, tuple[str, str, str]]] = []  # (indent, condition)
    for line in debug_string.splitlines():
        indent = len(line) - len(line.lstrip())
        split = _SPLIT.match(line)
        if split:
            path = [p for p in path if p[0] < indent]
            _, index, op, value = split.groups()
            path.append((indent, (feature_names[int(index)], op, value.strip())))
            continue
        leaf = _LEAF.match(line)
        if leaf:
            conditions = [c for depth, c in path if depth < indent]
            leaves.append((simplify_conditions(conditions), int(float(leaf.group(1)))))
    return leaves


def explain(
    tree: DecisionTreeClassificationModel,
    scored: DataFrame,
    feature_names: Sequence[str],
    rules_per_segment: int,
) -> tuple[float, dict[str, float], dict[int, list[str]]]:
    """Fidelity, feature importances and the top rules per segment of a surrogate tree.

    A rule is the path to a leaf predicting the segment, ranked by how many
    of the segment's users it covers, with its coverage and precision.
    """
    predicted = tree.transform(scored)
    counts = (
        predicted.groupBy("seg_tree_leaf", "seg_tree_prediction", PREDICTION)
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    )
    leaves = tree_leaves(tree.toDebugString, feature_names)
    in_leaf: collections.Counter = collections.Counter()
    per_segment: collections.Counter = collections.Counter()
    hits: collections.Counter = collections.Counter()
    correct = 0
    for r in counts:
        leaf, seg, n = int(r["seg_tree_leaf"]), int(r[PREDICTION]), int(r["n"])
        if leaves[leaf][1] != int(r["seg_tree_prediction"]):
            raise RuntimeError(
                "decision tree leaf numbering differs from its debug string; "
                "cannot attach rules to leaves"
            )
        in_leaf[leaf] += n
        per_segment[seg] += n
        hits[(leaf, seg)] += n
        correct += n if seg == int(r["seg_tree_prediction"]) else 0
    total = sum(per_segment.values())
    fidelity = correct / total if total else float("nan")
    rules: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for i, (conditions, cls) in enumerate(leaves):
        covered = hits[(i, cls)]
        if not covered:
            continue
        text = " AND ".join(conditions) or "all users"
        coverage = covered / per_segment[cls]
        precision = covered / in_leaf[i]
        rules[cls].append(
            (covered, f"{text} (covers {coverage:.0%} of segment, precision {precision:.0%})")
        )
    top = {
        seg: [text for _, text in sorted(found, key=lambda x: -x[0])[:rules_per_segment]]
        for seg, found in rules.items()
    }
    importances = {name: float(tree.featureImportances[i]) for i, name in enumerate(feature_names)}
    return fidelity, importances, top
