"""Typed, validated configuration loaded from YAML plus `--set key=value` overrides.

The YAML files in `conf/` are the only place configuration lives. They are
loaded once into a `Config` object of dataclasses; an unknown key or a value
of the wrong type fails with a `ConfigError` that names the key and the file
(or the `--set` argument) it came from. Library code never sees YAML: jobs
pass plain values down.

Relative paths in a file resolve against the folder of that file; relative
paths given with `--set` resolve against the current directory, as a user
typing a path expects. URIs (`s3://`, `dbfs:/`, `file:/`...) are left alone.

Secrets never live here: a section names the environment variable that holds
one (for example `privacy.hash_key_env`), and the value is read at run time.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


class ShopsegError(RuntimeError):
    """A failure the user can act on; the CLI prints its message without a traceback."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _path_field(default: str | None = None, **kwargs: Any) -> Any:
    return field(default=default, metadata={"path": True}, **kwargs)


def is_uri(path: str) -> bool:
    """True for `scheme:/...` locations (object stores, DBFS, file URIs)."""
    return bool(_URI.match(path))


# --------------------------------------------------------------------------- sections


@dataclass
class LakehouseConf:
    """Where tables live and which Delta writer commits them."""

    root: str = _path_field("lakehouse")
    # auto: Spark's own Delta support when its classes are on the classpath,
    # else delta-rs. `spark` and `delta-rs` force one and fail if unavailable.
    writer: Literal["auto", "spark", "delta-rs"] = "auto"
    # Size a written file aims at; a table smaller than this is one file per
    # partition value, whatever the cluster's shuffle partitions.
    target_file_mb: int = 128


@dataclass
class SparkConf:
    """Session settings. Everything but `conf` applies in local mode only."""

    master: str | None = None
    app_name: str = "shopseg"
    driver_memory: str = "4g"
    ui: bool = False
    # Shuffle partitions in local mode; default is four times the local cores.
    shuffle_partitions: int | None = None
    checkpoint_dir: str | None = _path_field(None)
    # Session time zone, set on every master (a cluster's own zone would move
    # events to another day in to_date).
    time_zone: str = "UTC"
    # Extra Spark properties, passed as they are (also on a cluster).
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class MlflowConf:
    """Tracking and registry. Unset URIs default to SQLite inside the lakehouse."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    artifact_root: str | None = _path_field(None)
    experiment_prefix: str = "shopseg"


@dataclass
class LoggingConf:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


DEFAULT_PERSONA_WEIGHTS = {
    "loyal_high_value": 0.12,
    "bargain_hunter": 0.20,
    "one_time_buyer": 0.20,
    "dormant": 0.18,
    "window_shopper": 0.15,
    "new_customer": 0.15,
}


@dataclass
class DriftConf:
    """Planted drift: a share of one persona's users become another persona on a date.

    Until `date` a drifted user behaves as `from_persona`, from `date` on as
    `to_persona` (for `dormant`, whose activity ends 180 days before the
    window's end: no activity at all). Feature snapshots before and after
    `date` then show the move; `raw/ground_truth/persona_drift` lists who moved.
    """

    from_persona: str = "loyal_high_value"
    to_persona: str = "dormant"
    # Share of from_persona's users who drift; 0 = no drift.
    share: float = 0.0
    # Required when share > 0; within (start_date, end_date).
    date: dt.date | None = None


@dataclass
class GenerateConf:
    """Synthetic shop data (stage `generate`)."""

    seed: int = 42
    users: int = 20_000
    items: int = 2_000
    # Average events per user; total events is about users x this.
    events_per_user: float = 50.0
    start_date: dt.date = dt.date(2025, 1, 1)
    end_date: dt.date = dt.date(2025, 12, 31)
    # Share of raw records corrupted on purpose (bad types, unknown event
    # types, future timestamps, duplicates) so ingestion has something to
    # quarantine.
    dirty_fraction: float = 0.001
    personas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_WEIGHTS))
    # Files per raw output; default lets Spark decide.
    output_partitions: int | None = None
    drift: DriftConf = field(default_factory=DriftConf)


ColumnType = Literal["string", "int", "long", "double", "boolean", "date", "timestamp"]
# Numeric timestamps: seconds, milliseconds or microseconds since the Unix epoch.
EPOCH_FORMATS = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}
SourceFormat = Literal["csv", "json", "parquet", "whitespace", "fixed_width"]
LAKEHOUSE_ROOT = "${lakehouse.root}"


@dataclass
class ColumnConf:
    """One target column of a source: where it comes from, its type and its rules."""

    # Source column name (default: the target name), or its 0-based position in
    # a csv or whitespace line. Ignored for fixed_width.
    source: str | int | None = None
    # Or a Spark SQL expression over the source's columns (read as text), e.g.
    # "Quantity * UnitPrice"; evaluated leniently: a value that does not convert
    # gives null (a quarantined record), never a failed job.
    expr: str | None = None
    type: ColumnType = "string"
    # Date/timestamp pattern (Spark datetime pattern), e.g. yyyyMMdd, or
    # epoch_s / epoch_ms / epoch_us for seconds, milliseconds or microseconds
    # since 1970-01-01 UTC.
    format: str | None = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    # Allowed values (after type conversion), e.g. the known event types.
    allowed: list[str] | None = None
    # fixed_width only: 1-based start and length on the line.
    start: int | None = None
    length: int | None = None


@dataclass
class SourceConf:
    """A raw source: where it is, how to read it, how its columns map to bronze."""

    path: str = _path_field("")
    format: SourceFormat = "csv"
    # Reader options, e.g. header, sep (csv); header (whitespace).
    options: dict[str, str] = field(default_factory=dict)
    # Field names of a csv or whitespace file without a header, in order.
    names: list[str] | None = None
    # Character set of a text source (csv, json, whitespace, fixed_width), e.g.
    # ISO-8859-1 or windows-1252; default UTF-8. gzip and bz2 files (by their
    # extension) are read as they are, whatever the encoding.
    encoding: str | None = None
    columns: dict[str, ColumnConf] = field(default_factory=dict)
    # Target columns set to a value for every record, e.g. event_type: purchase.
    constants: dict[str, str] = field(default_factory=dict)
    # Dedup key (target columns); empty keeps identical rows.
    key: list[str] = field(default_factory=list)
    # The bronze table it feeds, e.g. bronze/events.
    table: str = ""


@dataclass
class IngestConf:
    # Sources to ingest (default: all configured).
    sources: list[str] | None = None
    # Timestamps later than ingestion time plus this are rejected as future.
    future_tolerance_minutes: int = 5


PrivacyAction = Literal["drop", "hash", "keep"]
DEFAULT_IDENTIFIER_ACTIONS: dict[str, PrivacyAction] = {
    "full_name": "drop",
    "email": "drop",
    "phone": "drop",
    "address": "drop",
    "ip": "drop",
}


@dataclass
class PrivacyConf:
    """Direct identifiers are dropped or keyed-hashed at bronze; they never reach silver."""

    # Environment variable holding the HMAC key for `hash` (never in a file).
    hash_key_env: str = "SHOPSEG_HASH_KEY"
    identifiers: dict[str, PrivacyAction] = field(
        default_factory=lambda: dict(DEFAULT_IDENTIFIER_ACTIONS)
    )
    # Smallest group an export or a report may show.
    min_group_size: int = 10


@dataclass
class RfmRule:
    """A named RFM segment: recency and frequency score ranges (inclusive, 1..5)."""

    name: str = ""
    r: list[int] = field(default_factory=lambda: [1, 5])
    f: list[int] = field(default_factory=lambda: [1, 5])


DEFAULT_RFM_RULES = (
    ("Champions", (4, 5), (4, 5)),
    ("Can't lose", (1, 2), (5, 5)),
    ("Loyal", (3, 5), (3, 5)),
    ("New", (5, 5), (1, 1)),
    ("Potential loyalist", (3, 5), (1, 3)),
    ("At risk", (1, 2), (3, 4)),
    ("Hibernating", (2, 2), (1, 2)),
    ("Lost", (1, 1), (1, 2)),
)


@dataclass
class RfmConf:
    # Relative error of the quantiles that cut RFM quintiles (0 = exact, slower).
    quantile_error: float = 0.001
    # First matching rule names the segment; rules must cover every R x F cell.
    segments: list[RfmRule] = field(
        default_factory=lambda: [
            RfmRule(name, list(r), list(f)) for name, r, f in DEFAULT_RFM_RULES
        ]
    )
    no_purchase_segment: str = "Never purchased"


@dataclass
class ItemsFromEvents:
    """A catalogue from the event lines: which bronze/events columns describe an item."""

    # e.g. item_name (mapped from the export's Description); each optional.
    name: str | None = None
    price: str | None = "price"
    category: str | None = None


FEATURE_MODES = ("auto", "full", "incremental")


@dataclass
class FeaturesConf:
    """Stage `features`: silver events, user features, interactions."""

    # full: rebuild silver/events and every user's features from bronze;
    # incremental: add the new ingest batches' events and recompute only the
    # users whose window changed (README: Daily increments); auto: incremental
    # when the state of an earlier run matches this configuration, else full.
    mode: str = "auto"
    # Snapshot date; default the day after the last event.
    as_of_date: dt.date | None = None
    # Days of history before as_of_date; null = all.
    lookback_days: int | None = 365
    # Categories with a share column; null = the most frequent `top_categories_n`.
    top_categories: list[str] | None = None
    top_categories_n: int = 10
    # Demographic columns one-hot encoded: column -> values.
    demographics: dict[str, list[str]] = field(default_factory=dict)
    interaction_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 3.0, "purchase": 5.0, "review": 2.0}
    )
    # Time decay of interactions (half-life in days); null = none.
    interaction_half_life_days: float | None = None
    rfm: RfmConf = field(default_factory=RfmConf)
    # Derive silver/items from the event lines (shops without an item file).
    items_from_events: ItemsFromEvents | None = None


@dataclass
class SegmentFeature:
    """One clustering input: a Spark SQL expression over silver/user_features."""

    name: str = ""
    # Spark SQL over the user_features columns; default: the column `name` itself.
    expr: str | None = None
    # log1p (of the value floored at 0) before scaling: for skewed counts and amounts.
    log: bool = False


@dataclass
class SegmentName:
    """A marketer's name for a segment whose profile is high/low on these features."""

    name: str = ""
    # Segment feature names whose centroid z-score should be high (positive) / low.
    high: list[str] = field(default_factory=list)
    low: list[str] = field(default_factory=list)
    # Marketing strategy text copied into gold/segment_profiles.
    strategy: str = ""


DEFAULT_SEGMENT_FEATURES = (
    # Users without events in the window have been inactive since they signed up.
    # Not logged: the window bounds it, and a log would squeeze a 200-day gap
    # towards a 20-day one.
    ("inactive_days", "coalesce(inactive_days, tenure_days)", False),
    ("tenure_days", None, True),
    ("frequency", None, True),
    # Users without orders spent nothing per order: 0, not the median buyer's value.
    ("avg_order_value", "coalesce(avg_order_value, 0)", True),
    ("views", None, True),
    # Per-user averages over a handful of events are noise; these are shrunk
    # towards a typical value with pseudo-counts (empirical-Bayes smoothing), so
    # a user with one view of 3 s is not an extreme of "dwell time".
    # Discount share towards 25% (0.5 of 2 pseudo-orders).
    ("discount_share", "(coalesce(discount_share, 0) * frequency + 0.5) / (frequency + 2)", False),
    # Dwell towards 60 s (10 pseudo-views).
    (
        "mean_dwell_seconds",
        "(coalesce(mean_dwell_seconds, 0) * views + 60 * 10) / (views + 10)",
        True,
    ),
    # Views per session towards 4 (3 pseudo-sessions).
    ("views_per_session", "(views + 4 * 3) / (sessions + 3)", True),
)
DEFAULT_SEGMENT_NAMES = (
    (
        "High-value loyal",
        ["frequency", "avg_order_value"],
        [],
        "Reward and retain: loyalty perks, early access, premium picks; no discount needed.",
    ),
    (
        "Bargain hunters",
        ["discount_share"],
        ["avg_order_value"],
        "Time-limited deals, bundles and value packs; coupons only where they convert.",
    ),
    (
        "Dormant",
        ["inactive_days"],
        [],
        "Win back: a 'we miss you' offer with a strong incentive; stop if no response.",
    ),
    (
        "New customers",
        [],
        ["tenure_days"],
        "Onboarding: welcome series, second-purchase incentive, category discovery.",
    ),
    (
        "Window shoppers",
        ["views", "mean_dwell_seconds"],
        ["frequency"],
        "Convert browsing: cart and browse-abandonment reminders, social proof, free shipping.",
    ),
    (
        "One-time buyers",
        [],
        ["frequency", "views"],
        "Second order: personalised follow-up on the first purchase, small repeat incentive.",
    ),
)
DEFAULT_PROFILE_FEATURES = (
    "recency_days",
    "inactive_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "sessions",
    "views",
    "conversion_rate",
    "mean_dwell_seconds",
    "discount_share",
)


@dataclass
class SegmentConf:
    """Stage `segment`: K-means / bisecting K-means on user features."""

    # fit: sweep k and algorithms, fit, register; score: apply the registered model.
    mode: str = "fit"
    # Snapshot of silver/user_features to segment; default the latest as_of_date.
    as_of_date: dt.date | None = None
    features: list[SegmentFeature] = field(
        default_factory=lambda: [
            SegmentFeature(name, expr, log) for name, expr, log in DEFAULT_SEGMENT_FEATURES
        ]
    )
    # PCA components after scaling; null = no PCA.
    pca_components: int | None = None
    # Algorithms swept: kmeans (k-means||) and/or bisecting.
    algorithms: list[str] = field(default_factory=lambda: ["kmeans", "bisecting"])
    k_min: int = 2
    k_max: int = 10
    # Iterations per fit (per split for bisecting), Spark's default.
    max_iter: int = 20
    # k-means|| seeding rounds (Spark's default 2 is often stuck in a worse optimum).
    init_steps: int = 5
    # Fits per (algorithm, k) from different seeds; the lowest WSSSE is kept,
    # and stability asks whether another restart finds the same solution
    # (three were too few on other generator seeds: README, Segmentation).
    restarts: int = 6
    # Restarts for bisecting K-means, whose result depends little on the seed
    # (stability 1.000 at every k <= 8 with 2 seeds on the default data);
    # null = `restarts`.
    bisecting_restarts: int | None = 2
    # One more K-means start per k: from bisecting K-means' centres at that k
    # (k-means|| can miss an optimum bisecting finds; README, Segmentation).
    seed_from_bisecting: bool = True
    seed: int = 42
    # Users the k sweep runs on: with more, k and the algorithm are chosen on a
    # uniform sample of this many (the sweep's cost stops growing with the
    # shop) and only the chosen model is fitted on everyone, with `restarts`.
    sweep_sample: int = 50000
    # Rows sampled for the silhouette and for the two-seed stability fits. When
    # all users fit in the stability sample the restarts themselves are compared.
    silhouette_sample: int = 50000
    stability_sample: int = 50000
    # The prepared users are spread over one partition per core, but none
    # smaller than this (tiny partitions make every K-means iteration pay for
    # scheduling; the sweep runs hundreds of them).
    min_rows_per_partition: int = 10000
    # (algorithm, k) cells of the sweep fitted at once, on threads of one
    # session: a small sweep's jobs are a task each and leave cores idle.
    concurrent_fits: int = 2
    # A k is a candidate only when its two-seed adjusted Rand index reaches this.
    min_stability: float = 0.8
    # Users farther from their centroid than this percentile of their segment are outliers.
    outlier_percentile: float = 0.99
    names: list[SegmentName] = field(
        default_factory=lambda: [
            SegmentName(name, list(high), list(low), strategy)
            for name, high, low, strategy in DEFAULT_SEGMENT_NAMES
        ]
    )
    # A configured name applies only when its mean z-score reaches this.
    min_name_score: float = 0.5
    # silver/user_features columns summarised (median, lift) in the profiles.
    profile_features: list[str] = field(default_factory=lambda: list(DEFAULT_PROFILE_FEATURES))
    # Surrogate decision tree explaining the segments.
    tree_max_depth: int = 5
    tree_sample: int = 200000
    rules_per_segment: int = 3
    model_name: str = "shopseg_segmentation"
    # Alias of the model in use (set on fit, loaded on score).
    alias: str = "champion"


@dataclass
class AlsSearch:
    """A random search over ALS's parameters after the grid, on a log scale."""

    # Random trials after the grid points (0: the grid only).
    trials: int = 0
    rank: list[int] = field(default_factory=lambda: [8, 64])
    reg_param: list[float] = field(default_factory=lambda: [0.01, 1.0])
    # Confidence per unit of median interaction strength: alpha is drawn so that
    # alpha x (the training pairs' median strength) falls within this range.
    confidence: list[float] = field(default_factory=lambda: [0.1, 100.0])
    # Stop after this many trials in a row without a better NDCG (by min_gain).
    patience: int = 4
    min_gain: float = 0.001
    seed: int = 7


@dataclass
class RecommendConf:
    """Stage `recommend`: ALS on implicit feedback, evaluated against baselines."""

    # Snapshot of silver/interactions (and user_features) to use; default the latest.
    as_of_date: dt.date | None = None
    # Recommendations per user in gold/recommendations.
    top_n: int = 20
    # Cut-off of the evaluation metrics (precision_at_<k>, ndcg_at_<k>, ...).
    eval_k: int = 10
    # How events are split for evaluation: last_days (each user's last
    # holdout_days), last_share (each user's latest holdout_share of events),
    # last_n (each user's latest holdout_last_n events), cutoff (everything from
    # cutoff_date on), or auto: last_days where the median user's history spans
    # at least 2 x holdout_days, else last_share.
    split: Literal["auto", "last_days", "last_share", "last_n", "cutoff"] = "auto"
    holdout_days: int = 30
    holdout_share: float = 0.2
    holdout_last_n: int = 1
    cutoff_date: dt.date | None = None
    # A split leaving fewer evaluable users (of those with interactions) is refused.
    min_evaluable_share: float = 0.1
    # Leave out items the user already bought (purchase events).
    exclude_purchased: bool = True
    # Grid searched on the split; the best NDCG@eval_k is refitted on all data.
    ranks: list[int] = field(default_factory=lambda: [16, 32])
    reg_params: list[float] = field(default_factory=lambda: [0.05])
    alphas: list[float] = field(default_factory=lambda: [5.0, 20.0])
    max_iter: int = 10
    seed: int = 42
    # ALS user and item blocks; null = Spark's default parallelism.
    blocks: int | None = None
    # Most similar items per item in gold/similar_items.
    similar_items: int = 10
    # The item-item co-occurrence baseline (popularity baselines always run), and
    # its neighbours per item.
    item_item: bool = True
    item_neighbours: int = 50
    search: AlsSearch = field(default_factory=AlsSearch)
    # Block sizes of the top-N scorer (scores per task: user_block x item_block).
    user_block: int = 4096
    item_block: int = 16384
    model_name: str = "shopseg_recommender"
    alias: str = "champion"


@dataclass
class PropensityCondition:
    """Users by their decile of a propensity target (1 = most likely) in gold/propensity_scores."""

    # A target the propensity stage scores, e.g. churn_90d or purchase_30d.
    target: str = ""
    min_decile: int = 1
    max_decile: int = 10


@dataclass
class UpliftCondition:
    """Users by their predicted uplift in gold/uplift_scores (the latest scores up to the
    segments' snapshot).

    gain = uplift x value of a conversion (`uplift.conversion_value`, or the
    customer's expected order value from gold/customer_value when
    `uplift.value_from_clv`) - cost of a contact on the campaign's channel
    (`uplift.contact_cost`).
    """

    # The campaign whose randomized send trained the scores (their campaign_id);
    # null = the scores' only campaign.
    campaign: str | None = None
    # The share of the scored users with the highest expected gain ...
    top_share: float | None = None
    # ... and/or only those whose expected gain is at least this.
    min_gain: float | None = None


@dataclass
class CampaignTarget:
    """Who a campaign is for: every condition given must hold."""

    # Names of gold/user_segments (segment_name).
    segments: list[str] = field(default_factory=list)
    # RFM segments of silver/user_features (rfm_segment).
    rfm_segments: list[str] = field(default_factory=list)
    # A Spark SQL predicate over the silver/user_features columns.
    where: str | None = None
    # Deciles of a propensity target (the latest scores up to the segments' snapshot).
    propensity: PropensityCondition | None = None
    # Users by their predicted uplift (gold/uplift_scores): the top share, or a
    # minimum expected gain per contact.
    uplift: UpliftCondition | None = None
    # Keep this share of the users every other condition selects, by a salted
    # hash independent of the A/B split (a randomized trial over a broad audience).
    sample: float | None = None


@dataclass
class CampaignExclusions:
    # Users treated by any campaign sent within this many days before the send date.
    contacted_within_days: int | None = 30
    # A Spark SQL predicate over silver/user_features marking opted-out users
    # (e.g. `marketing_opt_in = false`); null = nobody has opted out.
    opted_out: str | None = None


@dataclass
class CampaignConf:
    """One campaign of conf/campaigns.yaml."""

    id: str = ""
    name: str = ""
    target: CampaignTarget = field(default_factory=CampaignTarget)
    offer: str = ""
    channel: str = "email"
    # Share of the eligible users held out as the control group.
    holdout: float = 0.1
    # Largest audience (treated and control); null = everyone eligible.
    max_audience: int | None = None
    # A user eligible for several campaigns joins the one with the highest priority.
    priority: int = 0
    exclude: CampaignExclusions = field(default_factory=CampaignExclusions)


@dataclass
class CampaignsFile:
    campaigns: list[CampaignConf] = field(default_factory=list)


@dataclass
class AudiencesConf:
    """Stage `audiences`: campaign audiences with A/B holdouts."""

    # The campaigns (relative paths resolve against the conf file's folder).
    campaigns_file: str | None = _path_field(None)
    # Send date of this run's audiences; default the segment snapshot's as-of date.
    send_date: dt.date | None = None
    # Salt of the treatment/control hash: a new salt gives new splits.
    salt: str = "shopseg"
    # Recommended items carried on each audience row.
    recommended_items: int = 3
    # Count eligible, treated and control users per campaign; write nothing.
    dry_run: bool = False


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


@dataclass
class UpliftRule:
    """A planted group: treated users matching `where` (and no earlier rule) get `lift`."""

    name: str = ""
    # Spark SQL over the silver/user_features columns of the send date.
    where: str = ""
    # Absolute change of the conversion probability when treated (negative: put off).
    lift: float = 0.0


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


@dataclass
class SimulateOutcomesConf:
    """Stage `simulate_outcomes` (synthetic data only): purchases after a send, known lift."""

    seed: int = 7
    # Outcomes fall within this many days after the send date.
    window_days: int = 30
    # Probability that a persona's user buys within the window untreated ...
    base_conversion: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BASE_CONVERSION))
    # ... and the absolute increase a treated user gets (the planted lift).
    lift: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PLANTED_LIFT))
    # Campaigns whose treatment changes nothing (their planted lift is 0).
    no_effect_campaigns: list[str] = field(default_factory=lambda: ["vip_early_access"])
    # persona: every treated user gets their persona's `lift`; heterogeneous:
    # the first of `uplift_rules` whose predicate holds on the user's features
    # at the send date decides, the persona's lift otherwise. Each user's
    # planted effect goes to raw/ground_truth/user_uplift.
    effect: Literal["persona", "heterogeneous"] = "heterogeneous"
    uplift_rules: list[UpliftRule] = field(
        default_factory=lambda: [UpliftRule(*rule) for rule in DEFAULT_UPLIFT_RULES]
    )
    # Mean order value per persona (lognormal, sigma 0.5).
    order_value: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ORDER_VALUE))


@dataclass
class EvaluateConf:
    """Stage `evaluate`: measured uplift of each campaign from outcome events."""

    # Purchase events after the send date: silver/events on real data; the
    # embedded default reads the simulated outcomes.
    outcomes_table: str = "silver/events"
    # Outcomes counted within this many days from the send date.
    window_days: int = 30
    # Send date evaluated; default the latest in gold/campaign_audiences.
    send_date: dt.date | None = None
    # Confidence of the uplift intervals.
    confidence: float = 0.95


@dataclass
class ClvConf:
    """Stage `clv`: BG/NBD and Gamma-Gamma lifetime value and churn probability."""

    # fit: fit both models on the purchases up to calibration_end and register
    # them; score: value the customers as of calibration_end with the
    # registered model (alias below), no refit (a daily increment's step).
    mode: Literal["fit", "score"] = "fit"
    # Last day of the calibration period (inclusive); default the last day with an event.
    calibration_end: dt.date | None = None
    # Last day of a holdout period to check the forecast against; null = none.
    holdout_end: dt.date | None = None
    # Unit of x, t_x and T (and of the fitted alpha).
    time_unit: Literal["days", "weeks"] = "weeks"
    # Lifetime value over this many days after calibration_end.
    horizon_days: int = 365
    # Discount rate per year, applied month by month.
    annual_discount_rate: float = 0.10
    # Share of spend that is profit (1.0: CLV in revenue).
    margin: float = 1.0
    # churn_risk from the probability alive: `high` below the first, `medium`
    # below the second, `low` otherwise.
    risk_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.7])
    model_name: str = "shopseg_clv"
    alias: str = "champion"


PROPENSITY_MODEL_PARAMS = {
    # Spark ML parameter names each kind's grid may vary.
    "logistic": ("regParam", "elasticNetParam", "maxIter"),
    "random_forest": ("numTrees", "maxDepth", "minInstancesPerNode", "subsamplingRate"),
    "gbt": ("maxIter", "maxDepth", "stepSize", "minInstancesPerNode", "subsamplingRate"),
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


@dataclass
class PropensityTarget:
    """One target: `purchase_<h>d` or `churn_<h>d`."""

    # purchase: buys at least once in the next horizon_days (every user);
    # churn: a buyer of the last active_days who buys nothing in the next horizon_days.
    kind: Literal["purchase", "churn"] = "purchase"
    horizon_days: int = 30
    active_days: int = 180

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.horizon_days}d"


@dataclass
class PropensityModel:
    """One classifier family and its grid (every combination of the listed values)."""

    kind: Literal["logistic", "random_forest", "gbt"] = "logistic"
    params: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class PropensityConf:
    """Stage `propensity`: who will buy and who will churn, by calibrated classifiers."""

    # fit: build point-in-time rows, choose, calibrate, register, score;
    # score: score the snapshot with the registered champions.
    mode: Literal["fit", "score"] = "fit"
    # Snapshot of silver/user_features to score; default the latest as_of_date.
    as_of_date: dt.date | None = None
    targets: list[PropensityTarget] = field(
        default_factory=lambda: [
            PropensityTarget("purchase", 30),
            PropensityTarget("churn", 90, 180),
        ]
    )
    # Per target, the validation cut-off is the latest whose label window ends
    # by the scored snapshot (as_of_date - horizon), or last_cutoff when set;
    # the training cut-offs are the `training_cutoffs` before it, every
    # `cutoff_step_days`.
    training_cutoffs: int = 1
    cutoff_step_days: int = 30
    last_cutoff: dt.date | None = None
    features: list[SegmentFeature] = field(
        default_factory=lambda: [
            SegmentFeature(name, expr, log) for name, expr, log in DEFAULT_PROPENSITY_FEATURES
        ]
    )
    # Days of BG/NBD's expected transactions offered to the models as the column
    # `bgnbd_expected_transactions` (fitted on the purchases before each cut-off
    # and before the scored snapshot; name it in `features`); null = not computed.
    bgnbd_feature_days: int | None = None
    models: list[PropensityModel] = field(
        default_factory=lambda: [
            # One point per family, sized for the demo (every boosting round
            # or logistic iteration is a Spark job); larger grids by configuration.
            PropensityModel(
                "logistic", {"regParam": [0.001], "elasticNetParam": [0.5], "maxIter": [20]}
            ),
            PropensityModel("random_forest", {"numTrees": [40], "maxDepth": [6]}),
            PropensityModel("gbt", {"maxIter": [10], "maxDepth": [4]}),
        ]
    )
    # Share of the validation cut-off's users (by hash) the isotonic calibration
    # is fitted on; calibration is measured on the others.
    calibration_share: float = 0.5
    # Equal-width probability bins of the expected calibration error and the reliability chart.
    calibration_bins: int = 10
    seed: int = 42
    # Targets trained at once, on threads of one session (their Spark jobs run
    # side by side; MLflow records them one after the other).
    concurrent_targets: int = 2
    # Registered as <model_prefix>_<target>.
    model_prefix: str = "shopseg_propensity"
    alias: str = "champion"


@dataclass
class ExperimentTreatment:
    """The treatment column of an exported experiment and its two values."""

    column: str = ""
    treated: str = ""
    control: str = ""


@dataclass
class ExperimentConf:
    """A randomized experiment exported from elsewhere, one row per user."""

    path: str = _path_field("")
    format: Literal["csv", "parquet", "json", "delta"] = "csv"
    # Reader options (csv: header defaults to true).
    options: dict[str, str] = field(default_factory=dict)
    treatment: ExperimentTreatment = field(default_factory=ExperimentTreatment)
    # Converted (1) or not (0); true/false and yes/no are read as 1/0.
    outcome: str = ""
    # The model's inputs: numeric columns as they are, categorical ones one-hot
    # (the `max_categories` most frequent values, the rest `other`).
    features: dict[str, Literal["numeric", "categorical"]] = field(default_factory=dict)
    max_categories: int = 20
    # A column identifying the rows (kept beside the held-out predictions); optional.
    id_column: str | None = None


DEFAULT_UPLIFT_FEATURES = (
    *DEFAULT_PROPENSITY_FEATURES,
    ("mean_rating", None, False),
)


@dataclass
class UpliftConf:
    """Stage `uplift`: whom a campaign changes, from a past randomized send."""

    # The randomized campaign trained on (gold/campaign_audiences with its
    # outcomes from evaluate.outcomes_table); ignored when `experiment` is set.
    campaign: str = "uplift_trial"
    # Its send date; default its latest.
    send_date: dt.date | None = None
    # Train on an exported experiment instead (conf/uplift_experiment_example.yaml).
    experiment: ExperimentConf | None = None
    features: list[SegmentFeature] = field(
        default_factory=lambda: [
            SegmentFeature(name, expr, log) for name, expr, log in DEFAULT_UPLIFT_FEATURES
        ]
    )
    # Candidates, chosen by the Qini coefficient on the held-out users:
    # t_learner (a GBT regression of the outcome per arm, uplift = difference)
    # and transformed_outcome (one GBT regression of Y (T - e) / (e (1 - e))).
    learners: list[Literal["t_learner", "transformed_outcome"]] = field(
        default_factory=lambda: ["t_learner", "transformed_outcome"]
    )
    # Spark ML GBTRegressor parameters of every learner.
    gbt: dict[str, float] = field(
        default_factory=lambda: {"maxIter": 20, "maxDepth": 3, "stepSize": 0.1}
    )
    # Share of the users (by hash, within each arm) held out to choose and measure.
    validation_share: float = 0.3
    # Bootstrap resamples of the held-out users for the Qini interval.
    bootstrap: int = 100
    confidence: float = 0.95
    # Targeting compared at equal contacts (synthetic data, against the planted
    # effect): this share of the scored users, uplift against purchase propensity
    # (`compare_propensity`), the rule of `compare_campaign` and random.
    compare_share: float = 0.3
    compare_propensity: str = "purchase_30d"
    compare_campaign: str | None = "bargain_picks"
    # Value of one conversion in the expected gain of a contact ...
    conversion_value: float = 50.0
    # ... or each customer's expected order value (gold/customer_value), that value otherwise.
    value_from_clv: bool = False
    # Cost of one contact per channel (channels not listed cost nothing).
    contact_cost: dict[str, float] = field(
        default_factory=lambda: {"email": 0.05, "app": 0.02, "sms": 0.5, "post": 1.0}
    )
    seed: int = 42
    model_name: str = "shopseg_uplift"
    alias: str = "champion"


@dataclass
class MaintainConf:
    """Stage `maintain` (not part of `shopseg run`): compaction and vacuum of Delta tables."""

    # Tables to maintain; null = every table of the contract that exists.
    tables: list[str] | None = None
    # Compact files smaller than this into files of about this size (MB).
    target_file_mb: int = 128
    # Cluster the compacted files by these columns (Z-ORDER) where a table
    # has them all; [] = plain compaction.
    zorder_by: list[str] = field(default_factory=lambda: ["user_id"])
    # Remove files no version younger than this references (Delta's default
    # is 7 days: readers of older versions and concurrent writers need them).
    retention_hours: float = 168.0


@dataclass
class PipelineConf:
    # Stages `shopseg run` runs without --stages (default: all).
    stages: list[str] | None = None


@dataclass
class StreamConf:
    """`shopseg stream`: Structured Streaming from a source's landing folder."""

    # The source whose folder the stream watches (a line-based one: json, csv, ...).
    source: str = "events"
    # availableNow: process the files there and stop (for schedulers); or a
    # processing-time interval such as "5 seconds".
    trigger: str = "availableNow"
    max_files_per_trigger: int = 1
    # Default: <lakehouse.root>/_checkpoints/stream.
    checkpoint: str | None = _path_field(None)
    # Score the changed users with the segment champion and merge them into
    # gold/user_segments_current.
    segments: bool = True


@dataclass
class Config:
    """The whole configuration of one shopseg invocation."""

    lakehouse: LakehouseConf = field(default_factory=LakehouseConf)
    spark: SparkConf = field(default_factory=SparkConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    logging: LoggingConf = field(default_factory=LoggingConf)
    pipeline: PipelineConf = field(default_factory=PipelineConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    sources: dict[str, SourceConf] = field(default_factory=dict)
    ingest: IngestConf = field(default_factory=IngestConf)
    privacy: PrivacyConf = field(default_factory=PrivacyConf)
    features: FeaturesConf = field(default_factory=FeaturesConf)
    segment: SegmentConf = field(default_factory=SegmentConf)
    recommend: RecommendConf = field(default_factory=RecommendConf)
    audiences: AudiencesConf = field(default_factory=AudiencesConf)
    simulate_outcomes: SimulateOutcomesConf = field(default_factory=SimulateOutcomesConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    clv: ClvConf = field(default_factory=ClvConf)
    propensity: PropensityConf = field(default_factory=PropensityConf)
    uplift: UpliftConf = field(default_factory=UpliftConf)
    maintain: MaintainConf = field(default_factory=MaintainConf)
    stream: StreamConf = field(default_factory=StreamConf)
    # Where the values came from (for messages); not a configuration key.
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every key (internal fields left out)."""
        return _to_plain(self)

    def fingerprint(self) -> str:
        """Short stable hash of the resolved configuration, recorded in Delta commits."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- validation


def _check(cond: bool, key: str, origin: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{origin}: {key}: {message}")


def _is_time_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _validate(config: Config) -> None:
    origin = config.source
    g = config.generate
    _check(g.users > 0, "generate.users", origin, "must be positive")
    _check(g.items > 0, "generate.items", origin, "must be positive")
    _check(g.events_per_user > 0, "generate.events_per_user", origin, "must be positive")
    _check(g.start_date < g.end_date, "generate.start_date", origin, "must be before end_date")
    _check(0 <= g.dirty_fraction <= 0.5, "generate.dirty_fraction", origin, "must be within 0..0.5")
    _check(bool(g.personas), "generate.personas", origin, "needs at least one persona")
    unknown = sorted(set(g.personas) - set(DEFAULT_PERSONA_WEIGHTS))
    _check(
        not unknown,
        "generate.personas",
        origin,
        f"unknown persona(s) {unknown}; known: {sorted(DEFAULT_PERSONA_WEIGHTS)}",
    )
    _check(
        all(w >= 0 for w in g.personas.values()) and sum(g.personas.values()) > 0,
        "generate.personas",
        origin,
        "weights must be non-negative and not all zero",
    )
    if g.output_partitions is not None:
        _check(g.output_partitions > 0, "generate.output_partitions", origin, "must be positive")
    d = g.drift
    _check(0 <= d.share <= 1, "generate.drift.share", origin, "must be within 0..1")
    for key in ("from_persona", "to_persona"):
        _check(
            getattr(d, key) in DEFAULT_PERSONA_WEIGHTS,
            f"generate.drift.{key}",
            origin,
            f"unknown persona {getattr(d, key)!r}; known: {sorted(DEFAULT_PERSONA_WEIGHTS)}",
        )
    _check(
        d.from_persona != d.to_persona,
        "generate.drift.to_persona",
        origin,
        "must differ from from_persona",
    )
    if d.share > 0:
        _check(
            d.date is not None and g.start_date < d.date <= g.end_date,
            "generate.drift.date",
            origin,
            f"must be a date after start_date {g.start_date} and not after end_date {g.end_date}",
        )
    sp = config.spark.shuffle_partitions
    _check(sp is None or sp > 0, "spark.shuffle_partitions", origin, "must be positive")
    _check(
        _is_time_zone(config.spark.time_zone),
        "spark.time_zone",
        origin,
        f"unknown time zone {config.spark.time_zone!r} (an IANA name such as UTC or Europe/Paris)",
    )
    _validate_sources(config)
    _validate_features(config)
    _validate_segment(config)
    _validate_recommend(config)
    _validate_propensity(config)
    ev = config.evaluate
    _check(0.5 < ev.confidence < 1, "evaluate.confidence", origin, "must be within 0.5..1")
    _check(ev.window_days > 0, "evaluate.window_days", origin, "must be positive")
    so = config.simulate_outcomes
    for key, values in (("base_conversion", so.base_conversion), ("lift", so.lift)):
        _check(
            all(0 <= v <= 1 for v in values.values()),
            f"simulate_outcomes.{key}",
            origin,
            "probabilities must be within 0..1",
        )
    for i, rule in enumerate(so.uplift_rules):
        key = f"simulate_outcomes.uplift_rules[{i}]"
        _check(bool(rule.name), f"{key}.name", origin, "is required")
        _check(bool(rule.where), f"{key}.where", origin, "is required (Spark SQL)")
        _check(-1 <= rule.lift <= 1, f"{key}.lift", origin, "must be within -1..1")
    _validate_uplift(config)
    _validate_stream(config)
    c = config.clv
    _check(c.horizon_days > 0, "clv.horizon_days", origin, "must be positive")
    _check(
        0 <= c.annual_discount_rate < 1, "clv.annual_discount_rate", origin, "must be within 0..1"
    )
    _check(c.margin > 0, "clv.margin", origin, "must be positive")
    _check(
        len(c.risk_thresholds) == 2 and 0 < c.risk_thresholds[0] < c.risk_thresholds[1] < 1,
        "clv.risk_thresholds",
        origin,
        "must be two probabilities, increasing, within 0..1 (high-risk below the first)",
    )
    _check(
        c.mode == "fit" or c.holdout_end is None,
        "clv.holdout_end",
        origin,
        "checks a fitted forecast; set it to null with clv.mode score",
    )
    if c.calibration_end and c.holdout_end:
        _check(
            c.calibration_end < c.holdout_end,
            "clv.holdout_end",
            origin,
            f"must be after clv.calibration_end {c.calibration_end}",
        )
    artifacts = config.mlflow.artifact_root or ""
    _check(
        not artifacts.startswith(("s3a://", "s3n://")),
        "mlflow.artifact_root",
        origin,
        f"{artifacts!r}: MLflow writes s3:// URIs, not Hadoop's s3a:// or s3n://",
    )
    _check(
        config.lakehouse.target_file_mb > 0, "lakehouse.target_file_mb", origin, "must be positive"
    )
    m = config.maintain
    _check(m.target_file_mb > 0, "maintain.target_file_mb", origin, "must be positive")
    _check(m.retention_hours >= 0, "maintain.retention_hours", origin, "must be >= 0")
    _check(config.privacy.min_group_size >= 1, "privacy.min_group_size", origin, "must be >= 1")
    root = config.lakehouse.root
    if is_uri(root) and not root.startswith("file:"):
        _check(
            config.mlflow.tracking_uri is not None,
            "mlflow.tracking_uri",
            origin,
            "is required when lakehouse.root is not a local path (SQLite needs a local file)",
        )


_PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _validate_sources(config: Config) -> None:
    origin = config.source
    types_by_table: dict[str, dict[str, tuple[str, str]]] = {}
    for name, src in config.sources.items():
        key = f"sources.{name}"
        _check(bool(_PLAIN_NAME.match(name)), key, origin, "name must be lower_snake_case")
        _check(bool(src.path), f"{key}.path", origin, "is required")
        _check(
            src.table.startswith("bronze/") and len(src.table) > len("bronze/"),
            f"{key}.table",
            origin,
            "must name a bronze table, e.g. bronze/events",
        )
        _check(bool(src.columns), f"{key}.columns", origin, "needs at least one column")
        both = sorted(set(src.columns) & set(src.constants))
        _check(not both, f"{key}.constants", origin, f"{both} are also mapped columns")
        targets = set(src.columns) | set(src.constants)
        missing_key = sorted(set(src.key) - targets)
        _check(not missing_key, f"{key}.key", origin, f"{missing_key} are not target columns")
        _validate_source_reading(name, src, origin)
        for col, spec in src.columns.items():
            ckey = f"{key}.columns.{col}"
            _check(bool(_PLAIN_NAME.match(col)), ckey, origin, "name must be lower_snake_case")
            _validate_column_source(name, src, col, spec, origin)
            if src.format == "fixed_width":
                _check(
                    spec.start is not None and spec.start >= 1 and (spec.length or 0) >= 1,
                    ckey,
                    origin,
                    "fixed_width columns need start >= 1 and length >= 1",
                )
            if spec.min is not None and spec.max is not None:
                _check(spec.min <= spec.max, f"{ckey}.min", origin, "must not exceed max")
            if spec.format is not None:
                _check(
                    spec.type in ("date", "timestamp"),
                    f"{ckey}.format",
                    origin,
                    "only date and timestamp columns take a format",
                )
            seen = types_by_table.setdefault(src.table, {})
            if col in seen and seen[col][0] != spec.type:
                raise ConfigError(
                    f"{origin}: {ckey}.type: {spec.type} conflicts with {seen[col][1]} "
                    f"({seen[col][0]}); sources feeding {src.table} must agree"
                )
            seen.setdefault(col, (spec.type, f"{key}.columns.{col}"))
    wanted = config.ingest.sources
    if wanted is not None:
        unknown = sorted(set(wanted) - set(config.sources))
        _check(not unknown, "ingest.sources", origin, f"unknown source(s) {unknown}")


TEXT_FORMATS = ("csv", "json", "whitespace", "fixed_width")


def _validate_source_reading(name: str, src: SourceConf, origin: str) -> None:
    """How a source's files are read: field names, encoding."""
    key = f"sources.{name}"
    headed = src.options.get("header", "false").lower() == "true"
    if src.names is not None:
        _check(
            src.format in ("csv", "whitespace"),
            f"{key}.names",
            origin,
            "only csv and whitespace sources without a header take names",
        )
        _check(
            not headed,
            f"{key}.names",
            origin,
            "the files have a header (options.header: true): their own names are used",
        )
        _check(
            bool(src.names) and all(isinstance(n, str) and n for n in src.names),
            f"{key}.names",
            origin,
            "must be a non-empty list of field names",
        )
        dupes = sorted({n for n in src.names if src.names.count(n) > 1})
        _check(not dupes, f"{key}.names", origin, f"{dupes} appear more than once")
    if src.encoding is not None:
        _check(
            src.format in TEXT_FORMATS,
            f"{key}.encoding",
            origin,
            f"only text sources ({', '.join(TEXT_FORMATS)}) take an encoding",
        )
        try:
            codec = codecs.lookup(src.encoding)
        except LookupError:
            raise ConfigError(
                f"{origin}: {key}.encoding: unknown character set {src.encoding!r} "
                "(e.g. UTF-8, ISO-8859-1, windows-1252)"
            ) from None
        # Lines are split on the bytes of \n before decoding.
        _check(
            "a\n".encode(codec.name) == b"a\n",
            f"{key}.encoding",
            origin,
            f"{src.encoding!r} is not ASCII-compatible; lines cannot be split in it "
            "(convert the files to UTF-8)",
        )


def _validate_column_source(
    name: str, src: SourceConf, col: str, spec: ColumnConf, origin: str
) -> None:
    """Where a target column's value comes from: a field, a position or an expression."""
    ckey = f"sources.{name}.columns.{col}"
    headed = src.options.get("header", "false").lower() == "true"
    if spec.expr is not None:
        _check(
            spec.source is None,
            f"{ckey}.expr",
            origin,
            "a column takes either `source` or `expr`, not both",
        )
        _check(bool(spec.expr.strip()), f"{ckey}.expr", origin, "must not be empty")
        _check(
            src.format != "fixed_width",
            f"{ckey}.expr",
            origin,
            "fixed_width fields have no names for an expression to use",
        )
        _check(
            src.format not in ("csv", "whitespace") or headed or src.names is not None,
            f"{ckey}.expr",
            origin,
            "a file without a header needs `names` for an expression to refer to its fields",
        )
    if isinstance(spec.source, int):
        _check(
            src.format in ("csv", "whitespace"),
            f"{ckey}.source",
            origin,
            "a position (0, 1, ...) names a field of csv or whitespace lines only",
        )
        _check(spec.source >= 0, f"{ckey}.source", origin, "a position must be >= 0")
        if src.names is not None:
            _check(
                spec.source < len(src.names),
                f"{ckey}.source",
                origin,
                f"position {spec.source} is past the {len(src.names)} names",
            )
    elif src.names is not None and spec.expr is None:
        field_name = spec.source or col
        _check(
            field_name in src.names or re.fullmatch(r"_c\d+", field_name) is not None,
            f"{ckey}.source",
            origin,
            f"{field_name!r} is not one of the names {src.names}",
        )


def _validate_features(config: Config) -> None:
    origin = config.source
    f = config.features
    if f.lookback_days is not None:
        _check(f.lookback_days > 0, "features.lookback_days", origin, "must be positive")
    _check(f.top_categories_n > 0, "features.top_categories_n", origin, "must be positive")
    _check(
        f.mode in FEATURE_MODES, "features.mode", origin, f"must be one of {list(FEATURE_MODES)}"
    )
    _check(
        all(w >= 0 for w in f.interaction_weights.values()),
        "features.interaction_weights",
        origin,
        "weights must be non-negative",
    )
    if f.interaction_half_life_days is not None:
        _check(
            f.interaction_half_life_days > 0,
            "features.interaction_half_life_days",
            origin,
            "must be positive",
        )
    _check(
        0 <= f.rfm.quantile_error < 0.5,
        "features.rfm.quantile_error",
        origin,
        "must be in [0, 0.5)",
    )
    names = [rule.name for rule in f.rfm.segments]
    _check(
        all(names) and len(set(names)) == len(names),
        "features.rfm.segments",
        origin,
        "every rule needs a unique name",
    )
    covered = set()
    for i, rule in enumerate(f.rfm.segments):
        for axis in ("r", "f"):
            lo_hi = getattr(rule, axis)
            _check(
                len(lo_hi) == 2 and 1 <= lo_hi[0] <= lo_hi[1] <= 5,
                f"features.rfm.segments[{i}].{axis}",
                origin,
                "must be [low, high] within 1..5",
            )
        covered |= {
            (r, fr)
            for r in range(rule.r[0], rule.r[1] + 1)
            for fr in range(rule.f[0], rule.f[1] + 1)
        }
    gaps = sorted({(r, fr) for r in range(1, 6) for fr in range(1, 6)} - covered)
    _check(
        not gaps,
        "features.rfm.segments",
        origin,
        f"no rule covers (R, F) scores {gaps}; every cell needs a segment",
    )


SEGMENT_MODES = ("fit", "score")
SEGMENT_ALGORITHMS = ("kmeans", "bisecting")


def _check_features(features: list[SegmentFeature], key: str, origin: str) -> list[str]:
    """At least one feature, each named by a unique plain identifier; returns the names."""
    names = [f.name for f in features]
    _check(bool(names), key, origin, "needs at least one feature")
    for i, name in enumerate(names):
        _check(
            re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or "") is not None,
            f"{key}[{i}].name",
            origin,
            f"{name!r} is not a plain identifier",
        )
    _check(len(set(names)) == len(names), key, origin, "names must be unique")
    return names


def _validate_propensity(config: Config) -> None:
    origin = config.source
    p = config.propensity
    _check(bool(p.targets), "propensity.targets", origin, "needs at least one target")
    for i, target in enumerate(p.targets):
        _check(target.horizon_days > 0, f"propensity.targets[{i}].horizon_days", origin,
               "must be positive")  # fmt: skip
        _check(target.active_days > 0, f"propensity.targets[{i}].active_days", origin,
               "must be positive")  # fmt: skip
    names = [target.name for target in p.targets]
    _check(len(set(names)) == len(names), "propensity.targets", origin,
           f"targets must differ in kind or horizon: {names}")  # fmt: skip
    _check(p.training_cutoffs > 0, "propensity.training_cutoffs", origin, "must be positive")
    _check(p.bgnbd_feature_days is None or p.bgnbd_feature_days > 0,
           "propensity.bgnbd_feature_days", origin, "must be positive (or null)")  # fmt: skip
    _check(p.cutoff_step_days > 0, "propensity.cutoff_step_days", origin, "must be positive")
    _check(0 < p.calibration_share < 1, "propensity.calibration_share", origin,
           "must be within 0..1 (exclusive)")  # fmt: skip
    _check(p.calibration_bins > 1, "propensity.calibration_bins", origin, "must be at least 2")
    _check(p.concurrent_targets > 0, "propensity.concurrent_targets", origin, "must be positive")
    _check_features(p.features, "propensity.features", origin)
    _check(bool(p.models), "propensity.models", origin, "needs at least one model")
    for i, model in enumerate(p.models):
        allowed = PROPENSITY_MODEL_PARAMS[model.kind]
        for param, values in model.params.items():
            _check(param in allowed, f"propensity.models[{i}].params.{param}", origin,
                   f"not a grid parameter of {model.kind}; use one of {list(allowed)}")  # fmt: skip
            _check(bool(values), f"propensity.models[{i}].params.{param}", origin,
                   "needs at least one value")  # fmt: skip


STREAM_INTERVAL = re.compile(r"^\d+(\.\d+)? (second|seconds|minute|minutes)$")


def _validate_stream(config: Config) -> None:
    origin, st = config.source, config.stream
    _check(
        st.trigger == "availableNow" or bool(STREAM_INTERVAL.match(st.trigger)),
        "stream.trigger",
        origin,
        "must be availableNow or an interval such as '5 seconds'",
    )
    _check(st.max_files_per_trigger > 0, "stream.max_files_per_trigger", origin, "must be positive")


def _validate_uplift(config: Config) -> None:
    origin = config.source
    u = config.uplift
    _check(bool(u.learners), "uplift.learners", origin, "needs at least one learner")
    _check(0 < u.validation_share < 1, "uplift.validation_share", origin,
           "must be within 0..1 (exclusive)")  # fmt: skip
    _check(0 < u.compare_share <= 1, "uplift.compare_share", origin, "must be within 0..1")
    _check(u.bootstrap >= 20, "uplift.bootstrap", origin, "must be at least 20")
    _check(0.5 < u.confidence < 1, "uplift.confidence", origin, "must be within 0.5..1")
    _check(u.conversion_value > 0, "uplift.conversion_value", origin, "must be positive")
    allowed = ("maxIter", "maxDepth", "stepSize", "minInstancesPerNode", "subsamplingRate")
    for param in u.gbt:
        _check(param in allowed, f"uplift.gbt.{param}", origin,
               f"not a GBTRegressor parameter shopseg sets; one of {list(allowed)}")  # fmt: skip
    _check_features(u.features, "uplift.features", origin)
    e = u.experiment
    if e is not None:
        _check(bool(e.path), "uplift.experiment.path", origin, "is required")
        for key in ("column", "treated", "control"):
            _check(bool(getattr(e.treatment, key)), f"uplift.experiment.treatment.{key}",
                   origin, "is required")  # fmt: skip
        _check(e.treatment.treated != e.treatment.control, "uplift.experiment.treatment",
               origin, "treated and control values must differ")  # fmt: skip
        _check(bool(e.outcome), "uplift.experiment.outcome", origin, "is required")
        _check(bool(e.features), "uplift.experiment.features", origin,
               "needs at least one column")  # fmt: skip
        both = sorted({e.treatment.column, e.outcome} & set(e.features))
        _check(not both, "uplift.experiment.features", origin,
               f"{both} are the treatment or outcome column")  # fmt: skip
        _check(e.max_categories >= 1, "uplift.experiment.max_categories", origin,
               "must be positive")  # fmt: skip


def _validate_segment(config: Config) -> None:
    origin = config.source
    s = config.segment
    _check(s.mode in SEGMENT_MODES, "segment.mode", origin, f"must be one of {SEGMENT_MODES}")
    _check(
        bool(s.algorithms) and set(s.algorithms) <= set(SEGMENT_ALGORITHMS),
        "segment.algorithms",
        origin,
        f"must be a non-empty subset of {list(SEGMENT_ALGORITHMS)}",
    )
    _check(s.k_min >= 2, "segment.k_min", origin, "must be at least 2")
    _check(s.k_max >= s.k_min, "segment.k_max", origin, "must be at least segment.k_min")
    for key in (
        "max_iter",
        "init_steps",
        "restarts",
        "sweep_sample",
        "silhouette_sample",
        "stability_sample",
        "min_rows_per_partition",
        "concurrent_fits",
    ):
        _check(getattr(s, key) > 0, f"segment.{key}", origin, "must be positive")
    _check(
        s.bisecting_restarts is None or s.bisecting_restarts > 0,
        "segment.bisecting_restarts",
        origin,
        "must be positive (or null for segment.restarts)",
    )
    _check(s.tree_max_depth > 0, "segment.tree_max_depth", origin, "must be positive")
    _check(s.tree_sample > 0, "segment.tree_sample", origin, "must be positive")
    _check(s.rules_per_segment > 0, "segment.rules_per_segment", origin, "must be positive")
    _check(0 <= s.min_stability <= 1, "segment.min_stability", origin, "must be in [0, 1]")
    _check(0 < s.outlier_percentile < 1, "segment.outlier_percentile", origin, "must be in (0, 1)")
    names = _check_features(s.features, "segment.features", origin)
    if s.pca_components is not None:
        _check(
            0 < s.pca_components <= len(names),
            "segment.pca_components",
            origin,
            f"must be between 1 and the number of features ({len(names)})",
        )
    labels = [n.name for n in s.names]
    _check(
        all(labels) and len(set(labels)) == len(labels),
        "segment.names",
        origin,
        "every name needs a unique `name`",
    )
    for i, rule in enumerate(s.names):
        unknown = sorted(set(rule.high + rule.low) - set(names))
        _check(
            not unknown,
            f"segment.names[{i}]",
            origin,
            f"{rule.name!r} refers to unknown segment feature(s) {unknown}; features: {names}",
        )
        _check(
            bool(rule.high or rule.low),
            f"segment.names[{i}]",
            origin,
            f"{rule.name!r} needs `high` or `low` features",
        )
    _check(bool(s.profile_features), "segment.profile_features", origin, "must not be empty")


def _validate_recommend(config: Config) -> None:
    origin = config.source
    r = config.recommend
    for key in (
        "top_n",
        "eval_k",
        "holdout_days",
        "max_iter",
        "similar_items",
        "holdout_last_n",
        "item_neighbours",
    ):
        _check(getattr(r, key) > 0, f"recommend.{key}", origin, "must be positive")
    _check(0 < r.holdout_share < 1, "recommend.holdout_share", origin, "must be within 0..1")
    _check(
        0 <= r.min_evaluable_share <= 1,
        "recommend.min_evaluable_share",
        origin,
        "must be within 0..1",
    )
    se = r.search
    _check(se.trials >= 0, "recommend.search.trials", origin, "must be >= 0")
    _check(se.patience > 0, "recommend.search.patience", origin, "must be positive")
    for key in ("rank", "reg_param", "confidence"):
        bounds = getattr(se, key)
        _check(
            len(bounds) == 2 and 0 < bounds[0] <= bounds[1],
            f"recommend.search.{key}",
            origin,
            "must be [low, high] with 0 < low <= high",
        )
    _check(
        r.split != "cutoff" or r.cutoff_date is not None,
        "recommend.cutoff_date",
        origin,
        "is required with recommend.split: cutoff",
    )
    for key in ("user_block", "item_block"):
        _check(getattr(r, key) > 0, f"recommend.{key}", origin, "must be positive")
    _check(r.blocks is None or r.blocks > 0, "recommend.blocks", origin, "must be positive")
    for key in ("ranks", "reg_params", "alphas"):
        values = getattr(r, key)
        _check(bool(values), f"recommend.{key}", origin, "needs at least one value")
    _check(all(v > 0 for v in r.ranks), "recommend.ranks", origin, "must be positive")
    _check(all(v >= 0 for v in r.reg_params), "recommend.reg_params", origin, "must be >= 0")
    _check(all(v > 0 for v in r.alphas), "recommend.alphas", origin, "must be positive")


# --------------------------------------------------------------------------- typing


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal")
        }
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Convert a YAML value to `tp`, or raise ConfigError naming key and origin."""
    torigin = typing.get_origin(tp)

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{origin}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )

    if torigin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origin)
            except ConfigError:
                continue
        fail()
    if torigin is Literal:
        if value in typing.get_args(tp):
            return value
        fail()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key, origin)
    if torigin is dict:
        ktype, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            fail()
        out = {}
        for k, v in value.items():
            # Spark properties are strings; YAML reads `4` as an int.
            if vtype is str and isinstance(v, int | float | bool):
                v = str(v).lower() if isinstance(v, bool) else str(v)
            out[str(k)] = _convert(v, vtype, f"{key}.{k}", origin)
        return out
    if torigin is list:
        (vtype,) = typing.get_args(tp)
        if not isinstance(value, list):
            fail()
        return [_convert(v, vtype, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                fail()
        fail()
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: dict[str, Any], prefix: str, origin: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{origin}: unknown key '{where}{unknown[0]}' (known keys here: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key, origin)
    return cls(**kwargs)


# --------------------------------------------------------------------------- loading


def _field_type_at(path: list[str]) -> tuple[Any, list[str], bool, bool]:
    """Walk `path` through the schema.

    Returns the type at the end, the normalised path, whether it is a path
    field, and whether it is a value inside a mapping.

    Inside a mapping of plain values the rest of the path is one key, so
    `spark.conf.spark.sql.shuffle.partitions` names the property
    `spark.sql.shuffle.partitions`.
    """
    tp: Any = Config
    out: list[str] = []
    is_path = False
    i = 0
    while i < len(path):
        part = path[i]
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp) if not f.metadata.get("internal")}
            if part not in fields:
                raise KeyError(".".join(out + [part]))
            is_path = bool(fields[part].metadata.get("path"))
            tp = _hints(tp)[part]
            out.append(part)
            i += 1
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            continue
        if typing.get_origin(tp) is dict:
            vtype = typing.get_args(tp)[1]
            if dataclasses.is_dataclass(vtype):
                out.append(part)
                tp = vtype
                i += 1
                continue
            out.append(".".join(path[i:]))
            return vtype, out, is_path, True
        raise KeyError(".".join(out + [part]))
    return tp, out, is_path, False


def _resolve_paths(raw: Any, tp: Any, base: Path) -> Any:
    """Make relative path fields absolute against `base` (in place on a raw dict)."""
    if not isinstance(raw, dict):
        return raw
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        for f in dataclasses.fields(tp):
            if f.name not in raw:
                continue
            if f.metadata.get("path") and isinstance(raw[f.name], str):
                raw[f.name] = resolve_path(raw[f.name], base)
            else:
                raw[f.name] = _resolve_paths(raw[f.name], hints[f.name], base)
        return raw
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _resolve_paths(raw, inner[0], base) if len(inner) == 1 else raw
    if typing.get_origin(tp) is dict:
        vtype = typing.get_args(tp)[1]
        for k in raw:
            raw[k] = _resolve_paths(raw[k], vtype, base)
    return raw


def resolve_path(value: str, base: Path) -> str:
    """Absolute form of a local path relative to `base`; URIs and `${lakehouse.root}/...`
    (filled in once the root is known) pass through."""
    if is_uri(value) or value.startswith(LAKEHOUSE_ROOT):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is parsed as YAML (so `10` is an int, `true` a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and not value.strip().startswith(("'", '"')):
        # YAML would cut `/data/in dir #2` at the " #" (a comment): take text as written.
        parsed = value.strip()
    return key, parsed


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: typing.Iterable[str] = (),
    *,
    cwd: Path | None = None,
) -> Config:
    """Load `path` (YAML), apply `--set` overrides, validate and return a Config.

    Args:
        path: YAML file, or None for the built-in defaults.
        overrides: `key=value` strings, applied in order after the file.
        cwd: directory `--set` paths resolve against (default: the current one).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the bad key and the file or `--set` it came from.
    """
    cwd = cwd or Path.cwd()
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        file = Path(path)
        origin = str(path)
        if not file.is_file():
            raise ConfigError(
                f"config file {path} not found (run from the project root or pass --conf)"
            )
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = _resolve_paths(loaded, Config, file.resolve().parent)
        # Validate the file alone first, so its errors name the file.
        _build(Config, raw, "", origin)
    for text in overrides:
        key, value = parse_override(text)
        try:
            tp, norm, is_path, in_mapping = _field_type_at(key.split("."))
        except KeyError as exc:
            raise ConfigError(f"--set {text}: unknown key '{exc.args[0]}'") from None
        if is_path and isinstance(value, str):
            value = resolve_path(value, cwd)
        if in_mapping and tp is str and isinstance(value, int | float | bool):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        _convert(value, tp, key, f"--set {text}")
        node = raw
        for part in norm[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
        node[norm[-1]] = value
    where = origin if not overrides else f"{origin} (with --set overrides)"
    config = _build(Config, raw, "", where)
    config.source = where
    _apply_defaults(config, base=Path(path).resolve().parent if path else cwd)
    _validate(config)
    return config


def _apply_defaults(config: Config, base: Path) -> None:
    """Defaults that depend on other keys: MLflow and checkpoints inside the lakehouse."""
    root = config.lakehouse.root
    if not is_uri(root) and not Path(root).is_absolute():
        config.lakehouse.root = resolve_path(root, base)
        root = config.lakehouse.root
    local_root = local_dir(root)
    if config.mlflow.tracking_uri is None and local_root is not None:
        config.mlflow.tracking_uri = f"sqlite:///{local_root}/mlflow.db"
    if config.mlflow.artifact_root is None:
        # A remote lakehouse goes with a tracking server, which decides where
        # artifacts go (and serves them): clients then need no bucket access.
        if local_root:
            config.mlflow.artifact_root = f"file://{local_root}/mlartifacts"
    elif not is_uri(config.mlflow.artifact_root):
        config.mlflow.artifact_root = f"file://{config.mlflow.artifact_root}"
    if config.spark.checkpoint_dir is None:
        config.spark.checkpoint_dir = f"{root.rstrip('/')}/_spark/checkpoints"
    for source in config.sources.values():
        if source.path.startswith(LAKEHOUSE_ROOT):
            source.path = root.rstrip("/") + source.path[len(LAKEHOUSE_ROOT) :]


def local_dir(root: str) -> str | None:
    """The local filesystem folder of a lakehouse root, or None for a remote one."""
    if root.startswith("file://"):
        return root[len("file://") :]
    if root.startswith("file:"):
        return root[len("file:") :]
    return None if is_uri(root) else root


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
        campaign = _build(CampaignConf, item, "", where)
        _check(
            bool(re.fullmatch(r"[A-Za-z0-9_-]+", campaign.id)),
            "id",
            where,
            "required: letters, digits, '_' or '-'",
        )
        _check(bool(campaign.name), "name", where, "required")
        _check(0 < campaign.holdout < 1, "holdout", where, "must be within 0..1 (exclusive)")
        _check(
            campaign.max_audience is None or campaign.max_audience > 0,
            "max_audience",
            where,
            "must be positive",
        )
        target = campaign.target
        _check(
            bool(
                target.segments
                or target.rfm_segments
                or target.where
                or target.propensity
                or target.uplift
                or target.sample
            ),
            "target",
            where,
            "needs segments, rfm_segments, where, propensity, uplift and/or sample",
        )
        _check(target.sample is None or 0 < target.sample <= 1, "target.sample", where,
               "must be within 0..1")  # fmt: skip
        if target.uplift is not None:
            cond = target.uplift
            _check(cond.top_share is not None or cond.min_gain is not None, "target.uplift",
                   where, "needs top_share and/or min_gain")  # fmt: skip
            _check(cond.top_share is None or 0 < cond.top_share <= 1, "target.uplift.top_share",
                   where, "must be within 0..1")  # fmt: skip
        if target.propensity is not None:
            cond = target.propensity
            _check(bool(cond.target), "target.propensity.target", where,
                   "required: a propensity target such as churn_90d")  # fmt: skip
            _check(1 <= cond.min_decile <= cond.max_decile <= 10, "target.propensity", where,
                   "needs 1 <= min_decile <= max_decile <= 10")  # fmt: skip
        days = campaign.exclude.contacted_within_days
        _check(days is None or days >= 0, "exclude.contacted_within_days", where, "must be >= 0")
        out.append(campaign)
    ids = [c.id for c in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{origin}: campaign {duplicates[0]!r}: id: used twice")
    return out
