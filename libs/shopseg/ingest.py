"""Bronze ingestion: parse raw records, validate them, split loaded from quarantined.

Pure DataFrame transformations; the `ingest` stage does the reading and
writing. The flow for one source:

    lines (value, source_file)  or  parquet rows
      -> parse_text_records / parse_parquet_records: one row per record, the raw
         text in `record`, every source field as `_raw_<name>`
      -> with_validation: typed target columns + `reason` ('' when valid)
      -> with_dedup_reasons: duplicate keys within the batch or already in bronze
      -> bronze rows (reason == '', identifiers dropped or hashed) and
         quarantine rows (reason != '', the raw text kept)

Reason codes: malformed_record, bad_type:<col>, missing:<col>,
out_of_range:<col>, unknown_value:<col>, future:<col>, duplicate_key,
already_loaded. A record can carry several, joined by ';'. A record equal to
one already loaded is `unchanged`: counted, neither stored nor quarantined.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from shopseg import tables as t
from shopseg.config import EPOCH_FORMATS, ColumnConf, ShopsegError, SourceConf
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


# --------------------------------------------------------------------------- parsing


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
        base = lines.select(
            (text if text is not None else F.make_valid_utf8(value)).alias(RECORD),
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


# --------------------------------------------------------------------------- validation


EXPR = "_expr_"
# Beyond these, an epoch number is no plausible timestamp (the year 5138).
_EPOCH_LIMIT_SECONDS = 1e11


def epoch_timestamp(raw: Column, unit: str) -> Column:
    """A number of seconds, milliseconds or microseconds since 1970-01-01 UTC as a
    timestamp; null for text that is no number or a value past the year 5138."""
    micros_per_unit = EPOCH_FORMATS[unit]
    number = raw.try_cast("double")
    micros = number * F.lit(float(micros_per_unit))
    plausible = F.abs(micros) < F.lit(_EPOCH_LIMIT_SECONDS * 1e6)
    return F.timestamp_micros(F.when(plausible, F.round(micros).cast("long")))


def with_derived_columns(records: DataFrame, source: SourceConf) -> DataFrame:
    """Add `_expr_<target>` for each column given by an expression over the fields.

    The expressions see every parsed field under its own name, as text (or as
    typed in a Parquet file), and are analysed leniently (`lenient_analysis`).

    Raises:
        IngestError: an expression that Spark cannot analyse (an unknown
            field, a syntax error), naming the column and the fields there are.
    """
    derived = derived_columns(source)
    if not derived:
        return records
    raws = [c for c in records.columns if c.startswith(RAW)]
    others = [c for c in records.columns if not c.startswith(RAW)]
    carry = "__shopseg_carried"
    spark = records.sparkSession
    with lenient_analysis(spark):
        fields = records.select(
            F.struct(*others).alias(carry),
            *[F.col(f"`{c}`").alias(c[len(RAW) :]) for c in raws],
        )
        out = fields
        for target, expression in derived.items():
            try:
                out = out.withColumn(EXPR + target, F.expr(expression))
            except Exception as exc:  # noqa: BLE001 - Spark's analysis errors vary by kind
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise IngestError(
                    f"columns.{target}.expr {expression!r} cannot be evaluated: {first} "
                    f"(fields: {[c[len(RAW) :] for c in raws]})"
                ) from None
        return out.select(
            f"{carry}.*",
            *[F.col(f"`{c[len(RAW) :]}`").alias(c) for c in raws],
            *[EXPR + target for target in derived],
        )


def _parse(raw: Column, raw_type: T.DataType, spec: ColumnConf) -> Column:
    if spec.type == "string":
        return raw.cast("string")
    is_text = isinstance(raw_type, T.StringType)
    if spec.type in ("date", "timestamp"):
        if spec.format in EPOCH_FORMATS:
            ts = epoch_timestamp(raw, spec.format)
        elif is_text and spec.format:
            ts = F.try_to_timestamp(raw, F.lit(spec.format))
        else:
            ts = raw.try_cast("timestamp")
        return ts.cast("date") if spec.type == "date" else ts
    target = SPARK_TYPES[spec.type]
    if spec.type in ("int", "long") and is_text:
        # Exports write integers as 12 or 12.0; both are the integer 12.
        as_double = raw.try_cast("double")
        integral = F.when(as_double == F.floor(as_double), as_double.try_cast(target))
        return F.coalesce(raw.try_cast(target), integral)
    return raw.try_cast(target)


def with_validation(
    records: DataFrame,
    source: SourceConf,
    ingested_at: Column,
    future_tolerance_minutes: int,
) -> DataFrame:
    """Add the typed target columns and `reason` ('' for a valid record).

    Key columns count as required. Constants become columns of their own.
    """
    records = with_derived_columns(records, source)
    raw_types = {f.name: f.dataType for f in records.schema.fields}
    limit = ingested_at + F.make_interval(mins=F.lit(future_tolerance_minutes))
    typed = []
    checks: list[Column] = []
    for target, spec in source.columns.items():
        if spec.expr is not None:
            raw_name = EXPR + target
        elif source.format == "fixed_width":
            raw_name = RAW + target
        else:
            raw_name = RAW + str(source_field(target, spec))
        raw = F.col(f"`{raw_name}`")
        parsed = _parse(raw, raw_types[raw_name], spec)
        typed.append(parsed.alias(target))
        value = F.col(target)
        present = raw.isNotNull()
        checks.append(F.when(present & value.isNull(), F.lit(f"bad_type:{target}")))
        if spec.required or target in source.key:
            checks.append(F.when(~present, F.lit(f"missing:{target}")))
        if spec.min is not None:
            checks.append(F.when(value < F.lit(spec.min), F.lit(f"out_of_range:{target}")))
        if spec.max is not None:
            checks.append(F.when(value > F.lit(spec.max), F.lit(f"out_of_range:{target}")))
        if spec.allowed:
            checks.append(
                F.when(
                    value.isNotNull() & ~value.isin(*spec.allowed),
                    F.lit(f"unknown_value:{target}"),
                )
            )
        if spec.type in ("date", "timestamp"):
            checks.append(F.when(value > limit, F.lit(f"future:{target}")))
    constants = [F.lit(v).alias(k) for k, v in source.constants.items()]
    raw_columns = [c for c in records.columns if c.startswith((RAW, EXPR))]
    out = records.select(
        RECORD,
        SOURCE_FILE,
        *_carried(records),
        MALFORMED,
        *[F.col(f"`{c}`") for c in raw_columns],
        *typed,
        *constants,
    )
    reason = F.when(F.col(MALFORMED), F.lit("malformed_record")).otherwise(
        F.array_join(F.array_compact(F.array(*checks)), ";") if checks else F.lit("")
    )
    return out.withColumn(REASON, reason).drop(MALFORMED, *raw_columns)


def content_hash(columns: Sequence[str]) -> Column:
    """A hash of a record's values in `columns` (nulls and positions distinguished)."""
    return F.xxhash64(F.to_json(F.struct(*[F.col(c) for c in columns])))


def with_dedup_reasons(
    validated: DataFrame,
    key: Sequence[str],
    loaded: DataFrame | None,
    compared: Sequence[str] = (),
) -> DataFrame:
    """Mark valid records whose key repeats in the batch or is already in bronze.

    Args:
        validated: output of `with_validation`.
        key: the source's key; without one nothing changes (identical rows
            can be separate purchases).
        loaded: committed bronze rows of the table (key and `compared` columns).
        compared: columns whose values decide whether a record already loaded
            comes again unchanged (a re-delivered snapshot) or differs.

    Returns:
        `reason` becomes `duplicate_key` for all but the first valid record of
        a key in the batch (file order: file, then position in it; invalid
        records keep their own reasons and never displace a valid one),
        UNCHANGED for a record equal to the loaded one, and `already_loaded`
        for a known key with other values.
    """
    if not key:
        return validated
    valid = F.col(REASON) == ""
    place = [POSITION] if POSITION in validated.columns else [RECORD]
    order = Window.partitionBy(*key, valid).orderBy(SOURCE_FILE, *place)
    rank = F.when(valid, F.row_number().over(order))
    out = validated.withColumn("_rank", rank)
    if loaded is not None:
        # Only the loaded rows whose key the batch carries are hashed and
        # deduplicated: a day's file against a year of bronze reads the keys
        # once (a broadcast semi join) instead of shuffling every loaded row.
        batch_keys = validated.filter(valid).select(*key).distinct()
        known = (
            loaded.join(batch_keys, list(key), "left_semi")
            .select(*key, content_hash(compared).alias("_loaded_hash"))
            .dropDuplicates(list(key))
        )
        out = out.join(known, list(key), "left")
    else:
        out = out.withColumn("_loaded_hash", F.lit(None).cast("long"))
    reason = (
        F.when(F.col(REASON) != "", F.col(REASON))
        .when(
            F.col("_loaded_hash").isNotNull(),
            F.when(F.col("_loaded_hash") == content_hash(compared), F.lit(UNCHANGED)).otherwise(
                F.lit("already_loaded")
            ),
        )
        .when(F.col("_rank") > 1, F.lit("duplicate_key"))
        .otherwise(F.lit(""))
    )
    return out.withColumn(REASON, reason).drop("_rank", "_loaded_hash")


# --------------------------------------------------------------------------- outputs


def identifier_action(column: str, actions: Mapping[str, str]) -> str:
    """drop / hash / keep for a column; known direct identifiers default to drop."""
    if column in actions:
        return actions[column]
    return "drop" if column in t.DIRECT_IDENTIFIERS else "keep"


def hmac_sha256(column: Column, key: bytes) -> Column:
    """Keyed hash (HMAC-SHA256, hex) of a column.

    A vectorised UDF on purpose: the built-in sha2 could compute HMAC with
    the key's pads as literals, but literals show in query plans, the Spark
    UI and event logs; the key must never be logged.
    """

    @pandas_udf(T.StringType())
    def keyed(values: pd.Series) -> pd.Series:
        return values.map(
            lambda v: (
                None
                if v is None
                else hmac.new(key, str(v).encode("utf-8"), hashlib.sha256).hexdigest()
            )
        )

    return keyed(column.cast("string"))


def bronze_rows(
    validated: DataFrame,
    target_types: Mapping[str, str],
    actions: Mapping[str, str],
    hash_key: bytes | None,
    meta: Mapping[str, Column],
) -> DataFrame:
    """The loaded records of a bronze table: every target column of the table (null
    where this source has none), identifiers dropped or hashed, then metadata."""
    cols = []
    for name, type_name in target_types.items():
        action = identifier_action(name, actions)
        if action == "drop":
            continue
        value = (
            F.col(name).cast(SPARK_TYPES[type_name])
            if name in validated.columns
            else F.lit(None).cast(SPARK_TYPES[type_name])
        )
        if action == "hash":
            if hash_key is None:
                raise IngestError(f"column {name} is to be hashed but no key was given")
            value = hmac_sha256(value, hash_key)
        cols.append(value.alias(name))
    metadata = [col.alias(name) for name, col in meta.items()]
    return validated.filter(F.col(REASON) == "").select(
        *cols, *metadata, F.col(SOURCE_FILE), F.col("_record_id").alias(t.RECORD_ID)
    )


def quarantine_rows(validated: DataFrame, meta: Mapping[str, Column]) -> DataFrame:
    """The rejected records, with their raw text and reason codes."""
    return (
        validated.filter(~F.col(REASON).isin("", UNCHANGED))
        .select(
            *[col.alias(name) for name, col in meta.items()],
            F.col(RECORD),
            (
                F.col(RECORD_BYTES)
                if RECORD_BYTES in validated.columns
                else F.lit(None).cast("binary")
            ).alias(RECORD_BYTES),
            F.col(REASON),
            F.col(SOURCE_FILE),
        )
        .select(*t.QUARANTINE.columns)
    )


def with_record_id(df: DataFrame, batch_id: str) -> DataFrame:
    """A row id unique within the lakehouse: the batch id and a per-batch number."""
    return df.withColumn(
        "_record_id",
        F.concat(F.lit(f"{batch_id}-"), F.monotonically_increasing_id().cast("string")),
    )
