"""CLV: BG/NBD and Gamma-Gamma against hand computations and the published CDNOW fits."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from shopseg import clv
from shopseg import tables as t
from shopseg.cli import main

from .conftest import FAST_WRITER, REPO

SAMPLE = REPO.parent / "shared" / "datasets" / "cdnow" / "CDNOW_sample.txt"
# Fader, Hardie & Lee (2005) on the CDNOW sample, and Fader & Hardie's Gamma-Gamma note.
PAPER = clv.BgNbd(0.243, 4.414, 0.793, 2.426, -9582.4, 0, 0, 0.0)
PAPER_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}
CALIBRATION_END = pd.Timestamp("1997-09-30")


def likelihood_by_hand(r, alpha, a, b, x, t_x, T) -> float:
    """FHL (2005) eq. 6 as printed: products of powers, no logarithms."""
    first = math.gamma(r + x) * alpha**r / math.gamma(r)
    beta = math.gamma(a + b) * math.gamma(b + x) / (math.gamma(b) * math.gamma(a + b + x))
    tail = (alpha + T) ** -(r + x)
    if x > 0:
        tail += a / (b + x - 1) * (alpha + t_x) ** -(r + x)
    return first * beta * tail


@pytest.mark.parametrize(
    ("x", "t_x", "T"),
    [(0, 0.0, 38.86), (0, 0.0, 5.0), (1, 4.0, 30.0), (2, 30.43, 38.86), (9, 35.1, 36.0)],
)
def test_bgnbd_likelihood_matches_the_formula_by_hand(x, t_x, T):
    got = clv.bgnbd_log_likelihood(PAPER.r, PAPER.alpha, PAPER.a, PAPER.b, x, t_x, T)
    assert float(got) == pytest.approx(
        math.log(likelihood_by_hand(0.243, 4.414, 0.793, 2.426, x, t_x, T)), rel=1e-10
    )


def test_bgnbd_stays_finite_for_a_very_frequent_buyer():
    """The published check: x = 200, t_x = 38, T = 40 overflows the product form."""
    with pytest.raises(OverflowError):
        likelihood_by_hand(0.243, 4.414, 0.793, 2.426, 200, 38, 40)
    ll = clv.bgnbd_log_likelihood(PAPER.r, PAPER.alpha, PAPER.a, PAPER.b, 200, 38, 40)
    assert np.isfinite(ll)
    alive = clv.probability_alive(PAPER, 200, 38, 40)
    assert 0 < alive < 1
    assert np.isfinite(clv.expected_transactions(PAPER, 39, 200, 38, 40))


def test_conditional_expectation_of_the_worked_example():
    """x = 2, t_x = 30.43, T = 38.86: 1.226 transactions in the next 39 weeks."""
    assert float(clv.expected_transactions(PAPER, 39, 2, 30.43, 38.86)) == pytest.approx(
        1.226, abs=5e-4
    )


def test_probability_alive_of_a_customer_without_repeat_purchases_is_one():
    assert clv.probability_alive(
        PAPER, np.array([0, 0]), np.array([0, 0]), np.array([3, 40])
    ) == pytest.approx([1, 1])
    # Someone who bought often and then stopped long ago is probably gone.
    assert clv.probability_alive(PAPER, 10, 5, 40) < clv.probability_alive(PAPER, 10, 39, 40)


def read_sample() -> pd.DataFrame:
    """The CDNOW sample's transactions with pandas, each with its purchase day."""
    raw = pd.read_csv(
        SAMPLE,
        sep=r"\s+",
        header=None,
        names=["mid", "cid", "date", "cds", "usd"],
        dtype={"date": str},
    )
    raw["day"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    return raw


def cdnow_calibration(end: pd.Timestamp = CALIBRATION_END) -> pd.DataFrame:
    """Per customer x, t_x, T (weeks) and mean repeat spend, with pandas from the raw file."""
    raw = read_sample()
    days = raw[raw.day <= end].groupby(["cid", "day"], as_index=False).usd.sum()
    first = days.groupby("cid").day.transform("min")
    per = days.assign(repeat=np.where(days.day > first, days.usd, np.nan)).groupby("cid")
    out = pd.DataFrame(
        {
            "x": per.size() - 1,
            "t_x": (per.day.max() - per.day.min()).dt.days / 7,
            "T": (end - per.day.min()).dt.days / 7,
            "m": per.repeat.mean(),
        }
    )
    return out


def test_weighted_tuples_fit_as_every_customer_does_and_dropping_the_counts_biases():
    customers = cdnow_calibration()
    tuples = customers.groupby(["x", "t_x", "T"]).size().reset_index(name="n")
    assert len(tuples) < len(customers)
    weighted = clv.fit_bgnbd(tuples.x, tuples.t_x, tuples["T"], tuples.n)
    each = clv.fit_bgnbd(customers.x, customers.t_x, customers["T"])
    for name in ("r", "alpha", "a", "b", "log_likelihood"):
        assert getattr(weighted, name) == pytest.approx(getattr(each, name), rel=1e-4)
    assert weighted.customers == len(customers) and weighted.rows == len(tuples)
    unweighted = clv.fit_bgnbd(tuples.x, tuples.t_x, tuples["T"])
    assert abs(unweighted.r / weighted.r - 1) > 0.1


def test_bgnbd_and_gamma_gamma_reproduce_the_published_cdnow_fits_in_pandas():
    customers = cdnow_calibration()
    assert len(customers) == 2357
    bg = clv.fit_bgnbd(customers.x, customers.t_x, customers["T"])
    for name in ("r", "alpha", "a", "b", "log_likelihood"):
        assert getattr(bg, name) == pytest.approx(getattr(PAPER, name), rel=0.01), name
    repeat = customers[customers.x > 0]
    assert len(repeat) == 946
    gg = clv.fit_gamma_gamma(repeat.x, repeat.m)
    for name, value in PAPER_GG.items():
        assert getattr(gg, name) == pytest.approx(value, rel=0.01), name


def test_gamma_gamma_likelihood_and_expectation_by_hand():
    p, q, gamma, x, m = 6.25, 3.74, 15.44, 3, 40.0
    # Fader & Hardie (2013) eq. 5 with Gamma functions and powers.
    by_hand = (
        math.gamma(p * x + q) / (math.gamma(p * x) * math.gamma(q))
        * gamma**q * m ** (p * x - 1) * x ** (p * x) / (gamma + m * x) ** (p * x + q)
    )  # fmt: skip
    assert float(clv.gamma_gamma_log_likelihood(p, q, gamma, x, m)) == pytest.approx(
        math.log(by_hand), rel=1e-10
    )
    g = clv.GammaGamma(p, q, gamma, 0.0, 0, 0, 0.0)
    # Weighted between the population mean p*gamma/(q-1) and the customer's own mean.
    population = p * gamma / (q - 1)
    weight = p * x / (p * x + q - 1)
    expected = (1 - weight) * population + weight * m
    got = clv.expected_mean_value(g, np.array([x, 0]), np.array([m, 0.0]))
    assert got == pytest.approx([expected, population])


def steady_buyers(seed: int, n: int = 600, rate: float = 0.15, end: float = 52.0) -> pd.DataFrame:
    """(x, t_x, T) of customers who all buy at one Poisson rate per week and never drop
    out, joining over the first 26 weeks: no heterogeneity for BG/NBD to find."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        first = rng.uniform(0, 26)
        times = first + np.cumsum(rng.exponential(1 / rate, 40))
        times = times[times <= end]
        rows.append((len(times), float(times[-1] - first) if len(times) else 0.0, end - first))
    return pd.DataFrame(rows, columns=["x", "t_x", "T"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shop_of_steady_buyers_gets_the_forecast_its_rate_implies(seed):
    # Unbounded, these fits ran off to shapes of 1e16 and 1e-35 and forecast 1e15
    # transactions a customer (seed 0) or NaN (seed 1).
    customers = steady_buyers(seed)
    bg = clv.fit_bgnbd(customers.x, customers.t_x, customers["T"])
    for name in ("r", "a", "b"):
        assert clv.SHAPE[0] <= getattr(bg, name) <= clv.SHAPE[1]
    forecast = clv.expected_transactions(bg, 26, customers.x, customers.t_x, customers["T"])
    assert np.isfinite(forecast).all()
    assert forecast.mean() == pytest.approx(0.15 * 26, rel=0.05)
    assert clv.probability_alive(bg, customers.x, customers.t_x, customers["T"]).min() > 0.9


def test_spend_with_an_infinite_population_mean_values_one_time_buyers_at_the_fitted_mean():
    rng = np.random.default_rng(5)
    # Gamma-Gamma's own process with q < 1: each customer's spend rate nu ~ Gamma(q, gamma).
    x = rng.integers(1, 6, 3000)
    nu = rng.gamma(0.6, 1 / 20.0, 3000)
    m = rng.gamma(4.0 * x, 1 / nu) / x
    gg = clv.fit_gamma_gamma(x, m)
    assert gg.q < 1
    assert gg.mean_spend == pytest.approx(m.mean())
    got = clv.expected_mean_value(gg, np.array([0, 1, 5]), np.array([0.0, 30.0, 30.0]))
    assert got[0] == pytest.approx(m.mean())
    assert np.isfinite(got).all() and (got > 0).all()
    # A posterior with an infinite mean too (p x + q <= 1) keeps the customer's own mean.
    heavy = clv.GammaGamma(0.1, 0.5, 20.0, 0.0, 0, 0, 0.0, mean_spend=55.0)
    assert list(clv.expected_mean_value(heavy, np.array([0, 2]), np.array([0.0, 30.0]))) == [
        55.0,
        30.0,
    ]


def test_models_that_break_the_formulas_are_refused_with_their_parameters():
    # The unbounded fit on a real-looking events log (every buyer at one steady rate).
    broken = clv.BgNbd(4415428.98, 54094826.13, 1.63e-13, 1.12e-05, 0.0, 0, 0, 0.0)
    tuples = pd.DataFrame({"x": [0, 1, 3], "t_x": [0.0, 4.0, 10.0], "T": [20.0, 20.0, 20.0]})
    spend = pd.DataFrame({"x": [1, 3], "m": [25.0, 40.0]})
    gg = clv.GammaGamma(6.25, 3.74, 15.44, 0.0, 0, 0, 0.0)
    with pytest.raises(ValueError, match=r"expected transactions .* for 3 of 3 .* a 1\.63e-13"):
        clv.check_forecasts(broken, gg, 52.0, tuples, spend)
    clv.check_forecasts(PAPER, gg, 52.0, tuples, spend)


def test_purchases_without_amounts_are_valued_in_transactions_and_leave_spend_null():
    s = clv.ValueSettings(7.0, 364, 0.1, 1.0, (0.3, 0.7))
    batch = pd.DataFrame({"x": [0, 4], "t_x": [0.0, 30.0], "T": [40.0, 40.0], "mean_value": None})
    out = clv.score_batch(batch, PAPER, None, s)
    expected = clv.expected_transactions(PAPER, s.horizon, batch.x, batch.t_x, batch["T"])
    assert out.expected_transactions.to_numpy() == pytest.approx(expected)
    assert out.p_alive.notna().all()
    assert out.expected_mean_value.isna().all() and out.clv.isna().all()
    clv.check_forecasts(PAPER, None, s.horizon, batch, pd.DataFrame({"x": [], "m": []}))


def test_value_of_a_batch_discounts_and_tiers():
    s = clv.ValueSettings(7.0, 364, 0.0, 1.0, (0.3, 0.7))
    g = clv.GammaGamma(6.25, 3.74, 15.44, 0.0, 0, 0, 0.0)
    batch = pd.DataFrame(
        {
            "x": [0, 10, 10],
            "t_x": [0.0, 5.0, 39.0],
            "T": [40.0, 40.0, 40.0],
            "mean_value": [None, 30.0, 30.0],
        }
    )
    out = clv.score_batch(batch, PAPER, g, s)
    assert list(out.churn_risk) == ["low", "high", "low"]
    # Undiscounted, CLV is expected spend times expected transactions (12 monthly steps).
    months = 12 * 365.25 / 12 / 7
    undiscounted = (
        clv.expected_transactions(PAPER, months, batch.x, batch.t_x, batch["T"])
        * out.expected_mean_value
    )
    assert out.clv.to_numpy() == pytest.approx(np.asarray(undiscounted), rel=1e-9)
    discounted = clv.score_batch(batch, PAPER, g, clv.ValueSettings(7.0, 364, 0.2, 1.0, (0.3, 0.7)))
    assert (discounted.clv < out.clv).all()


@pytest.mark.slow
def test_clv_stage_on_the_cdnow_sample_matches_the_paper(spark, tmp_path):
    if not SAMPLE.exists():
        pytest.fail(f"{SAMPLE} is missing: the CDNOW data set must sit in ../shared/datasets")
    root = tmp_path / "cdnow_clv"
    args = [
        "run",
        "--conf",
        str(REPO / "conf" / "cdnow_clv.yaml"),
        "--set",
        f"lakehouse.root={root}",
        "--set",
        FAST_WRITER,
        "--set",
        "spark.master=local[2]",
    ]
    assert main(args) == 0

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("shopseg_clv", "champion")
    metrics = client.get_run(version.run_id).data.metrics
    for name, value in (("r", 0.243), ("alpha", 4.414), ("a", 0.793), ("b", 2.426)):
        assert metrics[f"bgnbd_{name}"] == pytest.approx(value, rel=0.01), name
    assert metrics["bgnbd_log_likelihood"] == pytest.approx(-9582.4, rel=0.01)
    for name, value in PAPER_GG.items():
        assert metrics[f"gg_{name}"] == pytest.approx(value, rel=0.01), name
    assert metrics["customers"] == 2357 and metrics["gg_customers"] == 946

    # The holdout: the cohort's real repeat purchases in the next 39 weeks, from the file.
    raw = read_sample()
    holdout = raw[(raw.day > CALIBRATION_END) & (raw.day <= pd.Timestamp("1998-06-30"))]
    assert (
        metrics["holdout_actual_repeat_transactions"]
        == holdout[["cid", "day"]].drop_duplicates().shape[0]
    )
    # The forecast is the fitted model's expectation summed over the cohort, from pandas.
    fitted = clv.BgNbd(*(metrics[f"bgnbd_{n}"] for n in ("r", "alpha", "a", "b")), 0.0, 0, 0, 0.0)
    cohort = cdnow_calibration()
    forecast = clv.expected_transactions(fitted, 39, cohort.x, cohort.t_x, cohort["T"]).sum()
    assert metrics["holdout_predicted_repeat_transactions"] == pytest.approx(forecast, rel=1e-9)

    values = DeltaTable(str(root / t.CUSTOMER_VALUE.name)).to_pandas()
    assert len(values) == 2357 and set(values.as_of_date) == {dt.date(1997, 9, 30)}
    assert set(values.model_version) == {str(version.version)}
    got = values.set_index("user_id").sort_index()
    want = cdnow_calibration().sort_index()
    assert list(got.index) == list(want.index)
    assert np.array_equal(got.x.to_numpy(), want.x.to_numpy())
    for ours, theirs in (("t_x", "t_x"), ("T", "T"), ("mean_value", "m")):
        assert np.allclose(got[ours].to_numpy(float), want[theirs].to_numpy(float), equal_nan=True)
    assert values.p_alive.between(0, 1).all() and (values.clv >= 0).all()
    assert set(values.churn_risk) <= {"high", "medium", "low"}

    # Score mode: the same customers nine months later, valued by the
    # registered model without a refit (x, t_x and T from the later end).
    later = pd.Timestamp("1998-06-30")
    score = [*args[1:], "--set", "clv.mode=score", "--set", "clv.holdout_end=null"]
    assert main(["clv", *score, "--set", f"clv.calibration_end={later.date()}"]) == 0
    assert len(client.search_model_versions("name='shopseg_clv'")) == 1
    values = DeltaTable(str(root / t.CUSTOMER_VALUE.name)).to_pandas()
    assert set(values.as_of_date) == {dt.date(1997, 9, 30), later.date()}
    scored = values[values.as_of_date == later.date()].set_index("user_id").sort_index()
    assert set(scored.model_version) == {str(version.version)}
    want = cdnow_calibration(later).sort_index()
    assert list(scored.index) == list(want.index)
    assert np.array_equal(scored.x.to_numpy(), want.x.to_numpy())
    assert np.allclose(scored["T"].to_numpy(float), want["T"].to_numpy(float))
    fitted_gg = clv.GammaGamma(*(metrics[f"gg_{n}"] for n in ("p", "q", "gamma")), 0.0, 0, 0, 0.0)
    settings = clv.ValueSettings(7.0, 364, 0.10, 1.0, (0.3, 0.7))
    by_hand = clv.score_batch(want.rename(columns={"m": "mean_value"}), fitted, fitted_gg, settings)
    for column in ("p_alive", "expected_transactions", "clv"):
        assert np.allclose(scored[column].to_numpy(float), by_hand[column].to_numpy(float),
                           rtol=1e-9), column  # fmt: skip
