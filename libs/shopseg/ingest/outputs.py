"""What ingest writes: bronze rows (identifiers dropped or keyed-hashed), quarantine rows,
record ids."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from shopseg import tables as t
from shopseg.ingest.records import (
    REASON,
    RECORD,
    RECORD_BYTES,
    SHOWN,
    SOURCE_FILE,
    SPARK_TYPES,
    UNCHANGED,
    IngestError,
)


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
        # Cast by the type's SQL name: over Spark Connect a StringType object arrives as
        # `string collate UTF8_BINARY`, which Delta then writes to the table's schema and
        # delta-rs (and BI readers on it) cannot parse.
        ddl = SPARK_TYPES[type_name].simpleString()
        value = F.col(name).cast(ddl) if name in validated.columns else F.lit(None).cast(ddl)
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
    """The rejected records with their reason codes: the raw text and bytes, or, for
    a source holding identifiers, what `privacy.shown_record` shows and no bytes."""
    redacted = SHOWN in validated.columns
    return (
        validated.filter(~F.col(REASON).isin("", UNCHANGED))
        .select(
            *[col.alias(name) for name, col in meta.items()],
            F.col(SHOWN if redacted else RECORD).alias(RECORD),
            (
                F.col(RECORD_BYTES)
                if RECORD_BYTES in validated.columns and not redacted
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
