"""Uplift: whom a campaign changes, learned from a randomized send.

Pure functions over DataFrames and plain values; the stage
(`shopseg.stages.uplift`) reads the tables, calls these and writes gold.

Rows are the users of one randomized campaign (or an exported experiment):
`treated` (1 treated, 0 control), `label` (1 converted) and the features of
the send date. The outcome is binary (converted: `label` 1/0) or a number
(revenue, orders, margin per user); every learner regresses it, so `uplift`
is the predicted change of the conversion probability, or of the outcome in
its own units. Three learners, each one Spark ML `PipelineModel` whose output
column is `uplift`:

- `t_learner`: the feature preparation, then a `GBTRegressor` of the
  outcome fitted on the treated rows (mu1) and one fitted on the control
  rows (mu0); uplift = mu1(x) - mu0(x).
- `x_learner` (Kuenzel et al. 2019): the T-learner's mu1 and mu0 impute each
  row's effect, D = Y - mu0(x) on the treated and mu1(x) - Y on the control;
  a regression of D per arm (tau1 on the treated, tau0 on the control),
  mixed by a model of the treatment propensity e(x) (a linear probability
  model, so a send that is not 50/50 or varies with the features is
  covered): uplift = e(x) tau0(x) + (1 - e(x)) tau1(x).
- `transformed_outcome`: one `GBTRegressor` of Z = Y (T - e) / (e (1 - e)),
  e the treated share, whose expectation given the features is the uplift.

Each is measured on held-out users of both arms by the Qini curve: users
sorted by predicted uplift, at each share x of them the incremental
outcome Q(x) = Y_t(x) - Y_c(x) N_t(x) / N_c(x) (per held-out user; Y the
sum of the outcome: conversions, or revenue in its units).
`qini` is the area between that curve and random targeting's straight line
to Q(1); `auuc` the area under the uplift curve (the difference of the
conversion rates at x times the users at x). The interval of the Qini comes
from a Poisson bootstrap of the held-out users. The curve is built on
`bins` quantiles of the predicted uplift (one sort-free pass per resample).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.regression import GBTRegressionModel, GBTRegressor, LinearRegression
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shopseg import campaigns as cp
from shopseg import segment as sg
from shopseg import tables as t
from shopseg.config import ExperimentConf, SegmentFeature
from shopseg.spark import concurrently

T = TypeVar("T")

TREATED = "treated"
LABEL = "label"
UPLIFT = "uplift"
_P_TREATED = "_uplift_p_treated"
_P_CONTROL = "_uplift_p_control"
_TAU_TREATED = "_uplift_tau_treated"
_TAU_CONTROL = "_uplift_tau_control"
_PROPENSITY = "_uplift_propensity"
LEARNERS = ("t_learner", "x_learner", "transformed_outcome")
BINARY, NUMERIC = "binary", "numeric"
# The X-learner's propensity is kept inside [0.01, 0.99] (a linear model can overshoot).
_PROPENSITY_CLIP = 0.01
_SUMS = ("n_t", "y_t", "n_c", "y_c", "yy_t", "yy_c")
# Cumulative probabilities of Poisson(1) at 0..7: a bootstrap weight from a uniform draw.
_POISSON_CDF = (0.367879, 0.735759, 0.919699, 0.981012, 0.996340, 0.999406, 0.999917, 0.999990)


# --------------------------------------------------------------------------- rows


def holdout(key: Column, share: float, seed: int) -> Column:
    """True for the held-out rows: a hashed share, the same in each arm in expectation."""
    return cp.bucket(f"uplift holdout {seed}", "rows", key) < F.lit(share)


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "blank"


def _sql_text(value: str) -> str:
    """A value inside a Spark SQL string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def experiment_features(
    rows: DataFrame, conf: ExperimentConf
) -> tuple[list[SegmentFeature], dict[str, list[str]]]:
    """The model's features for an exported experiment: numeric columns cast to
    double; categorical ones one indicator per frequent value (`<column>_<value>`)
    plus `<column>_other` for the rest. Returns the features and each
    categorical column's kept values."""
    features: list[SegmentFeature] = []
    kept: dict[str, list[str]] = {}
    for column, kind in conf.features.items():
        quoted = f"`{column}`"
        if kind == "numeric":
            features.append(SegmentFeature(name=_slug(column), expr=f"CAST({quoted} AS DOUBLE)"))
            continue
        top = (
            rows.groupBy(F.col(column).cast("string").alias("v"))
            .count()
            .filter(F.col("v").isNotNull())
            .orderBy(F.desc("count"), "v")
            .limit(conf.max_categories)
            .collect()
        )
        values = [r["v"] for r in top]
        kept[column] = values
        literals = ", ".join(f"'{_sql_text(v)}'" for v in values)
        for v in values:
            text = _sql_text(v)
            features.append(
                SegmentFeature(
                    name=f"{_slug(column)}_{_slug(v)}",
                    expr=f"CASE WHEN CAST({quoted} AS STRING) = '{text}' THEN 1.0 ELSE 0.0 END",
                )
            )
        features.append(
            SegmentFeature(
                name=f"{_slug(column)}_other",
                expr=f"CASE WHEN CAST({quoted} AS STRING) IN ({literals}) THEN 0.0 ELSE 1.0 END",
            )
        )
    return features, kept


def binary(column: Column) -> Column:
    """1.0 / 0.0 from 1/0, true/false, yes/no (any case); null for anything else."""
    text = F.lower(F.trim(column.cast("string")))
    return (
        F.when(text.isin("1", "1.0", "true", "t", "yes", "y"), F.lit(1.0))
        .when(text.isin("0", "0.0", "false", "f", "no", "n"), F.lit(0.0))
        .otherwise(F.lit(None).cast("double"))
    )


def numeric(column: Column) -> Column:
    """The outcome as a double (`1,5` is not a number: null); yes/no and true/false
    read as 1/0, so a binary export also reads here."""
    as_number = F.trim(column.cast("string")).try_cast("double")
    return F.coalesce(binary(column), as_number)


def outcome_type(rows: DataFrame, outcome: Column) -> str:
    """`binary` when every readable outcome is 0/1 (or yes/no, true/false), else `numeric`."""
    value = numeric(outcome)
    row = rows.agg(
        F.count(value).alias("read"),
        F.sum(F.when(value.isin(0.0, 1.0), 1).otherwise(0)).alias("binary"),
    ).first()
    return BINARY if row["read"] and row["read"] == row["binary"] else NUMERIC


# --------------------------------------------------------------------------- learners


def _regressor(params: Mapping[str, float], seed: int, label: str, prediction: str) -> GBTRegressor:
    estimator = GBTRegressor(
        featuresCol=sg.SCALED, labelCol=label, predictionCol=prediction, seed=seed
    )
    for name, value in params.items():
        estimator.set(estimator.getParam(name), value)
    return estimator


def grid(params: Mapping[str, float | list[float]]) -> list[dict[str, float]]:
    """Every combination of the GBT parameters (a single value is a one-point list)."""
    names = sorted(params)
    lists = [v if isinstance(v, list) else [v] for v in (params[n] for n in names)]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*lists)]


def candidate_name(learner: str, params: Mapping[str, float], one_point: bool) -> str:
    """`t_learner`, or with several GBT points `t_learner_maxDepth3_maxIter20` (characters
    an MLflow metric name allows)."""
    if one_point:
        return learner
    return "_".join([learner, *(f"{k}{v:g}" for k, v in sorted(params.items()))])


def _arms(vectors: DataFrame) -> tuple[DataFrame, DataFrame]:
    return vectors.filter(F.col(TREATED) == 1), vectors.filter(F.col(TREATED) == 0)


def side_by_side(*fits: Callable[[], T]) -> list[T]:
    """Independent fits at once, on threads of one session, their results in order: a
    learner's regressions on a campaign's few thousand rows are jobs of a task or two
    each, which leave cores idle one after another."""
    return concurrently(lambda fit: fit(), fits, max(1, len(fits)))


def fit_outcome_models(
    vectors: DataFrame, params: Mapping[str, float], seed: int
) -> tuple[GBTRegressionModel, GBTRegressionModel]:
    """mu1 and mu0: a regression of the outcome per arm (the T- and X-learners' first step)."""
    treated, control = _arms(vectors)
    mu1, mu0 = side_by_side(
        lambda: _regressor(params, seed, LABEL, _P_TREATED).fit(treated),
        lambda: _regressor(params, seed, LABEL, _P_CONTROL).fit(control),
    )
    return mu1, mu0


def t_learner(
    prep: PipelineModel, mu1: GBTRegressionModel, mu0: GBTRegressionModel
) -> PipelineModel:
    """uplift = mu1(x) - mu0(x), one PipelineModel from the raw features."""
    difference = SQLTransformer(
        statement=f"SELECT *, {_P_TREATED} - {_P_CONTROL} AS {UPLIFT} FROM __THIS__"
    )
    return PipelineModel([*prep.stages, mu1, mu0, difference])


def fit_t_learner(
    prep: PipelineModel, vectors: DataFrame, params: Mapping[str, float], seed: int
) -> PipelineModel:
    """The T-learner at one GBT point (`fit_outcome_models`, then `t_learner`)."""
    return t_learner(prep, *fit_outcome_models(vectors, params, seed))


def fit_x_learner(
    prep: PipelineModel,
    vectors: DataFrame,
    mu1: GBTRegressionModel,
    mu0: GBTRegressionModel,
    params: Mapping[str, float],
    seed: int,
) -> PipelineModel:
    """The X-learner from the T-learner's outcome models (see the module's text)."""
    imputed = mu0.transform(mu1.transform(vectors))
    d = F.when(F.col(TREATED) == 1, F.col(LABEL) - F.col(_P_CONTROL)).otherwise(
        F.col(_P_TREATED) - F.col(LABEL)
    )
    rows = imputed.select(sg.SCALED, TREATED, d.alias("_d"))
    treated, control = _arms(rows)
    tau1, tau0, propensity = side_by_side(
        lambda: _regressor(params, seed, "_d", _TAU_TREATED).fit(treated),
        lambda: _regressor(params, seed, "_d", _TAU_CONTROL).fit(control),
        lambda: LinearRegression(
            featuresCol=sg.SCALED,
            labelCol="_t",
            predictionCol=_PROPENSITY,
            regParam=0.01,
        ).fit(vectors.select(sg.SCALED, F.col(TREATED).cast("double").alias("_t"))),
    )
    e = f"least(greatest({_PROPENSITY}, {_PROPENSITY_CLIP}), {1 - _PROPENSITY_CLIP})"
    mix = SQLTransformer(
        statement=f"SELECT *, {e} * {_TAU_CONTROL} + (1 - {e}) * {_TAU_TREATED} AS {UPLIFT} "
        "FROM __THIS__"
    )
    return PipelineModel([*prep.stages, tau1, tau0, propensity, mix])


def fit_transformed_outcome(
    prep: PipelineModel,
    vectors: DataFrame,
    treated_share: float,
    params: Mapping[str, float],
    seed: int,
) -> PipelineModel:
    """One regression of Z = Y (T - e) / (e (1 - e)): E[Z | x] is the uplift at x."""
    e = treated_share
    z = F.col(LABEL) * (F.col(TREATED) - F.lit(e)) / F.lit(e * (1 - e))
    model = _regressor(params, seed, "_z", UPLIFT).fit(vectors.withColumn("_z", z))
    return PipelineModel([*prep.stages, model])


def fit_learners(
    learners: Sequence[str],
    prep: PipelineModel,
    vectors: DataFrame,
    treated_share: float,
    params: Mapping[str, float],
    seed: int,
) -> dict[str, PipelineModel]:
    """Each of `learners` at one GBT point; the T- and X-learners share mu1 and mu0."""
    unknown = sorted(set(learners) - set(LEARNERS))
    if unknown:
        raise ValueError(f"unknown uplift learner(s) {unknown}; known: {list(LEARNERS)}")

    def two_models() -> dict[str, PipelineModel]:
        mu1, mu0 = fit_outcome_models(vectors, params, seed)
        out = {"t_learner": t_learner(prep, mu1, mu0)}
        if "x_learner" in learners:
            out["x_learner"] = fit_x_learner(prep, vectors, mu1, mu0, params, seed)
        return out

    def transformed() -> dict[str, PipelineModel]:
        model = fit_transformed_outcome(prep, vectors, treated_share, params, seed)
        return {"transformed_outcome": model}

    fits = []
    if {"t_learner", "x_learner"} & set(learners):
        fits.append(two_models)
    if "transformed_outcome" in learners:
        fits.append(transformed)
    out = {name: model for models in side_by_side(*fits) for name, model in models.items()}
    return {learner: out[learner] for learner in learners}


def fit(
    learner: str,
    prep: PipelineModel,
    vectors: DataFrame,
    treated_share: float,
    params: Mapping[str, float],
    seed: int,
) -> PipelineModel:
    """One learner at one GBT point."""
    return fit_learners([learner], prep, vectors, treated_share, params, seed)[learner]


# --------------------------------------------------------------------------- measures


def bin_sums(
    scored: DataFrame, bins: int = 100, replicates: int = 0, seed: int = 0
) -> pd.DataFrame:
    """Per resample and uplift bin (0 = highest predicted uplift): weighted users,
    outcome sums (conversions, or revenue) and sums of squares of each arm. Resample 0
    is the data itself; 1..`replicates` are Poisson(1) bootstrap resamples.

    Args:
        scored: `uplift`, `treated`, `label`.
    """
    probabilities = [1 - (i + 1) / bins for i in range(bins - 1)]
    thresholds = scored.approxQuantile(UPLIFT, probabilities, 0.0005)
    # The bin: how many thresholds lie above the user's uplift. One flat expression
    # (Spark Connect refuses a plan of 99 nested sums: protobuf's depth limit).
    above = F.filter(F.array(*(F.lit(thr) for thr in thresholds)), lambda thr: F.col(UPLIFT) < thr)
    position = F.size(above) if thresholds else F.lit(0)
    rows = scored.select(position.alias("bin"), TREATED, LABEL)
    if replicates:
        rows = rows.withColumn("rep", F.explode(F.sequence(F.lit(0), F.lit(replicates))))
        u = F.rand(seed)
        weight = sum((F.when(u > F.lit(c), 1).otherwise(0) for c in _POISSON_CDF), F.lit(0))
        rows = rows.withColumn("w", F.when(F.col("rep") == 0, 1).otherwise(weight))
    else:
        rows = rows.withColumn("rep", F.lit(0)).withColumn("w", F.lit(1))
    sums = (
        rows.groupBy("rep", "bin")
        .agg(
            F.sum(F.col("w") * F.col(TREATED)).alias("n_t"),
            F.sum(F.col("w") * F.col(TREATED) * F.col(LABEL)).alias("y_t"),
            F.sum(F.col("w") * (1 - F.col(TREATED))).alias("n_c"),
            F.sum(F.col("w") * (1 - F.col(TREATED)) * F.col(LABEL)).alias("y_c"),
            F.sum(F.col("w") * F.col(TREATED) * F.col(LABEL) * F.col(LABEL)).alias("yy_t"),
            F.sum(F.col("w") * (1 - F.col(TREATED)) * F.col(LABEL) * F.col(LABEL)).alias("yy_c"),
        )
        .toPandas()
    )
    return sums.astype({c: float for c in _SUMS}).sort_values(["rep", "bin"], ignore_index=True)


@dataclass(frozen=True)
class Curves:
    """The Qini and uplift curves of one resample (x: share of users targeted)."""

    x: np.ndarray
    qini: np.ndarray  # incremental conversions per user, Y_t - Y_c N_t / N_c, over all users
    uplift: np.ndarray  # (rate_t - rate_c) x users targeted, over all users


def curves(bins: pd.DataFrame) -> Curves:
    """Cumulative curves from one resample's bins, starting at (0, 0)."""
    b = bins.sort_values("bin")
    n_t, y_t = b["n_t"].cumsum().to_numpy(), b["y_t"].cumsum().to_numpy()
    n_c, y_c = b["n_c"].cumsum().to_numpy(), b["y_c"].cumsum().to_numpy()
    total = n_t[-1] + n_c[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = np.where(n_c > 0, y_t - y_c * n_t / n_c, 0.0)
        rates = np.where((n_t > 0) & (n_c > 0), y_t / n_t - y_c / n_c, 0.0)
    return Curves(
        np.concatenate([[0.0], (n_t + n_c) / total]),
        np.concatenate([[0.0], qini / total]),
        np.concatenate([[0.0], rates * (n_t + n_c) / total]),
    )


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def qini_coefficient(c: Curves) -> float:
    """Area between the Qini curve and random targeting's line from (0, 0) to (1, Q(1))."""
    return _area(c.x, c.qini) - c.qini[-1] / 2


def auuc(c: Curves) -> float:
    """Area under the uplift curve."""
    return _area(c.x, c.uplift)


def top_share_uplift(bins: pd.DataFrame, share: float) -> float:
    """Treated minus control conversion among the `share` of users with the highest
    predicted uplift (the first bins reaching that share)."""
    b = bins.sort_values("bin")
    users = (b["n_t"] + b["n_c"]).cumsum()
    top = b[users.shift(fill_value=0) < share * users.iloc[-1] - 1e-9]
    n_t, n_c = top["n_t"].sum(), top["n_c"].sum()
    if n_t == 0 or n_c == 0:
        return float("nan")
    return float(top["y_t"].sum() / n_t - top["y_c"].sum() / n_c)


def arm_difference(r, z: float, kind: str) -> tuple[float, float, float, float, float]:
    """Treated and control mean outcome, their difference and its normal interval, from
    one row of sums (binomial for a binary outcome, Welch for a numeric one)."""
    if kind == BINARY:
        return cp.uplift(r.n_t, r.y_t, r.n_c, r.y_c, z)
    return cp.mean_difference(r.n_t, r.y_t, r.yy_t, r.n_c, r.y_c, r.yy_c, z)


def deciles(bins: pd.DataFrame, n_bins: int, z: float, kind: str = BINARY) -> pd.DataFrame:
    """Treated minus control mean outcome per predicted-uplift decile (1 = highest),
    with a normal interval (`n_bins` quantile bins, a multiple of 10)."""
    grouped = bins.assign(decile=bins["bin"] * 10 // n_bins + 1).groupby("decile")[list(_SUMS)]
    rows = []
    for decile, r in grouped.sum().iterrows():
        if r.n_t == 0 or r.n_c == 0:
            continue
        p_t, p_c, diff, low, high = arm_difference(r, z, kind)
        rows.append((int(decile), int(r.n_t + r.n_c), p_t, p_c, diff, low, high))
    return pd.DataFrame(
        rows, columns=["decile", "users", "treated_rate", "control_rate", "uplift", "low", "high"]
    )


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    curve: Curves
    deciles: pd.DataFrame


def evaluate(
    scored: DataFrame,
    replicates: int,
    confidence: float,
    seed: int,
    bins: int = 100,
    kind: str = BINARY,
) -> Evaluation:
    """Qini (with its bootstrap interval), AUUC, uplift in the top 30%, ATE and deciles,
    in the outcome's units (`kind`: binary or numeric)."""
    from scipy.stats import norm

    sums = bin_sums(scored, bins, replicates, seed)
    data = sums[sums["rep"] == 0]
    curve = curves(data)
    qinis = np.array([qini_coefficient(curves(g)) for rep, g in sums.groupby("rep") if rep != 0])
    tail = (1 - confidence) / 2
    z = float(norm.ppf(0.5 + confidence / 2))
    totals = data[list(_SUMS)].sum()
    n_t, n_c = totals["n_t"], totals["n_c"]
    _, _, ate, ate_low, ate_high = arm_difference(totals, z, kind)
    metrics = {
        "qini": qini_coefficient(curve),
        "qini_low": float(np.quantile(qinis, tail)) if len(qinis) else float("nan"),
        "qini_high": float(np.quantile(qinis, 1 - tail)) if len(qinis) else float("nan"),
        "auuc": auuc(curve),
        "auuc_random": float(curve.uplift[-1] / 2),
        "uplift_top_30pct": top_share_uplift(data, 0.3),
        "ate": ate,
        "ate_low": ate_low,
        "ate_high": ate_high,
        "heldout_treated": float(n_t),
        "heldout_control": float(n_c),
    }
    return Evaluation(metrics, curve, deciles(data, bins, z, kind))


# --------------------------------------------------------------------------- targeting


def top_n(users: DataFrame, score: str, n: int) -> DataFrame:
    """The `n` users with the highest `score` (ties broken by a hash of the user id)."""
    tie = F.xxhash64(F.lit("uplift ties"), F.col(t.USER_ID))
    return users.filter(F.col(score).isNotNull()).orderBy(F.desc(score), tie).limit(n)


def targeting_sums(chosen: DataFrame, group: str) -> tuple[int, float, int]:
    """Contacts, planted incremental conversions and contacts in `group`."""
    row = chosen.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("planted_uplift").alias("gain"),
        F.sum(F.when(F.col("uplift_group") == group, 1).otherwise(0)).alias("g"),
    ).first()
    return int(row["n"]), float(row["gain"] or 0.0), int(row["g"] or 0)


def compare_targeting(
    population: DataFrame,
    n: int,
    scores: Mapping[str, str],
    rule: DataFrame | None,
    group: str,
) -> pd.DataFrame:
    """Planted incremental conversions of `n` contacts chosen by each method.

    Args:
        population: one row per user with `planted_uplift`, `uplift_group` and
            the score columns named in `scores` (method -> column).
        rule: the users a segment rule targets (`user_id`), filled to `n` by
            a hash order (random within the rule); None: not compared.
        group: the planted group whose contacts are counted (do not disturb).

    Returns:
        One row per method (`planted_optimum`: by the planted effect itself;
        `random`: the expectation of a uniform draw): contacts, incremental
        conversions, their share of the optimum, contacts in `group`.
    """
    rows = []
    for method, column in {"planted_optimum": "planted_uplift", **scores}.items():
        rows.append((method, *targeting_sums(top_n(population, column, n), group)))
    if rule is not None:
        ruled = population.join(rule.select(t.USER_ID).distinct(), t.USER_ID, "left_semi")
        rows.append(
            ("segment_rule", *targeting_sums(top_n(ruled.withColumn("_one", F.lit(1)), "_one", n),
                                             group))
        )  # fmt: skip
    total, gain, in_group = targeting_sums(population, group)
    rows.append(("random", n, gain * n / total, int(round(in_group * n / total))))
    frame = pd.DataFrame(
        rows, columns=["method", "contacts", "incremental_conversions", "do_not_disturb_contacts"]
    )
    best = frame.loc[frame["method"] == "planted_optimum", "incremental_conversions"].iloc[0]
    frame["share_of_optimum"] = frame["incremental_conversions"] / best if best else float("nan")
    return frame


# --------------------------------------------------------------------------- expected gain


def expected_gain(uplift: Column, kind: str, conversion_value: Column, margin: float,
                  cost: float) -> Column:  # fmt: skip
    """Expected gain of contacting a user: uplift x the value of one conversion (binary
    outcome) or uplift x margin (numeric outcome, e.g. revenue), minus the contact's cost."""
    per_unit = conversion_value if kind == BINARY else F.lit(margin)
    return uplift * per_unit - F.lit(cost)


def gain_targeting(scored: DataFrame, gain: Column, per_unit: float, cost: float) -> dict:
    """What contacting the held-out users with a positive expected gain earned, estimated
    from the arms (treated minus control mean outcome among them, x their number), against
    contacting everyone: value per held-out user = incremental outcome x per_unit - cost of
    the contacts.

    Args:
        scored: `uplift`, `treated`, `label` of held-out users of both arms.
    """
    picked = gain > F.lit(0.0)
    sums = []
    for name, cond in (("picked", picked), ("all", F.lit(True))):
        sums += [
            F.sum(F.when(cond, F.col(TREATED)).otherwise(0)).alias(f"{name}_n_t"),
            F.sum(F.when(cond, 1 - F.col(TREATED)).otherwise(0)).alias(f"{name}_n_c"),
            F.sum(F.when(cond, F.col(TREATED) * F.col(LABEL)).otherwise(0)).alias(f"{name}_y_t"),
            F.sum(F.when(cond, (1 - F.col(TREATED)) * F.col(LABEL)).otherwise(0)).alias(
                f"{name}_y_c"
            ),
        ]
    row = scored.agg(*sums).first().asDict()
    total = float(row["all_n_t"] + row["all_n_c"])
    out = {}
    for name in ("picked", "all"):
        n_t, n_c = float(row[f"{name}_n_t"] or 0), float(row[f"{name}_n_c"] or 0)
        n = n_t + n_c
        effect = 0.0
        if n_t and n_c:
            effect = (row[f"{name}_y_t"] or 0) / n_t - (row[f"{name}_y_c"] or 0) / n_c
        out[f"{name}_share"] = n / total if total else 0.0
        out[f"{name}_value_per_user"] = (effect * per_unit - cost) * n / total if total else 0.0
    return {
        "expected_gain_share": out["picked_share"],
        "expected_gain_value_per_user": out["picked_value_per_user"],
        "everyone_value_per_user": out["all_value_per_user"],
    }
