"""Sections about where shopseg runs and what it reads: lakehouse, Spark, MLflow,
the synthetic shop, raw sources, privacy, maintenance and the stream."""

from __future__ import annotations

import codecs
import datetime as dt
import re
import zoneinfo
from typing import Literal

from pydantic import Field

from shopseg.config.base import (
    Date,
    NonNegative,
    PathStr,
    Positive,
    Problem,
    Section,
    Share,
    SqlExpression,
    TextMap,
    check,
)

PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class LakehouseConf(Section):
    """Where tables live and which Delta writer commits them."""

    root: PathStr = "lakehouse"
    writer: Literal["auto", "spark", "delta-rs"] = "auto"
    """auto: Spark's own Delta support when its classes are on the classpath, else delta-rs.
    `spark` and `delta-rs` force one and fail if unavailable.
    """
    target_file_mb: Positive = 128
    """Size a written file aims at; a table smaller than this is one file per partition
    value, whatever the cluster's shuffle partitions.
    """


def _is_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


class SparkConf(Section):
    """Session settings. Everything but `conf` applies in local mode only."""

    master: str | None = None
    remote: str | None = None
    """Spark Connect instead of a classic session: `local[N]` starts a local Connect server
    with this machine's defaults (Delta included), `sc://host:port` connects to a server.
    Default: the SPARK_REMOTE environment variable; unset: classic Spark."""
    app_name: str = "shopseg"
    driver_memory: str = "4g"
    ui: bool = False
    shuffle_partitions: Positive | None = None
    """Shuffle partitions in local mode; default is four times the local cores."""
    java_options: list[str] = Field(default_factory=list)
    """JVM flags added to the local driver's (after the log configuration and the parallel
    collector), e.g. ["-XX:TieredStopAtLevel=1"] for C1-only JIT; local mode only (a
    cluster's JVMs take `spark.driver.extraJavaOptions` in `conf`)."""
    checkpoint_dir: PathStr | None = None
    checkpoints: Literal["auto", "reliable", "local"] = "auto"
    """How intermediate results are materialized before iterative fits (their lineage cut):
    reliable: written to checkpoint_dir (survives a lost executor; on object storage a
    write, a copy and a read per partition); local: kept by the executors (fast, but losing
    an executor mid-stage fails the stage, to be rerun); auto: local in local mode (one JVM,
    nothing to survive), reliable on a cluster. ALS checkpoints to checkpoint_dir either way.
    """
    time_zone: str = "UTC"
    """Session time zone, set on every master (a cluster's own zone would move events to
    another day in to_date).
    """
    conf: TextMap = Field(default_factory=dict)
    """Extra Spark properties, passed as they are (also on a cluster)."""

    def rules(self) -> None:
        check(
            _is_time_zone(self.time_zone),
            "time_zone",
            f"unknown time zone {self.time_zone!r} (an IANA name such as UTC or Europe/Paris)",
        )


class MlflowConf(Section):
    """Tracking and registry. Unset URIs default to SQLite inside the lakehouse."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    artifact_root: PathStr | None = None
    experiment_prefix: str = "shopseg"

    def rules(self) -> None:
        artifacts = self.artifact_root or ""
        check(
            not artifacts.startswith(("s3a://", "s3n://")),
            "artifact_root",
            f"{artifacts!r}: MLflow writes s3:// URIs, not Hadoop's s3a:// or s3n://",
        )


class LoggingConf(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


DEFAULT_PERSONA_WEIGHTS = {
    "loyal_high_value": 0.12,
    "bargain_hunter": 0.20,
    "one_time_buyer": 0.20,
    "dormant": 0.18,
    "window_shopper": 0.15,
    "new_customer": 0.15,
}


def _check_persona(name: str, key: str) -> None:
    check(
        name in DEFAULT_PERSONA_WEIGHTS,
        key,
        f"unknown persona {name!r}; known: {sorted(DEFAULT_PERSONA_WEIGHTS)}",
    )


class DriftConf(Section):
    """Planted drift: a share of one persona's users become another persona on a date.

    Until `date` a drifted user behaves as `from_persona`, from `date` on as
    `to_persona` (for `dormant`, whose activity ends 180 days before the
    window's end: no activity at all). Feature snapshots before and after
    `date` then show the move; `raw/ground_truth/persona_drift` lists who moved.
    """

    from_persona: str = "loyal_high_value"
    to_persona: str = "dormant"
    share: Share = 0.0
    """Share of from_persona's users who drift; 0 = no drift."""
    date: Date | None = None
    """Required when share > 0; within (start_date, end_date)."""

    def rules(self) -> None:
        _check_persona(self.from_persona, "from_persona")
        _check_persona(self.to_persona, "to_persona")
        check(self.from_persona != self.to_persona, "to_persona", "must differ from from_persona")


class GenerateConf(Section):
    """Synthetic shop data (stage `generate`)."""

    seed: int = 42
    users: Positive = 20_000
    items: Positive = 2_000
    events_per_user: float = Field(50.0, gt=0)
    """Average events per user; total events is about users x this."""
    start_date: Date = dt.date(2025, 1, 1)
    end_date: Date = dt.date(2025, 12, 31)
    dirty_fraction: float = Field(0.001, ge=0, le=0.5)
    """Share of raw records corrupted on purpose (bad types, unknown event types, future
    timestamps, duplicates) so ingestion has something to quarantine.
    """
    personas: dict[str, NonNegative] = Field(
        default_factory=lambda: dict(DEFAULT_PERSONA_WEIGHTS), min_length=1
    )
    output_partitions: Positive | None = None
    """Files per raw output; default lets Spark decide."""
    drift: DriftConf = Field(default_factory=DriftConf)

    def rules(self) -> None:
        check(self.start_date < self.end_date, "start_date", "must be before end_date")
        for name in sorted(self.personas):
            _check_persona(name, f"personas.{name}")
        check(sum(self.personas.values()) > 0, "personas", "weights must not all be zero")
        if self.drift.share > 0:
            check(
                self.drift.date is not None and self.start_date < self.drift.date <= self.end_date,
                "drift.date",
                f"must be a date after start_date {self.start_date} "
                f"and not after end_date {self.end_date}",
            )


ColumnType = Literal["string", "int", "long", "double", "boolean", "date", "timestamp"]
# Numeric timestamps: seconds, milliseconds or microseconds since the Unix epoch.
EPOCH_FORMATS = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}
SourceFormat = Literal["csv", "json", "parquet", "whitespace", "fixed_width"]
TEXT_FORMATS = ("csv", "json", "whitespace", "fixed_width")


class ColumnConf(Section):
    """One target column of a source: where it comes from, its type and its rules."""

    source: str | int | None = None
    """Source column name (default: the target name), or its 0-based position in a csv or
    whitespace line. Ignored for fixed_width.
    """
    expr: SqlExpression | None = None
    """Or a Spark SQL expression over the source's columns (read as text), e.g. "Quantity *
    UnitPrice"; evaluated leniently: a value that does not convert gives null (a
    quarantined record), never a failed job.
    """
    type: ColumnType = "string"
    format: str | None = None
    """Date/timestamp pattern (Spark datetime pattern), e.g. yyyyMMdd, or epoch_s / epoch_ms
    / epoch_us for seconds, milliseconds or microseconds since 1970-01-01 UTC.
    """
    required: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    """Allowed values (after type conversion), e.g. the known event types."""
    start: int | None = None
    """fixed_width only: 1-based start and length on the line."""
    length: int | None = None

    def rules(self) -> None:
        if self.min is not None and self.max is not None:
            check(self.min <= self.max, "min", "must not exceed max")
        if self.format is not None:
            check(
                self.type in ("date", "timestamp"),
                "format",
                "only date and timestamp columns take a format",
            )
        if self.expr is not None:
            check(self.source is None, "expr", "a column takes either `source` or `expr`, not both")
            check(bool(self.expr.strip()), "expr", "must not be empty")
        if isinstance(self.source, int):
            check(self.source >= 0, "source", "a position must be >= 0")


class SourceConf(Section):
    """A raw source: where it is, how to read it, how its columns map to bronze."""

    path: PathStr = Field("", min_length=1)
    format: SourceFormat = "csv"
    options: TextMap = Field(default_factory=dict)
    """Reader options, e.g. header, sep (csv); header (whitespace)."""
    names: list[str] | None = None
    """Field names of a csv or whitespace file without a header, in order."""
    encoding: str | None = None
    """Character set of a text source (csv, json, whitespace, fixed_width), e.g. ISO-8859-1
    or windows-1252; default UTF-8. gzip and bz2 files (by their extension) are read as
    they are, whatever the encoding.
    """
    columns: dict[str, ColumnConf] = Field(default_factory=dict, min_length=1)
    constants: TextMap = Field(default_factory=dict)
    """Target columns set to a value for every record, e.g. event_type: purchase."""
    key: list[str] = Field(default_factory=list)
    """Dedup key (target columns); empty keeps identical rows."""
    table: str = ""
    """The bronze table it feeds, e.g. bronze/events."""

    @property
    def headed(self) -> bool:
        return self.options.get("header", "false").lower() == "true"

    def rules(self) -> None:
        check(
            self.table.startswith("bronze/") and len(self.table) > len("bronze/"),
            "table",
            "must name a bronze table, e.g. bronze/events",
        )
        both = sorted(set(self.columns) & set(self.constants))
        check(not both, "constants", f"{both} are also mapped columns")
        missing_key = sorted(set(self.key) - set(self.columns) - set(self.constants))
        check(not missing_key, "key", f"{missing_key} are not target columns")
        self._reading_rules()
        for col, spec in self.columns.items():
            key = f"columns.{col}"
            check(bool(PLAIN_NAME.match(col)), key, "name must be lower_snake_case")
            self._column_source_rules(key, spec)
            if self.format == "fixed_width":
                check(
                    spec.start is not None and spec.start >= 1 and (spec.length or 0) >= 1,
                    key,
                    "fixed_width columns need start >= 1 and length >= 1",
                )

    def _reading_rules(self) -> None:
        """How the files are read: field names, encoding."""
        if self.names is not None:
            check(
                self.format in ("csv", "whitespace"),
                "names",
                "only csv and whitespace sources without a header take names",
            )
            check(
                not self.headed,
                "names",
                "the files have a header (options.header: true): their own names are used",
            )
            check(
                bool(self.names) and all(self.names),
                "names",
                "must be a non-empty list of field names",
            )
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            check(not dupes, "names", f"{dupes} appear more than once")
        if self.encoding is not None:
            check(
                self.format in TEXT_FORMATS,
                "encoding",
                f"only text sources ({', '.join(TEXT_FORMATS)}) take an encoding",
            )
            try:
                codec = codecs.lookup(self.encoding)
            except LookupError:
                raise Problem(
                    "encoding",
                    f"unknown character set {self.encoding!r} "
                    "(e.g. UTF-8, ISO-8859-1, windows-1252)",
                ) from None
            # Lines are split on the bytes of \n before decoding.
            check(
                "a\n".encode(codec.name) == b"a\n",
                "encoding",
                f"{self.encoding!r} is not ASCII-compatible; lines cannot be split in it "
                "(convert the files to UTF-8)",
            )

    def _column_source_rules(self, key: str, spec: ColumnConf) -> None:
        """Where a target column's value comes from: a field, a position or an expression."""
        if spec.expr is not None:
            check(
                self.format != "fixed_width",
                f"{key}.expr",
                "fixed_width fields have no names for an expression to use",
            )
            check(
                self.format not in ("csv", "whitespace") or self.headed or self.names is not None,
                f"{key}.expr",
                "a file without a header needs `names` for an expression to refer to its fields",
            )
        if isinstance(spec.source, int):
            check(
                self.format in ("csv", "whitespace"),
                f"{key}.source",
                "a position (0, 1, ...) names a field of csv or whitespace lines only",
            )
            if self.names is not None:
                check(
                    spec.source < len(self.names),
                    f"{key}.source",
                    f"position {spec.source} is past the {len(self.names)} names",
                )
        elif self.names is not None and spec.expr is None:
            field_name = spec.source or key.split(".", 1)[1]
            check(
                field_name in self.names or re.fullmatch(r"_c\d+", field_name) is not None,
                f"{key}.source",
                f"{field_name!r} is not one of the names {self.names}",
            )


class IngestConf(Section):
    sources: list[str] | None = None
    """Sources to ingest (default: all configured)."""
    future_tolerance_minutes: int = 5
    """Timestamps later than ingestion time plus this are rejected as future."""


PrivacyAction = Literal["drop", "hash", "keep"]
DEFAULT_IDENTIFIER_ACTIONS: dict[str, PrivacyAction] = {
    "full_name": "drop",
    "email": "drop",
    "phone": "drop",
    "address": "drop",
    "ip": "drop",
}


class PrivacyConf(Section):
    """Direct identifiers are dropped or keyed-hashed at bronze; they never reach silver."""

    hash_key_env: str = "SHOPSEG_HASH_KEY"
    """Environment variable holding the HMAC key for `hash` (never in a file)."""
    identifiers: dict[str, PrivacyAction] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTIFIER_ACTIONS)
    )
    min_group_size: Positive = 10
    """Smallest group an export or a report may show."""


class MaintainConf(Section):
    """Stage `maintain` (not part of `shopseg run`): compaction and vacuum of Delta tables."""

    tables: list[str] | None = None
    """Tables to maintain; null = every table of the contract that exists."""
    target_file_mb: Positive = 128
    """Compact files smaller than this into files of about this size (MB)."""
    zorder_by: list[str] = Field(default_factory=lambda: ["user_id"])
    """Cluster the compacted files by these columns (Z-ORDER) where a table has them all; []
    = plain compaction.
    """
    retention_hours: NonNegative = 168.0
    """Remove files no version younger than this references (Delta's default is 7 days:
    readers of older versions and concurrent writers need them).
    """
    quarantine_days: Positive | None = 90
    """Delete bronze/quarantine rows ingested more than this many days ago (their files
    go at the vacuum after `retention_hours`); null = keep them.
    """


class PipelineConf(Section):
    stages: list[str] | None = None
    """Stages `shopseg run` runs without --stages (default: all)."""


STREAM_INTERVAL = re.compile(r"^\d+(\.\d+)? (second|seconds|minute|minutes)$")


class StreamConf(Section):
    """`shopseg stream`: Structured Streaming from a source's landing folder."""

    source: str = "events"
    """The source whose folder the stream watches (a line-based one: json, csv, ...)."""
    trigger: str = "availableNow"
    """availableNow: process the files there and stop (for schedulers); or a processing-time
    interval such as "5 seconds".
    """
    max_files_per_trigger: Positive = 1
    checkpoint: PathStr | None = None
    """Default: <lakehouse.root>/_checkpoints/stream."""
    segments: bool = True
    """Score the changed users with the segment champion and merge them into
    gold/user_segments_current.
    """

    def rules(self) -> None:
        check(
            self.trigger == "availableNow" or bool(STREAM_INTERVAL.match(self.trigger)),
            "trigger",
            "must be availableNow or an interval such as '5 seconds'",
        )
