"""Charts of the gold tables, for the notebooks (and the report).

Two kinds of functions. `*_data` aggregate with Spark and return small pandas
frames: their size is bounded by snapshots x segments, k values, methods or
campaigns, never by users (the PCA view by its sample size). `*_figure` draw
such a frame as a matplotlib `Figure` (no pyplot state: `display(fig)` on
Databricks, `fig.savefig` anywhere).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import segment as sg
from shopseg import tables as t
from shopseg.config import SegmentFeature
from shopseg.delta import Lakehouse
from shopseg.pipeline import latest


def _snapshot(df: DataFrame, column: str = t.AS_OF_DATE, at_most=None) -> DataFrame:
    """Rows of the latest `column` value (at most `at_most`)."""
    day = latest(df, column, at_most)
    if day is None:
        raise ValueError("the table has no rows")
    return df.filter(F.col(column) == F.lit(day))


# --------------------------------------------------------------------------- segments


def segment_sizes_data(lake: Lakehouse) -> pd.DataFrame:
    """Users per segment and snapshot: as_of_date, segment_name, users, share."""
    counts = (
        lake.read(t.USER_SEGMENTS.name)
        .groupBy(t.AS_OF_DATE, t.SEGMENT_NAME)
        .agg(F.count(F.lit(1)).alias("users"))
        .toPandas()
    )
    counts["share"] = counts["users"] / counts.groupby(t.AS_OF_DATE)["users"].transform("sum")
    return counts.sort_values([t.AS_OF_DATE, t.SEGMENT_NAME], ignore_index=True)


def segment_sizes_figure(sizes: pd.DataFrame) -> Figure:
    """Stacked shares of each segment, one bar per snapshot."""
    shares = sizes.pivot(index=t.AS_OF_DATE, columns=t.SEGMENT_NAME, values="share").fillna(0)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(shares))
    labels = [str(d) for d in shares.index]
    for name in shares.columns:
        ax.bar(labels, shares[name], bottom=bottom, label=name)
        bottom += shares[name].to_numpy()
    ax.set_ylabel("share of users")
    ax.set_title("Segment shares per snapshot")
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize="small")
    return fig


def profile_lifts_data(lake: Lakehouse, as_of: dt.date | None = None) -> pd.DataFrame:
    """Segment x feature lift of the median against the population (latest snapshot)."""
    profiles = _snapshot(lake.read(t.SEGMENT_PROFILES.name), at_most=as_of)
    rows = profiles.select(t.SEGMENT_NAME, F.explode("lifts").alias("feature", "lift")).toPandas()
    return rows.pivot(index=t.SEGMENT_NAME, columns="feature", values="lift")


def profile_heatmap_figure(lifts: pd.DataFrame) -> Figure:
    """Lifts on a log2 colour scale: red above the population, blue below."""
    values = np.log2(lifts.to_numpy(dtype=float).clip(1e-3))
    fig = Figure(figsize=(1.2 + 0.9 * lifts.shape[1], 1.2 + 0.5 * lifts.shape[0]))
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    bound = max(1.0, float(np.nanmax(np.abs(values))))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(lifts.shape[1]), lifts.columns, rotation=45, ha="right")
    ax.set_yticks(range(lifts.shape[0]), lifts.index)
    for (i, j), lift in np.ndenumerate(lifts.to_numpy(dtype=float)):
        ax.text(j, i, f"{lift:.2g}", ha="center", va="center", fontsize="small")
    fig.colorbar(image, ax=ax, label="log2 lift of the median")
    ax.set_title("Segment profiles against the population")
    return fig


def pca_data(
    lake: Lakehouse,
    features: Sequence[SegmentFeature],
    rows: int = 2000,
    seed: int = 42,
    as_of: dt.date | None = None,
) -> pd.DataFrame:
    """A sample of users in the segmentation's feature space, projected on 2 principal axes.

    The features are prepared as the segment stage prepares them (expressions,
    log, median imputation, scaling), on a sample of about `rows` users.
    """
    segments = _snapshot(lake.read(t.USER_SEGMENTS.name), at_most=as_of)
    day = segments.select(t.AS_OF_DATE).first()[0]
    users = lake.read(t.USER_FEATURES.name).filter(F.col(t.AS_OF_DATE) == F.lit(day))
    total = users.count()
    sample = sg.sample(users, rows, total, seed).join(
        segments.select(t.USER_ID, t.SEGMENT_NAME), t.USER_ID
    )
    informative, _, _ = sg.informative_features(users, features)
    prepared = sg.build_prep_pipeline(informative, None).fit(sample).transform(sample)
    local = prepared.select(t.SEGMENT_NAME, sg.SCALED).toPandas()
    if local.empty:
        raise ValueError(f"no users with segments on {day}")
    matrix = np.vstack([v.toArray() for v in local[sg.SCALED]])
    centred = matrix - matrix.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes[:2].T
    explained = singular**2 / (singular**2).sum()
    out = pd.DataFrame(points, columns=["pc1", "pc2"])
    out[t.SEGMENT_NAME] = local[t.SEGMENT_NAME].to_numpy()
    out.attrs["explained"] = explained[:2].tolist()
    return out


def pca_figure(points: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    for name, group in points.groupby(t.SEGMENT_NAME):
        ax.scatter(group["pc1"], group["pc2"], s=6, alpha=0.6, label=name)
    explained = points.attrs.get("explained", [float("nan")] * 2)
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.set_title(f"{len(points):,} users, coloured by segment")
    ax.legend(markerscale=3, fontsize="small")
    return fig


def sweep_data(lake: Lakehouse, as_of: dt.date | None = None) -> pd.DataFrame:
    """The k sweep of the latest fitted snapshot: one row per algorithm and k."""
    sweep = _snapshot(lake.read(t.SEGMENT_SWEEP.name), at_most=as_of)
    return sweep.toPandas().sort_values(["algorithm", "k"], ignore_index=True)


def sweep_figure(sweep: pd.DataFrame) -> Figure:
    """Silhouette and stability against k, per algorithm; the chosen fit circled."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("silhouette", "stability"), strict=True):
        for algorithm, rows in sweep.groupby("algorithm"):
            ax.plot(rows["k"], rows[metric], marker="o", label=algorithm)
        chosen = sweep[sweep["chosen"]]
        ax.scatter(chosen["k"], chosen[metric], s=200, facecolors="none", edgecolors="black")
        ax.set_xlabel("k")
        ax.set_title(metric)
        ax.legend(fontsize="small")
    fig.suptitle("Choosing the number of segments (circled: chosen)")
    return fig


def transitions_data(lake: Lakehouse) -> pd.DataFrame:
    """Moves between the last two snapshots: from_segment x to_segment users."""
    moves = _snapshot(lake.read(t.SEGMENT_TRANSITIONS.name), "to_as_of").toPandas()
    return moves.pivot_table(
        index="from_segment", columns="to_segment", values="users", aggfunc="sum", fill_value=0
    )


# --------------------------------------------------------------------------- RFM


def rfm_grid_data(
    lake: Lakehouse, as_of: dt.date | None = None, min_group: int = 1
) -> pd.DataFrame:
    """Buyers per recency score (rows) and frequency score (columns), latest snapshot;
    a cell of fewer than `min_group` buyers (privacy.min_group_size) is NaN, not shown."""
    features = _snapshot(lake.read(t.USER_FEATURES.name), at_most=as_of)
    counts = (
        features.where(F.col("r_score").isNotNull() & F.col("f_score").isNotNull())
        .groupBy("r_score", "f_score")
        .agg(F.count(F.lit(1)).alias("users"))
        .toPandas()
    )
    grid = counts.pivot(index="r_score", columns="f_score", values="users").fillna(0)
    grid.attrs["min_group"] = min_group
    return grid.where(grid >= min_group)


def rfm_grid_figure(grid: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(), cmap="viridis", origin="lower")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("frequency score")
    ax.set_ylabel("recency score (5 = most recent)")
    for (i, j), users in np.ndenumerate(grid.to_numpy()):
        text = f"<{grid.attrs.get('min_group', 1)}" if np.isnan(users) else f"{int(users):,}"
        ax.text(j, i, text, ha="center", va="center", color="white", fontsize="small")
    fig.colorbar(image, ax=ax, label="buyers")
    ax.set_title("RFM grid")
    return fig


# --------------------------------------------------------------------------- recommendations


def recommendation_metrics_data(lake: Lakehouse) -> pd.DataFrame:
    """The latest evaluation at its k: each method's best candidate (the chosen ALS fit),
    one row per method."""
    from shopseg.pipeline import validation_k

    scores = _snapshot(lake.read(t.RECOMMENDATION_EVAL.name)).toPandas()
    scores = scores[scores["k"] == validation_k(scores["k"])]
    scores = scores[(scores["method"] != "als") | scores["chosen"]]
    best = scores.sort_values("ndcg", ascending=False).drop_duplicates("method")
    return best.sort_values("method").reset_index(drop=True)


def recommendation_metrics_figure(scores: pd.DataFrame) -> Figure:
    metrics = ["precision", "recall", "ndcg", "map"]
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(scores)
    for i, row in scores.iterrows():
        label = row["method"] + (f" ({row['params']})" if row["params"] else "")
        if bool(row.get("served", False)):
            label += ", served"
        ax.bar(np.arange(len(metrics)) + i * width, row[metrics].astype(float), width, label=label)
    k = int(scores["k"].iloc[0])
    ax.set_xticks(np.arange(len(metrics)) + width * (len(scores) - 1) / 2)
    ax.set_xticklabels([f"{m}@{k}" for m in metrics])
    ax.set_title("Recommendations on held-out interactions: each method's best")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    return fig


# --------------------------------------------------------------------------- campaigns


def uplift_data(lake: Lakehouse) -> pd.DataFrame:
    """The latest send's measured uplift per campaign and segment, with intervals."""
    return (
        _snapshot(lake.read(t.CAMPAIGN_RESULTS.name), "send_date")
        .toPandas()
        .sort_values(["campaign_id", t.SEGMENT_NAME], ignore_index=True)
    )


def uplift_figure(results: pd.DataFrame) -> Figure:
    """Conversion uplift (treated - control) with its confidence interval."""
    labels = results["campaign_id"] + " / " + results[t.SEGMENT_NAME]
    fig = Figure(figsize=(8, 0.8 + 0.35 * len(results)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(results))
    error = [results["uplift"] - results["uplift_low"], results["uplift_high"] - results["uplift"]]
    ax.errorbar(results["uplift"], y, xerr=error, fmt="o", capsize=3)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    confidence = float(results["confidence"].iloc[0])
    ax.set_xlabel(f"conversion uplift, {confidence:.0%} interval")
    ax.set_title("Measured campaign uplift against the holdout")
    return fig


# --------------------------------------------------------------------------- customer value


def clv_by_segment_data(lake: Lakehouse) -> pd.DataFrame:
    """Per segment of the latest segmentation: customers valued, mean and median CLV,
    mean probability alive and the share at high churn risk."""
    value = _snapshot(lake.read(t.CUSTOMER_VALUE.name))
    day = value.select(t.AS_OF_DATE).first()[0]
    segments = lake.read(t.USER_SEGMENTS.name)
    # The segmentation of the value's date or the first after it.
    after = segments.filter(F.col(t.AS_OF_DATE) >= F.lit(day))
    seg_day = after.agg(F.min(t.AS_OF_DATE)).first()[0] or latest(segments, t.AS_OF_DATE)
    joined = value.join(
        segments.filter(F.col(t.AS_OF_DATE) == F.lit(seg_day)).select(t.USER_ID, t.SEGMENT_NAME),
        t.USER_ID,
    )
    return (
        joined.groupBy(t.SEGMENT_NAME)
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg("clv").alias("mean_clv"),
            F.percentile_approx("clv", 0.5).alias("median_clv"),
            F.avg("expected_transactions").alias("mean_transactions"),
            F.avg("p_alive").alias("mean_p_alive"),
            F.avg((F.col("churn_risk") == "high").cast("double")).alias("at_risk_share"),
        )
        .toPandas()
        .sort_values(["mean_clv", "mean_transactions"], ascending=False, ignore_index=True)
    )


def p_alive_histogram_data(lake: Lakehouse, bins: int = 20) -> pd.DataFrame:
    """Customers per probability-alive bin (latest valuation)."""
    value = _snapshot(lake.read(t.CUSTOMER_VALUE.name))
    binned = F.least(F.floor(F.col("p_alive") * bins), F.lit(bins - 1)).cast("int")
    counts = value.groupBy(binned.alias("bin")).count().toPandas().set_index("bin")["count"]
    out = pd.DataFrame({"bin": range(bins)})
    out["low"], out["high"] = out["bin"] / bins, (out["bin"] + 1) / bins
    out["customers"] = out["bin"].map(counts).fillna(0).astype(int)
    return out


def clv_figure(by_segment: pd.DataFrame, p_alive: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    if by_segment["mean_clv"].notna().any():
        left.barh(by_segment[t.SEGMENT_NAME], by_segment["mean_clv"], label="mean")
        left.scatter(
            by_segment["median_clv"], by_segment[t.SEGMENT_NAME], color="black", label="median"
        )
        left.set_xlabel("expected lifetime value")
        left.set_title("CLV by segment")
        left.legend(fontsize="small")
    else:
        # Purchases without amounts: BG/NBD still forecasts transactions.
        left.barh(by_segment[t.SEGMENT_NAME], by_segment["mean_transactions"])
        left.set_xlabel("mean expected transactions over the horizon")
        left.set_title("Expected transactions by segment (no amounts: CLV unknown)")
    left.invert_yaxis()
    right.bar(
        p_alive["low"], p_alive["customers"], width=p_alive["high"] - p_alive["low"], align="edge"
    )
    right.set_xlabel("probability alive (BG/NBD)")
    right.set_ylabel("customers")
    right.set_title("Probability alive")
    return fig


# --------------------------------------------------------------------------- propensity


def propensity_eval_data(lake: Lakehouse) -> pd.DataFrame:
    """The gain and reliability curves of the latest propensity fit (a few rows per target)."""
    return _snapshot(lake.read(t.PROPENSITY_EVAL.name)).toPandas()


def propensity_figure(evaluation: pd.DataFrame) -> Figure:
    """Per target: the cumulative gain of the model and the baselines on the validation
    cut-off, and the reliability of the model before and after calibration."""
    targets = sorted(evaluation["target"].unique())
    fig = Figure(figsize=(11, 4.2 * len(targets)), layout="constrained")
    axes = fig.subplots(len(targets), 2, squeeze=False)
    for (gain_ax, rel_ax), target in zip(axes, targets, strict=True):
        mine = evaluation[evaluation["target"] == target]
        cutoff = mine["cutoff"].iloc[0]
        for method, rows in mine[mine["curve"] == "gain"].groupby("method", sort=False):
            rows = rows.sort_values("x")
            gain_ax.plot([0, *rows["x"]], [0, *rows["y"]], "o-", ms=3, label=method)
        gain_ax.plot([0, 1], [0, 1], ":", color="grey", label="random")
        gain_ax.set_xlabel("share of users contacted (highest scores first)")
        gain_ax.set_ylabel("share of positives reached")
        gain_ax.set_title(f"{target}: gains on the cut-off of {cutoff}")
        gain_ax.legend(fontsize="small")
        for method, rows in mine[mine["curve"] == "reliability"].groupby("method", sort=False):
            rows = rows.sort_values("x")
            rel_ax.plot(rows["x"], rows["y"], "o-", ms=4, label=method.replace("_", " "))
        rel_ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
        rel_ax.set_xlabel("mean predicted probability (bin)")
        rel_ax.set_ylabel("observed rate")
        rel_ax.set_title(f"{target}: reliability (held-out users)")
        rel_ax.legend(fontsize="small")
    return fig


# --------------------------------------------------------------------------- uplift models


def uplift_eval_data(lake: Lakehouse) -> pd.DataFrame:
    """The Qini curves and deciles of the latest uplift fit."""
    return _snapshot(lake.read(t.UPLIFT_EVAL.name)).toPandas()


def uplift_targeting_data(lake: Lakehouse) -> pd.DataFrame | None:
    """The targeting comparison of the latest fit (synthetic data only), or None."""
    if not lake.exists(t.UPLIFT_TARGETING.name):
        return None
    return _snapshot(lake.read(t.UPLIFT_TARGETING.name)).toPandas()


def uplift_model_figure(evaluation: pd.DataFrame, targeting: pd.DataFrame | None) -> Figure:
    """Qini curves of the learners against random targeting, the chosen learner's
    uplift by decile with intervals, and (synthetic data) the planted incremental
    conversions of each targeting method at equal contacts."""
    panels = 3 if targeting is not None and len(targeting) else 2
    fig = Figure(figsize=(5 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels)
    qini = evaluation[evaluation["curve"] == "qini"]
    end = 0.0
    for method, rows in qini.groupby("method", sort=True):
        rows = rows.sort_values("x")
        axes[0].plot(rows["x"], rows["y"], "-", label=method.replace("_", " "))
        end = float(rows["y"].iloc[-1])
    axes[0].plot([0, 1], [0, end], ":", color="grey", label="random")
    axes[0].set_xlabel("share of held-out users (highest predicted uplift first)")
    axes[0].set_ylabel("incremental conversions per user")
    axes[0].set_title("Qini curves")
    axes[0].legend(fontsize="small")
    deciles = evaluation[evaluation["curve"] == "decile"].sort_values("x")
    error = [deciles["y"] - deciles["low"], deciles["high"] - deciles["y"]]
    axes[1].errorbar(deciles["x"], deciles["y"], yerr=error, fmt="o", capsize=3)
    axes[1].axhline(0, color="grey", linewidth=1)
    axes[1].set_xticks(range(1, 11))
    axes[1].set_xlabel("predicted-uplift decile (1 = highest)")
    axes[1].set_ylabel("treated minus control conversion")
    learner = deciles["method"].iloc[0] if len(deciles) else ""
    axes[1].set_title(f"Measured uplift by decile ({learner.replace('_', ' ')})")
    if panels == 3:
        rows = targeting.sort_values("incremental_conversions")
        axes[2].barh(rows["method"].str.replace("_", " "), rows["incremental_conversions"])
        contacts = int(rows["contacts"].max())
        axes[2].set_xlabel(f"planted incremental conversions, {contacts:,} contacts each")
        axes[2].set_title("Targeting at equal contacts")
    return fig
