"""Raw records: the columns every step shares, which source fields a source reads, and
parsing lines or Parquet rows into one row per record with its raw fields."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg.config import ColumnConf, ShopsegError, SourceConf
from shopseg.spark import session_conf

RAW = "_raw_"
MALFORMED = "_malformed"
REASON = "reason"
RECORD = "record"
# Not a rejection: a record equal to one already loaded (a re-sent snapshot).
# Counted in the ingest log, stored nowhere.
UNCHANGED = "unchanged"
SOURCE_FILE = "source_file"
# A record's place in its file (split start, then row order in the split):
# "first" in deduplication means first in file order.
POSITION = "_position"
# What the quarantine keeps of a record of a source holding identifiers.
SHOWN = "_shown"
# A text record's bytes as read, losslessly (the `record` text is made valid
# UTF-8: invalid bytes become U+FFFD, so every reader can load it).
RECORD_BYTES = "record_bytes"

SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
    "date": T.DateType(),
    "timestamp": T.TimestampType(),
}


class IngestError(ShopsegError):
    """A source cannot be ingested at all (missing path or column, unreadable format)."""


def source_field(target: str, spec: ColumnConf) -> str | None:
    """The source field a target column reads (`_cN` for a position); None for an
    expression."""
    if spec.expr is not None:
        return None
    if isinstance(spec.source, int):
        return f"_c{spec.source}"
    return spec.source or target


def derived_columns(source: SourceConf) -> dict[str, str]:
    """Target columns given by an expression, with the expression."""
    return {c: s.expr for c, s in source.columns.items() if s.expr is not None}


def source_fields(source: SourceConf, available: Sequence[str] | None = None) -> list[str]:
    """The fields a source's records are parsed into: those the columns name, and,
    when some column is an expression, every field the files have (`available`)."""
    named = {f for c, s in source.columns.items() if (f := source_field(c, s)) is not None}
    if derived_columns(source):
        if available is None:
            raise IngestError("the fields of a source with expressions must be known")
        named |= set(available)
    return sorted(named)


@contextlib.contextmanager
def lenient_analysis(spark: SparkSession) -> Iterator[None]:
    """Build plans with Spark's non-ANSI rules and every Java character set.

    Both settings are taken when a plan is analysed, not when it runs, so
    the plans built inside keep them: an expression over text fields gives
    null for a value that does not convert (the record is quarantined) where
    ANSI mode would fail the whole job, and `decode` accepts charsets such as
    windows-1252. The session's settings are restored on exit.
    """
    settings = {"spark.sql.ansi.enabled": "false", "spark.sql.legacy.javaCharsets": "true"}
    with session_conf(spark, settings):
        yield


def header_fields(line: str, fmt: str, options: Mapping[str, str]) -> list[str]:
    """Field names of a header line, as the source's format splits it."""
    if fmt == "whitespace":
        return line.split()
    reader = csv.reader(
        io.StringIO(line.rstrip("\r\n")),
        delimiter=options.get("sep", options.get("delimiter", ",")),
        quotechar=options.get("quote", '"'),
    )
    return [name.strip() for name in next(reader, [])]


def has_header(source: SourceConf) -> bool:
    return source.options.get("header", "false").lower() == "true"


def parse_text_records(
    lines: DataFrame,
    source: SourceConf,
    header_line: str | None,
    available: Sequence[str] | None = None,
) -> DataFrame:
    """One row per record of a line-based source (csv, json, whitespace, fixed_width).

    Args:
        lines: `value` (a line, as bytes read) and `source_file`.
        source: the source's configuration.
        header_line: the header line of a csv or whitespace source with a
            header (every file's copy of it is skipped), else None. Without
            a header, fields are named by `source.names`, else _c0, _c1, ...
        available: the fields a json source's records have (needed only when
            a column is an expression).

    Returns:
        `record` (the line, decoded from `source.encoding`), `source_file`,
        `_malformed`, and `_raw_<field>` for every field the columns read
        (blank fields as null).
    """
    # Spark's text reader already splits on \n, \r\n and \r, and decompresses
    # gzip and bz2 files by their extension.
    value = F.col("value")
    text = F.decode(value.cast("binary"), source.encoding) if source.encoding else None
    with lenient_analysis(lines.sparkSession) if text is not None else contextlib.nullcontext():
        decoded = text if text is not None else F.make_valid_utf8(value)
        base = lines.select(
            # A file's first line may start with a UTF-8 byte-order mark
            # (spreadsheets' "CSV UTF-8"): not part of the record.
            F.regexp_replace(decoded, "^\ufeff", "").alias(RECORD),
            value.cast("binary").alias(RECORD_BYTES),
            F.col(SOURCE_FILE),
            *_carried(lines),
        )
    base = base.filter(F.trim(F.col(RECORD)) != "")
    fmt = source.format
    if header_line is not None:
        names: list[str] | None = header_fields(header_line, fmt, source.options)
        if fmt == "whitespace":
            spaced = F.regexp_replace(F.trim(F.col(RECORD)), r"\s+", " ")
            base = base.filter(spaced != " ".join(header_line.split()))
        else:
            base = base.filter(F.col(RECORD) != header_line.rstrip("\r\n"))
    else:
        names = list(source.names) if source.names else None
    named = [f for c, s in source.columns.items() if (f := source_field(c, s)) is not None]
    if names is None and fmt in ("csv", "whitespace"):
        names = [f"_c{i}" for i in range(1 + max((_position(f) for f in named), default=0))]
    fields = source_fields(source, names if fmt in ("csv", "whitespace") else available)

    raws: dict[str, Column] = {}
    if fmt == "json":
        schema = T.StructType(
            [T.StructField(f, T.StringType()) for f in fields]
            + [T.StructField("_corrupt", T.StringType())]
        )
        options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"}
        base = base.withColumn("_p", F.from_json(F.col(RECORD), schema, options))
        raws = {f: F.col("_p").getField(f) for f in fields}
        malformed = F.col("_p").isNull() | F.col("_p._corrupt").isNotNull()
    elif fmt == "csv":
        assert names is not None
        schema = T.StructType(
            [T.StructField(f"_f{i}", T.StringType()) for i in range(len(names))]
            + [T.StructField("_corrupt", T.StringType())]
        )
        options = {
            **{k: v for k, v in source.options.items() if k != "header"},
            "mode": "PERMISSIVE",
            "columnNameOfCorruptRecord": "_corrupt",
        }
        base = base.withColumn("_p", F.from_csv(F.col(RECORD), schema.simpleString(), options))
        raws = {f: F.col(f"_p._f{_field_index(f, names)}") for f in fields}
        malformed = F.col("_p._corrupt").isNotNull()
    elif fmt == "whitespace":
        assert names is not None
        base = base.withColumn("_p", F.split(F.trim(F.col(RECORD)), r"\s+"))
        raws = {f: F.get(F.col("_p"), _field_index(f, names)) for f in fields}
        malformed = F.size(F.col("_p")) != len(names)
    elif fmt == "fixed_width":
        for target, spec in source.columns.items():
            raws[target] = F.substring(F.col(RECORD), spec.start or 1, spec.length or 0)
        # A line that ends before the last field starts is malformed.
        last_start = max(spec.start or 1 for spec in source.columns.values())
        malformed = F.length(F.col(RECORD)) < last_start
    else:
        raise IngestError(f"format {fmt!r} is not line-based")

    # JSON strings are taken as they are; split text fields lose their padding.
    def blank_to_null(e: Column) -> Column:
        e = e if fmt == "json" else F.trim(e)
        return F.when(e != "", e)

    return base.select(
        RECORD,
        SOURCE_FILE,
        *_carried(base),
        malformed.alias(MALFORMED),
        *[blank_to_null(e).alias(RAW + n) for n, e in raws.items()],
    )


def _field_index(field: str, names: Sequence[str]) -> int:
    """Where a field is on a line: its place among the names, or the N of `_cN`."""
    if field in names:
        return list(names).index(field)
    position = _position(field)
    if position >= len(names):
        raise IngestError(
            f"field position {position} is past the {len(names)} fields of the lines "
            f"({list(names)})"
        )
    return position


def _carried(df: DataFrame) -> list[str]:
    """Columns passed through parsing and validation unchanged (position, raw bytes)."""
    return [c for c in (POSITION, RECORD_BYTES) if c in df.columns]


def _position(field: str) -> int:
    """Index of a `_cN` field name (sources without a header)."""
    if not (field.startswith("_c") and field[2:].isdigit()):
        raise IngestError(
            f"field {field!r} is not on the lines: a source without a header names its "
            "fields in `names`, by position (source: 0) or as _c0, _c1, ..."
        )
    return int(field[2:])


def parse_parquet_records(rows: DataFrame, source: SourceConf) -> DataFrame:
    """One row per Parquet record: the record as JSON text, the fields as they are typed."""
    data_columns = [c for c in rows.columns if c not in (SOURCE_FILE, POSITION)]
    fields = source_fields(source, data_columns)
    return rows.select(
        F.to_json(F.struct(*[F.col(c) for c in data_columns])).alias(RECORD),
        F.col(SOURCE_FILE),
        *_carried(rows),
        F.lit(False).alias(MALFORMED),
        *[F.col(f"`{f}`").alias(RAW + f) for f in fields],
    )
