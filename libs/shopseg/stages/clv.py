"""Stage `clv`: lifetime value and churn probability (BG/NBD and Gamma-Gamma).

From the purchases in `silver/events` up to `clv.calibration_end`, Spark
summarises each customer (x repeat transactions, t_x, T, mean repeat spend)
and compresses customers to distinct summaries with counts; the models are
fitted by maximum likelihood on those rows (the counts weight the
likelihood), so the fit costs the same at any number of customers. Each
customer is then scored in Spark with a vectorised pandas function:
probability alive, expected transactions and spend over the horizon,
discounted CLV and a churn-risk tier, into `gold/customer_value`. With
`clv.holdout_end` the forecast is checked against what the cohort really
bought, week by week.

With `clv.mode: score` nothing is fitted: the registered model (`clv.alias`)
values the customers as of `clv.calibration_end` with its own parameters and
value settings (a daily increment's step: x, t_x and T move with the new
purchases and the new date, the fit stays).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import clv, tracking
from shopseg import tables as t
from shopseg.config import ClvConf, ShopsegError
from shopseg.pipeline import StageContext, latest


def _holdout_figure(weeks: np.ndarray, actual: np.ndarray, predicted: np.ndarray) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(weeks, actual, label="actual", color="black")
    ax.plot(weeks, predicted, label="BG/NBD forecast", color="tab:blue", linestyle="--")
    ax.set_xlabel("week of the holdout period")
    ax.set_ylabel("cumulative repeat transactions")
    ax.legend()
    fig.tight_layout()
    return fig


class ClvModel(mlflow.pyfunc.PythonModel):
    """The fitted models as an MLflow pyfunc: input x, t_x, T, mean_value; output the values."""

    def __init__(self, bg: clv.BgNbd, gg: clv.GammaGamma | None, settings: clv.ValueSettings):
        self.bg, self.gg, self.settings = bg, gg, settings

    def predict(self, context, model_input, params=None):  # noqa: ARG002
        return clv.score_batch(model_input, self.bg, self.gg, self.settings)


def _register(
    ctx: StageContext, bg: clv.BgNbd, gg: clv.GammaGamma | None, s: clv.ValueSettings
) -> str:
    from mlflow import MlflowClient

    from shopseg.tracking import pip_requirements

    conf = ctx.config.clv
    info = mlflow.pyfunc.log_model(
        artifact_path="model",
        python_model=ClvModel(bg, gg, s),
        registered_model_name=conf.model_name,
        pip_requirements=[*pip_requirements(), "scipy", "pandas"],
    )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(conf.model_name, conf.alias, version)
    ctx.log.info("registered %s version %s as @%s", conf.model_name, version, conf.alias)
    return version


def _champion(
    ctx: StageContext, unit: float
) -> tuple[str, clv.BgNbd, clv.GammaGamma | None, clv.ValueSettings]:
    """The registered model's version, fitted parameters and value settings."""
    conf = ctx.config.clv
    version = tracking.champion_version(conf.model_name, conf.alias, "clv")
    model = mlflow.pyfunc.load_model(
        tracking.model_uri(conf.model_name, alias=conf.alias)
    ).unwrap_python_model()
    bg, gg, settings = model.bg, model.gg, model.settings
    if settings.unit_days != unit:
        raise ValueError(
            f"{conf.model_name} version {version} was fitted with a time unit of "
            f"{settings.unit_days:g} days, clv.time_unit is {conf.time_unit} ({unit:g} days): "
            "score with the unit it was fitted in, or fit again"
        )
    ctx.log.info(
        "scoring with %s@%s (version %s): BG/NBD r %.4f, alpha %.4f, a %.4f, b %.4f; %s",
        conf.model_name, conf.alias, version, bg.r, bg.alpha, bg.a, bg.b,
        f"Gamma-Gamma p {gg.p:.4f}, q {gg.q:.4f}, gamma {gg.gamma:.4f}" if gg else "no spend model",
    )  # fmt: skip
    configured = _settings(conf, unit)
    if configured != settings:
        ctx.log.warning(
            "the registered model values customers with %s, the configuration says %s: "
            "scoring with the model's (fit again to change them)",
            settings, configured,
        )  # fmt: skip
    ctx.run.log_params({"model_version": version})
    return version, bg, gg, settings


def _settings(conf: ClvConf, unit: float) -> clv.ValueSettings:
    return clv.ValueSettings(
        unit, conf.horizon_days, conf.annual_discount_rate, conf.margin,
        (conf.risk_thresholds[0], conf.risk_thresholds[1]),
    )  # fmt: skip


def _check_forecasts(
    bg: clv.BgNbd,
    gg: clv.GammaGamma | None,
    settings: clv.ValueSettings,
    tuples: pd.DataFrame,
    spend: pd.DataFrame,
    models: str,
) -> None:
    """Stop before anything is registered or written when the models' values break."""
    try:
        clv.check_forecasts(bg, gg, settings.horizon, tuples, spend)
    except ValueError as exc:
        raise ShopsegError(
            f"{models} cannot value the customers of {t.SILVER_EVENTS.name} "
            f"(nothing registered or written): {exc}"
        ) from None


def _fit_spend(ctx: StageContext, summary: DataFrame, spend: pd.DataFrame) -> clv.GammaGamma | None:
    """Gamma-Gamma on the repeat customers' spend; None when no purchase has an amount."""
    if spend.empty:
        ctx.log.warning(
            "no repeat customer has purchases with a positive amount (do the events carry "
            "prices or amounts?): Gamma-Gamma not fitted; expected_mean_value and clv are "
            "null, p_alive and expected_transactions are valued"
        )
        return None
    gg = clv.fit_gamma_gamma(spend["x"], spend["m"], spend["customers"])
    corr = clv.correlation(summary)
    ctx.log.info(
        "Gamma-Gamma on %d repeat customers as %d rows: p %.4f, q %.4f, gamma %.4f, "
        "log-likelihood %.2f (%.2f s); correlation of frequency and mean spend %.3f%s",
        gg.customers, gg.rows, gg.p, gg.q, gg.gamma, gg.log_likelihood, gg.seconds, corr,
        " (above 0.3: the model's independence assumption is doubtful)" if abs(corr) > 0.3 else "",
    )  # fmt: skip
    ctx.run.log_metrics(
        {
            "gg_p": gg.p,
            "gg_q": gg.q,
            "gg_gamma": gg.gamma,
            "gg_log_likelihood": gg.log_likelihood,
            "gg_customers": gg.customers,
            "gg_frequency_spend_correlation": corr,
        }
    )
    return gg


def _fit(
    ctx: StageContext,
    days: DataFrame,
    summary: DataFrame,
    tuples: pd.DataFrame,
    spend: pd.DataFrame,
    end: dt.date,
    unit: float,
) -> tuple[str, clv.BgNbd, clv.GammaGamma | None, clv.ValueSettings]:
    """Fit BG/NBD and Gamma-Gamma on the summaries, check the holdout, register."""
    conf = ctx.config.clv
    bg = clv.fit_bgnbd(tuples["x"], tuples["t_x"], tuples["T"], tuples["customers"])
    ctx.log.info(
        "BG/NBD on %d customers as %d distinct (x, t_x, T) rows, calibration to %s in %s: "
        "r %.4f, alpha %.4f, a %.4f, b %.4f, log-likelihood %.2f (%.2f s)",
        bg.customers, bg.rows, end, conf.time_unit, bg.r, bg.alpha, bg.a, bg.b,
        bg.log_likelihood, bg.seconds,
    )  # fmt: skip
    gg = _fit_spend(ctx, summary, spend)
    ctx.run.log_params(
        {"calibration_end": end.isoformat(), "time_unit": conf.time_unit, "bgnbd_rows": bg.rows}
    )
    ctx.run.log_metrics(
        {
            "bgnbd_r": bg.r,
            "bgnbd_alpha": bg.alpha,
            "bgnbd_a": bg.a,
            "bgnbd_b": bg.b,
            "bgnbd_log_likelihood": bg.log_likelihood,
            "bgnbd_fit_seconds": bg.seconds,
            "bgnbd_distinct_tuples": bg.rows,
            "customers": bg.customers,
        }
    )

    if conf.holdout_end is not None:
        actual = clv.holdout_weeks(days, summary, end, conf.holdout_end)
        n_weeks = max(1, -(-(conf.holdout_end - end).days // 7))
        weekly = np.zeros(n_weeks)
        for row in actual.itertuples():
            weekly[int(row.week) - 1] = row.actual
        predicted = clv.predicted_by_week(bg, tuples, n_weeks, unit)
        cumulative = np.cumsum(weekly)
        ctx.log.info(
            "holdout %s..%s: %d repeat transactions, BG/NBD forecast %.1f (%+.1f%%)",
            end, conf.holdout_end, cumulative[-1], predicted[-1],
            100 * (predicted[-1] / cumulative[-1] - 1) if cumulative[-1] else float("nan"),
        )  # fmt: skip
        ctx.run.log_metrics(
            {
                "holdout_actual_repeat_transactions": float(cumulative[-1]),
                "holdout_predicted_repeat_transactions": float(predicted[-1]),
            }
        )
        weeks = np.arange(1, n_weeks + 1)
        ctx.run.log_figure(_holdout_figure(weeks, cumulative, predicted), "holdout_tracking.png")
        ctx.run.log_dict(
            {
                "week": weeks.tolist(),
                "actual": cumulative.tolist(),
                "predicted": predicted.tolist(),
            },
            "holdout_tracking.json",
        )

    settings = _settings(conf, unit)
    _check_forecasts(bg, gg, settings, tuples, spend, "the models fitted")
    version = _register(ctx, bg, gg, settings)
    ctx.run.log_dict(
        {
            "bgnbd": bg.__dict__,
            "gamma_gamma": gg.__dict__ if gg else None,
            "settings": settings.__dict__,
        },
        "clv_model.json",
    )
    return version, bg, gg, settings


def run(ctx: StageContext) -> None:
    conf = ctx.config.clv
    unit = clv.UNIT_DAYS[conf.time_unit]
    events = ctx.read(t.SILVER_EVENTS.name)
    end = conf.calibration_end or latest(events, t.EVENT_DATE)
    if end is None:
        raise ValueError(f"{t.SILVER_EVENTS.name} is empty; run `features` first")
    last = conf.holdout_end or end
    days = clv.transaction_days(events, None, last).cache()
    summary = clv.customer_summary(days.filter(F.col("day") <= F.lit(end)), end, unit).cache()
    ctx.run.log_params({"mode": conf.mode})
    tuples = clv.rfm_tuples(summary)
    if tuples.empty:
        raise ValueError(f"no purchases in {t.SILVER_EVENTS.name} up to {end}: nothing to value")
    spend = clv.spend_tuples(summary)
    if conf.mode == "fit":
        version, bg, gg, settings = _fit(ctx, days, summary, tuples, spend, end, unit)
    else:
        version, bg, gg, settings = _champion(ctx, unit)
        _check_forecasts(bg, gg, settings, tuples, spend, f"{conf.model_name} version {version}")
    values = (
        clv.score(summary.drop("first_day"), bg, gg, settings)
        .withColumn(t.AS_OF_DATE, F.lit(end).cast("date"))
        .withColumn("model_version", F.lit(version))
        .select(*t.CUSTOMER_VALUE.columns)
    )
    result = ctx.write(
        values,
        t.CUSTOMER_VALUE.name,
        "overwrite_partitions",
        partition_by=t.CUSTOMER_VALUE.partition_by,
    )
    totals = (
        ctx.read_back(result)
        .filter(F.col(t.AS_OF_DATE) == F.lit(end))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("clv").alias("clv"),
            F.sum("expected_transactions").alias("transactions"),
            F.avg((F.col("churn_risk") == "high").cast("double")).alias("at_risk"),
        )
        .first()
    )
    ctx.log.info(
        "%d customers: expected value %s over %d days, %.1f expected transactions, "
        "%.1f%% at high churn risk (p_alive < %.2f)",
        totals.customers, "unknown" if totals.clv is None else f"{totals.clv:.2f}",
        settings.horizon_days, totals.transactions, 100 * totals.at_risk,
        settings.risk_thresholds[0],
    )  # fmt: skip
    metrics = {"at_risk_share": totals.at_risk, "model_version": int(version)}
    ctx.run.log_metrics(metrics | ({} if totals.clv is None else {"total_clv": totals.clv}))
    summary.unpersist()
    days.unpersist()
