"""The generator's constants and seeded column draws: every random value is a hash of
(seed, salt, keys), so a seed gives the same shop whatever the partitioning."""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import Column
from pyspark.sql import functions as F

from shopseg.plant import CATEGORIES

CATEGORY_BASE_PRICE = (220.0, 65.0, 48.0, 22.0, 55.0, 16.0, 28.0, 9.0, 38.0, 14.0)
ITEMS_PER_GROUP = 20
MIN_ITEMS = ITEMS_PER_GROUP * len(CATEGORIES)
GENDERS = ("female", "male", "other")
GENDER_WEIGHTS = (0.49, 0.48, 0.03)
REGIONS = ("north", "south", "east", "west", "central", "islands")
CHANNELS = ("web", "app", "marketplace")
FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara",
)  # fmt: skip
LAST_NAMES = (
    "Adams", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Jensen",
    "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Petrov", "Quist", "Rossi", "Silva", "Tanaka",
)  # fmt: skip
SESSION_GAP_SECONDS = 40
MAX_SESSIONS = 9_999
MAX_EVENTS_PER_SESSION = 999
# Hidden user column: the user drifts to another persona (GenerateConf.drift).
DRIFTED = "drifted"
DIRTY_EVENT_KINDS = (
    "unknown_event_type",
    "negative_quantity",
    "missing_user",
    "future_timestamp",
    "malformed_json",
    "price_not_a_number",
)
DIRTY_USER_KINDS = ("missing_user", "age_not_a_number", "negative_age")


# --------------------------------------------------------------------------- column functions


def uniform(seed: int, salt: str, *keys: Column) -> Column:
    """Deterministic U[0, 1) from a hash of the seed, a salt naming the draw and key columns."""
    h = F.xxhash64(F.lit(seed), F.lit(salt), *keys)
    return F.shiftrightunsigned(h, 11).cast("double") / float(1 << 53)


def normal(seed: int, salt: str, *keys: Column) -> Column:
    """Deterministic standard normal (Box-Muller on two hashed uniforms)."""
    u1 = F.lit(1.0) - uniform(seed, f"{salt}:1", *keys)
    u2 = uniform(seed, f"{salt}:2", *keys)
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2 * math.pi) * u2)


def pick(u: Column, weights: Column | tuple[float, ...]) -> Column:
    """0-based index drawn with `u` from a literal tuple of weights, or from an array
    column of cumulative weights (ending at 1)."""
    if isinstance(weights, tuple):
        total = sum(weights)
        cum, acc = [], 0.0
        for w in weights[:-1]:
            acc += w / total
            cum.append(acc)
        thresholds = F.array(*[F.lit(c) for c in cum]) if cum else F.array().cast("array<double>")
    else:
        thresholds = F.slice(weights, 1, F.size(weights) - 1)
    return F.size(F.filter(thresholds, lambda c: c <= u))


def at(values: Column | tuple[object, ...], index0: Column) -> Column:
    """Element `index0` (0-based) of an array column or a literal tuple."""
    array = values if isinstance(values, Column) else F.array(*[F.lit(v) for v in values])
    return F.element_at(array, (index0 + 1).cast("int"))


def per_persona(persona_idx: Column, values: tuple[object, ...]) -> Column:
    """Look up a per-persona value by the persona's 0-based index."""
    return at(values, persona_idx)


def cumulative(weights: tuple[float, ...]) -> tuple[float, ...]:
    acc, out = 0.0, []
    for w in weights:
        acc += w
        out.append(acc)
    return tuple(out)


def per_persona_array(persona_idx: Column, rows: tuple[tuple[float, ...], ...]) -> Column:
    return at(F.array(*[F.array(*[F.lit(v) for v in row]) for row in rows]), persona_idx)


def item_category_index(item_id: Column) -> Column:
    """Category of an item: items come in groups of ITEMS_PER_GROUP, groups cycle categories."""
    return ((item_id - 1) / ITEMS_PER_GROUP).cast("long") % len(CATEGORIES)


def item_group(item_id: Column) -> Column:
    return ((item_id - 1) / ITEMS_PER_GROUP).cast("long")


def item_price(seed: int, item_id: Column) -> Column:
    """List price of an item: log-normal around its category's base price."""
    base = at(CATEGORY_BASE_PRICE, item_category_index(item_id))
    return F.round(base * F.exp(F.lit(0.45) * normal(seed, "price", item_id)), 2)


def groups_in_category(category_idx: Column, n_groups: int) -> Column:
    return ((F.lit(n_groups - 1) - category_idx) / len(CATEGORIES)).cast("long") + 1


def group_in_category(category_idx: Column, u: Column, n_groups: int, skew: float) -> Column:
    """A group of the category; with skew > 1 low ranks (popular groups) come more often."""
    share = F.pow(u, F.lit(skew)) if skew != 1 else u
    rank = F.floor(share * groups_in_category(category_idx, n_groups)).cast("long")
    return category_idx + F.lit(len(CATEGORIES)) * rank


def item_in_group(group: Column, u: Column, n_items: int) -> Column:
    """An item of the group; its first items are the popular ones."""
    size = F.least(F.lit(ITEMS_PER_GROUP), F.lit(n_items) - group * ITEMS_PER_GROUP)
    return group * ITEMS_PER_GROUP + F.floor(F.pow(u, F.lit(1.8)) * size).cast("long") + 1


def day_start_seconds(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
