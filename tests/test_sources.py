"""Real exports by configuration: epoch times, header-less and positional fields,
separators, encodings, compressed files, derived columns, decimal-written ids."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from shopseg import ingest
from shopseg.cli import main
from shopseg.config import ColumnConf, ConfigError, SourceConf, load_config
from shopseg.delta import Lakehouse

NOW = dt.datetime(2026, 1, 1, 12, 0, 0)


def validate(spark, source: SourceConf, lines: list[str], header: str | None = None, **kw):
    df = spark.createDataFrame(
        [(v, "file:/x/part-0") for v in lines], "value string, source_file string"
    )
    records = ingest.parse_text_records(df, source, header, **kw)
    out = ingest.with_validation(records, source, F.lit(NOW).cast("timestamp"), 5)
    return {r[ingest.RECORD]: r for r in out.collect()}


def test_epoch_seconds_millis_and_micros_type_as_timestamps(spark):
    def source(unit: str) -> SourceConf:
        return SourceConf(
            path="x",
            format="csv",
            table="bronze/events",
            columns={
                "user_id": ColumnConf(source="_c0", type="long", required=True),
                "event_ts": ColumnConf(source="_c1", type="timestamp", format=unit, required=True),
            },
        )

    # 2023-11-14 22:13:20 UTC, written in each unit.
    expected = dt.datetime(2023, 11, 14, 22, 13, 20)
    for unit, value in (
        ("epoch_s", "1700000000"),
        ("epoch_ms", "1700000000000"),
        ("epoch_us", "1700000000000000"),
    ):
        got = validate(spark, source(unit), [f"1,{value}", "2,soon", "3,1e30", "4,1700000000.5"])
        assert got[f"1,{value}"].event_ts == expected, unit
        assert got[f"1,{value}"][ingest.REASON] == ""
        assert got["2,soon"][ingest.REASON] == "bad_type:event_ts"
        assert got["3,1e30"][ingest.REASON] == "bad_type:event_ts"
    # Fractional seconds keep their fraction.
    half = validate(spark, source("epoch_s"), ["4,1700000000.5"])["4,1700000000.5"]
    assert half.event_ts == expected + dt.timedelta(milliseconds=500)


def test_header_less_fields_by_names_by_position_and_by_separator(spark):
    by_names = SourceConf(
        path="x",
        format="csv",
        options={"sep": "\t"},
        names=["user", "item", "rating", "ts"],
        table="bronze/events",
        columns={
            "user_id": ColumnConf(source="user", type="long", required=True),
            "item_id": ColumnConf(source=1, required=True),
            "rating": ColumnConf(source="rating", type="int", min=1, max=5),
            "event_ts": ColumnConf(source=3, type="timestamp", format="epoch_s"),
        },
    )
    got = validate(spark, by_names, ["196\t242\t3\t881250949", "186\t302\t9\t891717742", "1\t2\t3"])
    ok = got["196\t242\t3\t881250949"]
    assert (ok.user_id, ok.item_id, ok.rating) == (196, "242", 3)
    assert ok.event_ts == dt.datetime(1997, 12, 4, 15, 55, 49)
    assert got["186\t302\t9\t891717742"][ingest.REASON] == "out_of_range:rating"
    assert got["1\t2\t3"][ingest.REASON] == "malformed_record"

    piped = SourceConf(
        path="x",
        format="csv",
        options={"sep": "|"},
        table="bronze/events",
        columns={
            "user_id": ColumnConf(source=2, type="long", required=True),
            "item_id": ColumnConf(source=0),
        },
    )
    got = validate(spark, piped, ["A-1|x|17850.0", "A-2|x|17850.5"])
    assert (got["A-1|x|17850.0"].user_id, got["A-1|x|17850.0"].item_id) == (17850, "A-1")
    assert got["A-2|x|17850.5"][ingest.REASON] == "bad_type:user_id"

    spaced = SourceConf(
        path="x",
        format="whitespace",
        names=["u", "i", "r", "t"],
        table="bronze/events",
        columns={
            "user_id": ColumnConf(source="u", type="long"),
            "rating": ColumnConf(source=2, type="int"),
        },
    )
    got = validate(spark, spaced, ["  7   8  4   99  "])
    assert (got["  7   8  4   99  "].user_id, got["  7   8  4   99  "].rating) == (7, 4)


INVOICE = SourceConf(
    path="x",
    format="csv",
    options={"header": "true"},
    table="bronze/events",
    columns={
        "order_id": ColumnConf(source="InvoiceNo", required=True),
        "user_id": ColumnConf(source="CustomerID", type="long", required=True),
        "amount": ColumnConf(expr="abs(Quantity * UnitPrice)", type="double", required=True),
        "event_type": ColumnConf(
            expr="CASE WHEN InvoiceNo LIKE 'C%' THEN 'return' ELSE 'purchase' END",
            allowed=["purchase", "return"],
        ),
        "quantity": ColumnConf(expr="abs(Quantity)", type="int", min=1),
    },
)
INVOICE_HEADER = "InvoiceNo,Quantity,UnitPrice,CustomerID"


def test_derived_columns_are_spark_sql_over_the_fields_and_never_fail_the_job(spark):
    lines = [INVOICE_HEADER, "536365,6,2.55,17850.0", "C536379,-2,3.5,17850", "536366,x,1.0,12"]
    got = validate(spark, INVOICE, lines, INVOICE_HEADER)
    sale = got["536365,6,2.55,17850.0"]
    assert (sale.order_id, sale.user_id, sale.event_type, sale.quantity) == (
        "536365",
        17850,
        "purchase",
        6,
    )
    assert sale.amount == pytest.approx(15.3)
    ret = got["C536379,-2,3.5,17850"]
    assert (ret.event_type, ret.amount, ret.quantity) == ("return", 7.0, 2)
    # A quantity that is no number: the expressions give null, the record is
    # quarantined, the job goes on (Spark's ANSI mode would fail it).
    assert got["536366,x,1.0,12"][ingest.REASON] == "missing:amount"
    assert spark.conf.get("spark.sql.ansi.enabled") == "true"  # restored after analysis


def test_an_expression_over_an_unknown_field_names_the_column_and_the_fields(spark):
    bad = SourceConf(
        path="x",
        format="csv",
        options={"header": "true"},
        table="bronze/events",
        columns={"amount": ColumnConf(expr="Qty * UnitPrice", type="double")},
    )
    with pytest.raises(
        ingest.IngestError, match=r"columns\.amount\.expr 'Qty \* UnitPrice'.*Qty.*UnitPrice"
    ):
        validate(spark, bad, [INVOICE_HEADER, "1,2,3,4"], INVOICE_HEADER)


LATIN = "InvoiceNo;StockCode;Description;Quantity;UnitPrice;CustomerID\n"


def _invoice_conf(tmp_path: Path, raw: Path, encoding: str) -> Path:
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"""
lakehouse: {{root: {tmp_path / "lh"}}}
spark: {{master: "local[2]"}}
sources:
  lines:
    path: "{raw}"
    format: csv
    encoding: {encoding}
    options: {{header: "true", sep: ";"}}
    table: bronze/events
    columns:
      order_id: {{source: InvoiceNo, required: true}}
      item_id: {{source: StockCode, required: true}}
      item_name: {{source: Description}}
      user_id: {{source: CustomerID, type: long, required: true}}
      amount: {{expr: "Quantity * UnitPrice", type: double}}
"""
    )
    return conf


@pytest.mark.parametrize(
    ("encoding", "text", "data"),
    [
        ("ISO-8859-1", "TEA COSY £5", b"TEA COSY \xa35"),
        ("windows-1252", "EURO MUG €2", b"EURO MUG \x802"),
    ],
)
def test_encoded_gzip_and_bz2_files_are_read_as_they_are_and_copies_skipped(
    spark, tmp_path, encoding, text, data
):
    raw = tmp_path / "raw"
    raw.mkdir()
    content = LATIN.encode() + b"536365;85123A;" + data + b";6;2.55;17850.0\n"
    content += b"536366;71053;PLAIN;2;1.5;\n"
    (raw / "a.csv.gz").write_bytes(gzip.compress(content))
    (raw / "b.csv.bz2").write_bytes(bz2.compress(content.replace(b"53636", b"63636")))
    shutil.copy(raw / "a.csv.gz", raw / "copy_of_a.csv.gz")
    conf = str(_invoice_conf(tmp_path, raw, encoding))
    assert main(["ingest", "--conf", conf]) == 0

    lake = Lakehouse(spark, str(tmp_path / "lh"))
    rows = lake.read("bronze/events").orderBy("order_id").collect()
    assert [(r.order_id, r.item_name, r.user_id) for r in rows] == [
        ("536365", text, 17850),
        ("636365", text, 17850),
    ]
    assert rows[0].amount == pytest.approx(15.3)
    quarantine = lake.read("bronze/quarantine").collect()
    assert sorted(q.reason for q in quarantine) == ["missing:user_id"] * 2
    log = {Path(r.source_file).name: r for r in lake.read("bronze/ingest_log").collect()}
    assert (log["a.csv.gz"].records_read, log["a.csv.gz"].loaded) == (2, 1)
    assert (log["b.csv.bz2"].records_read, log["b.csv.bz2"].quarantined) == (2, 1)
    assert log["copy_of_a.csv.gz"].records_read == 0
    assert Path(log["copy_of_a.csv.gz"].duplicate_of).name == "a.csv.gz"


def test_a_compressed_file_with_only_its_header_counts_no_records(spark, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "empty.csv.gz").write_bytes(gzip.compress(LATIN.encode()))
    (raw / "one.csv.gz").write_bytes(gzip.compress(LATIN.encode() + b"1;I;x;1;2.0;3\n"))
    assert main(["ingest", "--conf", str(_invoice_conf(tmp_path, raw, "UTF-8"))]) == 0
    log = {
        Path(r.source_file).name: r
        for r in Lakehouse(spark, str(tmp_path / "lh")).read("bronze/ingest_log").collect()
    }
    assert (log["empty.csv.gz"].records_read, log["one.csv.gz"].loaded) == (0, 1)


@pytest.mark.parametrize(
    ("column", "extra", "message"),
    [
        ('{source: a, expr: "a * 2"}', "", "either `source` or `expr`"),
        ("{source: 1}", "format: json", "a position .* csv or whitespace"),
        ("{source: 5}", "names: [a, b]", "position 5 is past the 2 names"),
        ("{source: c}", "names: [a, b]", "'c' is not one of the names"),
        ('{expr: "a * 2"}', "", "needs `names` for an expression"),
        ("{source: a}", "names: [a]\n    options: {header: 'true'}", "have a header"),
        ("{source: a}", "encoding: latin-9000", "unknown character set"),
        ("{source: a}", "encoding: UTF-16", "not ASCII-compatible"),
        ("{source: a, type: long, format: epoch_s}", "", "only date and timestamp"),
    ],
)
def test_source_reading_mistakes_are_named_at_config_load(tmp_path, column, extra, message):
    conf = tmp_path / "c.yaml"
    if "format:" not in extra:
        extra = f"format: csv\n    {extra}"
    conf.write_text(
        f"""
sources:
  log:
    path: x
    {extra}
    table: bronze/events
    columns:
      amount: {column}
"""
    )
    with pytest.raises(ConfigError, match=rf"c\.yaml: sources\.log\.[a-z_.]+: .*{message}"):
        load_config(conf)


def test_json_and_parquet_fields_feed_expressions(spark):
    source = SourceConf(
        path="x",
        format="json",
        table="bronze/events",
        columns={
            "user_id": ColumnConf(type="long", required=True),
            "amount": ColumnConf(expr="qty * unit_price", type="double"),
        },
    )
    line = '{"user_id": 3, "qty": 2, "unit_price": "1.25"}'
    got = validate(spark, source, [line], available=["qty", "unit_price", "user_id"])
    assert (got[line].user_id, got[line].amount) == (3, 2.5)

    rows = spark.createDataFrame(
        [(3, 2, 1.25, "f")], "user_id long, qty int, unit_price double, source_file string"
    )
    parquet = SourceConf(path="x", format="parquet", table="bronze/events", columns=source.columns)
    records = ingest.parse_parquet_records(rows, parquet)
    out = ingest.with_validation(records, parquet, F.lit(NOW).cast("timestamp"), 5).first()
    assert (out.user_id, out.amount, out[ingest.REASON]) == (3, 2.5, "")
