"""The table contract: every table's name, columns, owner and partitioning, in one place.

Transformations that define a table end in `select(*SPEC.columns)`, so the
columns and their order are fixed here and nowhere else. Tables are paths
under the lakehouse root (`bronze/events`, `gold/user_segments`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

# Shared column names.
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_ID = "event_id"
EVENT_TYPE = "event_type"
EVENT_TS = "event_ts"
SESSION_ID = "session_id"
ORDER_ID = "order_id"
ITEM_NAME = "item_name"
QUANTITY = "quantity"
PRICE = "price"
DISCOUNT = "discount"
RATING = "rating"
DWELL_SECONDS = "dwell_seconds"
CATEGORY = "category"
BRAND = "brand"
SIGNUP_TS = "signup_ts"
AGE = "age"
GENDER = "gender"
REGION = "region"
CHANNEL = "channel"
FULL_NAME = "full_name"
EMAIL = "email"
PHONE = "phone"
PERSONA = "persona"
TASTE_GROUP = "taste_group"
WEIGHT = "weight"
AMOUNT = "amount"
EVENT_DATE = "event_date"
AS_OF_DATE = "as_of_date"
STRENGTH = "strength"
SEGMENT_ID = "segment_id"
SEGMENT_NAME = "segment_name"
MODEL_VERSION = "model_version"
# Bronze metadata.
SOURCE = "source"
BATCH_ID = "batch_id"
INGESTED_AT = "ingested_at"
SOURCE_FILE = "source_file"
RECORD_ID = "record_id"
RECORD = "record"
REASON = "reason"
BRONZE_METADATA = (SOURCE, BATCH_ID, INGESTED_AT, SOURCE_FILE, RECORD_ID)

EVENT_TYPES = ("view", "cart", "purchase", "review", "return")
# Direct identifiers: they never leave bronze.
DIRECT_IDENTIFIERS = (FULL_NAME, EMAIL, PHONE, "address", "ip")


@dataclass(frozen=True)
class TableSpec:
    """One Delta table of the contract."""

    name: str
    columns: tuple[str, ...]
    owner: str
    description: str
    partition_by: tuple[str, ...] = ()


# Raw files as a shop's exports deliver them (not Delta): written by
# `generate` on synthetic data, read by `ingest`.
RAW_USERS = "raw/users"
RAW_ITEMS = "raw/items"
RAW_EVENTS = "raw/events"

# The generated users' consent to marketing: true, false, or blank (none on record).
MARKETING_OPT_IN = "marketing_opt_in"
RAW_USER_COLUMNS = (
    USER_ID, SIGNUP_TS, AGE, GENDER, REGION, CHANNEL, MARKETING_OPT_IN, FULL_NAME, EMAIL, PHONE
)  # fmt: skip
RAW_ITEM_COLUMNS = (ITEM_ID, CATEGORY, BRAND, PRICE)
RAW_EVENT_COLUMNS = (
    EVENT_ID,
    USER_ID,
    ITEM_ID,
    EVENT_TYPE,
    EVENT_TS,
    SESSION_ID,
    QUANTITY,
    PRICE,
    DISCOUNT,
    RATING,
    DWELL_SECONDS,
)

# Ground truth of the synthetic generator, for evaluation only.
USER_PERSONAS = TableSpec(
    "raw/ground_truth/user_personas",
    (USER_ID, PERSONA, TASTE_GROUP),
    "generate",
    "Planted persona (at the window's end, after any drift) and taste group of each "
    "synthetic user (evaluation only).",
)
PERSONA_DRIFT = TableSpec(
    "raw/ground_truth/persona_drift",
    (USER_ID, "from_persona", "to_persona", "drift_date"),
    "generate",
    "Users planted to drift from one persona to another on a date (`generate.drift`; "
    "written only when drift.share > 0).",
)
ITEM_GROUPS = TableSpec(
    "raw/ground_truth/item_groups",
    (ITEM_ID, TASTE_GROUP, CATEGORY),
    "generate",
    "Taste group of each synthetic item: users prefer the items of their group.",
)
PERSONA_CATEGORIES = TableSpec(
    "raw/ground_truth/persona_categories",
    (PERSONA, CATEGORY, WEIGHT),
    "generate",
    "Planted category preferences of each persona (weights sum to 1).",
)

# Bronze: typed, validated copies of the sources. Their columns are the target
# columns of the sources that feed them (conf `sources.*.columns`), then
# BRONZE_METADATA.
BRONZE_USERS = TableSpec(
    "bronze/users", BRONZE_METADATA, "ingest", "Users as exported, typed and validated."
)
BRONZE_ITEMS = TableSpec(
    "bronze/items", BRONZE_METADATA, "ingest", "The catalogue, typed and validated."
)
BRONZE_EVENTS = TableSpec(
    "bronze/events", BRONZE_METADATA, "ingest", "Events as exported, typed and validated."
)
QUARANTINE = TableSpec(
    "bronze/quarantine",
    (SOURCE, RECORD, "record_bytes", REASON, BATCH_ID, INGESTED_AT, SOURCE_FILE),
    "ingest",
    "Rejected records: the text (valid UTF-8; invalid bytes as U+FFFD), the bytes as read "
    "(text sources), and ';'-joined reason codes.",
    partition_by=(SOURCE,),
)
INGEST_LOG = TableSpec(
    "bronze/ingest_log",
    (
        BATCH_ID,
        SOURCE,
        "table",
        SOURCE_FILE,
        "file_hash",
        "file_bytes",
        "file_modified",
        "records_read",
        "loaded",
        "quarantined",
        "unchanged",
        "duplicate_of",
        INGESTED_AT,
    ),
    "ingest",
    "One row per ingested file: records read = loaded + quarantined + unchanged; "
    "a file skipped as a copy names the file that holds its content in duplicate_of.",
)


def committed_by(table: str) -> str | None:
    """The log whose batches make `table`'s rows visible: bronze/ingest_log for every
    bronze table but the log itself, else None.

    Ingest writes a batch's bronze rows first and its ingest log rows last, so a
    batch that died between its writes has rows in bronze and none in the log:
    every stage's read (`StageContext.read`) leaves them out, and the rerun
    ingests the batch's files again.
    """
    if table.startswith("bronze/") and table != INGEST_LOG.name:
        return INGEST_LOG.name
    return None


# Silver.
SILVER_EVENTS = TableSpec(
    "silver/events",
    (
        EVENT_ID,
        USER_ID,
        ITEM_ID,
        EVENT_TYPE,
        EVENT_TS,
        EVENT_DATE,
        SESSION_ID,
        ORDER_ID,
        QUANTITY,
        PRICE,
        AMOUNT,
        DISCOUNT,
        RATING,
        DWELL_SECONDS,
        SOURCE,
        BATCH_ID,
    ),
    "features",
    "Clean, typed, deduplicated events; amount is what a purchase paid or a return "
    "refunded (positive either way); order_id groups the lines of one order; batch_id "
    "is the ingest batch that loaded the event.",
)
USER_FEATURES = TableSpec(
    "silver/user_features",
    (
        USER_ID,
        AS_OF_DATE,
        "recency_days",
        "inactive_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "lines_per_order",
        "returns",
        "return_rate",
        "tenure_days",
        "purchase_days",
        "mean_days_between_purchases",
        "std_days_between_purchases",
        "active_days",
        "sessions",
        "views",
        "carts",
        "cart_rate",
        "conversion_rate",
        "mean_dwell_seconds",
        "discount_share",
        "review_count",
        "mean_rating",
        "first_event_date",
        "last_purchase_date",
        "last_event_date",
        AGE,
        GENDER,
        REGION,
        CHANNEL,
        "r_score",
        "f_score",
        "m_score",
        "rfm_segment",
    ),
    "features",
    "One row per user and as-of date: RFM, behaviour, category shares (share_<category>), "
    "one-hot demographics (<column>_<value>).",
    partition_by=(AS_OF_DATE,),
)
# The sums silver/user_activity holds per key, and those silver/user_totals
# adds up per user under their own names.
ACTIVITY_SUMS = (
    "n_events",
    "views",
    "carts",
    "purchases",
    "amount",
    "returns",
    "returned_amount",
    "discounted",
    "dwell_sum",
    "dwell_n",
    "reviews",
    "rating_sum",
    "rating_n",
)
TOTALS_SUMS = (
    "views",
    "carts",
    "discounted",
    "dwell_sum",
    "dwell_n",
    "reviews",
    "rating_sum",
    "rating_n",
    "n_events",
)
USER_ACTIVITY = TableSpec(
    "silver/user_activity",
    (USER_ID, EVENT_DATE, "_session", "_order", BATCH_ID, *ACTIVITY_SUMS),
    "features",
    "State of the daily increments: per (user, day, session, order) counts and sums of the "
    "events by ingest batch (`_cat<i>`: events in the i-th category of "
    "silver/feature_runs.categories); each run appends the sums of its new events, rows "
    "with one key add up.",
)
USER_TOTALS = TableSpec(
    "silver/user_totals",
    (
        USER_ID,
        AS_OF_DATE,
        "first_event_date",
        "last_event_date",
        "last_purchase_date",
        "frequency",
        "lines",
        "purchased_amount",
        "returns",
        "returned_amount",
        "purchase_days",
        "mean_days_between_purchases",
        "std_days_between_purchases",
        "active_days",
        "sessions",
        *TOTALS_SUMS,
    ),
    "features",
    "State of the daily increments: one row per user with the window's counts and sums and "
    "the lifetime dates at as_of_date; an increment recomputes only the changed users.",
)
FEATURE_RUNS = TableSpec(
    "silver/feature_runs",
    (
        "run_at",
        AS_OF_DATE,
        "mode",
        "lookback_days",
        "categories",
        "orders",
        "batches",
        "events_added",
        "users_recomputed",
        "users",
        "interactions",
    ),
    "features",
    "One row per features run: full, incremental or stream, its as-of date and window, "
    "the categories of the share columns, the ingest batches whose events it added, the "
    "settings of its interactions snapshot.",
)
ITEMS = TableSpec(
    "silver/items",
    (ITEM_ID, ITEM_NAME, CATEGORY, PRICE, "events", "last_event_ts"),
    "features",
    "The catalogue derived from the event lines (`features.items_from_events`) when no "
    "item source exists: each item's latest name and category, median unit price.",
)
INTERACTIONS = TableSpec(
    "silver/interactions",
    (USER_ID, ITEM_ID, STRENGTH, "events", "last_event_ts", AS_OF_DATE),
    "features",
    "User x item strength: weighted events, optionally time-decayed.",
    partition_by=(AS_OF_DATE,),
)

USER_SEGMENTS = TableSpec(
    "gold/user_segments",
    (USER_ID, AS_OF_DATE, SEGMENT_ID, SEGMENT_NAME, "distance", "is_outlier", MODEL_VERSION),
    "segment",
    "One row per user and as-of date: segment, distance to its centroid (scaled feature "
    "space), outlier flag.",
    partition_by=(AS_OF_DATE,),
)
USER_SEGMENTS_CURRENT = TableSpec(
    "gold/user_segments_current",
    (USER_ID, SEGMENT_ID, SEGMENT_NAME, "is_outlier", MODEL_VERSION, "since"),
    "segment",
    "One row per user: the segment of the latest snapshot, for a CRM; merged by user_id, "
    "only the users whose segment, outlier flag or model changed are rewritten (since: "
    "the as-of date of that change).",
)
SEGMENT_PROFILES = TableSpec(
    "gold/segment_profiles",
    (
        AS_OF_DATE,
        SEGMENT_ID,
        SEGMENT_NAME,
        "size",
        "share",
        "outliers",
        "description",
        "strategy",
        "rules",
        "tree_fidelity",
        "algorithm",
        "k",
        MODEL_VERSION,
        "medians",
        "lifts",
        "z_scores",
        "mean_clv",
        "median_clv",
        "at_risk_share",
        "mean_propensity",
    ),
    "segment",
    "One row per segment and as-of date: size, share, surrogate tree rules, strategy; "
    "mean and median CLV and share at high churn risk of its customers with a value in "
    "gold/customer_value (the latest snapshot up to the segments' date; null without one); "
    "mean calibrated probability per propensity target of its scored users "
    "(mean_propensity, map<target, double>; null without scores of that date); "
    "medians and lift against the population (segment mean / population mean) of each "
    "profile feature, and the centroid's z-score of each model feature, as "
    "map<feature, double> columns (the schema stays the same when the features change; "
    "SQL: medians['frequency']).",
    partition_by=(AS_OF_DATE,),
)
SEGMENT_TRANSITIONS = TableSpec(
    "gold/segment_transitions",
    ("from_as_of", "to_as_of", "from_segment", "to_segment", "users"),
    "segment",
    "Users moving between segment names from the previous snapshot to this one "
    "((new): not in the previous snapshot; (gone): not in this one).",
    partition_by=("to_as_of",),
)
SEGMENT_TREE = TableSpec(
    "gold/segment_tree",
    (AS_OF_DATE, "node_id", "parent_id", "depth", "size", "cost", SEGMENT_ID, SEGMENT_NAME),
    "segment",
    "Bisecting K-means split tree: parent -> children down to the final segments "
    "(leaves carry segment_id); for K-means, the same tree by Ward merging of the centroids.",
    partition_by=(AS_OF_DATE,),
)
SEGMENT_SWEEP = TableSpec(
    "gold/segment_sweep",
    (
        AS_OF_DATE,
        "algorithm",
        "k",
        "wssse",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "stability",
        "fit_seconds",
        "chosen",
    ),
    "segment",
    "The measured choice of k and algorithm: one row per (algorithm, k) of a fit run.",
    partition_by=(AS_OF_DATE,),
)
RECOMMENDATIONS = TableSpec(
    "gold/recommendations",
    (USER_ID, AS_OF_DATE, "rank", ITEM_ID, "score", "source", MODEL_VERSION),
    "recommend",
    "Top N items per user and as-of date, ranks 1..N; source: the served method (`als`, "
    "`ease` or `item_item`: its score), or `segment_popular` / `popular` (the served "
    "method, or users it cannot serve; score = users who interacted with the item).",
    partition_by=(AS_OF_DATE,),
)
SIMILAR_ITEMS = TableSpec(
    "gold/similar_items",
    (AS_OF_DATE, ITEM_ID, "rank", "similar_item_id", "score", MODEL_VERSION),
    "recommend",
    "Each item's most similar items by the cosine of their ALS factors.",
    partition_by=(AS_OF_DATE,),
)
RECOMMENDATION_EVAL = TableSpec(
    "gold/recommendation_eval",
    (
        AS_OF_DATE,
        "method",
        "params",
        "k",
        "precision",
        "recall",
        "ndcg",
        "map",
        "coverage",
        "users",
        "fit_seconds",
        "chosen",
        "served",
    ),
    "recommend",
    "Ranking metrics at k on the validation split, and at k = 10 beside any other k: "
    "every candidate (`popular`, `segment_popular`, `item_item` per similarity, `ease` "
    "per l2, every ALS point; `chosen`: the best ALS point, registered); `served`: the "
    "validation winner, whose lists gold/recommendations holds.",
    partition_by=(AS_OF_DATE,),
)

CAMPAIGN_AUDIENCES = TableSpec(
    "gold/campaign_audiences",
    (
        "send_date",
        "campaign_id",
        "campaign_name",
        USER_ID,
        "variant",
        SEGMENT_NAME,
        "offer",
        "channel",
        "priority",
        "recommended_items",
        AS_OF_DATE,
    ),
    "audiences",
    "Who each campaign sends to (`treatment`) and holds out (`control`), one campaign per "
    "user and send date, with the offer and the user's first recommended items; the history "
    "of sends (the `contacted_within_days` exclusion reads it).",
    partition_by=("send_date",),
)

SIMULATED_OUTCOMES = TableSpec(
    "raw/simulated/outcome_events",
    (EVENT_ID, USER_ID, EVENT_TYPE, EVENT_TS, AMOUNT, "simulated_for"),
    "simulate_outcomes",
    "Synthetic purchases after a send date (`simulated_for`), with a planted lift for treated "
    "users; what `evaluate` reads on the embedded default.",
    partition_by=("simulated_for",),
)
CAMPAIGN_LIFT = TableSpec(
    "raw/ground_truth/campaign_lift",
    ("send_date", "campaign_id", "treated_users", "planted_lift"),
    "simulate_outcomes",
    "The planted conversion uplift of each campaign: the mean lift of its treated users "
    "(evaluation only).",
)
USER_UPLIFT = TableSpec(
    "raw/ground_truth/user_uplift",
    ("send_date", USER_ID, PERSONA, "uplift_group", "planted_uplift"),
    "simulate_outcomes",
    "Every user's planted treatment effect at a send date: the change of their conversion "
    "probability if contacted (`uplift_group`: the simulate_outcomes.uplift_rules rule that "
    "set it, or `persona`). Evaluation only.",
    partition_by=("send_date",),
)
CUSTOMER_VALUE = TableSpec(
    "gold/customer_value",
    (
        USER_ID,
        AS_OF_DATE,
        "x",
        "t_x",
        "T",
        "mean_value",
        "p_alive",
        "expected_transactions",
        "expected_mean_value",
        "clv",
        "churn_risk",
        "model_version",
    ),
    "clv",
    "Per customer with a purchase up to the calibration end (as_of_date): repeat "
    "transactions x, time of the last t_x and since the first T (in clv.time_unit), mean "
    "repeat spend; BG/NBD probability alive and expected transactions over the horizon, "
    "Gamma-Gamma expected spend, discounted lifetime value and churn risk (high/medium/low).",
    partition_by=(AS_OF_DATE,),
)
PROPENSITY_SCORES = TableSpec(
    "gold/propensity_scores",
    (USER_ID, AS_OF_DATE, "target", "probability", "decile", MODEL_VERSION),
    "propensity",
    "Per user, snapshot and target (purchase_<h>d, churn_<h>d): calibrated probability that "
    "the target happens in the next h days, decile by the model's ranking (1 = most likely) "
    "and the registered model version. Churn targets score only the buyers of their "
    "active_days.",
    partition_by=(AS_OF_DATE,),
)
PROPENSITY_EVAL = TableSpec(
    "gold/propensity_eval",
    (AS_OF_DATE, "target", "cutoff", "curve", "method", "x", "y", "users"),
    "propensity",
    "The charts of each fit, on the validation cut-off (out of time): `gain` (x share of users "
    "selected by score, y share of all positives among them; methods model, rfm, bgnbd) and "
    "`reliability` (x mean predicted, y observed rate per probability bin; methods "
    "model_before / model_after calibration, on the users the calibration was not fitted on).",
    partition_by=(AS_OF_DATE,),
)
UPLIFT_SCORES = TableSpec(
    "gold/uplift_scores",
    (USER_ID, AS_OF_DATE, "campaign_id", "uplift", "decile", MODEL_VERSION),
    "uplift",
    "Per user and snapshot: the predicted change of their conversion probability if the "
    "campaign `campaign_id` (whose randomized send trained the model) contacts them, its "
    "decile (1 = largest uplift) and the registered model version.",
    partition_by=(AS_OF_DATE,),
)
UPLIFT_EVAL = TableSpec(
    "gold/uplift_eval",
    (AS_OF_DATE, "campaign_id", "curve", "method", "x", "y", "low", "high", "users"),
    "uplift",
    "The uplift fit on held-out users of the randomized send: `qini` (x share of users by "
    "predicted uplift, y incremental conversions per held-out user; one method per learner) "
    "and `decile` (x decile, y treated minus control conversion with its interval low..high).",
    partition_by=(AS_OF_DATE,),
)
UPLIFT_TARGETING = TableSpec(
    "gold/uplift_targeting",
    (
        AS_OF_DATE,
        "campaign_id",
        "method",
        "contacts",
        "incremental_conversions",
        "share_of_optimum",
        "do_not_disturb_contacts",
    ),
    "uplift",
    "Synthetic data: at equal contacts, the planted incremental conversions of targeting by "
    "predicted uplift, by purchase propensity, by a segment rule and at random, against the "
    "planted effect's own optimum.",
    partition_by=(AS_OF_DATE,),
)
CAMPAIGN_RESULTS = TableSpec(
    "gold/campaign_results",
    (
        "send_date",
        "campaign_id",
        SEGMENT_NAME,
        "treated_users",
        "control_users",
        "treated_conversion",
        "control_conversion",
        "uplift",
        "uplift_low",
        "uplift_high",
        "treated_revenue_per_user",
        "control_revenue_per_user",
        "revenue_uplift",
        "revenue_uplift_low",
        "revenue_uplift_high",
        "window_days",
        "confidence",
    ),
    "evaluate",
    "Measured effect of each campaign, per segment and over all its users (segment_name "
    "`(all)`): conversion and revenue per user of treated and control users within "
    "`window_days` of the send, and their difference with a confidence interval.",
    partition_by=("send_date",),
)

TABLES: tuple[TableSpec, ...] = (
    USER_PERSONAS,
    PERSONA_DRIFT,
    ITEM_GROUPS,
    PERSONA_CATEGORIES,
    BRONZE_USERS,
    BRONZE_ITEMS,
    BRONZE_EVENTS,
    QUARANTINE,
    INGEST_LOG,
    SILVER_EVENTS,
    USER_FEATURES,
    USER_ACTIVITY,
    USER_TOTALS,
    FEATURE_RUNS,
    INTERACTIONS,
    CUSTOMER_VALUE,
    PROPENSITY_SCORES,
    PROPENSITY_EVAL,
    USER_SEGMENTS,
    USER_SEGMENTS_CURRENT,
    SEGMENT_PROFILES,
    SEGMENT_TRANSITIONS,
    SEGMENT_TREE,
    SEGMENT_SWEEP,
    RECOMMENDATIONS,
    SIMILAR_ITEMS,
    RECOMMENDATION_EVAL,
    CAMPAIGN_AUDIENCES,
    SIMULATED_OUTCOMES,
    CAMPAIGN_LIFT,
    USER_UPLIFT,
    CAMPAIGN_RESULTS,
    UPLIFT_SCORES,
    UPLIFT_EVAL,
    UPLIFT_TARGETING,
)


def table(name: str) -> TableSpec:
    """The spec of a table by name."""
    for spec in TABLES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown table {name!r}; known: {[t.name for t in TABLES]}")
