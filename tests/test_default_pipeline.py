"""The whole pipeline on the embedded default (`make run`'s data), checked against the plant.

One run of every stage on conf/local.yaml's configuration at half its users
(10,000 users, about 500,000 events): the session fixture `default_lake`
(conftest), shared with the recommend stage's end-to-end test.
"""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from shopseg import tables
from shopseg.segment import adjusted_rand_index

# The marketer's name each planted persona should end up with.
EXPECTED_NAMES = {
    "loyal_high_value": "High-value loyal",
    "bargain_hunter": "Bargain hunters",
    "dormant": "Dormant",
    "new_customer": "New customers",
    "window_shopper": "Window shoppers",
    "one_time_buyer": "One-time buyers",
}


def read(root, table) -> DeltaTable:
    return DeltaTable(str(root / table.name))


@pytest.mark.slow
def test_segments_recover_the_planted_personas(default_lake):
    segments = read(default_lake, tables.USER_SEGMENTS).to_pandas()
    personas = read(default_lake, tables.USER_PERSONAS).to_pandas()
    both = segments.merge(personas[["user_id", "persona"]], on="user_id", how="outer")
    assert both["segment_id"].notna().all(), "every planted user is segmented"
    assert both["persona"].notna().all(), "no segmented user is unknown to the plant"

    counts = both.groupby(["persona", "segment_id"]).size()
    ari = adjusted_rand_index((p, s, int(n)) for (p, s), n in counts.items())
    assert ari >= 0.8, f"adjusted Rand index {ari:.3f} against the planted personas"

    sweep = read(default_lake, tables.SEGMENT_SWEEP).to_pandas()
    chosen = sweep[sweep["chosen"]]
    assert len(chosen) == 1
    planted = personas["persona"].nunique()
    assert abs(int(chosen["k"].iloc[0]) - planted) <= 1, chosen.to_dict("records")
    assert segments["segment_id"].nunique() == int(chosen["k"].iloc[0])

    # Each persona's users mostly carry the name a marketer would give it.
    majority = both.groupby("persona")["segment_name"].agg(lambda s: s.value_counts().index[0])
    assert majority.to_dict() == {p: EXPECTED_NAMES[p] for p in majority.index}


@pytest.mark.slow
def test_profiles_and_explanations_on_the_default_data(default_lake):
    segments = read(default_lake, tables.USER_SEGMENTS).to_pandas()
    profiles = read(default_lake, tables.SEGMENT_PROFILES).to_pandas()
    assert sorted(profiles["segment_name"]) == sorted(segments["segment_name"].unique())
    sizes = segments.groupby("segment_name").size()
    assert profiles.set_index("segment_name")["size"].to_dict() == sizes.to_dict()
    assert profiles["share"].sum() == pytest.approx(1.0)
    assert (profiles["strategy"].str.len() > 0).all(), "every planted persona has a strategy"
    # The surrogate tree explains the segments it was fitted on.
    assert (profiles["rules"].map(len) > 0).all()
    outliers = segments["is_outlier"].mean()
    assert 0 < outliers <= 0.05


@pytest.mark.slow
def test_customer_value_sees_the_dormant_customers(default_lake):
    values = read(default_lake, tables.CUSTOMER_VALUE).to_pandas()
    events = read(default_lake, tables.SILVER_EVENTS).to_pandas(columns=["user_id", "event_type"])
    buyers = set(events.loc[events.event_type == "purchase", "user_id"])
    assert set(values.user_id) == buyers, "every customer with a purchase has a value"
    assert values.p_alive.between(0, 1).all() and (values.clv >= 0).all()

    personas = read(default_lake, tables.USER_PERSONAS).to_pandas()
    alive = values.merge(personas, on="user_id").groupby("persona").p_alive.mean()
    assert alive.idxmin() == "dormant", alive.to_dict()

    profiles = read(default_lake, tables.SEGMENT_PROFILES).to_pandas().set_index("segment_name")
    assert profiles.mean_clv.notna().all() and profiles.median_clv.notna().all()
    assert profiles.at_risk_share.idxmax() == "Dormant", profiles.at_risk_share.to_dict()
