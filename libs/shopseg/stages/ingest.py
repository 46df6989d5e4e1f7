"""Stage `ingest`: configured sources -> bronze tables and quarantine, accounted per file.

Order of work, so that a failure never leaves a half-ingested batch visible:

1. Check every source first (path exists, format readable, required columns
   present, hash key available). Any problem stops the stage with a message
   naming the source, before anything is written.
2. Skip files whose content (SHA-256) this source already ingested.
3. Parse, validate, deduplicate; write each bronze table once (append), then
   the quarantine, then `bronze/ingest_log`.

A batch counts as committed once its `bronze/ingest_log` rows are: readers of
bronze keep only rows of committed batches (`ingest.committed_rows`), so rows of a
batch that died between its writes stay invisible, and the rerun ingests its
files again.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from shopseg import ingest
from shopseg import tables as t
from shopseg.config import Config, SourceConf
from shopseg.ingest import IngestError, source_field
from shopseg.pipeline import StageContext

# Files above this size are identified by path, size and modification time
# instead of a content hash (Spark's binaryFile reads a file whole).
MAX_HASHED_BYTES = 1 << 30
JSON_SAMPLE_LINES = 1000


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    digest: str


@dataclass
class SourcePlan:
    name: str
    conf: SourceConf
    files: list[SourceFile]
    header_line: str | None = None
    new_files: list[SourceFile] = field(default_factory=list)


# --------------------------------------------------------------------------- checks


def _list_files(spark: SparkSession, name: str, path: str) -> list[SourceFile]:
    try:
        listing = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(path)
            .select("path", "length", "modificationTime")
            .collect()
        )
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise IngestError(f"source {name}: path {path} does not exist") from None
        raise IngestError(f"source {name}: cannot list {path}: {exc}") from None
    small = [r.path for r in listing if r.length <= MAX_HASHED_BYTES]
    digests: dict[str, str] = {}
    if small:
        hashed = (
            spark.read.format("binaryFile")
            .load(small)
            .select("path", F.sha2(F.col("content"), 256).alias("digest"))
            .collect()
        )
        digests = {r.path: f"sha256:{r.digest}" for r in hashed}
    return [
        SourceFile(
            r.path,
            r.length,
            digests.get(r.path) or f"meta:{r.length}:{r.modificationTime.isoformat()}",
        )
        for r in sorted(listing, key=lambda r: r.path)
    ]


def _available_fields(spark: SparkSession, plan: SourcePlan) -> set[str] | None:
    """Field names the source offers (None where the format has no names: fixed_width)."""
    src, name, paths = plan.conf, plan.name, [f.path for f in plan.files]
    if src.format == "parquet":
        try:
            return set(spark.read.parquet(*paths).columns)
        except Exception as exc:  # noqa: BLE001 - any reader failure means unreadable
            raise IngestError(f"source {name}: not readable as parquet: {exc}") from None
    if src.format in ("csv", "whitespace"):
        if not ingest.has_header(src):
            return None
        first = spark.read.text(paths[0]).filter(F.trim(F.col("value")) != "").limit(1).collect()
        if not first:
            raise IngestError(f"source {name}: {paths[0]} is empty; expected a header line")
        plan.header_line = first[0].value.rstrip("\r")
        return set(ingest.header_fields(plan.header_line, src.format, src.options))
    if src.format == "json":
        sample = (
            spark.read.text(paths[: max(1, min(len(paths), 8))])
            .limit(JSON_SAMPLE_LINES)
            .select(F.from_json(F.col("value"), "map<string,string>").alias("m"))
        )
        keys = sample.select(F.explode(F.map_keys("m")).alias("k")).distinct().collect()
        if not keys:
            raise IngestError(
                f"source {name}: none of the first {JSON_SAMPLE_LINES} lines is a JSON object; "
                "is the format right?"
            )
        return {r.k for r in keys}
    return None


def _check_source(spark: SparkSession, name: str, src: SourceConf) -> SourcePlan:
    plan = SourcePlan(name, src, _list_files(spark, name, src.path))
    if not plan.files:
        return plan
    available = _available_fields(spark, plan)
    if available is not None:
        required = {
            source_field(c, s) for c, s in src.columns.items() if s.required or c in src.key
        }
        missing = sorted(required - available)
        if missing:
            raise IngestError(
                f"source {name}: required column(s) {missing} not found in {src.path} "
                f"(found: {sorted(available)})"
            )
        if src.format in ("csv", "whitespace", "parquet"):
            absent = sorted({source_field(c, s) for c, s in src.columns.items()} - available)
            if absent:
                raise IngestError(
                    f"source {name}: column(s) {absent} not found in {src.path} "
                    f"(found: {sorted(available)})"
                )
    return plan


def _hash_key(config: Config, names: list[str]) -> bytes | None:
    """The HMAC key when some ingested column is to be hashed; fail early without one."""
    targets = {c for n in names for c in config.sources[n].columns}
    hashed = sorted(
        c for c in targets if ingest.identifier_action(c, config.privacy.identifiers) == "hash"
    )
    if not hashed:
        return None
    key = os.environ.get(config.privacy.hash_key_env)
    if not key:
        raise IngestError(
            f"privacy: column(s) {hashed} are to be hashed but the environment variable "
            f"{config.privacy.hash_key_env} (privacy.hash_key_env) is not set"
        )
    return key.encode("utf-8")


def kept_columns(config: Config, source: SourceConf) -> list[str]:
    """Target columns bronze stores as they come (not dropped or hashed): what decides
    whether a re-delivered record is unchanged."""
    return [
        c
        for c in [*source.columns, *source.constants]
        if ingest.identifier_action(c, config.privacy.identifiers) == "keep"
    ]


def table_columns(config: Config, table: str) -> dict[str, str]:
    """Target columns and types of a bronze table: every source feeding it, in order."""
    out: dict[str, str] = {}
    for src in config.sources.values():
        if src.table != table:
            continue
        for col, spec in src.columns.items():
            out.setdefault(col, spec.type)
        for col in src.constants:
            out.setdefault(col, "string")
    return out


# --------------------------------------------------------------------------- the stage


def _read_records(spark: SparkSession, plan: SourcePlan) -> DataFrame:
    paths = [f.path for f in plan.new_files]
    file_path = F.col("_metadata.file_path").alias(t.SOURCE_FILE)
    if plan.conf.format == "parquet":
        rows = spark.read.parquet(*paths)
        return ingest.parse_parquet_records(rows.select("*", file_path), plan.conf)
    lines = spark.read.text(paths).select("value", file_path)
    return ingest.parse_text_records(lines, plan.conf, plan.header_line)


def run(ctx: StageContext) -> None:
    config = ctx.config
    names = config.ingest.sources or list(config.sources)
    if not names:
        ctx.log.warning("no sources configured (conf `sources`); nothing to ingest")
        return
    hash_key = _hash_key(config, names)
    plans = [_check_source(ctx.spark, n, config.sources[n]) for n in names]

    log = ctx.read(t.INGEST_LOG.name) if ctx.lakehouse.exists(t.INGEST_LOG.name) else None
    done: set[tuple[str, str]] = set()
    if log is not None:
        done = {(r.source, r.file_hash) for r in log.select(t.SOURCE, "file_hash").collect()}
    for plan in plans:
        plan.new_files = [f for f in plan.files if (plan.name, f.digest) not in done]
        skipped = len(plan.files) - len(plan.new_files)
        ctx.log.info(
            "source %s (%s, %s): %d files, %d new, %d already ingested",
            plan.name,
            plan.conf.format,
            plan.conf.path,
            len(plan.files),
            len(plan.new_files),
            skipped,
        )
        ctx.run.log_metrics({f"files_skipped.{plan.name}": skipped})
    todo = [p for p in plans if p.new_files]
    if not todo:
        ctx.log.info("every file was ingested before; nothing to do")
        return

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    batch_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    stamp = F.lit(now).cast("timestamp")
    bronze: dict[str, list[DataFrame]] = defaultdict(list)
    quarantined: list[DataFrame] = []
    accounting: list[dict] = []
    cached: list[DataFrame] = []
    for plan in todo:
        table = plan.conf.table
        meta = {
            t.SOURCE: F.lit(plan.name),
            t.BATCH_ID: F.lit(batch_id),
            t.INGESTED_AT: stamp,
        }
        records = _read_records(ctx.spark, plan)
        validated = ingest.with_validation(
            records, plan.conf, stamp, config.ingest.future_tolerance_minutes
        )
        loaded = None
        compared = kept_columns(config, plan.conf)
        if plan.conf.key and ctx.lakehouse.exists(table):
            loaded = ingest.committed_rows(ctx.read(table), log)
        validated = ingest.with_dedup_reasons(validated, plan.conf.key, loaded, compared)
        validated = ingest.with_record_id(validated, batch_id).persist()
        cached.append(validated)

        reason = F.col(ingest.REASON)
        per_file = {
            r[t.SOURCE_FILE]: r
            for r in validated.groupBy(t.SOURCE_FILE)
            .agg(
                F.count(F.lit(1)).alias("read"),
                F.sum((reason == "").cast("long")).alias("loaded"),
                F.sum((reason == ingest.UNCHANGED).cast("long")).alias("unchanged"),
            )
            .collect()
        }
        reasons = (
            validated.filter(~reason.isin("", ingest.UNCHANGED))
            .groupBy(ingest.REASON)
            .count()
            .orderBy(F.desc("count"))
            .collect()
        )
        read = sum(r["read"] for r in per_file.values())
        loaded = sum(r["loaded"] for r in per_file.values())
        unchanged = sum(r["unchanged"] for r in per_file.values())
        ctx.log.info(
            "source %s: %d records read = %d loaded + %d quarantined + %d unchanged%s",
            plan.name,
            read,
            loaded,
            read - loaded - unchanged,
            unchanged,
            "".join(f"; {r[ingest.REASON]}: {r['count']}" for r in reasons[:8]),
        )
        ctx.run.log_metrics(
            {
                f"records_read.{plan.name}": read,
                f"loaded.{plan.name}": loaded,
                f"quarantined.{plan.name}": read - loaded - unchanged,
                f"unchanged.{plan.name}": unchanged,
            }
        )
        for f in plan.new_files:
            row = per_file.get(f.path)
            n_read, n_loaded, n_same = (
                (row["read"], row["loaded"], row["unchanged"]) if row else (0, 0, 0)
            )
            accounting.append(
                {
                    t.BATCH_ID: batch_id,
                    t.SOURCE: plan.name,
                    "table": table,
                    t.SOURCE_FILE: f.path,
                    "file_hash": f.digest,
                    "file_bytes": f.size,
                    "records_read": n_read,
                    "loaded": n_loaded,
                    "quarantined": n_read - n_loaded - n_same,
                    "unchanged": n_same,
                    t.INGESTED_AT: now,
                }
            )
        bronze[table].append(
            ingest.bronze_rows(
                validated,
                table_columns(config, table),
                config.privacy.identifiers,
                hash_key,
                meta,
            )
        )
        quarantined.append(ingest.quarantine_rows(validated, meta))

    expected = defaultdict(int)
    for row in accounting:
        expected[row["table"]] += row["loaded"]
    # Tables with nothing to add get no new version.
    for table, frames in bronze.items():
        if expected[table]:
            result = ctx.write(_union(frames), table, "append")
            _check_count(table, result.rows, expected[table])
    n_quarantined = sum(r["quarantined"] for r in accounting)
    if n_quarantined:
        result = ctx.write(
            _union(quarantined),
            t.QUARANTINE.name,
            "append",
            partition_by=t.QUARANTINE.partition_by,
        )
        _check_count(t.QUARANTINE.name, result.rows, n_quarantined)
    # Written last: this commit is what makes the batch visible.
    log_rows = ctx.spark.createDataFrame(accounting, _LOG_SCHEMA).select(*t.INGEST_LOG.columns)
    ctx.write(log_rows.coalesce(1), t.INGEST_LOG.name, "append")
    for df in cached:
        df.unpersist()


_LOG_SCHEMA = (
    "batch_id string, source string, table string, source_file string, file_hash string, "
    "file_bytes long, records_read long, loaded long, quarantined long, unchanged long, "
    "ingested_at timestamp"
)


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


def _check_count(table: str, written: int, expected: int) -> None:
    if written != expected:
        raise IngestError(
            f"{table}: wrote {written} rows but the accounting counted {expected}; "
            "the batch is not committed (bronze/ingest_log was not written)"
        )
