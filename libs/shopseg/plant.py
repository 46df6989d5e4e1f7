"""What the synthetic shop plants: its categories and the personas' behaviour.

The generator (`shopseg.generator`) draws every user's history from these;
the tests and benchmarks compare what the pipeline finds with them (planted
personas, purchase rates).
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = (
    "electronics",
    "home",
    "fashion",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
    "garden",
    "music",
)


@dataclass(frozen=True)
class Persona:
    """Behaviour planted for one persona."""

    name: str
    # Signup between these many days before the window end (long ago .. recent).
    signup_days_before_end: tuple[int, int]
    # Quiet days at the end of the window (dormant customers stop buying).
    quiet_days: int
    sessions_per_30_days: float
    min_sessions: int
    p_no_sessions: float
    views_per_session: float
    p_cart: float
    p_buy_given_cart: float
    extra_quantity: float
    p_discount: float
    dwell_seconds: float
    p_review: float
    rating_mean: float
    age_mean: float
    age_sd: float
    channel_weights: tuple[float, float, float]
    category_weights: tuple[float, ...]
    p_taste: float
    # One purchase in the first session, none after (one-time buyers).
    single_purchase: bool = False

    def events_per_session(self) -> float:
        """Expected events of one session (views + cart + purchase + review)."""
        p_buy = 1.0 if self.single_purchase else self.p_cart * self.p_buy_given_cart
        return self.views_per_session - 0.5 + self.p_cart + p_buy * (1 + self.p_review)


def _weights(**by_category: float) -> tuple[float, ...]:
    raw = [by_category.get(c, 0.0) for c in CATEGORIES]
    total = sum(raw)
    return tuple(w / total for w in raw)


PERSONAS: tuple[Persona, ...] = (
    Persona(
        name="loyal_high_value",
        signup_days_before_end=(700, 120),
        quiet_days=0,
        sessions_per_30_days=3.0,
        min_sessions=4,
        p_no_sessions=0.0,
        views_per_session=4.0,
        p_cart=0.65,
        p_buy_given_cart=0.85,
        extra_quantity=0.8,
        p_discount=0.05,
        dwell_seconds=45,
        p_review=0.35,
        rating_mean=4.5,
        age_mean=44,
        age_sd=10,
        channel_weights=(0.3, 0.6, 0.1),
        category_weights=_weights(
            electronics=30,
            home=20,
            fashion=20,
            sports=10,
            beauty=5,
            books=5,
            toys=4,
            grocery=2,
            garden=2,
            music=2,
        ),
        p_taste=0.6,
    ),
    Persona(
        name="bargain_hunter",
        signup_days_before_end=(700, 90),
        quiet_days=0,
        sessions_per_30_days=2.0,
        min_sessions=2,
        p_no_sessions=0.0,
        views_per_session=6.0,
        p_cart=0.5,
        p_buy_given_cart=0.75,
        extra_quantity=1.5,
        p_discount=0.75,
        dwell_seconds=70,
        p_review=0.15,
        rating_mean=3.6,
        age_mean=33,
        age_sd=11,
        channel_weights=(0.3, 0.2, 0.5),
        category_weights=_weights(
            grocery=30,
            beauty=15,
            books=15,
            music=10,
            toys=10,
            fashion=10,
            home=5,
            sports=2,
            electronics=2,
            garden=1,
        ),
        p_taste=0.6,
    ),
    Persona(
        name="one_time_buyer",
        signup_days_before_end=(240, 60),
        quiet_days=0,
        sessions_per_30_days=1.5,
        min_sessions=3,
        p_no_sessions=0.0,
        views_per_session=3.0,
        p_cart=0.3,
        p_buy_given_cart=0.0,
        extra_quantity=0.3,
        p_discount=0.2,
        dwell_seconds=40,
        p_review=0.1,
        rating_mean=3.2,
        age_mean=38,
        age_sd=14,
        channel_weights=(0.5, 0.1, 0.4),
        category_weights=_weights(
            books=20,
            music=20,
            toys=15,
            fashion=15,
            beauty=10,
            home=8,
            sports=5,
            grocery=3,
            electronics=2,
            garden=2,
        ),
        p_taste=0.6,
        single_purchase=True,
    ),
    Persona(
        name="dormant",
        signup_days_before_end=(700, 240),
        quiet_days=180,
        sessions_per_30_days=3.5,
        min_sessions=3,
        p_no_sessions=0.0,
        views_per_session=4.0,
        p_cart=0.5,
        p_buy_given_cart=0.8,
        extra_quantity=0.3,
        p_discount=0.15,
        dwell_seconds=40,
        p_review=0.2,
        rating_mean=3.0,
        age_mean=46,
        age_sd=13,
        channel_weights=(0.6, 0.2, 0.2),
        category_weights=_weights(
            home=25,
            garden=25,
            books=15,
            electronics=10,
            fashion=8,
            sports=7,
            music=4,
            toys=3,
            beauty=2,
            grocery=1,
        ),
        p_taste=0.6,
    ),
    Persona(
        name="window_shopper",
        signup_days_before_end=(700, 60),
        quiet_days=0,
        sessions_per_30_days=3.5,
        min_sessions=3,
        p_no_sessions=0.0,
        views_per_session=9.0,
        p_cart=0.12,
        p_buy_given_cart=0.08,
        extra_quantity=0.2,
        p_discount=0.2,
        dwell_seconds=150,
        p_review=0.3,
        rating_mean=4.0,
        age_mean=26,
        age_sd=6,
        channel_weights=(0.3, 0.65, 0.05),
        category_weights=_weights(
            fashion=35,
            electronics=25,
            beauty=15,
            sports=10,
            home=5,
            toys=4,
            music=3,
            books=1,
            grocery=1,
            garden=1,
        ),
        p_taste=0.6,
    ),
    Persona(
        name="new_customer",
        signup_days_before_end=(30, 1),
        quiet_days=0,
        sessions_per_30_days=4.0,
        min_sessions=1,
        p_no_sessions=0.1,
        views_per_session=4.0,
        p_cart=0.35,
        p_buy_given_cart=0.5,
        extra_quantity=0.3,
        p_discount=0.3,
        dwell_seconds=55,
        p_review=0.2,
        rating_mean=4.0,
        age_mean=30,
        age_sd=9,
        channel_weights=(0.35, 0.5, 0.15),
        category_weights=_weights(
            beauty=20,
            fashion=20,
            home=15,
            toys=15,
            sports=10,
            electronics=8,
            books=5,
            music=3,
            grocery=2,
            garden=2,
        ),
        p_taste=0.6,
    ),
)
PERSONA_NAMES = tuple(p.name for p in PERSONAS)


def planted_purchase_rates() -> dict[str, float]:
    """Expected purchase sessions per 30 days of each persona at the window's end.

    Dormant users are quiet at the end and one-time buyers never buy again: 0.
    (Per user the rate also scales with a random activity level.)
    """
    return {
        pe.name: 0.0
        if pe.quiet_days > 0 or pe.single_purchase
        else pe.sessions_per_30_days * pe.p_cart * pe.p_buy_given_cart
        for pe in PERSONAS
    }
