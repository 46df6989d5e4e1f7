"""The shipped examples of real export layouts, end to end, checked against the files.

conf/invoice_lines_example.yaml (order lines, cancellations, missing customers,
decimal-written ids, ISO-8859-1) through ingest -> features -> clv -> segment
-> recommend, and conf/ratings_example.yaml (header-less, tab-separated, epoch
seconds) through ingest -> features -> recommend. Expected values come from
reading the files here with the csv module, independently of Spark. A
clickstream without prices and with four months of history goes through every
stage that values, segments, scores and targets its users.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections import Counter, defaultdict

import pytest

from shopseg import tables as t
from shopseg.cli import main
from shopseg.config import load_config
from shopseg.delta import Lakehouse
from shopseg.pipeline import recommendation_summary

from .conftest import FAST_WRITER, REPO

DATA = REPO / "tests" / "data"


def invoice_rows() -> list[dict[str, str]]:
    with open(DATA / "invoice_lines_example.csv", encoding="iso-8859-1", newline="") as f:
        return list(csv.DictReader(f))


def customer(text: str) -> int | None:
    """The customer id as ingest must type it: integral numbers only."""
    if not text:
        return None
    value = float(text)
    return int(value) if value == int(value) else None


def hand_rfm(rows: list[dict[str, str]], as_of: dt.date) -> dict[int, dict]:
    """Per customer: distinct non-cancelled invoices, purchases minus returns, recency."""
    orders: dict[int, set[str]] = defaultdict(set)
    lines: Counter[int] = Counter()
    bought: dict[int, float] = defaultdict(float)
    returned: dict[int, float] = defaultdict(float)
    returns: Counter[int] = Counter()
    last: dict[int, dt.date] = {}
    for r in rows:
        user = customer(r["CustomerID"])
        if user is None:
            continue
        value = abs(int(r["Quantity"])) * float(r["UnitPrice"])
        day = dt.datetime.fromisoformat(r["InvoiceDate"]).date()
        if r["InvoiceNo"].startswith("C"):
            returned[user] += value
            returns[user] += 1
        else:
            orders[user].add(r["InvoiceNo"])
            lines[user] += 1
            bought[user] += value
            last[user] = max(last.get(user, day), day)
    users = set(bought) | set(returned)
    return {
        u: {
            "frequency": len(orders[u]),
            "monetary": bought[u] - returned[u],
            "returns": returns[u],
            "lines": lines[u],
            "recency_days": (as_of - last[u]).days if u in last else None,
        }
        for u in users
    }


@pytest.mark.slow
def test_invoice_lines_end_to_end_match_the_hand_computation(spark, tmp_path):
    root = tmp_path / "retail"
    args = ["run", "--conf", str(REPO / "conf" / "invoice_lines_example.yaml")]
    # The sweep itself is tested on synthetic data; two k keep this short.
    for override in (
        f"lakehouse.root={root}",
        FAST_WRITER,
        "segment.algorithms=[kmeans]",
        "segment.k_min=3",
        "segment.k_max=4",
        "recommend.ranks=[4]",
    ):
        args += ["--set", override]
    assert main(args) == 0
    lake = Lakehouse(spark, str(root))
    rows = invoice_rows()

    # Every line accounted for, by reason.
    log = lake.read(t.INGEST_LOG.name).collect()
    assert [r.records_read for r in log] == [len(rows)]
    reasons = Counter(r.reason for r in lake.read(t.QUARANTINE.name).collect())
    no_customer = sum(1 for r in rows if not r["CustomerID"])
    not_integral = sum(1 for r in rows if r["CustomerID"] and customer(r["CustomerID"]) is None)
    assert no_customer > len(rows) / 6 and not_integral == 1
    assert reasons == {"missing:user_id": no_customer, "bad_type:user_id": not_integral}
    assert log[0].loaded == len(rows) - no_customer - not_integral

    # RFM of every customer, as the file says.
    last_day = max(dt.datetime.fromisoformat(r["InvoiceDate"]).date() for r in rows)
    as_of = last_day + dt.timedelta(days=1)
    expected = hand_rfm(rows, as_of)
    features = {r.user_id: r for r in lake.read(t.USER_FEATURES.name).collect()}
    assert set(features) == set(expected)
    for user, want in expected.items():
        got = features[user]
        assert got.as_of_date == as_of
        assert (got.frequency, got.returns, got.recency_days) == (
            want["frequency"],
            want["returns"],
            want["recency_days"],
        ), user
        assert got.monetary == pytest.approx(want["monetary"]), user
        if want["frequency"]:
            assert got.lines_per_order == pytest.approx(want["lines"] / want["frequency"])
    # Customer 17850, written by hand in the file: invoices 536365 (3 lines)
    # and 536366 (2 lines) on 2010-12-01, 544001 (1 line) later; C536391
    # returns 2 x 2.55 of the first.
    c = features[17850]
    gross = 6 * 2.55 + 6 * 3.39 + 8 * 2.75 + 6 * 1.85 + 6 * 1.85 + 10.00
    assert (c.frequency, c.returns, c.lines_per_order) == (3, 1, 2.0)
    assert c.monetary == pytest.approx(gross - 2 * 2.55) == pytest.approx(84.74)
    assert c.avg_order_value == pytest.approx(gross / 3)
    assert c.return_rate == pytest.approx(5.10 / gross)
    # A refund of a purchase older than the export: counted, not dropped.
    assert (features[12999].frequency, features[12999].returns) == (0, 1)
    assert features[12999].monetary == pytest.approx(-7.65)

    # The catalogue from the lines, the ISO-8859-1 pound sign decoded.
    items = {r.item_id: r for r in lake.read(t.ITEMS.name).collect()}
    assert items["GV10"].item_name == "GIFT VOUCHER £10"
    assert set(items) == {r["StockCode"] for r in rows if customer(r["CustomerID"])}

    # Every buyer valued, every customer segmented, text item ids recommended.
    value = lake.read(t.CUSTOMER_VALUE.name).collect()
    assert {r.user_id for r in value} == {u for u, w in expected.items() if w["frequency"]}
    segments = lake.read(t.USER_SEGMENTS.name).collect()
    assert {r.user_id for r in segments} == set(expected)
    assert len({r.segment_name for r in segments}) >= 3
    recs = lake.read(t.RECOMMENDATIONS.name).collect()
    assert {r.item_id for r in recs} <= set(items)
    assert "85123A" in {r.item_id for r in recs} | set(items)
    assert {r.user_id for r in recs} == set(expected)


@pytest.mark.slow
def test_ratings_log_end_to_end(spark, tmp_path, capsys):
    root = tmp_path / "ratings"
    conf = str(REPO / "conf" / "ratings_example.yaml")
    assert (
        main(["run", "--conf", conf, "--set", f"lakehouse.root={root}", "--set", FAST_WRITER]) == 0
    )
    lake = Lakehouse(spark, str(root))
    with open(DATA / "ratings_example.tsv", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]

    log = lake.read(t.INGEST_LOG.name).collect()
    assert (log[0].records_read, log[0].loaded) == (len(lines), len(lines) - 2)
    reasons = sorted(r.reason for r in lake.read(t.QUARANTINE.name).collect())
    assert reasons == ["bad_type:event_ts", "out_of_range:rating"]

    good = [x for x in lines if x[2] in "12345" and x[3].isdigit()]
    first = good[0]
    events = lake.read(t.SILVER_EVENTS.name)
    row = events.filter((events.user_id == int(first[0])) & (events.item_id == first[1])).collect()
    stamps = {r.event_ts for r in row}
    assert dt.datetime.fromtimestamp(int(first[3]), dt.UTC).replace(tzinfo=None) in stamps

    ratings: dict[int, list[int]] = defaultdict(list)
    for user, _, rating, _ in good:
        ratings[int(user)].append(int(rating))
    features = {r.user_id: r for r in lake.read(t.USER_FEATURES.name).collect()}
    assert set(features) == set(ratings)
    for user, given in ratings.items():
        assert features[user].review_count == len(given)
        assert features[user].mean_rating == pytest.approx(sum(given) / len(given))

    recs = lake.read(t.RECOMMENDATIONS.name).collect()
    assert {r.user_id for r in recs} == set(ratings)
    assert {r.item_id for r in recs} <= {x[1] for x in good}
    # A rating log: every rating makes its item seen, so no served list holds one.
    rated = {(int(user), item) for user, item, _, _ in good}
    assert not [r for r in recs if (r.user_id, r.item_id) in rated]
    assert {r.k for r in lake.read(t.RECOMMENDATION_EVAL.name).collect()} == {10}, "top_n"
    evaluation = {r.method for r in lake.read(t.RECOMMENDATION_EVAL.name).collect()}
    assert {"als", "popular"} <= evaluation

    # The split left most users evaluable; one that leaves none is refused by name.
    split = lake.read(t.RECOMMENDATION_EVAL.name).collect()
    assert max(r.users for r in split) > 0.5 * len(ratings)
    # The grid point, MLlib's defaults and up to three search trials; the best on
    # the split is served.
    assert 3 <= sum(r.method == "als" for r in split) <= 5
    assert "rank=10 reg=0.1 alpha=1" in {r.params for r in split if r.method == "als"}
    served = [r for r in split if r.served]
    tie = load_config(conf).recommend.serve_tie
    assert len(served) == 1 and served[0].ndcg >= max(r.ndcg for r in split) - tie
    assert {"item_item", "ease"} <= evaluation, "item-based candidates on a small catalogue"
    assert {r.source for r in recs} <= {served[0].method, "popular", "segment_popular"}
    line = recommendation_summary(lake)
    assert f"served by {served[0].method}" in line
    won = served[0].ndcg >= max(r.ndcg for r in split if r.k == 10)
    assert ("the validation winner" if won else "tied with the best, and cheaper") in line
    capsys.readouterr()
    refused = ["recommend", "--conf", conf, "--set", f"lakehouse.root={root}", "--set", FAST_WRITER]
    refused += ["--set", "recommend.split=cutoff", "--set", "recommend.cutoff_date=2020-01-01"]
    assert main(refused) == 1
    assert (
        "split cutoff (events from 2020-01-01 on held out) leaves 0 of" in capsys.readouterr().err
    )


def clickstream(path, seed: int = 11, visitors: int = 300) -> None:
    """A clickstream export in the layout of a well-known public one: epoch
    milliseconds, visitor, event (view / addtocart / transaction), item and a
    transaction id; no prices, discounts, dwell times or categories, and about four
    months of history."""
    import random

    rng = random.Random(seed)
    start = int(dt.datetime(2015, 6, 2, tzinfo=dt.UTC).timestamp() * 1000)
    rows = []
    for visitor in rng.sample(range(1_400_000), visitors):
        for _ in range(rng.randint(1, 6)):
            ts = start + rng.randint(0, 120 * 86_400_000)
            for _ in range(rng.randint(1, 10)):
                event = rng.choices(["view", "addtocart", "transaction"], [88, 7, 5])[0]
                ts += rng.randint(3_000, 400_000)
                order = str(rng.randint(1, 17_671)) if event == "transaction" else ""
                rows.append((ts, visitor, event, rng.randint(1, 80) * 397, order))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "visitorid", "event", "itemid", "transactionid"])
        writer.writerows(sorted(rows))


@pytest.mark.slow
def test_a_clickstream_without_prices_or_a_year_of_history_runs_every_stage(spark, tmp_path):
    from deltalake import DeltaTable

    clickstream(tmp_path / "events.csv")
    # A clickstream export holds no consent: its shop sends the shipped
    # campaigns without the opt-out the demo's profiles carry.
    campaigns = tmp_path / "campaigns.yaml"
    shipped = (REPO / "conf" / "campaigns.yaml").read_text()
    campaigns.write_text(re.sub(r", opted_out: [^}]*", "", shipped))
    conf = tmp_path / "clickstream.yaml"
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lake"}}}
pipeline: {{stages: [ingest, features, clv, propensity, segment, audiences]}}
sources:
  events:
    path: {tmp_path / "events.csv"}
    options: {{header: "true"}}
    table: bronze/events
    columns:
      event_ts: {{source: timestamp, type: timestamp, format: epoch_ms, required: true}}
      user_id: {{source: visitorid, type: long, required: true}}
      item_id: {{source: itemid, required: true}}
      event_type:
        expr: "CASE event WHEN 'addtocart' THEN 'cart' WHEN 'transaction' THEN 'purchase'
          ELSE event END"
        allowed: [view, cart, purchase]
      order_id: {{source: transactionid}}
audiences: {{campaigns_file: {campaigns}}}
"""
    )
    grid = "[{kind: logistic, params: {regParam: [0.01], elasticNetParam: [0.0], maxIter: [20]}}]"
    args = ["run", "--conf", str(conf), "--set", FAST_WRITER, "--set", f"propensity.models={grid}"]
    for override in ("segment.algorithms=[kmeans]", "segment.k_max=3", "segment.restarts=2"):
        args += ["--set", override]
    assert main(args) == 0

    def table(spec: t.TableSpec):
        return DeltaTable(str(tmp_path / "lake" / spec.name)).to_pandas()

    # No amounts: BG/NBD values every buyer, spend and CLV stay null.
    value = table(t.CUSTOMER_VALUE)
    assert len(value) > 50
    assert value["p_alive"].between(0, 1).all()
    assert (value["expected_transactions"] > 0).all()
    assert value["clv"].isna().all() and value["expected_mean_value"].isna().all()
    # Order value, discounts and dwell are not in the log: no segment is named after them.
    names = set(table(t.SEGMENT_PROFILES)["segment_name"])
    assert not names & {"High-value loyal", "Bargain hunters"}, names
    # Four months hold no 90-day churn outcomes before the cut-offs: the buy target
    # alone is scored, and the campaign targeting churners waits.
    assert set(table(t.PROPENSITY_SCORES)["target"]) == {"purchase_30d"}
    campaigns = set(table(t.CAMPAIGN_AUDIENCES)["campaign_id"])
    assert "uplift_trial" in campaigns and "retain_at_risk" not in campaigns
