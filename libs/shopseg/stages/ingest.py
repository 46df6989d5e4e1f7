"""Stage `ingest`: configured sources -> bronze tables and quarantine, accounted per file.

Order of work, so that a failure never leaves a half-ingested batch visible:

1. Plan every source first: list its files; skip those logged before with
   the same path, size and modification time unread; hash the others
   (streamed) and skip those whose content this source already ingested or
   another file of the batch holds; check that every new file has the
   required columns (text files by their own header; `shopseg.source_plan`).
   Any problem stops the stage with a message naming the source, before
   anything is written.
2. Parse, validate, deduplicate; count each outcome per file and check that
   every record is accounted for (`check_accounting`) before any write.
3. Write each bronze table once (append), then the quarantine, then
   `bronze/ingest_log`.

A batch counts as committed once its `bronze/ingest_log` rows are: readers of
bronze keep only rows of committed batches (`tables.committed_by`), so rows of a
batch that died between its writes stay invisible, and the rerun ingests its
files again.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shopseg import files, ingest
from shopseg import tables as t
from shopseg.config import Config, SourceConf
from shopseg.ingest import IngestError, privacy
from shopseg.pipeline import StageContext
from shopseg.source_plan import PlannedFile, SourcePlan, plan_source

# HMAC-SHA256's own output size: RFC 2104 advises against keys shorter than it.
MIN_HASH_KEY_BYTES = 32


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
    secret = key.encode("utf-8")
    if len(secret) < MIN_HASH_KEY_BYTES:
        raise IngestError(
            f"privacy: the key in {config.privacy.hash_key_env} is {len(secret)} bytes; "
            f"hashing needs at least {MIN_HASH_KEY_BYTES} (a shorter key can be found by "
            "trying keys against a known e-mail, which unmasks every pseudonym). Make one "
            "with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret


def redacted_columns(config: Config, plan: SourcePlan) -> list[str] | None:
    """The columns a source's quarantined records show redacted; None when the
    source holds no identifier (its records are kept as read)."""
    actions = config.privacy.identifiers
    hidden = [c for c in plan.conf.columns if ingest.identifier_action(c, actions) != "keep"]
    unread = privacy.unread_identifier_fields(sorted(plan.file_fields), plan.conf)
    return hidden if hidden or unread else None


def check_identifiers(config: Config, plan: SourcePlan, validated: DataFrame, log) -> None:
    """A users source says what happens to every column that looks like an
    identifier (by name or by a sample of values); `keep` is warned about."""
    actions = config.privacy.identifiers
    for column in plan.conf.columns:
        if actions.get(column) == "keep":
            log.warning(
                "privacy: source %s column %s is KEPT IN CLEAR in %s "
                "(privacy.identifiers.%s: keep); every reader of bronze sees it",
                plan.name, column, plan.conf.table, column,
            )  # fmt: skip
    if plan.conf.table != t.BRONZE_USERS.name:
        return
    explicit = {*actions, *t.DIRECT_IDENTIFIERS}
    strings = [c for c, s in plan.conf.columns.items() if s.type == "string" and c not in explicit]
    rows = validated.select(*strings).limit(privacy.SAMPLE_ROWS).collect() if strings else []
    samples = {c: [r[c] for r in rows] for c in strings}
    suspects = privacy.suspect_columns(plan.conf, explicit, samples)
    if suspects:
        why = "; ".join(f"{c} ({reason})" for c, reason in suspects.items())
        raise IngestError(
            f"source {plan.name}: column(s) that look like identifiers have no action in "
            f"privacy.identifiers: {why}. Set each to drop, hash or keep; nothing was written"
        )


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
    where = [
        files.canonical_file_path(F.col("_metadata.file_path")).alias(t.SOURCE_FILE),
        F.struct(F.col("_metadata.file_block_start"), F.monotonically_increasing_id()).alias(
            ingest.POSITION
        ),
    ]
    if plan.conf.format == "parquet":
        rows = spark.read.parquet(*[files.literal(f.path) for f in plan.new_files])
        return ingest.parse_parquet_records(rows.select("*", *where), plan.conf)
    # Files are parsed by their own header: their columns may come in another order.
    by_header: dict[str | None, list[str]] = defaultdict(list)
    for f in plan.new_files:
        by_header[f.header].append(files.literal(f.path))
    parsed = [
        ingest.parse_text_records(
            spark.read.text(paths).select("value", *where), plan.conf, h, plan.fields
        )
        for h, paths in by_header.items()
    ]
    return _union(parsed)


@dataclass
class FileCounts:
    read: int = 0
    loaded: int = 0
    quarantined: int = 0
    unchanged: int = 0

    @classmethod
    def total(cls, counts: Iterable[FileCounts]) -> FileCounts:
        out = cls()
        for c in counts:
            out = cls(
                out.read + c.read,
                out.loaded + c.loaded,
                out.quarantined + c.quarantined,
                out.unchanged + c.unchanged,
            )
        return out

    @property
    def balanced(self) -> bool:
        return self.read == self.loaded + self.quarantined + self.unchanged


def _count_outcomes(validated: DataFrame) -> dict[str, FileCounts]:
    """Records per file and outcome, each outcome counted on its own."""
    reason = F.col(ingest.REASON)
    rows = (
        validated.groupBy(t.SOURCE_FILE)
        .agg(
            F.count(F.lit(1)).alias("read"),
            F.count_if(reason == "").alias("loaded"),
            F.count_if(~reason.isin("", ingest.UNCHANGED)).alias("quarantined"),
            F.count_if(reason == ingest.UNCHANGED).alias("unchanged"),
        )
        .collect()
    )
    return {
        r[t.SOURCE_FILE]: FileCounts(r.read, r.loaded, r.quarantined, r.unchanged) for r in rows
    }


def check_accounting(
    source: str,
    new_files: list[PlannedFile],
    counts: dict[str, FileCounts],
    written: dict[str, int],
) -> None:
    """Every record of every file accounted for, before anything commits.

    Args:
        source: the source's name, for messages.
        new_files: the files read.
        counts: outcomes per file (`_count_outcomes`), keyed by the file each
            record says it came from.
        written: rows each output holds: `loaded` (bronze rows) and
            `quarantined` (quarantine rows), counted from the frames that
            will be written.

    Raises:
        IngestError: with the counts, when records belong to no listed file,
            a non-empty file yields no record, a file's outcomes do not add
            up, or the outputs do not hold what the outcomes say.
    """
    listed = {f.path for f in new_files}
    if stray := sorted(set(counts) - listed):
        raise IngestError(
            f"source {source}: {sum(counts[p].read for p in stray)} records came from "
            f"file(s) {stray[:3]} that the listing does not name; nothing was committed"
        )
    for f in new_files:
        c = counts.get(f.path, FileCounts())
        if c.read == 0 and f.size > 0 and not _header_only(f):
            raise IngestError(
                f"source {source}: {f.path} has {f.size} bytes but yielded no records; "
                "nothing was committed"
            )
        if not c.balanced:
            raise IngestError(
                f"source {source}: {f.path}: {c.read} records read but {c.loaded} loaded + "
                f"{c.quarantined} quarantined + {c.unchanged} unchanged; nothing was committed"
            )
    total = FileCounts.total(counts.values())
    for output, rows in written.items():
        if rows != getattr(total, output):
            raise IngestError(
                f"source {source}: {rows} rows to write as {output} but the records say "
                f"{getattr(total, output)} (read {total.read}, loaded {total.loaded}, "
                f"quarantined {total.quarantined}, unchanged {total.unchanged}); "
                "nothing was committed"
            )


def _header_only(f: PlannedFile) -> bool:
    """A file holding no record line: its header at most (compressed files are
    looked into; a plain file's size tells)."""
    if files.is_compressed(f.path):
        return len(files.first_lines(f.path, 2)) <= (1 if f.header is not None else 0)
    return f.header is not None and f.size <= len(f.header.encode("utf-8")) + 2


def _log_row(
    batch_id: str, plan: SourcePlan, f: PlannedFile, c: FileCounts, now: dt.datetime, dup: str
) -> dict:
    return {
        t.BATCH_ID: batch_id,
        t.SOURCE: plan.name,
        "table": plan.conf.table,
        t.SOURCE_FILE: f.path,
        "file_hash": f.digest,
        "file_bytes": f.size,
        "file_modified": f.modified,
        "records_read": c.read,
        "loaded": c.loaded,
        "quarantined": c.quarantined,
        "unchanged": c.unchanged,
        "duplicate_of": dup or None,
        t.INGESTED_AT: now,
    }


def run(ctx: StageContext, only: Mapping[str, set[str]] | None = None) -> None:
    """Ingest every source's new files (with `only`: of the named sources, only
    the listed files; `shopseg stream` passes each micro-batch's files)."""
    # One ingest at a time per lakehouse (the runner's stage lock): two would
    # both see the same files as new, and one could take the other's
    # half-written batch for a dead one.
    _ingest(ctx, only)


def _ingest(ctx: StageContext, only: Mapping[str, set[str]] | None = None) -> None:
    config = ctx.config
    names = list(only) if only is not None else config.ingest.sources or list(config.sources)
    if not names:
        ctx.log.warning("no sources configured (conf `sources`); nothing to ingest")
        return
    hash_key = _hash_key(config, names)
    log = ctx.read(t.INGEST_LOG.name) if ctx.lakehouse.exists(t.INGEST_LOG.name) else None
    plans = [
        plan_source(ctx.spark, n, config.sources[n], log, only.get(n) if only else None)
        for n in names
    ]
    for plan in plans:
        ctx.log.info(
            "source %s (%s, %s): %d files, %d new, %d already ingested, %d skipped as copies",
            plan.name,
            plan.conf.format,
            plan.conf.path,
            len(plan.files),
            len(plan.new_files),
            len(plan.files) - len(plan.new_files) - len(plan.skipped),
            len(plan.skipped),
        )
        for f, original in plan.skipped:
            ctx.log.warning(
                "source %s: skipped %s: same content (%s) as %s", plan.name, f.path, f.digest,
                original,
            )  # fmt: skip
        ctx.run.log_metrics({f"files_skipped.{plan.name}": len(plan.files) - len(plan.new_files)})
    if not any(p.new_files or p.skipped for p in plans):
        ctx.log.info("every file was ingested before; nothing to do")
        return

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    batch_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    stamp = F.lit(now).cast("timestamp")
    bronze: dict[str, list[DataFrame]] = defaultdict(list)
    expected: dict[str, int] = defaultdict(int)
    quarantined: list[DataFrame] = []
    n_quarantined = 0
    accounting: list[dict] = []
    cached: list[DataFrame] = []
    for plan in plans:
        accounting += [_log_row(batch_id, plan, f, FileCounts(), now, o) for f, o in plan.skipped]
        if not plan.new_files:
            continue
        table = plan.conf.table
        meta = {
            t.SOURCE: F.lit(plan.name),
            t.BATCH_ID: F.lit(batch_id),
            t.INGESTED_AT: stamp,
        }
        try:
            records = _read_records(ctx.spark, plan)
            validated = ingest.with_validation(
                records,
                plan.conf,
                stamp,
                config.ingest.future_tolerance_minutes,
                redacted_columns(config, plan),
            )
        except IngestError as exc:
            raise IngestError(f"source {plan.name}: {exc}") from None
        check_identifiers(config, plan, validated, ctx.log)
        loaded = None
        compared = kept_columns(config, plan.conf)
        if plan.conf.key and ctx.lakehouse.exists(table):
            loaded = ctx.read(table)
            # A column the source gained since is compared from now on.
            compared = [c for c in compared if c in loaded.columns]
        validated = ingest.with_dedup_reasons(validated, plan.conf.key, loaded, compared)
        validated = ingest.with_record_id(validated, batch_id).persist()
        cached.append(validated)

        counts = _count_outcomes(validated)
        rows = ingest.bronze_rows(
            validated, table_columns(config, table), config.privacy.identifiers, hash_key, meta
        )
        rejected = ingest.quarantine_rows(validated, meta)
        check_accounting(
            plan.name,
            plan.new_files,
            counts,
            {"loaded": rows.count(), "quarantined": rejected.count()},
        )
        reasons = (
            validated.filter(~F.col(ingest.REASON).isin("", ingest.UNCHANGED))
            .groupBy(ingest.REASON)
            .count()
            .orderBy(F.desc("count"))
            .collect()
        )
        total = FileCounts.total(counts.values())
        ctx.log.info(
            "source %s: %d records read = %d loaded + %d quarantined + %d unchanged%s",
            plan.name,
            total.read,
            total.loaded,
            total.quarantined,
            total.unchanged,
            "".join(f"; {r[ingest.REASON]}: {r['count']}" for r in reasons[:8]),
        )
        if total.read and total.quarantined > total.read / 2:
            ctx.log.warning(
                "source %s: %d of %d records quarantined; are the files read as they are "
                "written (format, options.sep, options.header, names, encoding, column "
                "formats)?",
                plan.name,
                total.quarantined,
                total.read,
            )
        ctx.run.log_metrics(
            {
                f"records_read.{plan.name}": total.read,
                f"loaded.{plan.name}": total.loaded,
                f"quarantined.{plan.name}": total.quarantined,
                f"unchanged.{plan.name}": total.unchanged,
            }
        )
        accounting += [
            _log_row(batch_id, plan, f, counts.get(f.path, FileCounts()), now, "")
            for f in plan.new_files
        ]
        bronze[table].append(rows)
        expected[table] += total.loaded
        quarantined.append(rejected)
        n_quarantined += total.quarantined

    # Rows of batches that died before their log commit (a crash, kill -9) are
    # removed in the same commit that adds this batch's rows, so every reader,
    # not only shopseg's, sees each record once. Safe because no other ingest
    # runs (the lock): a batch without log rows is dead, not in flight.
    targets = {src.table for src in config.sources.values()} | set(bronze)
    dead = {tb: _dead_batches(ctx, tb, log) for tb in sorted(targets | {t.QUARANTINE.name})}
    for table, batches in dead.items():
        if batches:
            ctx.log.warning(
                "%s: removing the rows of %d batch(es) that never committed: %s",
                table, len(batches), ", ".join(batches[:5]),
            )  # fmt: skip
    # Tables with nothing to add or remove get no new version.
    for table in sorted(set(bronze) | {tb for tb, b in dead.items() if b}):
        if table == t.QUARANTINE.name:
            continue
        if expected[table] or dead.get(table):
            frame = _union(bronze[table]) if bronze[table] else ctx.lakehouse.read(table).limit(0)
            replace = (t.BATCH_ID, [*dead[table], batch_id]) if dead[table] else None
            result = ctx.write(frame, table, "append", replace_rows=replace)
            _check_count(table, result.rows, expected[table])
    if n_quarantined or dead[t.QUARANTINE.name]:
        frame = (
            _union(quarantined) if quarantined else ctx.lakehouse.read(t.QUARANTINE.name).limit(0)
        )
        result = ctx.write(
            frame,
            t.QUARANTINE.name,
            "append",
            partition_by=t.QUARANTINE.partition_by,
            replace_rows=(
                (t.BATCH_ID, [*dead[t.QUARANTINE.name], batch_id])
                if dead[t.QUARANTINE.name]
                else None
            ),
        )
        _check_count(t.QUARANTINE.name, result.rows, n_quarantined)
    # Written last: this commit is what makes the batch visible.
    log_rows = ctx.spark.createDataFrame(accounting, _LOG_SCHEMA).select(*t.INGEST_LOG.columns)
    ctx.write(log_rows.coalesce(1), t.INGEST_LOG.name, "append")
    for df in cached:
        df.unpersist()


def _dead_batches(ctx: StageContext, table: str, log: DataFrame | None) -> list[str]:
    """Batches with rows in `table` but none in bronze/ingest_log."""
    if not ctx.lakehouse.exists(table):
        return []
    present = ctx.lakehouse.read(table).select(t.BATCH_ID).distinct()
    if log is not None:
        present = present.join(log.select(t.BATCH_ID).distinct(), t.BATCH_ID, "left_anti")
    return sorted(r[0] for r in present.collect())


_LOG_SCHEMA = (
    "batch_id string, source string, table string, source_file string, file_hash string, "
    "file_bytes long, file_modified timestamp, records_read long, loaded long, "
    "quarantined long, unchanged long, duplicate_of string, ingested_at timestamp"
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
