"""Sections about customers: features (RFM), segments and recommendations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shopseg.config.base import (
    Date,
    NonNegative,
    OpenShare,
    Positive,
    PositiveFloat,
    Section,
    Share,
    SqlExpression,
    check,
)


class RfmRule(Section):
    """A named RFM segment: recency and frequency score ranges (inclusive, 1..5)."""

    name: str = ""
    r: list[int] = Field(default_factory=lambda: [1, 5])
    f: list[int] = Field(default_factory=lambda: [1, 5])

    def rules(self) -> None:
        for axis in ("r", "f"):
            low_high = getattr(self, axis)
            check(
                len(low_high) == 2 and 1 <= low_high[0] <= low_high[1] <= 5,
                axis,
                "must be [low, high] within 1..5",
            )

    def cells(self) -> set[tuple[int, int]]:
        """The (R, F) score cells this rule covers."""
        return {
            (r, f) for r in range(self.r[0], self.r[1] + 1) for f in range(self.f[0], self.f[1] + 1)
        }


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


class RfmConf(Section):
    quantile_error: float = Field(0.001, ge=0, lt=0.5)
    """Relative error of the quantiles that cut RFM quintiles (0 = exact, slower)."""
    segments: list[RfmRule] = Field(
        default_factory=lambda: [
            RfmRule(name=name, r=list(r), f=list(f)) for name, r, f in DEFAULT_RFM_RULES
        ]
    )
    """First matching rule names the segment; rules must cover every R x F cell."""
    no_purchase_segment: str = "Never purchased"

    def rules(self) -> None:
        names = [rule.name for rule in self.segments]
        check(
            all(names) and len(set(names)) == len(names),
            "segments",
            "every rule needs a unique name",
        )
        covered = set().union(*(rule.cells() for rule in self.segments))
        gaps = sorted({(r, f) for r in range(1, 6) for f in range(1, 6)} - covered)
        check(
            not gaps, "segments", f"no rule covers (R, F) scores {gaps}; every cell needs a segment"
        )


class ItemsFromEvents(Section):
    """A catalogue from the event lines: which bronze/events columns describe an item."""

    name: str | None = None
    """e.g. item_name (mapped from the export's Description); each optional."""
    price: str | None = "price"
    category: str | None = None


FEATURE_MODES = ("auto", "full", "incremental")
SEGMENT_MODES = ("fit", "score")
SEGMENT_ALGORITHMS = ("kmeans", "bisecting")


class FeaturesConf(Section):
    """Stage `features`: silver events, user features, interactions."""

    mode: Literal["auto", "full", "incremental"] = "auto"
    """full: rebuild silver/events and every user's features from bronze; incremental: add
    the new ingest batches' events and recompute only the users whose window changed
    (docs/features.md: Daily increments); auto: incremental when the state of an earlier run
    matches this configuration, else full.
    """
    as_of_date: Date | None = None
    """Snapshot date; default the day after the last event."""
    lookback_days: Positive | None = 365
    """Days of history before as_of_date; null = all."""
    top_categories: list[str] | None = None
    """Categories with a share column; null = the most frequent `top_categories_n`."""
    top_categories_n: Positive = 10
    demographics: dict[str, list[str]] = Field(default_factory=dict)
    """Demographic columns one-hot encoded: column -> values."""
    interaction_weights: dict[str, NonNegative] = Field(
        default_factory=lambda: {"view": 1.0, "cart": 3.0, "purchase": 5.0, "review": 2.0}
    )
    interaction_half_life_days: PositiveFloat | None = None
    """Time decay of interactions (half-life in days); null = none."""
    rfm: RfmConf = Field(default_factory=RfmConf)
    items_from_events: ItemsFromEvents | None = None
    """Derive silver/items from the event lines (shops without an item file)."""


class SegmentFeature(Section):
    """One clustering input: a Spark SQL expression over silver/user_features."""

    name: str = Field("", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """A plain identifier."""
    expr: SqlExpression | None = None
    """Spark SQL over the user_features columns; default: the column `name` itself."""
    log: bool = False
    """log1p (of the value floored at 0) before scaling: for skewed counts and amounts."""


def features_field(defaults: tuple[tuple[str, str | None, bool], ...]) -> Any:
    """A `features` field defaulting to these (name, expr, log) features."""
    return Field(
        default_factory=lambda: [SegmentFeature(name=n, expr=e, log=lg) for n, e, lg in defaults]
    )


def check_features(features: list[SegmentFeature], key: str) -> list[str]:
    """At least one feature, each named uniquely; returns the names."""
    names = [f.name for f in features]
    check(bool(names), key, "needs at least one feature")
    check(len(set(names)) == len(names), key, "names must be unique")
    return names


class SegmentName(Section):
    """A marketer's name for a segment whose profile is high/low on these features."""

    name: str = ""
    high: list[str] = Field(default_factory=list)
    """Segment feature names whose centroid z-score should be high (positive) / low."""
    low: list[str] = Field(default_factory=list)
    strategy: str = ""
    """Marketing strategy text copied into gold/segment_profiles."""


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


class SegmentConf(Section):
    """Stage `segment`: K-means / bisecting K-means on user features."""

    mode: Literal["fit", "score"] = "fit"
    """fit: sweep k and algorithms, fit, register; score: apply the registered model."""
    as_of_date: Date | None = None
    """Snapshot of silver/user_features to segment; default the latest as_of_date."""
    features: list[SegmentFeature] = features_field(DEFAULT_SEGMENT_FEATURES)
    pca_components: Positive | None = None
    """PCA components after scaling; null = no PCA."""
    algorithms: list[Literal["kmeans", "bisecting"]] = Field(
        default_factory=lambda: ["kmeans", "bisecting"], min_length=1
    )
    """Algorithms swept: kmeans (k-means||) and/or bisecting."""
    k_min: int = Field(2, ge=2)
    k_max: int = 10
    max_iter: Positive = 20
    """Iterations per fit (per split for bisecting), Spark's default."""
    init_steps: Positive = 5
    """k-means|| seeding rounds (Spark's default 2 is often stuck in a worse optimum)."""
    restarts: Positive = 6
    """Fits per (algorithm, k) from different seeds; the lowest WSSSE is kept, and stability
    asks whether another restart finds the same solution (three were too few on other
    generator seeds: docs/segmentation.md).
    """
    bisecting_restarts: Positive | None = 2
    """Restarts for bisecting K-means, whose result depends little on the seed (stability
    1.000 at every k <= 8 with 2 seeds on the default data); null = `restarts`.
    """
    seed_from_bisecting: bool = True
    """One more K-means start per k: from bisecting K-means' centres at that k (k-means||
    can miss an optimum bisecting finds; docs/segmentation.md).
    """
    seed: int = 42
    sweep_sample: Positive = 50000
    """Users the k sweep runs on: with more, k and the algorithm are chosen on a uniform
    sample of this many (the sweep's cost stops growing with the shop) and only the
    chosen model is fitted on everyone, with `restarts`.
    """
    silhouette_sample: Positive = 50000
    """Rows sampled for the silhouette and for the two-seed stability fits. When all users
    fit in the stability sample the restarts themselves are compared.
    """
    stability_sample: Positive = 50000
    min_rows_per_partition: Positive = 10000
    """The prepared users are spread over one partition per core, but none smaller than this
    (tiny partitions make every K-means iteration pay for scheduling; the sweep runs
    hundreds of them).
    """
    concurrent_fits: Positive = 2
    """(algorithm, k) cells of the sweep fitted at once, on threads of one session: a small
    sweep's jobs are a task each and leave cores idle.
    """
    min_stability: Share = 0.8
    """A k is a candidate only when its two-seed adjusted Rand index reaches this."""
    outlier_percentile: OpenShare = 0.99
    """Users farther from their centroid than this percentile of their segment are outliers."""
    names: list[SegmentName] = Field(
        default_factory=lambda: [
            SegmentName(name=name, high=list(high), low=list(low), strategy=strategy)
            for name, high, low, strategy in DEFAULT_SEGMENT_NAMES
        ]
    )
    min_name_score: float = 0.5
    """A configured name applies only when its mean z-score reaches this."""
    profile_features: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROFILE_FEATURES), min_length=1
    )
    """silver/user_features columns summarised (median, lift) in the profiles."""
    tree_max_depth: Positive = 5
    """Surrogate decision tree explaining the segments."""
    tree_sample: Positive = 200000
    rules_per_segment: Positive = 3
    model_name: str = "shopseg_segmentation"
    alias: str = "champion"
    """Alias of the model in use (set on fit, loaded on score)."""

    def rules(self) -> None:
        check(self.k_max >= self.k_min, "k_max", "must be at least segment.k_min")
        names = check_features(self.features, "features")
        if self.pca_components is not None:
            check(
                self.pca_components <= len(names),
                "pca_components",
                f"must be between 1 and the number of features ({len(names)})",
            )
        labels = [n.name for n in self.names]
        check(
            all(labels) and len(set(labels)) == len(labels),
            "names",
            "every name needs a unique `name`",
        )
        for i, rule in enumerate(self.names):
            unknown = sorted(set(rule.high + rule.low) - set(names))
            check(
                not unknown,
                f"names[{i}]",
                f"{rule.name!r} refers to unknown segment feature(s) {unknown}; features: {names}",
            )
            check(
                bool(rule.high or rule.low),
                f"names[{i}]",
                f"{rule.name!r} needs `high` or `low` features",
            )


class AlsSearch(Section):
    """A random search over ALS's parameters after the grid, on a log scale."""

    trials: int = Field(0, ge=0)
    """Random trials after the grid points (0: the grid only)."""
    rank: list[int] = Field(default_factory=lambda: [8, 128])
    reg_param: list[float] = Field(default_factory=lambda: [0.001, 1.0])
    confidence: list[float] = Field(default_factory=lambda: [0.1, 40.0])
    """Confidence per unit of median interaction strength: alpha is drawn so that alpha x
    (the training pairs' median strength) falls within this range.
    """
    transforms: list[Literal["linear", "log", "bm25"]] = Field(
        default_factory=lambda: ["linear", "log", "bm25"], min_length=1
    )
    """Confidence transforms a trial draws from (recommend.transforms)."""
    patience: Positive = 4
    """Stop after this many trials in a row without a better NDCG (by min_gain)."""
    min_gain: float = 0.001
    seed: int = 7

    def rules(self) -> None:
        for key in ("rank", "reg_param", "confidence"):
            bounds = getattr(self, key)
            check(
                len(bounds) == 2 and 0 < bounds[0] <= bounds[1],
                key,
                "must be [low, high] with 0 < low <= high",
            )


class EaseConf(Section):
    """EASE, the closed-form ridge item-item model: the item Gram matrix built in Spark,
    inverted on the driver (memory 8 x items² bytes, time ~items³)."""

    enabled: bool = True
    max_items: Positive = 5000
    """Item-based models up to this many items are dense matrices on the driver (EASE,
    and item-item scored in vectorised blocks); above it EASE is refused (a log line says
    so) and item-item runs as Spark joins. 5,000 items: 200 MB per matrix, seconds per
    inversion on 2 cores."""
    l2: list[PositiveFloat] = Field(default_factory=lambda: [1.0, 3.0, 10.0], min_length=1)
    """Ridge regularisation, per unit of the mean number of users per item (so one value
    means the same on a small and a large log); each value is a validated candidate."""
    extend: int = Field(2, ge=0)
    """When the best l2 is the smallest or largest of the list, up to this many more
    values beyond it (at the list's outer ratio), while the best stays at the edge."""


class RecommendConf(Section):
    """Stage `recommend`: ALS on implicit feedback, evaluated against baselines."""

    as_of_date: Date | None = None
    """Snapshot of silver/interactions (and user_features) to use; default the latest."""
    top_n: Positive = 10
    """Recommendations per user in gold/recommendations (and the validation's k)."""
    eval_k: Positive | None = None
    """Cut-off of the evaluation metrics (precision_at_<k>, ndcg_at_<k>, ...); null = top_n,
    so the validation measures the lists that are served.
    """
    split: Literal["auto", "last_days", "last_share", "last_n", "cutoff"] = "auto"
    """How events are split for evaluation: last_days (each user's last holdout_days),
    last_share (each user's latest holdout_share of events), last_n (each user's latest
    holdout_last_n events), cutoff (everything from cutoff_date on), or auto: last_days
    where the median user's history spans at least 2 x holdout_days, else last_share.
    """
    holdout_days: Positive = 30
    holdout_share: OpenShare = 0.2
    holdout_last_n: Positive = 1
    cutoff_date: Date | None = None
    min_evaluable_share: Share = 0.1
    """A split leaving fewer evaluable users (of those with interactions) is refused."""
    seen_events: list[str] | None = None
    """Event types that make an item seen: never recommended again to that user, in the
    validation split (the training side) and in serving (ALS, item-item, popularity, cold
    start) alike. null = every event type that builds interactions
    (features.interaction_weights above 0, returns excepted); [] = nothing is excluded.
    """
    ranks: list[Positive] = Field(default_factory=lambda: [16, 32], min_length=1)
    """Grid searched on the split; the best NDCG at eval_k is refitted on all data."""
    reg_params: list[NonNegative] = Field(default_factory=lambda: [0.05], min_length=1)
    alphas: list[PositiveFloat] = Field(default_factory=lambda: [5.0, 20.0], min_length=1)
    transforms: list[Literal["linear", "log", "bm25"]] = Field(
        default_factory=lambda: ["linear"], min_length=1
    )
    """Confidence transforms of the strengths before ALS, a grid dimension: linear (c = 1 +
    alpha s), log (c = 1 + alpha log(1 + s / log_epsilon)) or bm25 (BM25-weighted
    strengths: common items and long histories weigh less), computed in Spark."""
    log_epsilon: PositiveFloat = 1.0
    max_iter: Positive = 10
    seed: int = 42
    blocks: Positive | None = None
    """ALS user and item blocks; null = Spark's default parallelism."""
    refit_unserved_als: bool = False
    """Refit ALS's best point on all interactions even when another method serves the lists
    (its model is registered and its item factors give gold/similar_items); false: the
    model fitted on the validation split's training side is registered as it is (one ALS
    fit less; ALS serving is always refitted)."""
    similar_items: Positive = 10
    """Most similar items per item in gold/similar_items."""
    item_item: bool = True
    """Item-item co-occurrence candidates (popularity baselines always run), and their
    neighbours per item (also the weights kept per item by EASE).
    """
    item_neighbours: Positive = 50
    item_similarities: list[Literal["cosine", "jaccard", "lift"]] = Field(
        default_factory=lambda: ["cosine", "jaccard", "lift"], min_length=1
    )
    """Item-item similarities, each a validated candidate: cosine of the items' strength
    columns, Jaccard or lift of their users (the co-occurrence family of SAR)."""
    item_half_lives: list[PositiveFloat | None] = Field(default_factory=lambda: [None])
    """Time decay of a user's history when item-item scores it (half-life in days), each
    value a candidate; null = the interactions as built (features.interaction_half_life_days).
    """
    ease: EaseConf = Field(default_factory=EaseConf)
    serve_tie: NonNegative = 0.001
    """Validation NDCGs within this of the best count as a tie, served by the cheapest
    method (popular < segment_popular < item_item < ease < als)."""
    search: AlsSearch = Field(default_factory=AlsSearch)
    user_block: Positive = 4096
    """Block sizes of the top-N scorer (scores per task: user_block x item_block)."""
    item_block: Positive = 16384
    model_name: str = "shopseg_recommender"
    alias: str = "champion"

    def rules(self) -> None:
        check(
            self.split != "cutoff" or self.cutoff_date is not None,
            "cutoff_date",
            "is required with recommend.split: cutoff",
        )
