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
# Bronze metadata.
SOURCE = "source"
BATCH_ID = "batch_id"
INGESTED_AT = "ingested_at"
SOURCE_FILE = "source_file"
RECORD_ID = "record_id"
RECORD = "record"
REASON = "reason"
BRONZE_METADATA = (SOURCE, BATCH_ID, INGESTED_AT, SOURCE_FILE, RECORD_ID)

EVENT_TYPES = ("view", "cart", "purchase", "review")
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

RAW_USER_COLUMNS = (USER_ID, SIGNUP_TS, AGE, GENDER, REGION, CHANNEL, FULL_NAME, EMAIL, PHONE)
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
    "Planted persona and taste group of each synthetic user (evaluation only).",
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
    (SOURCE, RECORD, REASON, BATCH_ID, INGESTED_AT, SOURCE_FILE),
    "ingest",
    "Rejected records: the raw text and ';'-joined reason codes.",
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
        "records_read",
        "loaded",
        "quarantined",
        "unchanged",
        INGESTED_AT,
    ),
    "ingest",
    "One row per ingested file: records read = loaded + quarantined + unchanged.",
)

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
        QUANTITY,
        PRICE,
        AMOUNT,
        DISCOUNT,
        RATING,
        DWELL_SECONDS,
        SOURCE,
    ),
    "features",
    "Clean, typed, deduplicated events; amount is what a purchase paid.",
)
USER_FEATURES = TableSpec(
    "silver/user_features",
    (
        USER_ID,
        AS_OF_DATE,
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
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
INTERACTIONS = TableSpec(
    "silver/interactions",
    (USER_ID, ITEM_ID, STRENGTH, "events", "last_event_ts", AS_OF_DATE),
    "features",
    "User x item strength: weighted events, optionally time-decayed.",
    partition_by=(AS_OF_DATE,),
)

TABLES: tuple[TableSpec, ...] = (
    USER_PERSONAS,
    ITEM_GROUPS,
    PERSONA_CATEGORIES,
    BRONZE_USERS,
    BRONZE_ITEMS,
    BRONZE_EVENTS,
    QUARANTINE,
    INGEST_LOG,
    SILVER_EVENTS,
    USER_FEATURES,
    INTERACTIONS,
)


def table(name: str) -> TableSpec:
    """The spec of a table by name."""
    for spec in TABLES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown table {name!r}; known: {[t.name for t in TABLES]}")
