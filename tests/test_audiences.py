"""Campaign audiences: eligibility, priority, caps, exclusions, a reproducible A/B split."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from shopseg import campaigns as cp
from shopseg import tables as t
from shopseg.cli import main
from shopseg.config import (
    CampaignConf,
    CampaignExclusions,
    CampaignTarget,
    ConfigError,
    load_campaigns,
    load_config,
)

from .conftest import FAST_WRITER, LOCAL_CONF

SEND = dt.date(2025, 6, 1)


def campaign(cid, segments=(), priority=0, holdout=0.2, **kwargs) -> CampaignConf:
    return CampaignConf(
        id=cid,
        name=cid,
        target=CampaignTarget(segments=list(segments), where=kwargs.pop("where", None)),
        holdout=holdout,
        priority=priority,
        **kwargs,
    )


@pytest.fixture(scope="module")
def users(spark):
    rows = [(u, "Dormant" if u % 2 else "Loyal", "Champions" if u % 3 == 0 else "Lost", u % 7)
            for u in range(20_000)]  # fmt: skip
    return spark.createDataFrame(
        rows, "user_id long, segment_name string, rfm_segment string, frequency int"
    ).cache()


def test_split_is_reproducible_and_the_control_share_matches_the_holdout(spark, users):
    plan = [campaign("winback", ["Dormant"], holdout=0.2)]
    first = cp.assign(users, plan, None, SEND, "salt").toPandas().sort_values("user_id")
    again = cp.assign(users.repartition(7), plan, None, SEND, "salt").toPandas()
    again = again.sort_values("user_id")
    assert len(first) == 10_000
    assert first["variant"].tolist() == again["variant"].tolist(), "same inputs, same split"
    share = (first["variant"] == cp.CONTROL).mean()
    assert abs(share - 0.2) < 0.01, share
    other = cp.assign(users, plan, None, SEND, "another salt").toPandas().sort_values("user_id")
    assert other["variant"].tolist() != first["variant"].tolist(), "a new salt, a new split"


def test_each_user_joins_the_eligible_campaign_with_the_highest_priority(users):
    plan = [
        campaign("low", ["Dormant", "Loyal"], priority=1),
        campaign("high", ["Dormant"], priority=5),
        campaign("predicate", ["Loyal"], priority=9, where="frequency >= 5"),
    ]
    got = cp.assign(users, plan, None, SEND, "s").toPandas().set_index("user_id")
    assert got.index.is_unique
    source = users.toPandas().set_index("user_id").loc[got.index]
    expected = pd.Series("low", index=got.index)
    expected[source["segment_name"] == "Dormant"] = "high"
    expected[(source["segment_name"] == "Loyal") & (source["frequency"] >= 5)] = "predicate"
    assert (got["campaign_id"] == expected).all()
    assert len(got) == 20_000


def test_max_audience_caps_treated_and_control_together(users):
    plan = [campaign("capped", ["Dormant"], holdout=0.5, max_audience=1_000)]
    got = cp.assign(users, plan, None, SEND, "s").toPandas()
    assert len(got) == 1_000
    assert 0.4 < (got["variant"] == cp.CONTROL).mean() < 0.6


def test_recently_treated_and_opted_out_users_are_excluded(spark, users):
    history = spark.createDataFrame(
        [(1, "treatment", SEND - dt.timedelta(days=10)),
         (3, "control", SEND - dt.timedelta(days=10)),
         (5, "treatment", SEND - dt.timedelta(days=40)),
         (7, "treatment", SEND)],
        "user_id long, variant string, send_date date",
    )  # fmt: skip
    plan = [
        campaign(
            "w",
            ["Dormant"],
            exclude=CampaignExclusions(
                contacted_within_days=30,
                opted_out="CASE user_id WHEN 9 THEN true WHEN 11 THEN null ELSE false END",
            ),
        )
    ]
    got = set(cp.assign(users, plan, history, SEND, "s").toPandas()["user_id"])
    assert 1 not in got, "treated 10 days ago"
    assert {3, 5, 7} <= got, "held out, treated long ago, or on the send date itself"
    assert 9 not in got, "opted out"
    assert 11 not in got, "no consent on record counts as opted out"
    assert 13 in got


def test_top_items_keep_rank_order(spark):
    recs = spark.createDataFrame(
        [(1, 3, 30), (1, 1, 10), (1, 2, 20), (1, 4, 40), (2, 1, 99)],
        "user_id long, rank int, item_id long",
    )
    got = {r.user_id: r.recommended_items for r in cp.top_items(recs, 3).collect()}
    assert got == {1: ["10", "20", "30"], 2: ["99"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("campaigns: [{id: a, name: A, target: {segments: [X]}, holdout: 1.5}]",
         r"campaign 'a': holdout: must be within"),
        ("campaigns: [{id: a, name: A, holdout: 0.1}]", r"campaign 'a': target: needs"),
        ("campaigns: [{id: a, name: A, target: {segments: [X]}, offr: x}]",
         r"campaign 'a': unknown key 'offr'"),
        ("campaigns: [{id: a, name: A, target: {segments: [X]}}, "
         "{id: a, name: B, target: {segments: [Y]}}]", r"campaign 'a': id: used twice"),
    ],
)  # fmt: skip
def test_campaign_errors_name_the_campaign_and_the_key(tmp_path, text, message):
    path = tmp_path / "campaigns.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_campaigns(path)


def test_the_shipped_campaigns_load():
    shipped = load_campaigns(LOCAL_CONF.parent / "campaigns.yaml")
    assert len(shipped) >= 3 and all(0 < c.holdout < 1 for c in shipped)


@pytest.mark.slow
def test_audiences_on_the_default_pipeline(spark, default_lake, capsys):
    audiences = DeltaTable(str(default_lake / t.CAMPAIGN_AUDIENCES.name)).to_pandas()
    campaigns = {c.id: c for c in load_campaigns(LOCAL_CONF.parent / "campaigns.yaml")}
    assert audiences["user_id"].is_unique, "one campaign per user and send date"
    assert set(audiences.columns) == set(t.CAMPAIGN_AUDIENCES.columns)
    assert not set(audiences.columns) & set(t.DIRECT_IDENTIFIERS)
    for cid, rows in audiences.groupby("campaign_id"):
        share = (rows["variant"] == cp.CONTROL).mean()
        if len(rows) >= 2_000:
            assert abs(share - campaigns[cid].holdout) <= 0.01, (cid, share, len(rows))
    assert audiences["recommended_items"].map(len).gt(0).mean() > 0.99
    # Consent: only users whose profile says they opted in are in any audience.
    consent = DeltaTable(str(default_lake / t.BRONZE_USERS.name)).to_pandas()
    consent = consent.set_index("user_id")[t.MARKETING_OPT_IN]
    assert consent.isna().any() and (consent == False).any()  # noqa: E712
    assert (audiences["user_id"].map(consent) == True).all()  # noqa: E712
    send_date = audiences["send_date"].iloc[0]
    exported = sorted(
        p.parent.parent.name
        for p in (default_lake / "exports" / str(send_date)).glob("*/csv/*.csv")
    )
    big_enough = audiences[audiences["variant"] == cp.TREATMENT].groupby("campaign_id").size()
    assert exported == sorted(big_enough[big_enough >= 10].index)
    csv = next((default_lake / "exports" / str(send_date)).glob(f"{exported[0]}/csv/*.csv"))
    header = Path(csv).read_text().splitlines()[0].split(",")
    assert header == ["user_id", "campaign_id", "offer", "channel", "recommended_items"]

    # A rebuild from the same inputs gives the identical assignment; a dry
    # run prints the counts and writes nothing.
    args = ["--conf", str(LOCAL_CONF), "--set", f"lakehouse.root={default_lake}"]
    args += ["--set", FAST_WRITER, "--set", "spark.master=local[2]"]
    version = DeltaTable(str(default_lake / t.CAMPAIGN_AUDIENCES.name)).version()
    assert main(["audiences", "--dry-run", *args]) == 0
    assert "dry run: nothing written" in capsys.readouterr().out
    assert DeltaTable(str(default_lake / t.CAMPAIGN_AUDIENCES.name)).version() == version
    assert main(["audiences", *args]) == 0
    rebuilt = DeltaTable(str(default_lake / t.CAMPAIGN_AUDIENCES.name)).to_pandas()
    key = ["user_id", "campaign_id", "variant"]
    assert (
        rebuilt[key]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(audiences[key].sort_values(key).reset_index(drop=True))
    )


def test_uplift_interval_by_hand():
    # 30/100 treated vs 20/100 control: difference 0.10, se sqrt(.21/100 + .16/100).
    p_t, p_c, diff, low, high = cp.uplift(100, 30, 100, 20, 1.96)
    se = (0.3 * 0.7 / 100 + 0.2 * 0.8 / 100) ** 0.5
    assert (p_t, p_c) == (0.3, 0.2)
    assert diff == pytest.approx(0.1)
    assert (low, high) == pytest.approx((0.1 - 1.96 * se, 0.1 + 1.96 * se))


def test_revenue_difference_matches_welch_from_the_raw_values():
    import numpy as np

    treated, control = np.array([0.0, 10.0, 30.0, 0.0]), np.array([0.0, 5.0, 0.0])
    got = cp.mean_difference(
        len(treated), treated.sum(), (treated**2).sum(),
        len(control), control.sum(), (control**2).sum(), 1.96,
    )  # fmt: skip
    se = (treated.var(ddof=1) / 4 + control.var(ddof=1) / 3) ** 0.5
    want = treated.mean() - control.mean()
    assert got[2] == pytest.approx(want)
    assert got[3:] == pytest.approx((want - 1.96 * se, want + 1.96 * se))


def test_simulated_outcomes_plant_the_lift_only_for_treated_users_of_effective_campaigns(spark):
    rows = [("c", u, "treatment" if u % 2 else "control", "p") for u in range(40_000)]
    rows += [("none", u, "treatment", "p") for u in range(40_000, 50_000)]
    audience = spark.createDataFrame(
        rows, "campaign_id string, user_id long, variant string, persona string"
    )
    events, truth = cp.simulate_outcomes(
        audience, SEND, 1, 30, {"p": 0.2}, {"p": 0.1}, {"p": 50.0}, ["none"]
    )
    bought = {r.user_id for r in events.select("user_id").collect()}
    rate = lambda users: sum(u in bought for u in users) / len(users)  # noqa: E731
    assert rate(range(1, 40_000, 2)) == pytest.approx(0.3, abs=0.015)
    assert rate(range(0, 40_000, 2)) == pytest.approx(0.2, abs=0.015)
    assert rate(range(40_000, 50_000)) == pytest.approx(0.2, abs=0.02)
    lifts = {r.campaign_id: r.planted_lift for r in truth.collect()}
    assert lifts == {"c": pytest.approx(0.1), "none": 0.0}
    window = events.agg(F.min("event_ts"), F.max("event_ts")).first()
    assert window[0].date() >= SEND and window[1].date() < SEND + dt.timedelta(days=30)


@pytest.mark.slow
def test_measured_uplift_covers_the_planted_lift(default_lake):
    results = DeltaTable(str(default_lake / t.CAMPAIGN_RESULTS.name)).to_pandas()
    truth = DeltaTable(str(default_lake / t.CAMPAIGN_LIFT.name)).to_pandas()
    overall = results[results["segment_name"] == cp.ALL_SEGMENTS].set_index("campaign_id")
    assert set(overall.index) == set(truth["campaign_id"])
    for row in truth.itertuples():
        got = overall.loc[row.campaign_id]
        assert got.uplift_low <= row.planted_lift <= got.uplift_high, (row, got.to_dict())
    no_effect = truth[truth["planted_lift"] == 0]["campaign_id"]
    assert len(no_effect) == 1, "the default plants one campaign without effect"
    assert (overall.loc[no_effect, "uplift_low"] <= 0).all()
    assert (overall.loc[no_effect, "uplift_high"] >= 0).all()
    segments = results[results["segment_name"] != cp.ALL_SEGMENTS]
    per_campaign = segments.groupby("campaign_id")[["treated_users", "control_users"]].sum()
    # Small segments are pooled, and a pooled cell still under privacy.min_group_size
    # is not shown: the shown segments hold at most the campaign's users, each
    # shown cell at least the minimum in both arms.
    shown = overall[["treated_users", "control_users"]].loc[per_campaign.index]
    assert (per_campaign <= shown).all().all()
    minimum = load_config(LOCAL_CONF, []).privacy.min_group_size
    assert (results[["treated_users", "control_users"]] >= minimum).all().all()


def export_once(spark, tmp_path, campaigns, audience_rows, min_group_size=2):
    """The stage's export step on hand-made audience rows (a stand-in stage context)."""
    import logging
    from types import SimpleNamespace

    from shopseg.config import load_config
    from shopseg.stages.audiences import _export

    config = load_config(LOCAL_CONF, [f"privacy.min_group_size={min_group_size}"])
    ctx = SimpleNamespace(
        config=config,
        lakehouse=SimpleNamespace(root=str(tmp_path)),
        log=logging.getLogger("test"),
        record_files=lambda *args: None,
    )
    audience = spark.createDataFrame(
        audience_rows,
        "user_id long, campaign_id string, variant string, offer string, channel string, "
        "recommended_items array<string>",
    )
    counts = {
        (r.campaign_id, r.variant): r["count"]
        for r in audience.groupBy("campaign_id", "variant").count().collect()
    }
    _export(ctx, campaigns, audience, SEND, counts)
    return tmp_path / "exports" / str(SEND)


def test_an_export_replaces_the_earlier_one_whole_with_a_manifest_last(spark, tmp_path):
    import csv
    import hashlib

    treated = cp.TREATMENT
    rows = [(1, "a", treated, "=HYPERLINK(\"x\")", "email", ["+1", "ok"]),
            (2, "a", treated, "10% off", "email", ["@i"]),
            (3, "b", treated, "b", "app", []),
            (4, "b", treated, "b", "app", []),
            (5, "c", treated, "c", "app", [])]  # fmt: skip
    folder = export_once(
        spark, tmp_path, [campaign("a", ["x"]), campaign("b", ["x"]), campaign("c", ["x"])], rows
    )
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {c["campaign_id"]: c["rows"] for c in manifest["campaigns"]} == {"a": 2, "b": 2}
    for entry in manifest["campaigns"]:
        for f in entry["files"]:
            data = (folder / f["path"]).read_bytes()
            assert f["bytes"] == len(data)
            assert f["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    cells = list(csv.DictReader(next((folder / "a" / "csv").glob("*.csv")).open()))
    by_user = {c["user_id"]: c for c in cells}
    assert by_user["1"]["offer"] == '\'=HYPERLINK("x")'
    assert by_user["1"]["recommended_items"] == "'+1|ok"
    assert by_user["2"]["offer"] == "10% off" and by_user["2"]["recommended_items"] == "'@i"

    # Rerun: `a` falls below the gate, `b` is no longer configured, `c` grows.
    rows = [(1, "a", treated, "x", "email", []),
            (5, "c", treated, "c", "app", []),
            (6, "c", treated, "c", "app", [])]  # fmt: skip
    folder = export_once(spark, tmp_path, [campaign("a", ["x"]), campaign("c", ["x"])], rows)
    assert sorted(p.name for p in folder.iterdir()) == ["c", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [c["campaign_id"] for c in manifest["campaigns"]] == ["c"]
    assert not [p for p in (tmp_path / "exports").iterdir() if p.name.startswith(".")]
    # Nothing passes the gate: nothing is left for that date.
    export_once(spark, tmp_path, [campaign("c", ["x"])], rows[:1])
    assert not folder.exists()


def test_cells_below_the_minimum_group_are_pooled_then_suppressed():
    import logging
    from types import SimpleNamespace

    from shopseg.stages.evaluate import Sums, suppress_small_cells

    metrics = {}
    ctx = SimpleNamespace(
        log=logging.getLogger("test"), run=SimpleNamespace(log_metrics=metrics.update)
    )

    def cell(treated, control, converters=1):
        return {cp.TREATMENT: Sums(treated, converters, 10.0, 100.0),
                cp.CONTROL: Sums(control, converters, 5.0, 25.0)}  # fmt: skip

    cells = {
        ("a", cp.ALL_SEGMENTS): cell(40, 12),
        ("a", "Loyal"): cell(30, 10),
        ("a", "Dormant"): cell(6, 1),  # pooled with Lost into 10 treated, 2 control
        ("a", "Lost"): cell(4, 1),
        ("b", cp.ALL_SEGMENTS): cell(50, 20),
        ("b", "Loyal"): cell(30, 12),
        ("b", "Dormant"): cell(12, 4),  # pooled with Lost: 20 treated, 10 control
        ("b", "Lost"): cell(8, 6),
        ("c", cp.ALL_SEGMENTS): {cp.TREATMENT: Sums(9, 1, 1.0, 1.0)},  # no control at all
    }
    kept = suppress_small_cells(ctx, cells, 10)
    assert sorted(kept) == [
        ("a", cp.ALL_SEGMENTS), ("a", "Loyal"),
        ("b", cp.ALL_SEGMENTS), ("b", cp.SMALL_SEGMENTS), ("b", "Loyal"),
    ]  # fmt: skip
    assert kept[("b", cp.SMALL_SEGMENTS)][cp.TREATMENT] == Sums(20, 2, 20.0, 200.0)
    assert kept[("b", cp.SMALL_SEGMENTS)][cp.CONTROL].users == 10
    assert metrics == {"cells_suppressed": 2, "segments_pooled": 4}
    for variants in kept.values():
        assert min(v.users for v in variants.values()) >= 10
