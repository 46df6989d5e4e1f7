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

TABLES: tuple[TableSpec, ...] = (USER_PERSONAS, ITEM_GROUPS, PERSONA_CATEGORIES)


def table(name: str) -> TableSpec:
    """The spec of a table by name."""
    for spec in TABLES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown table {name!r}; known: {[t.name for t in TABLES]}")
