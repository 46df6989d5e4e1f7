"""Sections about predictions: lifetime value, propensity and uplift."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shopseg.config.base import (
    Confidence,
    Date,
    NonNegative,
    OpenShare,
    PathStr,
    Positive,
    PositiveFloat,
    Section,
    TextMap,
    check,
)
from shopseg.config.customers import SegmentFeature, check_features, features_field


class ClvConf(Section):
    """Stage `clv`: BG/NBD and Gamma-Gamma lifetime value and churn probability."""

    mode: Literal["fit", "score"] = "fit"
    """fit: fit both models on the purchases up to calibration_end and register them; score:
    value the customers as of calibration_end with the registered model (alias below), no
    refit (a daily increment's step).
    """
    calibration_end: Date | None = None
    """Last day of the calibration period (inclusive); default the last day with an event."""
    holdout_end: Date | None = None
    """Last day of a holdout period to check the forecast against; null = none."""
    time_unit: Literal["days", "weeks"] = "weeks"
    """Unit of x, t_x and T (and of the fitted alpha)."""
    horizon_days: Positive = 365
    """Lifetime value over this many days after calibration_end."""
    annual_discount_rate: float = Field(0.10, ge=0, lt=1)
    """Discount rate per year, applied month by month."""
    margin: PositiveFloat = 1.0
    """Share of spend that is profit (1.0: CLV in revenue)."""
    risk_thresholds: list[float] = Field(default_factory=lambda: [0.3, 0.7])
    """churn_risk from the probability alive: `high` below the first, `medium` below the
    second, `low` otherwise.
    """
    model_name: str = "shopseg_clv"
    alias: str = "champion"

    def rules(self) -> None:
        low_high = self.risk_thresholds
        check(
            len(low_high) == 2 and 0 < low_high[0] < low_high[1] < 1,
            "risk_thresholds",
            "must be two probabilities, increasing, within 0..1 (high-risk below the first)",
        )
        check(
            self.mode == "fit" or self.holdout_end is None,
            "holdout_end",
            "checks a fitted forecast; set it to null with clv.mode score",
        )
        if self.calibration_end and self.holdout_end:
            check(
                self.calibration_end < self.holdout_end,
                "holdout_end",
                f"must be after clv.calibration_end {self.calibration_end}",
            )


PROPENSITY_MODEL_PARAMS = {
    # Spark ML parameter names each kind's grid may vary.
    "logistic": ("regParam", "elasticNetParam", "maxIter"),
    "random_forest": ("numTrees", "maxDepth", "minInstancesPerNode", "subsamplingRate"),
    "gbt": ("maxIter", "maxDepth", "stepSize", "minInstancesPerNode", "subsamplingRate"),
    # hidden: the width of the perceptron's one hidden layer.
    "mlp": ("maxIter", "stepSize", "blockSize", "hidden"),
}
DEFAULT_PROPENSITY_FEATURES = (
    # Never-bought users: recency and inactivity as long as they have been known.
    ("recency_days", "coalesce(recency_days, tenure_days)", True),
    ("inactive_days", "coalesce(inactive_days, tenure_days)", True),
    ("has_purchased", "CASE WHEN last_purchase_date IS NULL THEN 0 ELSE 1 END", False),
    ("frequency", None, True),
    ("monetary", None, True),
    ("avg_order_value", "coalesce(avg_order_value, 0)", True),
    ("purchase_days", None, True),
    ("mean_days_between_purchases", None, True),
    ("tenure_days", None, True),
    ("active_days", None, True),
    ("sessions", None, True),
    ("views", None, True),
    ("carts", None, True),
    ("conversion_rate", "coalesce(conversion_rate, 0)", False),
    ("discount_share", "coalesce(discount_share, 0)", False),
    ("return_rate", "coalesce(return_rate, 0)", False),
    ("review_count", None, True),
)


class PropensityTarget(Section):
    """One target: `purchase_<h>d` or `churn_<h>d`."""

    kind: Literal["purchase", "churn"] = "purchase"
    """purchase: buys at least once in the next horizon_days (every user); churn: a buyer of
    the last active_days who buys nothing in the next horizon_days.
    """
    horizon_days: Positive = 30
    active_days: Positive = 180

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.horizon_days}d"


class PropensityModel(Section):
    """One classifier family and its grid (every combination of the listed values)."""

    kind: Literal["logistic", "random_forest", "gbt", "mlp"] = "logistic"
    """mlp: MLlib's MultilayerPerceptronClassifier, one hidden layer (`hidden` wide)."""
    params: dict[str, list[float]] = Field(default_factory=dict)

    def rules(self) -> None:
        allowed = PROPENSITY_MODEL_PARAMS[self.kind]
        for param, values in self.params.items():
            check(
                param in allowed,
                f"params.{param}",
                f"not a grid parameter of {self.kind}; use one of {list(allowed)}",
            )
            check(bool(values), f"params.{param}", "needs at least one value")


class PropensityConf(Section):
    """Stage `propensity`: who will buy and who will churn, by calibrated classifiers."""

    mode: Literal["fit", "score"] = "fit"
    """fit: build point-in-time rows, choose, calibrate, register, score; score: score the
    snapshot with the registered champions.
    """
    as_of_date: Date | None = None
    """Snapshot of silver/user_features to score; default the latest as_of_date."""
    targets: list[PropensityTarget] = Field(
        default_factory=lambda: [
            PropensityTarget(kind="purchase", horizon_days=30),
            PropensityTarget(kind="churn", horizon_days=90, active_days=180),
        ],
        min_length=1,
    )
    training_cutoffs: Positive = 1
    """Per target, the validation cut-off is the latest whose label window ends by the
    scored snapshot (as_of_date - horizon), or last_cutoff when set; the training
    cut-offs are the `training_cutoffs` before it, every `cutoff_step_days`.
    """
    cutoff_step_days: Positive = 30
    last_cutoff: Date | None = None
    features: list[SegmentFeature] = features_field(DEFAULT_PROPENSITY_FEATURES)
    bgnbd_feature_days: Positive | None = None
    """Days of BG/NBD's expected transactions offered to the models as the column
    `bgnbd_expected_transactions` (fitted on the purchases before each cut-off and before
    the scored snapshot; name it in `features`); null = not computed.
    """
    models: list[PropensityModel] = Field(
        default_factory=lambda: [
            # One point per family, sized for the demo (every boosting round
            # or logistic iteration is a Spark job); larger grids by configuration.
            PropensityModel(
                kind="logistic",
                params={"regParam": [0.001], "elasticNetParam": [0.5], "maxIter": [20]},
            ),
            PropensityModel(kind="random_forest", params={"numTrees": [40], "maxDepth": [6]}),
            PropensityModel(kind="gbt", params={"maxIter": [10], "maxDepth": [4]}),
        ],
        min_length=1,
    )
    search_trials: int = Field(0, ge=0)
    """Random points per family in `models` after its grid, drawn from the family's search
    space (shopseg.propensity.SEARCH_SPACE: regularisation, trees, depth, learning rate,
    leaf size, subsampling, the perceptron's width); 0: the grid only."""
    search_seed: int = 11
    metric: Literal["average_precision", "auc_roc", "auc_pr"] = "average_precision"
    """What chooses the served scorer on the validation cut-off, among every model and
    grid point and the baselines (AUC, AUC-PR, log loss and calibration error are logged
    beside it)."""
    serve_baselines: bool = True
    """The baselines (the RFM rule; BG/NBD's expected transactions when
    bgnbd_feature_days is set) are candidates too: when one ranks best it is served,
    calibrated like a model; false: they are reported only."""
    serve_tie: NonNegative = 0.001
    """Candidates within this much of the best metric are tied: the simplest of them is
    served (RFM rule, BG/NBD, logistic, random forest, GBT, perceptron), as a tie in the
    recommendation stage goes to the cheaper method."""
    class_weights: Literal["none", "balanced"] = "none"
    """balanced: each class weighs half the training rows (rare targets); the calibration
    maps the scores back to probabilities."""
    calibration_share: OpenShare = 0.5
    """Share of the validation cut-off's users (by hash) the isotonic calibration is fitted
    on; calibration is measured on the others.
    """
    calibration_bins: int = Field(10, ge=2)
    """Equal-width probability bins of the expected calibration error and the reliability
    chart.
    """
    seed: int = 42
    concurrent_targets: Positive = 2
    """Targets trained at once, on threads of one session (their Spark jobs run side by
    side; MLflow records them one after the other).
    """
    model_prefix: str = "shopseg_propensity"
    """Registered as <model_prefix>_<target>."""
    alias: str = "champion"

    def rules(self) -> None:
        names = [target.name for target in self.targets]
        check(
            len(set(names)) == len(names),
            "targets",
            f"targets must differ in kind or horizon: {names}",
        )
        check_features(self.features, "features")


class ExperimentTreatment(Section):
    """The treatment column of an exported experiment and its two values."""

    column: str = Field("", min_length=1)
    treated: str = Field("", min_length=1)
    control: str = Field("", min_length=1)

    def rules(self) -> None:
        check(self.treated != self.control, "", "treated and control values must differ")


class ExperimentConf(Section):
    """A randomized experiment exported from elsewhere, one row per user."""

    path: PathStr = Field("", min_length=1)
    format: Literal["csv", "parquet", "json", "delta"] = "csv"
    options: TextMap = Field(default_factory=dict)
    """Reader options (csv: header defaults to true)."""
    treatment: ExperimentTreatment = Field(default_factory=ExperimentTreatment)
    outcome: str = Field("", min_length=1)
    """The outcome column: converted (1) or not (0; true/false and yes/no are read as 1/0),
    or a number per row (revenue, orders, margin)."""
    outcome_type: Literal["auto", "binary", "numeric"] = "auto"
    """auto: binary when every value read is 0/1 (yes/no, true/false), numeric otherwise.
    Rows whose outcome cannot be read are counted and left out."""
    contact_cost: NonNegative = 0.0
    """Cost of contacting one row, in the units of the expected gain (see uplift.margin)."""
    features: dict[str, Literal["numeric", "categorical"]] = Field(
        default_factory=dict, min_length=1
    )
    """The model's inputs: numeric columns as they are, categorical ones one-hot (the
    `max_categories` most frequent values, the rest `other`).
    """
    max_categories: Positive = 20
    id_column: str | None = None
    """A column identifying the rows (kept beside the held-out predictions); optional."""

    def rules(self) -> None:
        both = sorted({self.treatment.column, self.outcome} & set(self.features))
        check(not both, "features", f"{both} are the treatment or outcome column")


DEFAULT_UPLIFT_FEATURES = (
    *DEFAULT_PROPENSITY_FEATURES,
    ("mean_rating", None, False),
)


class UpliftConf(Section):
    """Stage `uplift`: whom a campaign changes, from a past randomized send."""

    campaign: str = "uplift_trial"
    """The randomized campaign trained on (gold/campaign_audiences with its outcomes from
    evaluate.outcomes_table); ignored when `experiment` is set.
    """
    send_date: Date | None = None
    """Its send date; default its latest."""
    experiment: ExperimentConf | None = None
    """Train on an exported experiment instead (conf/uplift_experiment_example.yaml)."""
    features: list[SegmentFeature] = features_field(DEFAULT_UPLIFT_FEATURES)
    outcome: Literal["conversion", "revenue"] = "conversion"
    """A campaign send's outcome within evaluate.window_days: conversion (bought at all) or
    revenue (the amount bought); an experiment's is its `outcome_type`.
    """
    learners: list[Literal["t_learner", "x_learner", "transformed_outcome"]] = Field(
        default_factory=lambda: ["t_learner", "x_learner", "transformed_outcome"], min_length=1
    )
    """Candidates, chosen by the Qini coefficient on the held-out users: t_learner (a GBT
    regression of the outcome per arm, uplift = difference), x_learner (the T-learner's
    imputed effects regressed per arm, mixed by a propensity model) and transformed_outcome
    (one GBT regression of Y (T - e) / (e (1 - e))).
    """
    gbt: dict[str, float | list[float]] = Field(
        default_factory=lambda: {"maxIter": 20, "maxDepth": 3, "stepSize": 0.1},
        validate_default=True,
    )
    """Spark ML GBTRegressor parameters of every learner; a list is a grid dimension (every
    learner at every combination is a candidate)."""
    search_trials: int = Field(0, ge=0)
    """Random GBT points after the `gbt` grid, from the GBT search space
    (shopseg.propensity.SEARCH_SPACE["gbt"]: rounds, depth, step, leaf size,
    subsampling); every learner at each is a candidate. 0: the grid only."""
    search_seed: int = 11
    refit: bool = True
    """Refit the chosen learner and GBT point on every row (training and held out) before
    registering it; false: register the model fitted on the training rows."""
    margin: float = Field(1.0, gt=0, le=1)
    """Share of a numeric outcome (revenue) that is gain: expected gain of a contact =
    uplift x margin - contact cost (a binary outcome's uplift is valued by
    conversion_value)."""
    validation_share: OpenShare = 0.3
    """Share of the users (by hash, within each arm) held out to choose and measure."""
    bootstrap: int = Field(100, ge=20)
    """Bootstrap resamples of the held-out users for the Qini interval."""
    confidence: Confidence = 0.95
    compare_share: float = Field(0.3, gt=0, le=1)
    """Targeting compared at equal contacts (synthetic data, against the planted effect):
    this share of the scored users, uplift against purchase propensity
    (`compare_propensity`), the rule of `compare_campaign` and random.
    """
    compare_propensity: str = "purchase_30d"
    compare_campaign: str | None = "bargain_picks"
    conversion_value: PositiveFloat = 50.0
    """Value of one conversion in the expected gain of a contact ..."""
    value_from_clv: bool = False
    """... or each customer's expected order value (gold/customer_value), that value
    otherwise.
    """
    contact_cost: dict[str, float] = Field(
        default_factory=lambda: {"email": 0.05, "app": 0.02, "sms": 0.5, "post": 1.0}
    )
    """Cost of one contact per channel (channels not listed cost nothing)."""
    seed: int = 42
    model_name: str = "shopseg_uplift"
    alias: str = "champion"

    def rules(self) -> None:
        allowed = ("maxIter", "maxDepth", "stepSize", "minInstancesPerNode", "subsamplingRate")
        for param in self.gbt:
            check(
                param in allowed,
                f"gbt.{param}",
                f"not a GBTRegressor parameter shopseg sets; one of {list(allowed)}",
            )
            value = self.gbt[param]
            check(not isinstance(value, list) or bool(value), f"gbt.{param}",
                  "a grid dimension needs at least one value")  # fmt: skip
        check_features(self.features, "features")
