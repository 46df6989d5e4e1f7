"""Ingestion: parsing every format, validation reasons, dedup, privacy, accounting, stops."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import operator
import re
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from shopseg import ingest
from shopseg import tables as t
from shopseg.cli import main
from shopseg.config import ColumnConf, SourceConf
from shopseg.delta import Lakehouse
from shopseg.pipeline import committed_rows

from .conftest import REPO

NOW = dt.datetime(2026, 1, 1, 12, 0, 0)


def lines_df(spark, lines: list[str], file: str = "file:/x/part-0"):
    return spark.createDataFrame([(v, file) for v in lines], "value string, source_file string")


def validate(spark, source: SourceConf, lines: list[str], header: str | None = None):
    records = ingest.parse_text_records(lines_df(spark, lines), source, header)
    out = ingest.with_validation(records, source, F.lit(NOW).cast("timestamp"), 5)
    return {r[ingest.RECORD]: r for r in out.collect()}


EVENTS = SourceConf(
    path="x",
    format="json",
    table="bronze/events",
    key=["event_id"],
    columns={
        "event_id": ColumnConf(type="long", required=True),
        "user_id": ColumnConf(type="long", required=True),
        "event_type": ColumnConf(required=True, allowed=["view", "purchase"]),
        "event_ts": ColumnConf(type="timestamp", required=True),
        "quantity": ColumnConf(type="int", min=1, max=100),
        "price": ColumnConf(type="double", min=0),
    },
)


def event(**fields) -> str:
    base = {
        "event_id": 1,
        "user_id": 7,
        "event_type": "view",
        "event_ts": "2025-06-01T10:00:00Z",
        "quantity": 1,
        "price": 9.5,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def test_json_validation_gives_exact_reasons(spark):
    cases = {
        event(): "",
        event(price="N/A"): "bad_type:price",
        event(user_id=None): "missing:user_id",
        event(quantity=0): "out_of_range:quantity",
        event(quantity=101, price=-1): "out_of_range:quantity;out_of_range:price",
        event(event_type="clik"): "unknown_value:event_type",
        event(event_ts="2099-01-01T00:00:00Z"): "future:event_ts",
        event(event_ts="yesterday"): "bad_type:event_ts",
        event(event_id="12.0"): "",
        event(event_id=None): "missing:event_id",
        '{"event_id": 3, "user_id"': "malformed_record",
        "[1, 2]": "malformed_record",
    }
    got = validate(spark, EVENTS, list(cases))
    assert {k: v[ingest.REASON] for k, v in got.items()} == cases
    ok = got[event()]
    assert (ok.event_id, ok.user_id, ok.quantity, ok.price) == (1, 7, 1, 9.5)
    assert ok.event_ts == dt.datetime(2025, 6, 1, 10, 0)
    assert got[event(event_id="12.0")].event_id == 12


def test_csv_with_header_quotes_and_blank_fields(spark):
    source = SourceConf(
        path="x",
        format="csv",
        options={"header": "true"},
        table="bronze/users",
        columns={
            "user_id": ColumnConf(type="long", required=True),
            "name": ColumnConf(source="full name"),
            "age": ColumnConf(type="int", min=0, max=120),
            "signup": ColumnConf(type="date", format="dd/MM/yyyy"),
        },
    )
    header = "user_id,full name,age,signup"
    rows = [
        header,
        '1,"Smith, Ann",34,05/03/2024',
        "2,,unknown,",
        ",Bob,40,01/01/2024",
        "4,Eve,41",
        header,
        "5,Joe,200,31/02/2024",
    ]
    got = validate(spark, source, rows, header=header)
    assert header not in got
    assert got['1,"Smith, Ann",34,05/03/2024'].name == "Smith, Ann"
    assert got['1,"Smith, Ann",34,05/03/2024'].signup == dt.date(2024, 3, 5)
    reasons = {k: v[ingest.REASON] for k, v in got.items()}
    assert reasons == {
        '1,"Smith, Ann",34,05/03/2024': "",
        "2,,unknown,": "bad_type:age",
        ",Bob,40,01/01/2024": "missing:user_id",
        "4,Eve,41": "malformed_record",
        "5,Joe,200,31/02/2024": "out_of_range:age;bad_type:signup",
    }


def test_whitespace_and_fixed_width(spark):
    ws = SourceConf(
        path="x",
        format="whitespace",
        options={"header": "true"},
        table="bronze/events",
        columns={
            "user_id": ColumnConf(source="customer_id", type="long", required=True),
            "event_ts": ColumnConf(source="date", type="timestamp", format="yyyyMMdd"),
            "amount": ColumnConf(source="dollar_value", type="double", min=0),
        },
        constants={"event_type": "purchase"},
    )
    header = " customer_id  date number_of_cds  dollar_value"
    got = validate(
        spark, ws, [header, " 00001 19970101  1   11.77", " 00002 19971340  2  1.0", "3 4"], header
    )
    first = got[" 00001 19970101  1   11.77"]
    assert (first.user_id, first.amount, first.event_type) == (1, 11.77, "purchase")
    assert first.event_ts == dt.datetime(1997, 1, 1)
    assert got[" 00002 19971340  2  1.0"][ingest.REASON] == "bad_type:event_ts"
    assert got["3 4"][ingest.REASON] == "malformed_record"

    fixed = SourceConf(
        path="x",
        format="fixed_width",
        table="bronze/items",
        columns={
            "item_id": ColumnConf(type="long", start=1, length=4, required=True),
            "category": ColumnConf(start=5, length=8),
            "price": ColumnConf(type="double", start=13, length=6),
        },
    )
    got = validate(spark, fixed, ["0042books    12.50", "0043toys", "0044"])
    assert (got["0042books    12.50"].item_id, got["0042books    12.50"].category) == (42, "books")
    assert got["0042books    12.50"].price == 12.5
    assert got["0043toys"][ingest.REASON] == "malformed_record"
    assert got["0044"][ingest.REASON] == "malformed_record"


def test_parquet_records_keep_their_text(spark):
    rows = spark.createDataFrame(
        [(1, "books", 5.0, "f1"), (2, None, -1.0, "f1")],
        "item_id long, category string, price double, source_file string",
    )
    source = SourceConf(
        path="x",
        format="parquet",
        table="bronze/items",
        columns={
            "item_id": ColumnConf(type="long", required=True),
            "category": ColumnConf(required=True),
            "price": ColumnConf(type="double", min=0),
        },
    )
    out = ingest.with_validation(
        ingest.parse_parquet_records(rows, source), source, F.lit(NOW).cast("timestamp"), 5
    )
    got = {r.item_id: r for r in out.collect()}
    assert got[1][ingest.REASON] == ""
    assert got[2][ingest.REASON] == "missing:category;out_of_range:price"
    assert json.loads(got[2][ingest.RECORD]) == {"item_id": 2, "price": -1.0}


def test_dedup_within_batch_and_against_bronze(spark):
    lines = [event(event_id=1), event(event_id=2, price=3.0), event(event_id=2), event(event_id=9)]
    records = ingest.parse_text_records(lines_df(spark, lines), EVENTS, None)
    validated = ingest.with_validation(records, EVENTS, F.lit(NOW).cast("timestamp"), 5)
    compared = ["event_id", "user_id", "event_type", "event_ts", "quantity", "price"]
    loaded = validated.filter("event_id = 9").select(*compared)
    out = ingest.with_dedup_reasons(validated, ["event_id"], loaded, compared)
    reasons = sorted((r.event_id, r[ingest.REASON]) for r in out.collect())
    assert reasons == [(1, ""), (2, ""), (2, "duplicate_key"), (9, ingest.UNCHANGED)]
    changed = loaded.withColumn("price", F.lit(1.0))
    out = ingest.with_dedup_reasons(validated, ["event_id"], changed, compared)
    assert out.filter("event_id = 9").first()[ingest.REASON] == "already_loaded"
    # Without a key, identical rows all stay: they can be separate purchases.
    keyless = ingest.with_dedup_reasons(validated, [], None)
    assert keyless.filter(F.col(ingest.REASON) == "").count() == 4


def test_keyed_hash_is_hmac_sha256(spark):
    df = spark.createDataFrame([("a@example.com",), (None,)], "email string")
    got = [r[0] for r in df.select(ingest.hmac_sha256(F.col("email"), b"s3cret")).collect()]
    want = hmac.new(b"s3cret", b"a@example.com", hashlib.sha256).hexdigest()
    assert got == [want, None]


def test_committed_rows_hide_batches_without_a_log_entry(spark):
    bronze = spark.createDataFrame([(1, "b1"), (2, "b2")], "id long, batch_id string")
    log = spark.createDataFrame([("b1",)], "batch_id string")
    assert [r.id for r in committed_rows(bronze, log).collect()] == [1]
    assert committed_rows(bronze, None).count() == 0
    # Which tables a log commits: every bronze table but the log itself.
    assert t.committed_by(t.BRONZE_EVENTS.name) == t.INGEST_LOG.name
    assert t.committed_by("bronze/orders") == t.INGEST_LOG.name
    assert t.committed_by(t.INGEST_LOG.name) is None
    assert t.committed_by(t.SILVER_EVENTS.name) is None


# --------------------------------------------------------------------------- the stage


def write_events(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def keyless_log_conf(tmp_path: Path, raw: Path, more: str = "") -> Path:
    """A whitespace-separated log with a header (cust, date, amount) and no key;
    `more` adds lines to its source (columns after user_id and amount, constants)."""
    conf = tmp_path / "conf" / "log.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
sources:
  log:
    path: {raw}
    format: whitespace
    options: {{header: "true"}}
    table: bronze/events
    columns:
      user_id: {{source: cust, type: long, required: true}}
      amount: {{type: double}}"""
        + more.rstrip()
        + "\n"
    )
    return conf


def events_conf(tmp_path: Path, raw: Path) -> Path:
    conf = tmp_path / "conf" / "ingest.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
spark: {{master: "local[2]"}}
sources:
  events:
    path: "{raw}"
    format: json
    table: bronze/events
    key: [event_id]
    columns:
      event_id: {{type: long, required: true}}
      user_id: {{type: long, required: true}}
      event_type: {{required: true, allowed: [view, purchase]}}
      event_ts: {{type: timestamp, required: true}}
      quantity: {{type: int, min: 1, max: 100}}
      price: {{type: double, min: 0}}
"""
    )
    return conf


DAMAGED = {
    event(event_id=1): "",
    event(event_id=2, event_type="purchase"): "",
    event(event_id=3, price="N/A"): "bad_type:price",
    event(event_id=4, user_id=None): "missing:user_id",
    event(event_id=5, quantity=-3): "out_of_range:quantity",
    event(event_id=6, event_type="clik"): "unknown_value:event_type",
    event(event_id=7, event_ts="2099-05-05T00:00:00Z"): "future:event_ts",
    '{"event_id": 8, "user_id": 1, "even': "malformed_record",
}


def test_damaged_input_is_accounted_record_by_record(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "day1.json", list(DAMAGED))
    # A resent copy of event 1 in another file: a duplicate key.
    write_events(raw / "sub", "day2.json", [event(event_id=1), event(event_id=9)])
    assert main(["ingest", "--conf", str(events_conf(tmp_path, raw))]) == 0

    lake = Lakehouse(spark, str(tmp_path / "lh"))
    loaded = sorted(r.event_id for r in lake.read("bronze/events").collect())
    assert loaded == [1, 2, 9]
    quarantine = {r.record: r.reason for r in lake.read("bronze/quarantine").collect()}
    expected = {rec: why for rec, why in DAMAGED.items() if why}
    expected[event(event_id=1)] = "duplicate_key"
    assert quarantine == expected
    log = {Path(r.source_file).name: r for r in lake.read("bronze/ingest_log").collect()}
    assert (log["day1.json"].records_read, log["day1.json"].loaded) == (8, 2)
    assert log["day1.json"].quarantined == 6
    assert (log["day2.json"].records_read, log["day2.json"].loaded) == (2, 1)
    for row in log.values():
        assert row.records_read == row.loaded + row.quarantined + row.unchanged
        assert row.unchanged == 0
        assert row.file_hash.startswith("sha256:")
    meta = lake.read("bronze/events").select(*t.BRONZE_METADATA).distinct().collect()
    assert {m.source for m in meta} == {"events"}
    assert len({m.batch_id for m in meta}) == 1


def test_reingesting_the_same_content_adds_nothing(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "day1.json", [event(event_id=1), event(event_id=2)])
    conf = str(events_conf(tmp_path, raw))
    assert main(["ingest", "--conf", conf]) == 0
    lake = Lakehouse(spark, str(tmp_path / "lh"))
    versions = {n: lake.version(n) for n in ("bronze/events", "bronze/ingest_log")}

    shutil.copy(raw / "day1.json", raw / "copy-of-day1.json")
    assert main(["ingest", "--conf", conf]) == 0
    assert lake.version("bronze/events") == versions["bronze/events"]
    # The copy is logged once, naming the file that holds its content...
    copy = lake.read("bronze/ingest_log").filter("source_file LIKE '%copy-of-day1%'").collect()
    assert [(r.records_read, r.loaded, Path(r.duplicate_of).name) for r in copy] == [
        (0, 0, "day1.json")
    ]
    # ...so the next run skips both files unread and writes nothing.
    versions = {n: lake.version(n) for n in versions}
    assert main(["ingest", "--conf", conf]) == 0
    assert {n: lake.version(n) for n in versions} == versions

    write_events(raw, "day2.json", [event(event_id=3)])
    assert main(["ingest", "--conf", conf]) == 0
    assert lake.read("bronze/events").count() == 3
    assert not lake.exists("bronze/quarantine"), "nothing was rejected: no quarantine version"


def test_resent_snapshot_counts_unchanged_and_quarantines_conflicts(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "snapshot-1.json", [event(event_id=1), event(event_id=2)])
    conf = str(events_conf(tmp_path, raw))
    assert main(["ingest", "--conf", conf]) == 0
    # The next day's export repeats event 1 as it was, event 2 with another
    # price, and brings event 3.
    write_events(
        raw,
        "snapshot-2.json",
        [event(event_id=1), event(event_id=2, price=99.0), event(event_id=3)],
    )
    assert main(["ingest", "--conf", conf]) == 0
    lake = Lakehouse(spark, str(tmp_path / "lh"))
    assert sorted(r.event_id for r in lake.read("bronze/events").collect()) == [1, 2, 3]
    assert lake.read("bronze/events").filter("event_id = 2").first().price == 9.5
    quarantine = lake.read("bronze/quarantine").collect()
    assert [(json.loads(r.record)["event_id"], r.reason) for r in quarantine] == [
        (2, "already_loaded")
    ]
    second = lake.read("bronze/ingest_log").filter("source_file LIKE '%snapshot-2%'").first()
    assert (second.records_read, second.loaded, second.quarantined, second.unchanged) == (
        3,
        1,
        1,
        1,
    )


def test_keyless_source_keeps_identical_rows(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "log.txt", ["cust date amount", "1 20250101 5.0", "1 20250101 5.0"])
    conf = keyless_log_conf(
        tmp_path,
        raw,
        """
      event_ts: {source: date, type: timestamp, format: yyyyMMdd}
    constants: {event_type: purchase}
""",
    )
    assert main(["ingest", "--conf", str(conf)]) == 0
    rows = Lakehouse(spark, str(tmp_path / "lh")).read("bronze/events").collect()
    assert len(rows) == 2
    assert len({r.record_id for r in rows}) == 2


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing_path", "source events: path .* does not exist"),
        ("missing_column", r"source events: required column\(s\) \['user_id'\] not found"),
        ("unreadable", "source events: none of the first 1000 lines is a JSON object"),
    ],
)
def test_source_problems_stop_before_anything_is_written(tmp_path, capsys, problem, message):
    raw = tmp_path / "raw"
    if problem == "missing_column":
        record = {"event_id": 1, "event_type": "view", "event_ts": "2025-01-01T00:00:00Z"}
        write_events(raw, "a.json", [json.dumps(record)])
    elif problem == "unreadable":
        write_events(raw, "a.json", ["event_id,user_id", "1,2"])
    conf = events_conf(tmp_path, raw)
    assert main(["ingest", "--conf", str(conf)]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "lh" / "bronze").exists()


def test_hashing_without_a_key_stops_naming_the_variable(tmp_path, monkeypatch):
    from shopseg.config import load_config
    from shopseg.stages.ingest import _hash_key

    monkeypatch.delenv("SHOPSEG_HASH_KEY", raising=False)
    config = load_config(
        REPO / "conf" / "local.yaml",
        [f"lakehouse.root={tmp_path}", "privacy.identifiers.email=hash"],
    )
    with pytest.raises(ingest.IngestError, match="SHOPSEG_HASH_KEY"):
        _hash_key(config, ["users"])
    monkeypatch.setenv("SHOPSEG_HASH_KEY", "k" * 31)
    with pytest.raises(ingest.IngestError, match="SHOPSEG_HASH_KEY is 31 bytes; hashing needs"):
        _hash_key(config, ["users"])
    monkeypatch.setenv("SHOPSEG_HASH_KEY", "k" * 32)
    assert _hash_key(config, ["users"]) == b"k" * 32
    assert _hash_key(config, ["events"]) is None


@pytest.mark.slow
def test_identifiers_stay_in_bronze_hashed_and_never_reach_silver(spark, default_lake):
    """The default pipeline's lakehouse: e-mail hashed (conftest), the rest dropped."""
    root = default_lake
    lake = Lakehouse(spark, str(root))
    users = lake.read("bronze/users")
    assert "full_name" not in users.columns and "phone" not in users.columns
    emails = [r.email for r in users.limit(5).collect()]
    assert all(len(e) == 64 and "@" not in e for e in emails)
    downstream = [s.name for s in t.TABLES if s.name.startswith(("silver/", "gold/"))]
    written = [name for name in downstream if (root / name / "_delta_log").is_dir()]
    assert len(written) >= 10, written
    for table in written:
        columns = set(DeltaTable(str(root / table)).schema().to_arrow().names)
        assert not columns & set(t.DIRECT_IDENTIFIERS), table
    # No table of the lakehouse, bronze and its quarantine included, holds an
    # e-mail address or a phone number in clear (the plant's are +1-555-...).
    tables = sorted(p.parent for p in root.glob("**/_delta_log"))
    assert root / "bronze" / "quarantine" in tables
    found = {}
    for path in tables:
        df = spark.read.format("delta").load(str(path))
        texts = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
        clear = [F.col(c).rlike(r"@[a-z0-9.-]+\.[a-z]{2,}|\+1-555-") for c in texts]
        if clear and (n := df.filter(functools.reduce(operator.or_, clear)).count()):
            found[str(path.relative_to(root))] = n
    assert not found, found


# --------------------------------------------------------------------------- file handling


def test_invalid_record_first_in_file_does_not_displace_the_valid_one(spark):
    lines = [
        event(event_id=5, price="N/A"),  # invalid, and first in the file
        event(event_id=5, price=2.0),  # the valid record of key 5
        event(event_id=6, price=9.0, user_id=1),  # first valid record of key 6 ...
        event(event_id=6, price=1.0, user_id=2),  # ... though its text sorts after this
    ]
    df = spark.createDataFrame(
        [(v, "file:/x/a.json", (0, i)) for i, v in enumerate(lines)],
        "value string, source_file string, _position struct<s:long,i:long>",
    )
    records = ingest.parse_text_records(df, EVENTS, None)
    validated = ingest.with_validation(records, EVENTS, F.lit(NOW).cast("timestamp"), 5)
    out = ingest.with_dedup_reasons(validated, ["event_id"], None)
    got = {r[ingest.RECORD]: r[ingest.REASON] for r in out.collect()}
    assert got == {
        lines[0]: "bad_type:price",
        lines[1]: "",
        lines[2]: "",
        lines[3]: "duplicate_key",
    }


def test_check_accounting_fails_on_every_kind_of_gap():
    from shopseg.stages.ingest import FileCounts, PlannedFile, check_accounting

    now = dt.datetime(2026, 1, 1)
    a = PlannedFile("file:/d/a.txt", 100, now)
    ok = {"file:/d/a.txt": FileCounts(10, 7, 2, 1)}
    check_accounting("s", [a], ok, {"loaded": 7, "quarantined": 2})
    cases = {
        "does not name": ({"file:/d/a%20b.txt": FileCounts(10, 10, 0, 0)}, {}),
        "yielded no records": ({}, {}),
        "records read but": ({"file:/d/a.txt": FileCounts(10, 7, 1, 1)}, {}),
        "rows to write as loaded": (ok, {"loaded": 6, "quarantined": 2}),
        "rows to write as quarantined": (ok, {"loaded": 7, "quarantined": 3}),
    }
    for message, (counts, written) in cases.items():
        with pytest.raises(ingest.IngestError, match=message):
            check_accounting("s", [a], counts, written)
    # An empty file, or one holding only its header, yields no records legitimately.
    check_accounting("s", [PlannedFile("file:/d/e.txt", 0, now)], {}, {})
    header_only = PlannedFile("file:/d/h.csv", 6, now, header="a,b,c")
    check_accounting("s", [header_only], {}, {})


def csv_conf(tmp_path: Path, raw: Path) -> Path:
    conf = tmp_path / "conf" / "users.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
sources:
  users:
    path: "{raw}"
    format: csv
    options: {{header: "true"}}
    table: bronze/users
    key: [user_id]
    columns:
      user_id: {{type: long, required: true}}
      age: {{type: int}}
      region: {{}}
"""
    )
    return conf


def test_each_file_is_read_by_its_own_header(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "a.csv", ["user_id,age,region", "1,30,north"])
    write_events(raw, "b.csv", ["region,user_id,age", "south,2,40", "east,3,"])
    assert main(["ingest", "--conf", str(csv_conf(tmp_path, raw))]) == 0
    rows = Lakehouse(spark, str(tmp_path / "lh")).read("bronze/users").collect()
    assert sorted((r.user_id, r.age, r.region) for r in rows) == [
        (1, 30, "north"),
        (2, 40, "south"),
        (3, None, "east"),
    ]


def test_a_file_missing_a_column_in_its_own_header_stops_the_stage(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_events(raw, "a.csv", ["user_id,age,region", "1,30,north"])
    write_events(raw, "b.csv", ["user_id,age", "2,40"])
    assert main(["ingest", "--conf", str(csv_conf(tmp_path, raw))]) == 1
    assert "['region'] not found in" in capsys.readouterr().err
    assert not (tmp_path / "lh" / "bronze").exists()


def test_awkward_file_names_are_read_whole_and_once(spark, tmp_path):
    raw = tmp_path / "in dir [x] {a} #+%é"
    write_events(raw, "day 1 été 100% [1]+#.json", [event(event_id=1), event(event_id=2)])
    conf = str(events_conf(tmp_path, raw))
    assert main(["ingest", "--conf", conf]) == 0
    lake = Lakehouse(spark, str(tmp_path / "lh"))
    log = lake.read("bronze/ingest_log").collect()
    assert [(r.records_read, r.loaded) for r in log] == [(2, 2)]
    assert log[0].source_file.endswith("/day 1 été 100% [1]+#.json")
    assert {r.source_file for r in lake.read("bronze/events").collect()} == {log[0].source_file}
    versions = lake.version("bronze/events"), lake.version("bronze/ingest_log")
    assert main(["ingest", "--conf", conf]) == 0
    assert (lake.version("bronze/events"), lake.version("bronze/ingest_log")) == versions


def test_copies_in_one_batch_are_read_once_and_known_files_are_not_rehashed(
    spark, tmp_path, monkeypatch
):
    raw = tmp_path / "raw"
    write_events(raw, "log.txt", ["cust date amount", "1 20250101 5.0", "2 20250102 7.0"])
    shutil.copy(raw / "log.txt", raw / "log2.txt")
    conf = keyless_log_conf(tmp_path, raw)
    assert main(["ingest", "--conf", str(conf)]) == 0
    lake = Lakehouse(spark, str(tmp_path / "lh"))
    assert lake.read("bronze/events").count() == 2, "a keyless source counts the copy once"
    log = {Path(r.source_file).name: r for r in lake.read("bronze/ingest_log").collect()}
    assert (log["log2.txt"].records_read, log["log2.txt"].duplicate_of) == (
        0,
        log["log.txt"].source_file,
    )

    from shopseg import files

    hashed: list[str] = []
    real = files.content_hashes
    monkeypatch.setattr(files, "content_hashes", lambda s, p: hashed.extend(p) or real(s, p))
    write_events(raw, "new.txt", ["cust date amount", "3 20250103 1.0"])
    assert main(["ingest", "--conf", str(conf)]) == 0
    assert [Path(p).name for p in hashed] == ["new.txt"], "logged files are not read again"
    assert lake.read("bronze/events").count() == 3


def test_invalid_utf8_is_quarantined_as_valid_text_and_exact_bytes(spark, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    broken = b'{"event_id": 8, "user_id": 1, "ev\xff\xfent'
    (raw / "day.json").write_bytes(broken + b"\n" + event(event_id=1).encode() + b"\n")
    assert main(["ingest", "--conf", str(events_conf(tmp_path, raw))]) == 0
    table = DeltaTable(str(tmp_path / "lh" / "bronze" / "quarantine")).to_pyarrow_table()
    table.validate(full=True)  # Arrow checks that every string is valid UTF-8
    rows = table.to_pylist()
    assert [(r["record_bytes"], r["reason"]) for r in rows] == [(broken, "malformed_record")]
    assert rows[0]["record"] == broken.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ crashes and concurrency


@pytest.mark.parametrize("dies_at", ["bronze/quarantine", "bronze/ingest_log"])
def test_a_batch_that_died_between_commits_is_replaced_once_for_every_reader(
    spark, tmp_path, monkeypatch, dies_at
):
    from shopseg.pipeline import StageContext

    raw = tmp_path / "raw"
    write_events(raw, "day1.json", list(DAMAGED))
    conf = str(events_conf(tmp_path, raw))
    real_write = StageContext.write

    def dying_write(self, df, table, *args, **kwargs):
        if table == dies_at:
            raise KeyboardInterrupt(f"killed before writing {table}")
        return real_write(self, df, table, *args, **kwargs)

    monkeypatch.setattr(StageContext, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        main(["ingest", "--conf", conf])
    monkeypatch.setattr(StageContext, "write", real_write)
    events_path = str(tmp_path / "lh" / "bronze" / "events")
    assert DeltaTable(events_path).to_pyarrow_table().num_rows == 2, "the dead batch's rows"

    assert main(["ingest", "--conf", conf]) == 0
    # As deltalake (any reader) sees the tables: each record exactly once.
    events = DeltaTable(events_path).to_pyarrow_table()
    assert sorted(events.column("event_id").to_pylist()) == [1, 2]
    quarantine = DeltaTable(str(tmp_path / "lh" / "bronze" / "quarantine")).to_pyarrow_table()
    assert sorted(quarantine.column("record").to_pylist()) == sorted(
        r for r, w in DAMAGED.items() if w
    )
    log = DeltaTable(str(tmp_path / "lh" / "bronze" / "ingest_log")).to_pyarrow_table()
    assert log.column("records_read").to_pylist() == [len(DAMAGED)]
    assert set(events.column("batch_id").to_pylist()) == set(log.column("batch_id").to_pylist())


def test_a_second_ingest_while_one_runs_stops_with_the_conflict(tmp_path, capsys):
    from shopseg import files

    raw = tmp_path / "raw"
    write_events(raw, "day1.json", [event(event_id=1)])
    with files.exclusive_lock(str(tmp_path / "lh" / "_locks"), "ingest"):
        assert main(["ingest", "--conf", str(events_conf(tmp_path, raw))]) == 1
    assert "another ingest is running on this lakehouse" in capsys.readouterr().err
    assert not (tmp_path / "lh" / "bronze").exists()


def test_a_source_gaining_a_column_evolves_bronze(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(raw, "a.csv", ["user_id,age", "1,30"])
    conf = csv_conf(tmp_path, raw)
    conf.write_text(conf.read_text().replace("      region: {}\n", ""))
    assert main(["ingest", "--conf", str(conf)]) == 0
    # The export gains a column; the configuration follows.
    write_events(raw, "b.csv", ["user_id,age,region", "2,40,south", "1,30,north"])
    assert main(["ingest", "--conf", str(csv_conf(tmp_path, raw))]) == 0
    lake = Lakehouse(spark, str(tmp_path / "lh"))
    rows = sorted((r.user_id, r.age, r.region) for r in lake.read("bronze/users").collect())
    assert rows == [(1, 30, None), (2, 40, "south")]
    second = lake.read("bronze/ingest_log").filter("source_file LIKE '%b.csv'").first()
    assert (second.loaded, second.unchanged) == (1, 1)


def test_an_ingest_in_another_process_blocks_this_one_until_it_ends(tmp_path, capsys):
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    write_events(raw, "day1.json", [event(event_id=1)])
    conf = str(events_conf(tmp_path, raw))
    marker = tmp_path / "holding"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from shopseg import files\n"
            "with files.exclusive_lock(sys.argv[1], 'ingest'):\n"
            "    pathlib.Path(sys.argv[2]).write_text('x'); time.sleep(60)\n",
            str(tmp_path / "lh" / "_locks"),
            str(marker),
        ]
    )
    try:
        deadline = time.time() + 30
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert main(["ingest", "--conf", conf]) == 1
        assert "another ingest is running" in capsys.readouterr().err
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    assert main(["ingest", "--conf", conf]) == 0


def test_local_listing_is_what_spark_lists(spark, tmp_path):
    """Arrow lists local folders as Spark's reader does (paths, sizes, times; hidden skipped)."""
    from shopseg import files

    root = tmp_path / "in dir [x] {a}"
    for name in (
        "a.txt",
        "été 100% [1]+#.txt",
        "event_date=2025-01-01/part-0.txt",
        "_SUCCESS",
        ".part-0.txt.crc",
        "_temporary/0/part-1.txt",
        "sub/.hidden/part-2.txt",
    ):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name * 3)
    listed = files.list_files(spark, str(root))
    assert [f.path.rsplit("/", 1)[1] for f in listed] == [
        "a.txt",
        "part-0.txt",
        "été 100% [1]+#.txt",
    ]
    assert listed == sorted(files._list_with_spark(spark, str(root)), key=lambda f: f.path)
    one = files.list_files(spark, str(root / "a.txt"))
    assert one == [listed[0]] and one[0].size == len("a.txt" * 3)
    with pytest.raises(files.SourceFilesError, match="does not exist"):
        files.list_files(spark, str(tmp_path / "nothing"))


# --------------------------------------------------------------------------- identifiers


def profiles_conf(tmp_path: Path, raw: Path, columns: str, identifiers: str = "") -> Path:
    conf = tmp_path / "conf" / "profiles.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
spark: {{master: "local[2]"}}
sources:
  users:
    path: "{raw}"
    format: csv
    options: {{header: "true"}}
    table: bronze/users
    key: [user_id]
    columns:
      user_id: {{type: long, required: true}}
      age: {{type: int, min: 0, max: 120}}
{columns}
{identifiers}
"""
    )
    return conf


EMAIL = re.compile(r"[^@\s\"]+@[^@\s\"]+\.[a-z]{2,}")
PHONE = re.compile(r"\+?\d[\d ().-]{6,}\d")


def test_quarantined_records_of_a_source_with_identifiers_show_no_identifier(spark, tmp_path):
    raw = tmp_path / "raw"
    write_events(
        raw,
        "users.csv",
        [
            "user_id,age,full_name,email,phone,note",
            "1,30,Ann Lee,ann@shop.example,+1-555-0100123,ok",
            "1,31,Ann Lee,ann@shop.example,+1-555-0100123,again",  # duplicate_key
            "2,abc,Bo Li,bo@shop.example,+1-555-0100456,x",  # bad_type:age
            "3,200,Cy Wu,cy@shop.example,+1-555-0100789,y",  # out_of_range:age
            ",40,Di Ho,di@shop.example,+1-555-0100999,z",  # missing:user_id
            '4,"50,Ed Yu,ed@shop.example',  # malformed (an open quote)
        ],
    )
    conf = profiles_conf(
        tmp_path, raw, "      full_name: {}\n      email: {}\n      phone: {}\n      note: {}"
    )
    assert main(["ingest", "--conf", str(conf)]) == 0
    quarantine = DeltaTable(str(tmp_path / "lh" / "bronze" / "quarantine")).to_pandas()
    assert len(quarantine) == 5
    for record in quarantine["record"]:
        assert not EMAIL.search(record) and not PHONE.search(record), record
        assert "Ann Lee" not in record and "Ed Yu" not in record, record
    assert quarantine["record_bytes"].isna().all()
    shown = {r.reason: r.record for r in quarantine.itertuples()}
    # What made a record fail is still there to read; the identifiers are not.
    assert json.loads(shown["bad_type:age"]) == {
        "user_id": "2", "age": "abc", "full_name": "[redacted]", "email": "[redacted]",
        "phone": "[redacted]", "note": "x",
    }  # fmt: skip
    assert json.loads(shown["duplicate_key"])["note"] == "again"
    assert shown["malformed_record"].startswith("[withheld: malformed record of ")


def test_fields_no_column_reads_are_kept_out_of_the_quarantine(spark, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    spark.createDataFrame(
        [(1, 30, "ann@shop.example"), (2, 999, "bo@shop.example")],
        "user_id long, age int, contact_email string",
    ).coalesce(1).write.parquet(str(raw / "users"))
    conf = profiles_conf(tmp_path, raw / "users", "")
    conf.write_text(conf.read_text().replace("format: csv", "format: parquet"))
    assert main(["ingest", "--conf", str(conf)]) == 0
    quarantine = DeltaTable(str(tmp_path / "lh" / "bronze" / "quarantine")).to_pandas()
    assert list(quarantine["reason"]) == ["out_of_range:age"]
    assert json.loads(quarantine["record"][0]) == {"user_id": 2, "age": 999}


@pytest.mark.parametrize(
    ("columns", "why"),
    [
        ("      customer_email: {}", "customer_email (its name)"),
        ("      mobile: {}", "mobile (its name)"),
        ("      contact: {expr: lower(Email)}", "contact (its expression reads ['Email'])"),
        ("      handle: {source: mail_address}", "handle (it reads field 'mail_address')"),
        ("      handle: {source: note}", "handle (100% of 2 sampled values are e-mails"),
    ],
)
def test_a_users_column_that_looks_like_an_identifier_needs_an_action(
    tmp_path, capsys, columns, why
):
    raw = tmp_path / "raw"
    write_events(
        raw,
        "users.csv",
        [
            "user_id,age,customer_email,mobile,Email,mail_address,note",
            "1,30,a@x.example,+1 555 010 0123,A@X.example,a@x.example,a@x.example",
            "2,40,b@x.example,+1 555 010 0456,B@X.example,b@x.example,b@x.example",
        ],
    )
    conf = profiles_conf(tmp_path, raw, columns)
    assert main(["ingest", "--conf", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "look like identifiers have no action in privacy.identifiers" in err
    assert why in err, err
    assert not (tmp_path / "lh" / "bronze").exists()
    # An explicit action lets it through: dropped, it never reaches bronze.
    column = columns.split(":")[0].strip()
    conf = profiles_conf(tmp_path, raw, columns, f"privacy: {{identifiers: {{{column}: drop}}}}")
    assert main(["ingest", "--conf", str(conf)]) == 0
    users = DeltaTable(str(tmp_path / "lh" / "bronze" / "users")).to_pandas()
    assert column not in users.columns and len(users) == 2


def test_an_unknown_identifier_name_is_refused_and_keep_is_warned_about(tmp_path, caplog):
    from shopseg.config import ConfigError, load_config

    raw = tmp_path / "raw"
    write_events(raw, "users.csv", ["user_id,age,email", "1,30,a@x.example"])
    conf = profiles_conf(tmp_path, raw, "      email: {}", "privacy: {identifiers: {emial: drop}}")
    with pytest.raises(ConfigError, match=r"privacy.identifiers.*\['emial'\]: no source has"):
        load_config(conf, [])
    conf = profiles_conf(tmp_path, raw, "      email: {}", "privacy: {identifiers: {email: keep}}")
    assert main(["ingest", "--conf", str(conf)]) == 0
    assert "column email is KEPT IN CLEAR in bronze/users" in caplog.text


def test_a_spreadsheet_csv_with_a_byte_order_mark_and_crlf_is_read(spark, tmp_path):
    """../shared/datasets/groceries saved as a spreadsheet's "CSV UTF-8"."""
    source = REPO.parent / "shared" / "datasets" / "groceries" / "groceries.csv"
    lines = source.read_text().splitlines()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "groceries.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    conf = tmp_path / "groceries.yaml"
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
spark: {{master: "local[2]"}}
sources:
  baskets:
    path: "{raw}"
    format: csv
    options: {{header: "true"}}
    table: bronze/events
    columns:
      user_id: {{source: Member_number, type: long, required: true}}
      event_ts: {{source: Date, type: timestamp, format: "yyyy-MM-dd", required: true}}
      item: {{source: itemDescription, required: true}}
"""
    )
    assert main(["ingest", "--conf", str(conf)]) == 0
    log = DeltaTable(str(tmp_path / "lh" / "bronze" / "ingest_log")).to_pandas()
    assert log["records_read"].sum() == len(lines) - 1
    assert log["loaded"].sum() + log["unchanged"].sum() == len(lines) - 1
    events = DeltaTable(str(tmp_path / "lh" / "bronze" / "events")).to_pandas()
    assert not events["item"].str.endswith("\r").any()


@pytest.mark.slow
def test_two_ingests_of_a_folder_gaining_a_file_between_their_starts_one_wins(spark, tmp_path):
    """Two `shopseg ingest` processes, a file landing between their starts: one
    commits, the other names the conflict and commits nothing; its rerun
    ingests what is left, so every record is in bronze once."""
    import subprocess
    import sys

    raw = tmp_path / "raw"
    write_events(raw, "day1.json", [event(event_id=1)])
    conf = str(events_conf(tmp_path, raw))
    assert main(["ingest", "--conf", conf]) == 0
    log_path = str(tmp_path / "lh" / "bronze" / "ingest_log")
    before = DeltaTable(log_path).version()

    command = [sys.executable, "-m", "shopseg.cli", "ingest", "--conf", conf]
    write_events(raw, "day2.json", [event(event_id=2), event(event_id=3)])
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    write_events(raw, "day3.json", [event(event_id=4)])
    second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in (first, second))
    assert [rc for rc, _ in outcomes] == [0, 1], outcomes
    assert "concurrent run conflict: another ingest is running" in outcomes[1][1]
    assert "committed nothing" in outcomes[1][1]
    log = DeltaTable(log_path)
    assert log.version() == before + 1, "the loser committed an ingest log"

    assert main(["ingest", "--conf", conf]) == 0
    events = DeltaTable(str(tmp_path / "lh" / "bronze" / "events")).to_pandas()
    assert sorted(events["event_id"]) == [1, 2, 3, 4]
    log.update_incremental()
    files = log.to_pandas()
    files = files[files["records_read"] > 0]
    assert sorted(Path(f).name for f in files["source_file"]) == [
        "day1.json",
        "day2.json",
        "day3.json",
    ]
