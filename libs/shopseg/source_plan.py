"""Which of a source's files an ingest reads, and why it skips the others.

A source's files are listed (`shopseg.files`); a file logged before with the
same path, size and modification time is skipped unread; the others are
hashed (streamed) and skipped when this source already ingested their
content or another file of the batch holds it. Every new file must have the
required columns (text files by their own header, parquet by its schema,
JSON by a sample of records) before the stage writes anything; a problem
raises `IngestError` naming the source and the file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shopseg import files, ingest
from shopseg import tables as t
from shopseg.config import SourceConf
from shopseg.ingest import IngestError, source_field

JSON_SAMPLE_LINES = 1000


@dataclass(frozen=True)
class PlannedFile:
    """A listed file (`files.SourceFile`) with what planning learnt: its content
    hash and, for a file with a header, that header."""

    path: str
    size: int
    modified: dt.datetime
    digest: str = ""
    # The first non-blank line of a csv or whitespace file with a header.
    header: str | None = None


@dataclass
class SourcePlan:
    name: str
    conf: SourceConf
    files: list[PlannedFile]
    new_files: list[PlannedFile] = field(default_factory=list)
    # The fields a json source's records have (from a sample), for expressions.
    fields: list[str] | None = None
    # Every field the new files have (headers, Parquet schema, a json sample):
    # what a record's raw text may hold beyond the columns read.
    file_fields: set[str] = field(default_factory=set)
    # Skipped files: (file, why) where why names the file already holding the content.
    skipped: list[tuple[PlannedFile, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- checks


def _list_files(spark: SparkSession, name: str, path: str) -> list[PlannedFile]:
    try:
        listed = files.list_files(spark, path)
    except files.SourceFilesError as exc:
        raise IngestError(f"source {name}: {exc}") from None
    return [PlannedFile(f.path, f.size, f.modified) for f in listed]


def _named_fields(src: SourceConf, required_only: bool = False) -> set[str]:
    """Fields the columns read by name (not by position, not through an expression)."""
    return {
        str(source_field(c, s))
        for c, s in src.columns.items()
        if s.expr is None
        and not isinstance(s.source, int)
        and (not required_only or s.required or c in src.key)
    }


def _check_fields(name: str, src: SourceConf, where: str, available: set[str]) -> None:
    required = _named_fields(src, required_only=True)
    if missing := sorted(required - available):
        raise IngestError(
            f"source {name}: required column(s) {missing} not found in {where} "
            f"(found: {sorted(available)})"
        )
    if src.format in ("csv", "whitespace", "parquet"):
        absent = sorted(_named_fields(src) - available)
        if absent:
            raise IngestError(
                f"source {name}: column(s) {absent} not found in {where} "
                f"(found: {sorted(available)})"
            )


def _with_headers(name: str, src: SourceConf, new: list[PlannedFile]) -> list[PlannedFile]:
    """Each file's own header: files may order their columns differently."""
    out = []
    for f in new:
        try:
            header = files.first_line(f.path, src.encoding)
        except OSError as exc:
            raise IngestError(f"source {name}: cannot read {f.path}: {exc}") from None
        if header is None:
            if f.size:
                raise IngestError(
                    f"source {name}: {f.path} has {f.size} bytes but no header line "
                    "(options.header is true)"
                )
            out.append(f)  # an empty file: nothing to read, logged with 0 records
            continue
        header = header.rstrip("\r")
        available = set(ingest.header_fields(header, src.format, src.options))
        _check_fields(name, src, f.path, available)
        out.append(replace(f, header=header))
    return out


def _check_new_files(spark: SparkSession, plan: SourcePlan) -> None:
    """Required columns present in every new file, before anything is written."""
    src, name, paths = plan.conf, plan.name, [f.path for f in plan.new_files]
    if not paths:
        return
    if src.format in ("csv", "whitespace") and ingest.has_header(src):
        plan.new_files = _with_headers(name, src, plan.new_files)
        for f in plan.new_files:
            if f.header is not None:
                plan.file_fields |= set(ingest.header_fields(f.header, src.format, src.options))
    elif src.format == "parquet":
        try:
            available = set(spark.read.parquet(*map(files.literal, paths)).columns)
        except Exception as exc:  # noqa: BLE001 - any reader failure means unreadable
            raise IngestError(f"source {name}: not readable as parquet: {exc}") from None
        _check_fields(name, src, src.path, available)
        plan.file_fields = available
    elif src.format == "json":
        sample = (
            spark.read.text([files.literal(p) for p in paths[:8]])
            .limit(JSON_SAMPLE_LINES)
            .select(F.from_json(F.col("value"), "map<string,string>").alias("m"))
        )
        keys = sample.select(F.explode(F.map_keys("m")).alias("k")).distinct().collect()
        if not keys:
            raise IngestError(
                f"source {name}: none of the first {JSON_SAMPLE_LINES} lines is a JSON object; "
                "is the format right?"
            )
        plan.fields = sorted(r.k for r in keys)
        plan.file_fields = set(plan.fields)
        _check_fields(name, src, src.path, set(plan.fields))


def plan_source(
    spark: SparkSession,
    name: str,
    src: SourceConf,
    logged: DataFrame | None,
    only: set[str] | None = None,
) -> SourcePlan:
    """Which of a source's files to ingest, and why the others are skipped.

    A file logged before with the same path, size and modification time is
    skipped without being read. The others are hashed (streamed); a file whose
    content this source already ingested, or that another file of this batch
    holds too, is skipped (the first by path is read). With `only`, the files
    not in it are left for later.
    """
    listed = _list_files(spark, name, src.path)
    if only is not None:
        listed = [f for f in listed if f.path in only]
    plan = SourcePlan(name, src, listed)
    if not plan.files:
        return plan
    seen: set[tuple[str, int, dt.datetime]] = set()
    digests: dict[str, str] = {}
    if logged is not None:
        mine = logged.filter(F.col(t.SOURCE) == name)
        for r in mine.select(t.SOURCE_FILE, "file_bytes", "file_modified", "file_hash").collect():
            seen.add((r[t.SOURCE_FILE], r.file_bytes, r.file_modified))
            digests.setdefault(r.file_hash, r[t.SOURCE_FILE])
    unseen = [f for f in plan.files if (f.path, f.size, f.modified) not in seen]
    hashes = files.content_hashes(spark, [f.path for f in unseen])
    for f in unseen:
        f = replace(f, digest=hashes[f.path])
        if f.digest in digests:
            plan.skipped.append((f, digests[f.digest]))
        else:
            digests[f.digest] = f.path
            plan.new_files.append(f)
    _check_new_files(spark, plan)
    return plan
