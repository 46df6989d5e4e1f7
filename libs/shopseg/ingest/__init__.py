"""Bronze ingestion: parse raw records, validate them, split loaded from quarantined.

Pure DataFrame transformations; the `ingest` stage does the reading and
writing. Modules: `records` (shared columns, source fields, parsing),
`validation` (typed columns, reason codes, deduplication), `outputs` (bronze
and quarantine rows). The flow for one source:

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

from shopseg.ingest.outputs import (
    bronze_rows,
    hmac_sha256,
    identifier_action,
    quarantine_rows,
    with_record_id,
)
from shopseg.ingest.records import (
    MALFORMED,
    POSITION,
    RAW,
    REASON,
    RECORD,
    RECORD_BYTES,
    SOURCE_FILE,
    SPARK_TYPES,
    UNCHANGED,
    IngestError,
    derived_columns,
    has_header,
    header_fields,
    lenient_analysis,
    parse_parquet_records,
    parse_text_records,
    source_field,
    source_fields,
)
from shopseg.ingest.validation import (
    EXPR,
    content_hash,
    epoch_timestamp,
    with_dedup_reasons,
    with_derived_columns,
    with_validation,
)

__all__ = [
    "EXPR",
    "IngestError",
    "MALFORMED",
    "POSITION",
    "RAW",
    "REASON",
    "RECORD",
    "RECORD_BYTES",
    "SOURCE_FILE",
    "SPARK_TYPES",
    "UNCHANGED",
    "bronze_rows",
    "content_hash",
    "derived_columns",
    "epoch_timestamp",
    "has_header",
    "header_fields",
    "hmac_sha256",
    "identifier_action",
    "lenient_analysis",
    "parse_parquet_records",
    "parse_text_records",
    "quarantine_rows",
    "source_field",
    "source_fields",
    "with_dedup_reasons",
    "with_derived_columns",
    "with_record_id",
    "with_validation",
]
