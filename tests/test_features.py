"""Features on hand-computed data: RFM, behaviour, shares, RFM scores, interactions, snapshots."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from shopseg import features as fx
from shopseg.config import DEFAULT_RFM_RULES, RfmRule

AS_OF = dt.date(2025, 2, 1)
BRONZE = (
    "event_id long, user_id long, item_id long, event_type string, event_ts timestamp, "
    "session_id string, quantity int, price double, discount double, rating int, "
    "dwell_seconds double, record_id string"
)


def ts(day: str, hm: str = "10:00") -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day} {hm}")


EVENTS = [
    # user 1: three purchase days 10 days apart, one at zero amount, a review.
    (1, 1, 10, "view", ts("2025-01-05"), "s1", None, 10.0, None, None, 30.0, "r1"),
    (2, 1, 10, "cart", ts("2025-01-05", "10:01"), "s1", 2, 10.0, 0.0, None, None, "r2"),
    (3, 1, 10, "purchase", ts("2025-01-05", "10:02"), "s1", 2, 10.0, 0.0, None, None, "r3"),
    (4, 1, 20, "view", ts("2025-01-15", "09:00"), "s2", None, 5.0, None, None, 50.0, "r4"),
    (5, 1, 20, "purchase", ts("2025-01-15", "09:05"), "s2", 1, 5.0, 0.2, None, None, "r5"),
    (6, 1, 30, "purchase", ts("2025-01-25", "12:00"), "s3", 1, 0.0, None, None, None, "r6"),
    (7, 1, 10, "review", ts("2025-01-26"), "s4", None, None, None, 4, None, "r7"),
    (8, 1, 10, "view", ts("2025-01-26", "11:00"), "s4", None, 10.0, None, None, None, "r8"),
    # outside the window: before the 30-day lookback, and after the as-of date
    (90, 1, 10, "purchase", ts("2024-12-20"), "s0", 1, 10.0, 0.0, None, None, "r90"),
    (91, 1, 10, "purchase", ts("2025-02-05"), "s9", 1, 10.0, 0.0, None, None, "r91"),
    # user 2: views only, one of them exported twice
    (9, 2, 20, "view", ts("2025-01-12"), "s5", None, 5.0, None, None, 10.0, "r9"),
    (10, 2, 20, "view", ts("2025-01-12", "10:05"), "s5", None, 5.0, None, None, 20.0, "r10"),
    (10, 2, 20, "view", ts("2025-01-12", "10:05"), "s5", None, 5.0, None, None, 20.0, "r11"),
    # user 3: a single event, no profile, no session, amount from price x (no) quantity
    (11, 3, 10, "purchase", ts("2025-01-31"), None, None, 7.5, None, None, None, "r12"),
    # user 8: session s8 runs past midnight (one session over two days), then s9
    (15, 8, 10, "view", ts("2025-01-20", "23:50"), "s8", None, 10.0, None, None, None, "r14"),
    (16, 8, 20, "view", ts("2025-01-21", "00:10"), "s8", None, 5.0, None, None, None, "r15"),
    (17, 8, 20, "view", ts("2025-01-21", "18:00"), "s9", None, 5.0, None, None, None, "r16"),
    # user 5: only old events
    (12, 5, 10, "view", ts("2024-12-10"), "s6", None, 10.0, None, None, 5.0, "r13"),
]
USERS = [
    (1, ts("2024-12-01"), 30, "female", "north", "app"),
    (2, ts("2025-01-10"), 45, "male", "south", "web"),
    (4, ts("2025-01-20"), None, "other", None, None),
    (6, ts("2025-03-01"), 22, "female", None, None),  # signs up after the as-of date
]
ITEMS = [(10, "books"), (20, "toys"), (30, "books")]


@pytest.fixture(scope="module")
def metrics(spark):
    bronze = spark.createDataFrame(EVENTS, BRONZE)
    silver = fx.build_silver_events(bronze).cache()
    window = fx.filter_window(silver, AS_OF, 30)
    users = spark.createDataFrame(
        USERS,
        "user_id long, signup_ts timestamp, age int, gender string, region string, channel string",
    )
    items = spark.createDataFrame(ITEMS, "item_id long, category string")
    out = fx.build_user_metrics(
        window, users, items, AS_OF, ["books", "toys"], {"gender": ["female", "male", "other"]}
    )
    return {r.user_id: r.asDict() for r in out.collect()}


def test_recency_tenure_and_buyer_status_come_from_the_whole_history(spark):
    # User 7 bought only long before the 30-day window.
    old_buyer = (13, 7, 10, "purchase", ts("2024-10-02"), "s7", 1, 9.0, 0.0, None, None, "r14")
    silver = fx.build_silver_events(spark.createDataFrame([*EVENTS, old_buyer], BRONZE))
    lifetime = fx.build_lifetime_dates(fx.filter_window(silver, AS_OF, None))
    metrics = fx.build_user_metrics(
        fx.filter_window(silver, AS_OF, 30), None, None, AS_OF, [], {}, lifetime
    )
    got = {r.user_id: r for r in metrics.collect()}
    assert sorted(got) == [1, 2, 3, 5, 7, 8], "users known only from older history get a row"
    u7 = got[7]
    assert (u7.frequency, u7.recency_days, u7.tenure_days) == (
        0,
        (AS_OF - dt.date(2024, 10, 2)).days,
        (AS_OF - dt.date(2024, 10, 2)).days,
    )
    assert u7.last_purchase_date == dt.date(2024, 10, 2)
    # User 1's first event (a purchase on 2024-12-20) is older than the window.
    assert got[1].tenure_days == (AS_OF - dt.date(2024, 12, 20)).days
    assert got[1].frequency == 3, "counts stay windowed"
    cuts = fx.rfm_cuts(metrics, 0.0)
    rules = [RfmRule(name=n, r=list(r), f=list(f)) for n, r, f in DEFAULT_RFM_RULES]
    scored = {r.user_id: r for r in fx.with_rfm_scores(metrics, cuts, rules, "Never").collect()}
    assert scored[7].rfm_segment not in ("Never", None)
    assert scored[2].rfm_segment == "Never"


def test_silver_events_dedup_and_amount(spark):
    silver = fx.build_silver_events(spark.createDataFrame(EVENTS, BRONZE))
    assert silver.count() == len(EVENTS) - 1
    amounts = {r.event_id: r.amount for r in silver.collect()}
    assert amounts[3] == 20.0 and amounts[5] == 5.0 and amounts[6] == 0.0
    assert amounts[11] == 7.5 and amounts[1] is None
    # A source without event ids gets distinct ids from its record ids.
    keyless = spark.createDataFrame(
        [(None, 1, "a"), (None, 1, "b")], "event_id long, user_id long, record_id string"
    )
    assert fx.build_silver_events(keyless).count() == 2


def test_text_ids_stay_text_and_numbers_become_long(spark):
    bronze = spark.createDataFrame(
        [(1, "C-7", "SKU-0012", "purchase", ts("2025-01-05"), "r1")],
        "event_id int, user_id string, item_id string, event_type string, "
        "event_ts timestamp, record_id string",
    )
    silver = fx.build_silver_events(bronze)
    types = dict(silver.dtypes)
    assert (types["user_id"], types["item_id"], types["event_id"]) == ("string", "string", "bigint")
    row = silver.first()
    assert (row.user_id, row.item_id) == ("C-7", "SKU-0012")
    interactions = fx.build_interactions(silver, AS_OF, {"purchase": 1.0}, None)
    assert [(r.user_id, r.item_id) for r in interactions.collect()] == [("C-7", "SKU-0012")]


def test_population(metrics):
    # Users with a profile (signed up before as-of) or events in the window.
    assert sorted(metrics) == [1, 2, 3, 4, 8]


def test_buyer_with_zero_amount_and_review(metrics):
    u = metrics[1]
    assert u["recency_days"] == 7
    assert u["frequency"] == 3
    assert u["monetary"] == pytest.approx(25.0)
    assert u["avg_order_value"] == pytest.approx(25.0 / 3)
    assert u["tenure_days"] == 62
    assert u["purchase_days"] == 3
    assert u["mean_days_between_purchases"] == pytest.approx(10.0)
    assert u["std_days_between_purchases"] == pytest.approx(0.0)
    assert u["active_days"] == 4
    assert u["sessions"] == 4
    assert (u["views"], u["carts"]) == (3, 1)
    assert u["cart_rate"] == pytest.approx(1 / 3)
    assert u["conversion_rate"] == pytest.approx(1.0)
    assert u["mean_dwell_seconds"] == pytest.approx(40.0)
    assert u["discount_share"] == pytest.approx(1 / 3)
    assert (u["review_count"], u["mean_rating"]) == (1, 4.0)
    assert u["share_books"] == pytest.approx(6 / 8)
    assert u["share_toys"] == pytest.approx(2 / 8)
    assert (u["gender_female"], u["gender_male"]) == (1, 0)
    assert u["first_event_date"] == dt.date(2025, 1, 5)
    assert u["last_purchase_date"] == dt.date(2025, 1, 25)
    # The review and view on the 26th are later than the last purchase.
    assert (u["last_event_date"], u["inactive_days"]) == (dt.date(2025, 1, 26), 6)


def test_a_session_over_midnight_counts_once(metrics):
    u = metrics[8]
    assert (u["views"], u["active_days"], u["sessions"]) == (3, 2, 2)


def test_viewer_who_never_bought(metrics):
    u = metrics[2]
    assert (u["frequency"], u["monetary"], u["purchase_days"]) == (0, 0.0, 0)
    assert u["recency_days"] is None and u["avg_order_value"] is None
    assert (u["views"], u["active_days"], u["sessions"]) == (2, 1, 1)
    assert u["cart_rate"] == 0.0 and u["conversion_rate"] == 0.0
    assert u["mean_dwell_seconds"] == pytest.approx(15.0)
    assert u["discount_share"] is None
    assert u["share_toys"] == 1.0
    assert u["tenure_days"] == 22
    assert u["inactive_days"] == 20


def test_single_event_user_without_profile(metrics):
    u = metrics[3]
    assert (u["recency_days"], u["frequency"], u["monetary"]) == (1, 1, 7.5)
    assert u["sessions"] == 0 and u["views"] == 0
    assert u["conversion_rate"] is None
    assert u["mean_days_between_purchases"] is None
    assert u["tenure_days"] == 1
    assert u["gender"] is None and u["gender_female"] == 0
    assert u["inactive_days"] == 1


def test_profile_without_events(metrics):
    u = metrics[4]
    assert (u["frequency"], u["views"], u["active_days"], u["sessions"]) == (0, 0, 0, 0)
    assert u["tenure_days"] == 12
    assert u["inactive_days"] is None
    assert u["share_books"] is None
    assert u["gender_other"] == 1


def test_score_counts_the_cuts_passed(spark):
    df = spark.createDataFrame([(v,) for v in (1, 2, 3, 5, 8, 9, None)], "v long")
    cuts = [2.0, 4.0, 6.0, 8.0]
    got = df.select(
        "v",
        fx.score(F.col("v"), cuts, True).alias("up"),
        fx.score(F.col("v"), cuts, False).alias("down"),
    ).collect()
    assert {r.v: (r.up, r.down) for r in got} == {
        1: (1, 5),
        2: (1, 4),
        3: (2, 4),
        5: (3, 3),
        8: (4, 1),
        9: (5, 1),
        None: (None, None),
    }


def test_rfm_cuts_and_segments(spark):
    rows = [(u, 10 * u, u, 100.0 * u) for u in range(1, 11)] + [(11, None, 0, 0.0)]
    users = spark.createDataFrame(
        rows, "user_id long, recency_days int, frequency long, monetary double"
    )
    cuts = fx.rfm_cuts(users, 0.0)
    assert cuts["frequency"] == [2.0, 4.0, 6.0, 8.0]
    assert cuts["recency_days"] == [20.0, 40.0, 60.0, 80.0]
    rules = [RfmRule(name=n, r=list(r), f=list(f)) for n, r, f in DEFAULT_RFM_RULES]
    scored = {r.user_id: r for r in fx.with_rfm_scores(users, cuts, rules, "Never").collect()}
    # user 1: most recent (R 5), least frequent (F 1) -> New
    assert (scored[1].r_score, scored[1].f_score, scored[1].rfm_segment) == (5, 1, "New")
    # user 10: least recent (R 1), most frequent (F 5) -> Can't lose
    assert (scored[10].r_score, scored[10].f_score, scored[10].rfm_segment) == (1, 5, "Can't lose")
    assert (scored[5].r_score, scored[5].f_score, scored[5].rfm_segment) == (3, 3, "Loyal")
    assert scored[11].rfm_segment == "Never" and scored[11].r_score is None


@pytest.mark.parametrize(
    ("r", "f", "name"),
    [
        (5, 5, "Champions"),
        (4, 4, "Champions"),
        (2, 5, "Can't lose"),
        (3, 4, "Loyal"),
        (5, 3, "Loyal"),
        (5, 1, "New"),
        (4, 2, "Potential loyalist"),
        (2, 3, "At risk"),
        (2, 1, "Hibernating"),
        (1, 2, "Lost"),
    ],
)
def test_default_rfm_grid(spark, r, f, name):
    rules = [RfmRule(name=n, r=list(rr), f=list(ff)) for n, rr, ff in DEFAULT_RFM_RULES]
    df = spark.createDataFrame(
        [(r, f, 1, 30)], "r_score int, f_score int, frequency long, recency_days int"
    )
    assert df.select(fx.rfm_segment(rules, "Never")).first()[0] == name


def test_interactions_weighted_and_decayed(spark):
    silver = fx.build_silver_events(spark.createDataFrame(EVENTS, BRONZE))
    window = fx.filter_window(silver, AS_OF, 30)
    weights = {"view": 1.0, "cart": 3.0, "purchase": 5.0, "review": 2.0}
    plain = {
        (r.user_id, r.item_id): r
        for r in fx.build_interactions(window, AS_OF, weights, None).collect()
    }
    assert plain[(1, 10)].strength == pytest.approx(1 + 3 + 5 + 2 + 1)
    assert plain[(1, 10)].events == 5
    assert plain[(2, 20)].strength == pytest.approx(2.0)
    assert (1, 30) in plain and (5, 10) not in plain
    decayed = fx.build_interactions(window, AS_OF, weights, 10.0)
    got = {(r.user_id, r.item_id): r.strength for r in decayed.collect()}
    want = (1 + 3 + 5) * math.pow(0.5, 27 / 10) + (2 + 1) * math.pow(0.5, 6 / 10)
    assert got[(1, 10)] == pytest.approx(want)


# Snapshots at two dates, and a rerun replacing only its own: tests/test_segment.py
# (test_transitions_recover_the_drift_the_generator_planted).


ORDER_BRONZE = (
    "user_id long, item_id string, event_type string, event_ts timestamp, order_id string, "
    "quantity int, price double, amount double, item_name string, record_id string"
)
ORDER_LINES = [
    # Order A: three lines on one day.
    (1, "I1", "purchase", ts("2025-01-05"), "A", 2, 5.0, None, "MUG", "r1"),
    (1, "I2", "purchase", ts("2025-01-05", "10:01"), "A", 1, 10.0, None, "TEA", "r2"),
    (1, "I3", "purchase", ts("2025-01-05", "10:02"), "A", 1, 4.0, None, "CUP", "r3"),
    # Order B: two lines on two days (one order, counted once).
    (1, "I1", "purchase", ts("2025-01-10", "23:59"), "B", 1, 6.0, None, "MUG BIG", "r4"),
    (1, "I4", "purchase", ts("2025-01-11", "00:01"), "B", 3, 2.0, None, None, "r5"),
    # A purchase line without an order id counts as an order of its own.
    (1, "I5", "purchase", ts("2025-01-20"), None, 1, 8.0, None, "PEN", "r6"),
    # Returns: I3 from order A (negative quantity as exports write it), and an
    # item bought before the window (matches no purchase in it: still counted).
    (1, "I3", "return", ts("2025-01-21"), "CA", -1, 4.0, None, "CUP", "r7"),
    (1, "I9", "return", ts("2025-01-22"), "CB", 1, None, -3.0, None, "r8"),
    # User 2: one order of two lines, nothing returned.
    (2, "I2", "purchase", ts("2025-01-15"), "C", 1, 10.0, None, "TEA", "r9"),
    (2, "I1", "purchase", ts("2025-01-15"), "C", 1, 5.0, None, "BIG MUG", "r10"),
]


@pytest.fixture(scope="module")
def order_events(spark):
    return fx.build_silver_events(spark.createDataFrame(ORDER_LINES, ORDER_BRONZE)).cache()


def test_returns_carry_positive_amounts_in_silver(order_events):
    amounts = {r.order_id: r.amount for r in order_events.filter("event_type = 'return'").collect()}
    assert amounts == {"CA": 4.0, "CB": 3.0}


def test_frequency_counts_orders_and_monetary_is_net_of_returns(order_events):
    out = fx.build_user_metrics(order_events, None, None, AS_OF, [], {}, orders=True)
    got = {r.user_id: r for r in out.collect()}
    u = got[1]
    gross = 2 * 5.0 + 10.0 + 4.0 + 6.0 + 3 * 2.0 + 8.0
    assert (u.frequency, u.lines_per_order) == (3, pytest.approx(6 / 3))
    assert u.avg_order_value == pytest.approx(gross / 3)
    assert (u.returns, u.monetary) == (2, pytest.approx(gross - 4.0 - 3.0))
    assert u.return_rate == pytest.approx(7.0 / gross)
    assert (u.purchase_days, u.discount_share) == (4, 0.0)
    assert (got[2].frequency, got[2].lines_per_order, got[2].returns) == (1, 2.0, 0)
    assert (got[2].monetary, got[2].return_rate) == (15.0, 0.0)
    # Without order ids every purchase line is an order, as before.
    lines = fx.build_user_metrics(order_events, None, None, AS_OF, [], {}, orders=False)
    assert {r.user_id: r.frequency for r in lines.collect()} == {1: 6, 2: 2}


def test_returned_items_carry_no_weight_in_interactions(order_events):
    weights = {"purchase": 5.0, "return": 2.0}
    pairs = fx.build_interactions(order_events, AS_OF, weights, None).collect()
    strengths = {(r.user_id, r.item_id): r.strength for r in pairs}
    assert strengths == {
        (1, "I1"): 10.0,
        (1, "I2"): 5.0,
        (1, "I4"): 5.0,
        (1, "I5"): 5.0,
        (2, "I1"): 5.0,
        (2, "I2"): 5.0,
    }


def test_a_catalogue_from_the_event_lines(spark):
    bronze = spark.createDataFrame(ORDER_LINES, ORDER_BRONZE)
    items = fx.build_items_from_events(bronze, "item_name", "price", None)
    got = {r.item_id: r for r in items.collect()}
    assert (got["I1"].item_name, got["I1"].price, got["I1"].events) == ("BIG MUG", 5.0, 3)
    # I4's one line has no name, I9's no name and no price.
    assert (got["I4"].item_name, got["I9"].item_name, got["I9"].price) == (None, None, None)
    assert got["I3"].price == 4.0 and got["I3"].category is None


# ------------------------------------------------------------------ two runs at once


@pytest.mark.slow
def test_two_features_runs_on_an_existing_snapshot_one_wins_the_other_commits_nothing(tmp_path):
    """Two `shopseg run --stages features` processes started together on a
    lakehouse whose snapshot exists (auto mode goes incremental with no new
    batch): one commits, the other names the conflict and commits nothing,
    and its rerun succeeds."""
    import subprocess
    import sys

    from deltalake import DeltaTable

    from shopseg.cli import main

    from .conftest import FAST_WRITER, LOCAL_CONF

    root = tmp_path / "lh"
    sets = [f"lakehouse.root={root}", FAST_WRITER, "spark.master=local[1]"]
    sets += ["generate.users=300", "generate.items=200", "generate.events_per_user=20"]
    args = ["--conf", str(LOCAL_CONF)] + [a for s in sets for a in ("--set", s)]
    assert main(["run", "--stages", "generate,ingest,features", *args]) == 0
    runs = DeltaTable(str(root / "silver" / "feature_runs"))
    before = runs.version()
    features = DeltaTable(str(root / "silver" / "user_features")).to_pandas()

    command = [sys.executable, "-m", "shopseg.cli", "run", "--stages", "features", *args]
    both = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in both)
    assert [rc for rc, _ in outcomes] == [0, 1], outcomes
    assert "concurrent run conflict: another features is running" in outcomes[1][1]
    runs.update_incremental()
    assert runs.version() == before + 1, "the loser committed a feature run"

    assert main(["run", "--stages", "features", *args]) == 0
    after = DeltaTable(str(root / "silver" / "user_features")).to_pandas()
    key = ["user_id", "as_of_date"]
    assert len(after) == len(features)
    merged = features.merge(after, on=key, suffixes=("", "_after"))
    assert len(merged) == len(features)
    assert (merged["frequency"] == merged["frequency_after"]).all()
    assert (merged["monetary"].fillna(-1) == merged["monetary_after"].fillna(-1)).all()
