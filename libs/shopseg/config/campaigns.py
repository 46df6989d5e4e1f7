"""Sections about campaigns: who is targeted, audiences, simulated outcomes, evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from shopseg.config.base import (
    Confidence,
    ConfigError,
    Date,
    OpenShare,
    PathStr,
    Positive,
    Section,
    Share,
    SqlExpression,
    check,
    config_error,
)


class PropensityCondition(Section):
    """Users by their decile of a propensity target (1 = most likely) in gold/propensity_scores."""

    target: str = ""
    """A target the propensity stage scores, e.g. churn_90d or purchase_30d."""
    min_decile: int = 1
    max_decile: int = 10

    def rules(self) -> None:
        check(bool(self.target), "target", "required: a propensity target such as churn_90d")
        check(
            1 <= self.min_decile <= self.max_decile <= 10,
            "",
            "needs 1 <= min_decile <= max_decile <= 10",
        )


class UpliftCondition(Section):
    """Users by their predicted uplift in gold/uplift_scores (the latest scores up to the
    segments' snapshot).

    gain = uplift x value of a conversion (`uplift.conversion_value`, or the
    customer's expected order value from gold/customer_value when
    `uplift.value_from_clv`) - cost of a contact on the campaign's channel
    (`uplift.contact_cost`).
    """

    campaign: str | None = None
    """The campaign whose randomized send trained the scores (their campaign_id); null = the
    scores' only campaign.
    """
    top_share: float | None = Field(None, gt=0, le=1)
    """The share of the scored users with the highest expected gain ..."""
    min_gain: float | None = None
    """... and/or only those whose expected gain is at least this."""

    def rules(self) -> None:
        check(
            self.top_share is not None or self.min_gain is not None,
            "",
            "needs top_share and/or min_gain",
        )


class CampaignTarget(Section):
    """Who a campaign is for: every condition given must hold."""

    segments: list[str] = Field(default_factory=list)
    """Names of gold/user_segments (segment_name)."""
    rfm_segments: list[str] = Field(default_factory=list)
    """RFM segments of silver/user_features (rfm_segment)."""
    where: SqlExpression | None = None
    """A Spark SQL predicate over the silver/user_features columns."""
    propensity: PropensityCondition | None = None
    """Deciles of a propensity target (the latest scores up to the segments' snapshot)."""
    uplift: UpliftCondition | None = None
    """Users by their predicted uplift (gold/uplift_scores): the top share, or a minimum
    expected gain per contact.
    """
    sample: float | None = Field(None, gt=0, le=1)
    """Keep this share of the users every other condition selects, by a salted hash
    independent of the A/B split (a randomized trial over a broad audience).
    """


class CampaignExclusions(Section):
    contacted_within_days: int | None = Field(30, ge=0)
    """Users treated by any campaign sent within this many days before the send date."""
    opted_out: SqlExpression | None = None
    """A Spark SQL predicate over silver/user_features marking opted-out users (e.g.
    `marketing_opt_in = false`); null = nobody has opted out.
    """


class CampaignConf(Section):
    """One campaign of conf/campaigns.yaml."""

    id: str = Field("", pattern=r"^[A-Za-z0-9_-]+$")
    """Letters, digits, '_' or '-'."""
    name: str = Field("", min_length=1)
    target: CampaignTarget = Field(default_factory=CampaignTarget)
    offer: str = ""
    channel: str = "email"
    holdout: OpenShare = 0.1
    """Share of the eligible users held out as the control group."""
    max_audience: Positive | None = None
    """Largest audience (treated and control); null = everyone eligible."""
    priority: int = 0
    """A user eligible for several campaigns joins the one with the highest priority."""
    exclude: CampaignExclusions = Field(default_factory=CampaignExclusions)

    def rules(self) -> None:
        check(bool(self.id), "id", "required: letters, digits, '_' or '-'")
        t = self.target
        check(
            bool(t.segments or t.rfm_segments or t.where or t.propensity or t.uplift or t.sample),
            "target",
            "needs segments, rfm_segments, where, propensity, uplift and/or sample",
        )


class AudiencesConf(Section):
    """Stage `audiences`: campaign audiences with A/B holdouts."""

    campaigns_file: PathStr | None = None
    """The campaigns (relative paths resolve against the conf file's folder)."""
    send_date: Date | None = None
    """Send date of this run's audiences; default the segment snapshot's as-of date."""
    salt: str = "shopseg"
    """Salt of the treatment/control hash: a new salt gives new splits."""
    recommended_items: int = 3
    """Recommended items carried on each audience row."""
    dry_run: bool = False
    """Count eligible, treated and control users per campaign; write nothing."""


DEFAULT_BASE_CONVERSION = {
    "loyal_high_value": 0.35,
    "bargain_hunter": 0.15,
    "dormant": 0.03,
    "new_customer": 0.10,
    "window_shopper": 0.04,
    "one_time_buyer": 0.06,
}
DEFAULT_PLANTED_LIFT = {
    "loyal_high_value": 0.02,
    "bargain_hunter": 0.08,
    "dormant": 0.06,
    "new_customer": 0.05,
    "window_shopper": 0.02,
    "one_time_buyer": 0.07,
}
DEFAULT_ORDER_VALUE = {
    "loyal_high_value": 120.0,
    "bargain_hunter": 35.0,
    "dormant": 50.0,
    "new_customer": 45.0,
    "window_shopper": 40.0,
    "one_time_buyer": 40.0,
}


class UpliftRule(Section):
    """A planted group: treated users matching `where` (and no earlier rule) get `lift`."""

    name: str = Field("", min_length=1)
    where: SqlExpression = Field("", min_length=1)
    """Spark SQL over the silver/user_features columns of the send date."""
    lift: float = Field(0.0, ge=-1, le=1)
    """Absolute change of the conversion probability when treated (negative: put off)."""


DEFAULT_UPLIFT_RULES = (
    # Customers who rated their purchases poorly are put off by a contact.
    ("do_not_disturb", "mean_rating < 3", -0.10),
    # Heavy buyers buy anyway: a contact changes nothing.
    ("sure_things", "frequency >= 8", 0.0),
    # Recent visitors who buy on discount are the persuadable ...
    ("persuadables", "inactive_days <= 30 AND discount_share >= 0.3", 0.25),
    # ... and so are recent browsers who rarely buy.
    ("recent_browsers", "inactive_days <= 14 AND views >= 20 AND frequency <= 2", 0.15),
)


class SimulateOutcomesConf(Section):
    """Stage `simulate_outcomes` (synthetic data only): purchases after a send, known lift."""

    seed: int = 7
    window_days: Positive = 30
    """Outcomes fall within this many days after the send date."""
    base_conversion: dict[str, Share] = Field(default_factory=lambda: dict(DEFAULT_BASE_CONVERSION))
    """Probability that a persona's user buys within the window untreated ..."""
    lift: dict[str, Share] = Field(default_factory=lambda: dict(DEFAULT_PLANTED_LIFT))
    """... and the absolute increase a treated user gets (the planted lift)."""
    no_effect_campaigns: list[str] = Field(default_factory=lambda: ["vip_early_access"])
    """Campaigns whose treatment changes nothing (their planted lift is 0)."""
    effect: Literal["persona", "heterogeneous"] = "heterogeneous"
    """persona: every treated user gets their persona's `lift`; heterogeneous: the first of
    `uplift_rules` whose predicate holds on the user's features at the send date decides,
    the persona's lift otherwise. Each user's planted effect goes to
    raw/ground_truth/user_uplift.
    """
    uplift_rules: list[UpliftRule] = Field(
        default_factory=lambda: [
            UpliftRule(name=name, where=where, lift=lift)
            for name, where, lift in DEFAULT_UPLIFT_RULES
        ]
    )
    order_value: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ORDER_VALUE))
    """Mean order value per persona (lognormal, sigma 0.5)."""


class EvaluateConf(Section):
    """Stage `evaluate`: measured uplift of each campaign from outcome events."""

    outcomes_table: str = "silver/events"
    """Purchase events after the send date: silver/events on real data; the embedded default
    reads the simulated outcomes.
    """
    window_days: Positive = 30
    """Outcomes counted within this many days from the send date."""
    send_date: Date | None = None
    """Send date evaluated; default the latest in gold/campaign_audiences."""
    confidence: Confidence = 0.95
    """Confidence of the uplift intervals."""


def load_campaigns(path: str | os.PathLike[str]) -> list[CampaignConf]:
    """Read and check conf/campaigns.yaml; an error names the campaign and the key."""
    origin = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{origin}: campaigns file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping with the key 'campaigns'")
    items = raw.get("campaigns") or []
    if not isinstance(items, list):
        raise ConfigError(f"{origin}: campaigns: expected a list")
    out: list[CampaignConf] = []
    for i, item in enumerate(items):
        label = item.get("id") if isinstance(item, dict) and item.get("id") else f"#{i + 1}"
        where = f"{origin}: campaign {label!r}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping")
        try:
            out.append(CampaignConf.model_validate(item))
        except ValidationError as exc:
            raise config_error(exc, where, CampaignConf) from None
    ids = [c.id for c in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{origin}: campaign {duplicates[0]!r}: id: used twice")
    return out
