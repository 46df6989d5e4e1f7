"""Validation: typed target columns, the reason codes of each record, deduplication."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseg.config import EPOCH_FORMATS, ColumnConf, SourceConf
from shopseg.ingest import privacy
from shopseg.ingest.records import (
    MALFORMED,
    POSITION,
    RAW,
    REASON,
    RECORD,
    SHOWN,
    SOURCE_FILE,
    SPARK_TYPES,
    UNCHANGED,
    IngestError,
    _carried,
    derived_columns,
    lenient_analysis,
    source_field,
)

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
    target = SPARK_TYPES[spec.type].simpleString()  # by name (see outputs.bronze_rows)
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
    redacted: Collection[str] | None = None,
) -> DataFrame:
    """Add the typed target columns and `reason` ('' for a valid record).

    Key columns count as required. Constants become columns of their own.
    With `redacted` (the source holds identifiers: these columns, or fields
    no column reads), `shown` is what the quarantine keeps instead of the
    record's text (`privacy.shown_record`).
    """
    records = with_derived_columns(records, source)
    raw_types = {f.name: f.dataType for f in records.schema.fields}
    limit = ingested_at + F.make_interval(mins=F.lit(future_tolerance_minutes))
    typed = []
    read: dict[str, Column] = {}
    checks: list[Column] = []
    for target, spec in source.columns.items():
        if spec.expr is not None:
            raw_name = EXPR + target
        elif source.format == "fixed_width":
            raw_name = RAW + target
        else:
            raw_name = RAW + str(source_field(target, spec))
        raw = F.col(f"`{raw_name}`")
        read[target] = raw
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
    shown = []
    if redacted is not None:
        record = privacy.shown_record(F.col(RECORD), F.col(MALFORMED), read, redacted)
        shown.append(record.alias(SHOWN))
    out = records.select(
        RECORD,
        SOURCE_FILE,
        *_carried(records),
        MALFORMED,
        *[F.col(f"`{c}`") for c in raw_columns],
        *typed,
        *constants,
        *shown,
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
