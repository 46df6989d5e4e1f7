"""RFM: quintile cuts among buyers, scores 1-5 and the configured segments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shopseg.config import RfmRule

QUANTILES = (0.2, 0.4, 0.6, 0.8)


def rfm_cuts(users: DataFrame, relative_error: float) -> dict[str, list[float]]:
    """Quintile cut points of recency, frequency and monetary among buyers (one pass)."""
    buyers = users.filter(F.col("frequency") > 0)
    cols = ["recency_days", "frequency", "monetary"]
    cuts = buyers.approxQuantile(cols, list(QUANTILES), relative_error)
    return dict(zip(cols, cuts, strict=True))


def score(value: Column, cuts: Sequence[float], higher_is_better: bool) -> Column:
    """1..5 by how many quintile cuts the value passes (ties share a score)."""
    if not cuts:
        return F.lit(None).cast("int")
    passed = [F.when(value > c if higher_is_better else value < c, 1).otherwise(0) for c in cuts]
    total = passed[0]
    for p in passed[1:]:
        total = total + p
    return F.when(value.isNotNull(), (total + 1).cast("int"))


def rfm_segment(rules: Sequence[RfmRule], no_purchase: str) -> Column:
    """First rule whose R and F score ranges hold; users who never bought get `no_purchase`.

    A buyer whose purchases all fall before the window has frequency 0 but a
    recency: scored, not labelled as never having purchased.
    """
    r, f = F.col("r_score"), F.col("f_score")
    out = F.when(F.col("recency_days").isNull(), F.lit(no_purchase))
    for rule in rules:
        out = out.when(r.between(*rule.r) & f.between(*rule.f), F.lit(rule.name))
    return out


def with_rfm_scores(
    users: DataFrame,
    cuts: Mapping[str, Sequence[float]],
    rules: Sequence[RfmRule],
    no_purchase: str,
) -> DataFrame:
    return (
        users.withColumn("r_score", score(F.col("recency_days"), cuts["recency_days"], False))
        .withColumn("f_score", score(F.col("frequency"), cuts["frequency"], True))
        .withColumn("m_score", score(F.col("monetary"), cuts["monetary"], True))
        .withColumn("rfm_segment", rfm_segment(rules, no_purchase))
    )
