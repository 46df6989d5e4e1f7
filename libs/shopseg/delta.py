"""Delta Lake tables through one small interface, with two writers behind it.

- `spark`: Spark's own Delta support (`format("delta")`), used where the JVM
  has the Delta classes (Databricks, or a cluster started with
  `io.delta:delta-spark`).
- `delta-rs`: where it does not (no Maven access, an offline laptop). Spark
  tasks write the Parquet data files in parallel with pyarrow and return only
  each file's metadata (path, size, partition values, stats); the driver then
  commits one Delta transaction of add (and remove) actions through the
  `deltalake` package. Reading resolves the snapshot's file list through
  delta-rs and hands it to Spark.

Either way one `Lakehouse.write` is exactly one table version; a writer that
dies before its commit leaves only unreferenced files behind, so the table
stays at its previous version; each commit records the stage, MLflow run id
and config hash it came from; the result is a plain Delta table that Spark,
deltalake, DuckDB and Polars read alike. Nothing outside this module knows
which writer ran.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shopseg.config import ShopsegError, is_uri, local_dir
from shopseg.files import arrow_uri
from shopseg.spark import session_conf

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite", "overwrite_partitions"]
WRITE_MODES = ("append", "overwrite", "overwrite_partitions")

# Partition values become folder names. Plain characters only: delta-rs takes
# add paths literally while the Delta spec reads them as URIs, so anything
# needing escaping would be read back differently by different engines.
_PLAIN_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_PARTITION_TYPES = ("string", "date", "integer", "long", "short", "byte", "boolean")
# Reader features the file-list reader cannot honour (it would return wrong rows).
_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping", "v2Checkpoint"}

META_PREFIX = "shopseg."


class DeltaError(ShopsegError):
    """A Delta read or write was refused; the message names the table and why."""


class ConcurrentWriteError(DeltaError):
    """Another write committed a conflicting version first; nothing was committed."""


@dataclass(frozen=True)
class CommitInfo:
    """What a commit records about the job that made it."""

    stage: str | None = None
    run_id: str | None = None
    config_hash: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def metadata(self, write_id: str, mode: str) -> dict[str, str]:
        out = {
            f"{META_PREFIX}stage": self.stage or "",
            f"{META_PREFIX}mlflow_run_id": self.run_id or "",
            f"{META_PREFIX}config_hash": self.config_hash or "",
            f"{META_PREFIX}write_id": write_id,
            f"{META_PREFIX}mode": mode,
        }
        out.update({f"{META_PREFIX}{k}": str(v) for k, v in self.extra.items()})
        return out


@dataclass(frozen=True)
class WriteResult:
    """One committed write: the table version it made and what went in."""

    table: str
    path: str
    version: int
    rows: int
    files: int
    mode: str
    writer: str
    seconds: float


@dataclass(frozen=True)
class MaintenanceResult:
    """One table's maintenance: live data files before and after, files vacuumed."""

    table: str
    files_before: int
    files_after: int
    files_vacuumed: int
    zorder_by: tuple[str, ...]
    version: int
    seconds: float


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    timestamp: dt.datetime
    operation: str
    metadata: dict[str, str]


# --------------------------------------------------------------------------- helpers


# Schemes both delta-rs (the commit) and pyarrow (the executors' Parquet files)
# can write; s3a://, dbfs:/, hdfs:// and others need Spark's Delta writer.
DELTA_RS_SCHEMES = ("file", "s3", "gs", "gcs")


def check_delta_rs_root(root: str, has_delta: bool) -> None:
    """Fail at once, before any Spark job, for a root the delta-rs writer cannot write."""
    scheme = root.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*:", root) else ""
    if not scheme or scheme in DELTA_RS_SCHEMES:
        return
    hint = " (for S3, s3:// instead of s3a://)" if scheme == "s3a" else ""
    raise DeltaError(
        f"lakehouse.root {root}: the delta-rs writer cannot write {scheme}:// roots; it "
        f"writes local paths and {', '.join(s + '://' for s in DELTA_RS_SCHEMES)}. "
        + (
            "Set lakehouse.writer to 'spark' or 'auto' to use Spark's Delta Lake classes"
            if has_delta
            else "Start Spark with the Delta Lake jars (--packages io.delta:delta-spark_2.13:"
            "<version of delta-spark>) and lakehouse.writer 'auto' or 'spark'"
        )
        + f", or use a root delta-rs supports{hint}."
    )


def log_reader_uri(path: str) -> str | None:
    """Where deltalake reads the table at `path` (Spark's name for it), or None when it cannot.

    Hadoop names S3 objects `s3a://`, delta-rs `s3://`; delta-rs takes S3
    credentials and endpoint from the AWS environment variables only.
    """
    local = local_dir(path)
    if local is not None:
        return local
    if re.match(r"^s3[an]?://", path) and any(
        os.environ.get(v)
        for v in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
    ):
        return arrow_uri(path)
    return None


def _join(root: str, table: str) -> str:
    return f"{root.rstrip('/')}/{table.strip('/')}"


def _delta_schema_fields(schema_json: str) -> dict[str, str]:
    """name -> Delta type (as canonical JSON) for comparing schemas."""
    return {
        f["name"]: json.dumps(f["type"], sort_keys=True) for f in json.loads(schema_json)["fields"]
    }


def _schema_difference(table_json: str, new_json: str) -> str:
    old, new = _delta_schema_fields(table_json), _delta_schema_fields(new_json)
    parts = []
    if missing := sorted(set(old) - set(new)):
        parts.append(f"missing columns {missing}")
    if extra := sorted(set(new) - set(old)):
        parts.append(f"new columns {extra}")
    if changed := sorted(k for k in set(old) & set(new) if old[k] != new[k]):
        parts.append("changed types " + ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in changed))
    return "; ".join(parts)


def _delta_schema_difference_beyond(table_json: str, new_json: str, added: set[str]) -> bool:
    """True when the schemas differ in more than the columns `added` (missing or retyped)."""
    old, new = _delta_schema_fields(table_json), _delta_schema_fields(new_json)
    new = {k: v for k, v in new.items() if k not in added}
    return old != new


def _arrow_schema(df: DataFrame) -> pa.Schema:
    """Arrow schema of the table a DataFrame writes, every field nullable."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(df.schema, timezone="UTC")
    return pa.schema([f.with_nullable(True) for f in schema])


def _partition_string(value: Any) -> str | None:
    """Delta's serialisation of one partition value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _format_stat(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


# --------------------------------------------------------------------------- executor side


_FILE_META_SCHEMA = (
    "path string, size long, partition_values map<string,string>, num_records long, stats string"
)


class _FileSink:
    """One Parquet file being written by a task, with its running statistics."""

    def __init__(self, fs: Any, base: str, rel: str, schema: pa.Schema, row_group_rows: int):
        import pyarrow.parquet as pq

        self.rel = rel
        self.full = f"{base.rstrip('/')}/{rel}"
        parent = self.full.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        self.fs = fs
        self.writer = pq.ParquetWriter(self.full, schema, filesystem=fs, compression="snappy")
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.nulls: dict[str, int] = {n: 0 for n in schema.names}
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc
        import pyarrow.types as pt

        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            self.nulls[name] += column.null_count
            # Exact min/max for integers, dates and strings; floats (NaN) are
            # left without, which is valid. Strings need theirs: delta-rs's
            # Arrow dataset prunes a file whose string column has a null count
            # but no min/max for any equality filter (DuckDB's `= '(all)'`
            # over gold/campaign_results read no rows).
            if pt.is_integer(column.type) or pt.is_date(column.type) or pt.is_string(column.type):
                mm = pc.min_max(column).as_py()
                if mm["min"] is not None:
                    lo, hi = mm["min"], mm["max"]
                    self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
                    self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            # Buffer Spark's small Arrow batches into real row groups.
            self.writer.write_table(pa.Table.from_batches(self.pending, schema=self.schema))
            self.pending, self.pending_rows = [], 0

    def close(self, partition_values: dict[str, str | None]) -> dict[str, Any]:
        self._flush()
        self.writer.close()
        size = self.fs.get_file_info(self.full).size
        stats = {
            "numRecords": self.rows,
            "nullCount": self.nulls,
            "minValues": {k: _format_stat(v) for k, v in self.mins.items()},
            "maxValues": {k: _format_stat(v) for k, v in self.maxs.items()},
        }
        return {
            "path": self.rel,
            "size": size,
            "partition_values": partition_values,
            "num_records": self.rows,
            "stats": json.dumps(stats),
        }


def _split_by_partition(
    batch: pa.RecordBatch, partition_by: Sequence[str]
) -> list[tuple[tuple[str | None, ...], pa.RecordBatch]]:
    """Group a batch's rows by their partition values (one hash pass)."""
    import pyarrow as pa

    if not partition_by:
        return [((), batch)]
    table = pa.Table.from_batches([batch]).append_column(
        "__row", pa.array(range(batch.num_rows), pa.int64())
    )
    groups = table.group_by(list(partition_by), use_threads=False).aggregate([("__row", "list")])
    out = []
    keys = [groups.column(c).to_pylist() for c in partition_by]
    for i, rows in enumerate(groups.column("__row_list").to_pylist()):
        key = tuple(_partition_string(k[i]) for k in keys)
        out.append((key, batch.take(pa.array(rows, pa.int64()))))
    return out


def _write_task(
    batches: Iterator[pa.RecordBatch],
    *,
    table_uri: str,
    write_id: str,
    partition_by: Sequence[str],
    max_rows_per_file: int,
    row_group_rows: int,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: write this task's rows as Parquet, yield one metadata row per file."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    from pyspark import TaskContext

    ctx = TaskContext.get()
    task = ctx.partitionId() if ctx else 0
    attempt = ctx.attemptNumber() if ctx else 0
    fs, base = pafs.FileSystem.from_uri(table_uri)
    open_files: dict[tuple[str | None, ...], _FileSink] = {}
    written: list[dict[str, Any]] = []
    seq = 0

    def folders_of(key: tuple[str | None, ...]) -> list[str]:
        folders = []
        for col, value in zip(partition_by, key, strict=True):
            if value is not None and not _PLAIN_PARTITION_VALUE.match(value):
                raise ValueError(
                    f"partition column {col!r} has value {value!r}: partition values "
                    "may only contain letters, digits, '.', '_' and '-'"
                )
            folders.append(f"{col}={NULL_PARTITION if value is None else value}")
        return folders

    for batch in batches:
        for key, part in _split_by_partition(batch, partition_by):
            data = part.drop_columns(list(partition_by)) if partition_by else part
            offset = 0
            while offset < data.num_rows:
                sink = open_files.get(key)
                if sink is not None and sink.rows >= max_rows_per_file:
                    written.append(sink.close(dict(zip(partition_by, key, strict=True))))
                    sink = None
                if sink is None:
                    name = f"part-{task:05d}-{write_id}-a{attempt}-{seq:04d}.snappy.parquet"
                    seq += 1
                    rel = "/".join([*folders_of(key), name])
                    sink = _FileSink(fs, base, rel, data.schema, row_group_rows)
                    open_files[key] = sink
                take = min(data.num_rows - offset, max_rows_per_file - sink.rows)
                sink.add(data.slice(offset, take))
                offset += take
    for key, sink in open_files.items():
        written.append(sink.close(dict(zip(partition_by, key, strict=True))))
    if written:
        yield pa.RecordBatch.from_pylist(
            written,
            schema=pa.schema(
                [
                    ("path", pa.string()),
                    ("size", pa.int64()),
                    ("partition_values", pa.map_(pa.string(), pa.string())),
                    ("num_records", pa.int64()),
                    ("stats", pa.string()),
                ]
            ),
        )


# --------------------------------------------------------------------------- writers


class _DeltaRsWriter:
    name = "delta-rs"

    def __init__(self, spark: SparkSession, max_rows_per_file: int, row_group_rows: int):
        self.spark = spark
        self.max_rows_per_file = max_rows_per_file
        self.row_group_rows = row_group_rows

    @staticmethod
    def _uri(path: str) -> str:
        return path if is_uri(path) else f"file://{path}"

    def exists(self, path: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(path)

    def _table(self, path: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(path, version=version)

    def write(
        self,
        df: DataFrame,
        path: str,
        mode: str,
        partition_by: Sequence[str],
        metadata: dict[str, str],
        overwrite_schema: bool,
        replace_rows: tuple[str, Sequence[str]] | None = None,
    ) -> tuple[int, int, int]:
        from deltalake import CommitProperties
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import AddAction

        arrow_schema = _arrow_schema(df)
        new_schema = DeltaSchema.from_arrow(arrow_schema)
        table = self._table(path) if self.exists(path) else None
        if table is not None:
            current_parts = list(table.metadata().partition_columns)
            if mode != "overwrite" or not overwrite_schema:
                old_fields = _delta_schema_fields(table.schema().to_json())
                added = [f for f in new_schema.fields if f.name not in old_fields]
                if added and not _delta_schema_difference_beyond(
                    table.schema().to_json(), new_schema.to_json(), {f.name for f in added}
                ):
                    # Additive change: the table gains the columns (a metadata
                    # commit of its own: delta-rs appends keep the old schema).
                    table.alter.add_columns(added)
                    table = self._table(path)
                difference = _schema_difference(table.schema().to_json(), new_schema.to_json())
                if difference:
                    raise DeltaError(
                        f"{path}: the data does not match the table's schema ({difference}); "
                        "a full overwrite with overwrite_schema=True may replace it"
                    )
                if current_parts != list(partition_by):
                    raise DeltaError(
                        f"{path}: table is partitioned by {current_parts}, the write by "
                        f"{list(partition_by)}"
                    )
                # Write columns in the table's order (Delta matches by name).
                df = df.select(*json_field_names(table.schema().to_json()))
                arrow_schema = _arrow_schema(df)
                new_schema = DeltaSchema.from_arrow(arrow_schema)

        write_id = metadata[f"{META_PREFIX}write_id"]
        table_uri = self._uri(path)
        options = dict(
            table_uri=table_uri,
            write_id=write_id,
            partition_by=tuple(partition_by),
            max_rows_per_file=self.max_rows_per_file,
            row_group_rows=self.row_group_rows,
        )

        def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return _write_task(batches, **options)

        files = df.mapInArrow(task, _FILE_META_SCHEMA).collect()
        now_ms = int(time.time() * 1000)
        adds = [
            AddAction(f.path, f.size, dict(f.partition_values), now_ms, True, f.stats)
            for f in files
        ]
        rows = sum(f.num_records for f in files)
        # A write that removes files (overwrite, overwrite of partitions,
        # replaced rows) decided what to remove from the snapshot it read: it
        # must commit on exactly that snapshot. delta-rs would otherwise retry
        # on the newer version and, taking the commit for a plain append,
        # keep a concurrent writer's rows next to its own (rows doubled).
        # Plain appends never conflict and keep the retries.
        removes_files = table is not None and (mode != "append" or bool(replace_rows))
        # The metadata also goes into `userMetadata` as JSON, where Spark's
        # writer puts it: one place for any reader, whichever writer committed.
        commit = CommitProperties(
            custom_metadata={**metadata, "userMetadata": json.dumps(metadata)},
            max_commit_retries=0 if removes_files else None,
        )
        read_version = table.version() if table is not None else -1
        try:
            self._commit(path, table, adds, mode, new_schema, partition_by, commit, replace_rows)
        except Exception as exc:
            if type(exc).__name__ != "CommitFailedError" and "already exists" not in str(exc):
                raise
            landed = self._table(path).version() if self.exists(path) else None
            raise ConcurrentWriteError(
                f"{path}: concurrent write conflict: this {mode} write read version "
                f"{read_version} and version {landed} landed before it could commit; "
                f"nothing was committed (its {len(adds)} data files stay unreferenced). "
                "Run it again."
            ) from None
        return self._version_of(path, write_id), rows, len(files)

    def _commit(
        self,
        path: str,
        table: Any,
        adds: list[Any],
        mode: str,
        new_schema: Any,
        partition_by: Sequence[str],
        commit: Any,
        replace_rows: tuple[str, Sequence[str]] | None,
    ) -> None:
        from deltalake.transaction import create_table_with_add_actions

        if table is None:
            create_table_with_add_actions(
                path,
                new_schema,
                adds,
                mode="error",
                partition_by=list(partition_by) or None,
                commit_properties=commit,
            )
            return
        removes: list[Any] = []
        if mode == "overwrite_partitions":
            removes = self._removes_for(
                table, {tuple(sorted(a.partition_values.items())) for a in adds}
            )
        elif replace_rows:
            removes = self._removes_of_rows(path, table, *replace_rows)
        # With explicit removes the transaction is an append of adds and
        # removes; a full overwrite lets delta-rs remove every current file.
        table.create_write_transaction(
            [*adds, *removes],
            "overwrite" if mode == "overwrite" else "append",
            new_schema,
            partition_by=list(partition_by) or None,
            commit_properties=commit,
        )

    @staticmethod
    def _remove_actions(
        table: Any, wanted: Callable[[str, dict[str, str | None]], bool]
    ) -> list[Any]:
        """Remove actions for the current files for which `wanted(path, partition values)`."""
        import pyarrow as pa
        from deltalake.transaction import RemoveAction

        parts = list(table.metadata().partition_columns)
        now_ms = int(time.time() * 1000)
        out = []
        for action in pa.table(table.get_add_actions(flatten=True)).to_pylist():
            values = {c: _partition_string(action[f"partition.{c}"]) for c in parts}
            if wanted(action["path"], values):
                out.append(RemoveAction(action["path"], True, now_ms, action["size_bytes"], values))
        return out

    @staticmethod
    def _removes_for(table: Any, keys: set[tuple[tuple[str, str | None], ...]]) -> list[Any]:
        """Remove actions for the files whose partition values are among `keys`."""
        return _DeltaRsWriter._remove_actions(
            table, lambda _path, values: tuple(sorted(values.items())) in keys
        )

    def _removes_of_rows(
        self, path: str, table: Any, column: str, values: Sequence[str]
    ) -> list[Any]:
        """Remove actions for the files holding the rows whose `column` is in `values`.

        Whole files only: a file that mixes such rows with others cannot be
        removed without rewriting it, and fails the write.
        """
        from pyspark.sql import functions as F

        if not values:
            return []
        if column in table.metadata().partition_columns:
            # The value sits in the file's partition values, not in its rows.
            wanted = {str(v) for v in values}
            return self._remove_actions(table, lambda _path, parts: parts[column] in wanted)
        uris = table.file_uris()
        if not uris:
            return []
        hit = F.col(column).isin(list(values))
        found = (
            self.spark.read.parquet(*uris)
            .select(hit.alias("_hit"), F.col("_metadata.file_name").alias("_file"))
            .groupBy("_file")
            .agg(F.count_if("_hit").alias("hit"), F.count(F.lit(1)).alias("rows"))
            .filter("hit > 0")
            .collect()
        )
        mixed = [r._file for r in found if r.hit != r.rows]
        if mixed:
            raise DeltaError(
                f"{path}: file(s) {mixed[:3]} hold rows with {column} in {list(values)[:3]} "
                "and other rows; they cannot be removed whole"
            )
        doomed = {r._file for r in found}
        return self._remove_actions(table, lambda p, _values: p.rsplit("/", 1)[-1] in doomed)

    def merge(
        self, changed: DataFrame, path: str, key: Sequence[str], metadata: dict[str, str]
    ) -> tuple[int, int, int]:
        """The table rewritten in one commit: its rows without `changed`'s keys, and
        `changed` (deltalake's own MERGE takes its source on the driver)."""
        current = self.read(path, None, None)
        merged = current.join(changed.select(*key), list(key), "left_anti").unionByName(
            changed.select(*current.columns)
        )
        version, _rows, files = self.write(merged, path, "overwrite", [], metadata, False)
        return version, changed.count(), files

    def _version_of(self, path: str, write_id: str) -> int:
        for entry in self._table(path).history(50):
            if entry.get(f"{META_PREFIX}write_id") == write_id:
                return int(entry["version"])
        raise DeltaError(f"{path}: commit {write_id} not found in the table history")

    def read(self, path: str, version: int | None, timestamp: dt.datetime | None) -> DataFrame:
        import pyarrow as pa
        from pyspark.sql.pandas.types import from_arrow_schema

        table = self._table(path, version)
        if timestamp is not None:
            first = min(h["timestamp"] for h in table.history())
            if timestamp.timestamp() * 1000 < first:
                raise DeltaError(
                    f"{path}: {timestamp} is before the first commit "
                    f"({dt.datetime.fromtimestamp(first / 1000, dt.UTC)})"
                )
            table.load_as_version(timestamp)
        features = set(table.protocol().reader_features or []) & _UNSUPPORTED_READER_FEATURES
        if features:
            raise DeltaError(
                f"{path}: the table uses {sorted(features)}, which the delta-rs reader path "
                "cannot honour; run with Spark's Delta classes (lakehouse.writer: spark)"
            )
        schema = from_arrow_schema(pa.schema(table.schema().to_arrow()), prefer_timestamp_ntz=False)
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        reader = self.spark.read.schema(schema)
        if table.metadata().partition_columns:
            reader = reader.option("basePath", path)
        return reader.parquet(*files).select(*schema.fieldNames())

    def version(self, path: str) -> int:
        return int(self._table(path).version())

    def row_count(self, path: str, version: int | None) -> int:
        import pyarrow as pa

        actions = pa.table(self._table(path, version).get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return 0
        counts = actions.column("num_records").to_pylist()
        if any(c is None for c in counts):
            # A file without stats (another engine's writer): count the data.
            return self.read(path, version, None).count()
        return int(sum(counts))

    def history(self, path: str, limit: int | None) -> list[HistoryEntry]:
        out = []
        for entry in self._table(path).history(limit):
            meta = {k: str(v) for k, v in entry.items() if k.startswith(META_PREFIX)}
            out.append(
                HistoryEntry(
                    version=int(entry["version"]),
                    timestamp=dt.datetime.fromtimestamp(entry["timestamp"] / 1000, dt.UTC),
                    operation=str(entry.get("operation", "")),
                    metadata=meta,
                )
            )
        return out

    def live_files(self, path: str) -> int:
        return len(self._table(path).file_uris())

    def optimize(
        self, path: str, zorder_by: Sequence[str], target_bytes: int, metadata: dict[str, str]
    ) -> None:
        from deltalake import CommitProperties

        table = self._table(path)
        commit = CommitProperties(
            custom_metadata={**metadata, "userMetadata": json.dumps(metadata)}
        )
        if zorder_by:
            table.optimize.z_order(zorder_by, target_size=target_bytes, commit_properties=commit)
        else:
            table.optimize.compact(target_size=target_bytes, commit_properties=commit)

    def vacuum(self, path: str, retention_hours: float) -> int:
        """Files deleted. A retention below Delta's 7 days is the configuration's choice."""
        from pyarrow import fs as pafs

        table = self._table(path)
        options = dict(retention_hours=int(retention_hours), enforce_retention_duration=False)
        # delta-rs lists every tombstone past the retention, also files an
        # earlier vacuum already deleted: count those still on storage.
        doomed = table.vacuum(dry_run=True, **options)
        if not doomed:
            return 0
        filesystem, base = pafs.FileSystem.from_uri(self._uri(path))
        present = [
            info
            for info in filesystem.get_file_info([f"{base}/{name}" for name in doomed])
            if info.type != pafs.FileType.NotFound
        ]
        table.vacuum(dry_run=False, **options)
        return len(present)


def _field(row: Any, name: str) -> Any:
    """A field of a history entry: a dict from deltalake, a Row from Spark."""
    return row.get(name) if isinstance(row, dict) else row[name]


def pa_column(actions: Any, name: str) -> list[Any]:
    """One column of deltalake's add actions (an Arrow batch) as a list."""
    import pyarrow as pa

    table = pa.table(actions)
    return table.column(name).to_pylist() if table.num_rows else []


def json_field_names(schema_json: str) -> list[str]:
    return [f["name"] for f in json.loads(schema_json)["fields"]]


class _SparkDeltaWriter:
    name = "spark"

    def __init__(self, spark: SparkSession):
        self.spark = spark

    def _table(self, path: str) -> Any:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    @staticmethod
    def _log(path: str, version: int | None = None) -> Any:
        """deltalake's reader of the table's log, where it can reach the table; else None.

        Version, history and row counts come from the Delta log; Spark
        answers each with a job (0.2-1 s on 2 cores, 2-3 s on a two-worker
        cluster), deltalake reads the same JSON and checkpoint files in
        milliseconds. Local tables always; S3 tables when the AWS credentials
        are in the environment (delta-rs reads them there, as the delta-rs
        writer does); other remote paths, whose credentials live in the
        Spark session, go through Spark.
        """
        from deltalake import DeltaTable

        uri = log_reader_uri(path)
        if uri is None:
            return None
        table = DeltaTable(uri, version=version)
        if set(table.protocol().reader_features or []) & _UNSUPPORTED_READER_FEATURES:
            return None
        return table

    def exists(self, path: str) -> bool:
        uri = log_reader_uri(path)
        if uri is not None:
            from deltalake import DeltaTable as LogReader

            return LogReader.is_deltatable(uri)
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, path)

    def write(
        self,
        df: DataFrame,
        path: str,
        mode: str,
        partition_by: Sequence[str],
        metadata: dict[str, str],
        overwrite_schema: bool,
        replace_rows: tuple[str, Sequence[str]] | None = None,
    ) -> tuple[int, int, int]:
        writer = df.write.format("delta").option("userMetadata", json.dumps(metadata))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace_rows and replace_rows[1] and self.exists(path):
            # One commit: delete the rows matching the predicate, add the new
            # ones (which must match it too: the caller adds the new value).
            column, values = replace_rows
            quoted = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
            writer = writer.mode("overwrite").option("replaceWhere", f"`{column}` IN ({quoted})")
        elif mode == "overwrite_partitions":
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        else:
            writer = writer.mode(mode)
        if mode != "overwrite":
            # Additive schema changes evolve the table (Lakehouse.write has
            # already refused type changes).
            writer = writer.option("mergeSchema", "true")
        if overwrite_schema:
            writer = writer.option("overwriteSchema", "true")
        try:
            writer.save(path)
        except Exception as exc:
            # Delta's optimistic concurrency (ConcurrentAppendException and its
            # kin): the same error type the delta-rs writer raises.
            if "Concurrent" not in type(exc).__name__ and "Concurrent" not in str(exc)[:300]:
                raise
            raise ConcurrentWriteError(
                f"{path}: concurrent write conflict: another write committed first; nothing "
                f"was committed. Run it again. ({type(exc).__name__})"
            ) from None
        version, metrics = self._committed(path, metadata)
        return version, int(metrics.get("numOutputRows", 0)), int(metrics.get("numFiles", 0))

    def _committed(self, path: str, metadata: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The version and operation metrics of the commit carrying `metadata`'s write id."""
        write_id = metadata[f"{META_PREFIX}write_id"]
        log_ = self._log(path)
        rows = log_.history(50) if log_ is not None else self._table(path).history(50).collect()
        for row in rows:
            meta = self._user_metadata(row)
            if meta.get(f"{META_PREFIX}write_id") == write_id:
                return int(row["version"]), _field(row, "operationMetrics") or {}
        raise DeltaError(f"{path}: commit {write_id} not found in the table history")

    def merge(
        self, changed: DataFrame, path: str, key: Sequence[str], metadata: dict[str, str]
    ) -> tuple[int, int, int]:
        """One Delta MERGE: `changed`'s rows update the rows with their key or are inserted."""
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key)
        settings = {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(metadata)}
        with session_conf(self.spark, settings):
            (
                self._table(path)
                .alias("t")
                .merge(changed.alias("s"), on)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
        version, metrics = self._committed(path, metadata)
        rows = int(metrics.get("numTargetRowsInserted", 0)) + int(
            metrics.get("numTargetRowsUpdated", 0)
        )
        return version, rows, int(metrics.get("numTargetFilesAdded", 0))

    @staticmethod
    def _user_metadata(row: Any) -> dict[str, Any]:
        """The JSON userMetadata of a history entry (a deltalake dict or a Spark Row)."""
        return json.loads(_field(row, "userMetadata") or "{}")

    def _version_at(self, path: str, timestamp: dt.datetime) -> int:
        """The version current at `timestamp`, the latest after the last commit.

        Spark refuses a timestamp after the last commit, where delta-rs (and
        the contract) gives the latest version.
        """
        at = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=dt.UTC)
        history = self.history(path, None)
        before = [h.version for h in history if h.timestamp <= at]
        if not before:
            first = min(h.timestamp for h in history)
            raise DeltaError(f"{path}: {timestamp} is before the first commit ({first})")
        return max(before)

    def read(self, path: str, version: int | None, timestamp: dt.datetime | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if timestamp is not None:
            version = self._version_at(path, timestamp)
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(path)

    def version(self, path: str) -> int:
        log_ = self._log(path)
        if log_ is not None:
            return int(log_.version())
        return int(self._table(path).history(1).collect()[0]["version"])

    def row_count(self, path: str, version: int | None) -> int:
        log_ = self._log(path, version)
        if log_ is not None:
            counts = pa_column(log_.get_add_actions(flatten=True), "num_records")
            if all(c is not None for c in counts):
                return int(sum(counts))
        # Delta answers count() from its file statistics.
        return self.read(path, version, None).count()

    def history(self, path: str, limit: int | None) -> list[HistoryEntry]:
        log_ = self._log(path)
        if log_ is not None:
            rows = log_.history(limit)
        else:
            spark_history = (
                self._table(path).history(limit) if limit else self._table(path).history()
            )
            rows = spark_history.collect()
        out = []
        for row in rows:
            meta = self._user_metadata(row)
            ts = row["timestamp"]
            if isinstance(ts, int):
                ts = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
            out.append(
                HistoryEntry(
                    version=int(row["version"]),
                    timestamp=ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts,
                    operation=str(row["operation"]),
                    metadata={k: str(v) for k, v in meta.items()},
                )
            )
        return out

    def live_files(self, path: str) -> int:
        return int(self.spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"])

    def optimize(
        self, path: str, zorder_by: Sequence[str], target_bytes: int, metadata: dict[str, str]
    ) -> None:
        builder = self._table(path).optimize()
        settings = {
            "spark.databricks.delta.optimize.maxFileSize": str(target_bytes),
            "spark.databricks.delta.commitInfo.userMetadata": json.dumps(metadata),
        }
        with session_conf(self.spark, settings):
            if zorder_by:
                builder.executeZOrderBy(*zorder_by).collect()
            else:
                builder.executeCompaction().collect()

    def vacuum(self, path: str, retention_hours: float) -> int:
        settings = {
            "spark.databricks.delta.retentionDurationCheck.enabled": "false",
            # Vacuum lists the table's folders in this many tasks (10,000 by
            # default): 70-180 s for a 4-file table on 2 cores.
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
                max(2, self.spark.sparkContext.defaultParallelism)
            ),
        }
        sql = f"VACUUM delta.`{path}` RETAIN {retention_hours} HOURS"
        with session_conf(self.spark, settings):
            doomed = self.spark.sql(f"{sql} DRY RUN").count()
            self.spark.sql(sql).collect()
        return int(doomed)


# --------------------------------------------------------------------------- the interface


def file_sizing(target_file_bytes: int) -> dict[str, str]:
    """Settings under which a rebalanced write makes files of about `target_file_bytes`.

    Adaptive execution merges the rebalance's shuffle partitions up to the
    advisory size. With `parallelismFirst` (Spark's default) it would instead
    keep at least one partition per core, so a 5 MB table on a 2-core
    cluster became two files; files sized by the data need it off.
    """
    return {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(target_file_bytes),
    }


def sized_for_write(df: DataFrame, partition_by: Sequence[str]) -> DataFrame:
    """`df` in write tasks of about one file each: few files for small data, whatever the cluster.

    A write makes at least one file per task and partition value. After a
    shuffle that is one per shuffle partition (Spark's 200 on a cluster), and
    a cached or checkpointed frame keeps the partitions it was stored with,
    which adaptive execution does not merge: a 2,000-row table became 200
    files. The rebalance hint adds a shuffle (by the partition columns, so a
    partition value stays in one task) whose partitions adaptive execution
    merges or splits to the advisory size (`file_sizing`).
    """
    return df.hint("rebalance", *partition_by)


class Lakehouse:
    """Delta tables under one root, written by whichever writer this cluster supports.

    Args:
        spark: the session.
        root: lakehouse root (local folder or URI).
        writer: `auto`, `spark` or `delta-rs`.
        max_rows_per_file: delta-rs writer: rows before a task starts a new file.
        row_group_rows: delta-rs writer: rows buffered per Parquet row group.
        target_file_bytes: size a written file aims at (`sized_for_write`).
    """

    def __init__(
        self,
        spark: SparkSession,
        root: str,
        writer: str = "auto",
        *,
        max_rows_per_file: int = 5_000_000,
        row_group_rows: int = 262_144,
        target_file_bytes: int = 128 << 20,
    ):
        from shopseg.spark import delta_classes_available

        self.spark = spark
        self.root = root.rstrip("/")
        self.target_file_bytes = target_file_bytes
        has_delta = delta_classes_available(spark)
        if writer == "spark" and not has_delta:
            raise DeltaError(
                "lakehouse.writer is 'spark' but the Delta Lake classes are not on the Spark "
                "classpath (start Spark with --packages io.delta:delta-spark_2.13:4.4.0, or use "
                "writer 'auto' / 'delta-rs')"
            )
        if writer == "spark" or (writer == "auto" and has_delta):
            self._impl: _DeltaRsWriter | _SparkDeltaWriter = _SparkDeltaWriter(spark)
        else:
            check_delta_rs_root(self.root, has_delta)
            self._impl = _DeltaRsWriter(spark, max_rows_per_file, row_group_rows)

    @property
    def writer(self) -> str:
        """Which writer commits: `spark` or `delta-rs`."""
        return self._impl.name

    def path(self, table: str) -> str:
        return _join(self.root, table)

    def local_path(self, table: str) -> str | None:
        """The table's folder on this machine, or None when the lakehouse is remote."""
        base = local_dir(self.root)
        return _join(base, table) if base else None

    def exists(self, table: str) -> bool:
        return self._impl.exists(self.path(table))

    def write(
        self,
        df: DataFrame,
        table: str,
        mode: WriteMode = "overwrite",
        *,
        partition_by: Sequence[str] = (),
        commit: CommitInfo | None = None,
        overwrite_schema: bool = False,
        replace_rows: tuple[str, Sequence[str]] | None = None,
    ) -> WriteResult:
        """Write `df` as one new version of `table`.

        Args:
            df: the rows to write.
            table: table name under the root, e.g. `silver/events`.
            mode: `append`; `overwrite` (replace everything); or
                `overwrite_partitions` (replace only the partitions present in
                `df`, keep the others).
            partition_by: partition columns (string, date, integer or boolean).
            commit: stage, run id and config hash to record in the commit.
            overwrite_schema: with `overwrite`, allow a new schema.
            replace_rows: with `append`, `(column, values)`: in the same
                commit, remove the rows whose `column` is one of `values`
                (every value of `column` in `df` must be among them too). On
                the delta-rs writer whole files are removed, so such rows must
                sit in files of their own (one write per value, as ingest's
                batches do).

        Returns:
            The version committed, rows and files written.

        Raises:
            DeltaError: schema or partitioning does not match the table.
        """
        if mode not in WRITE_MODES:
            raise DeltaError(f"{table}: unknown write mode {mode!r}; use one of {WRITE_MODES}")
        if mode == "overwrite_partitions" and not partition_by:
            raise DeltaError(f"{table}: overwrite_partitions needs partition_by")
        types = dict(df.dtypes)
        for col in partition_by:
            if col not in types:
                raise DeltaError(f"{table}: partition column {col!r} is not in the data")
            spark_type = df.schema[col].dataType.typeName()
            if spark_type not in _PARTITION_TYPES:
                raise DeltaError(
                    f"{table}: partition column {col!r} has type {spark_type}; "
                    f"use one of {_PARTITION_TYPES}"
                )
        if self.exists(table) and not (mode == "overwrite" and overwrite_schema):
            self._check_types(table, df)
        if replace_rows is not None and mode != "append":
            raise DeltaError(f"{table}: replace_rows goes with mode 'append', not {mode!r}")
        path = self.path(table)
        write_id = uuid.uuid4().hex
        metadata = (commit or CommitInfo()).metadata(write_id, mode)
        start = time.perf_counter()
        with session_conf(self.spark, file_sizing(self.target_file_bytes)):
            version, rows, files = self._impl.write(
                sized_for_write(df, partition_by),
                path,
                mode,
                list(partition_by),
                metadata,
                overwrite_schema,
                replace_rows,
            )
        return self._written(table, path, (version, rows, files), mode, start)

    def _written(
        self, table: str, path: str, committed: tuple[int, int, int], mode: str, start: float
    ) -> WriteResult:
        """The result of one commit (version, rows, files), logged."""
        version, rows, files = committed
        result = WriteResult(
            table=table,
            path=path,
            version=version,
            rows=rows,
            files=files,
            mode=mode,
            writer=self.writer,
            seconds=time.perf_counter() - start,
        )
        log.info(
            "wrote %s v%d: %d rows in %d files (%s, %s) in %.1f s",
            table,
            version,
            rows,
            files,
            mode,
            self.writer,
            result.seconds,
        )
        return result

    def upsert(
        self,
        df: DataFrame,
        table: str,
        key: Sequence[str],
        *,
        compare: Sequence[str],
        commit: CommitInfo | None = None,
    ) -> WriteResult:
        """Make `table` hold `df`'s row for each key (a table a CRM reads, one row per
        key): keys not in the table are inserted, rows whose `compare` columns
        differ are updated, the others are left as they are.

        On the Spark writer one Delta MERGE of the changed rows; on the
        delta-rs writer one overwrite commit of the merged rows. Either way the
        result's `rows` counts the rows inserted or updated.
        """
        from pyspark.sql import functions as F

        if not self.exists(table):
            return self.write(df, table, "overwrite", commit=commit)
        self._check_types(table, df)
        current = self.read(table)
        theirs = {c: f"_t_{c}" for c in (*key, *compare)}
        target = current.select(*[F.col(c).alias(a) for c, a in theirs.items()])
        same = [df[k] == target[theirs[k]] for k in key]
        same += [df[c].eqNullSafe(target[theirs[c]]) for c in compare]
        changed = df.join(target, same, "left_anti").cache()
        path = self.path(table)
        write_id = uuid.uuid4().hex
        metadata = (commit or CommitInfo()).metadata(write_id, "merge")
        start = time.perf_counter()
        with session_conf(self.spark, file_sizing(self.target_file_bytes)):
            committed = self._impl.merge(changed, path, list(key), metadata)
        changed.unpersist()
        return self._written(table, path, committed, "merge", start)

    def _check_types(self, table: str, df: DataFrame) -> None:
        """Refuse a column whose type differs from the table's, naming both types."""
        current = {f.name: f.dataType for f in self.read(table).schema.fields}
        changed = [
            f"{f.name}: {current[f.name].simpleString()} in the table, "
            f"{f.dataType.simpleString()} in the data"
            for f in df.schema.fields
            if f.name in current and current[f.name] != f.dataType
        ]
        if changed:
            raise DeltaError(
                f"{table}: incompatible schema change ({'; '.join(changed)}); new columns "
                "are added by any write, a type change needs a full overwrite with "
                "overwrite_schema"
            )

    def read(
        self,
        table: str,
        *,
        version: int | None = None,
        timestamp: dt.datetime | None = None,
    ) -> DataFrame:
        """Read `table`: the latest version, a version, or the version current at `timestamp`."""
        if version is not None and timestamp is not None:
            raise DeltaError(f"{table}: give a version or a timestamp, not both")
        path = self.path(table)
        if not self._impl.exists(path):
            raise DeltaError(f"{table}: no Delta table at {path}")
        return self._impl.read(path, version, timestamp)

    def version(self, table: str) -> int | None:
        """Latest version of `table`, or None when it does not exist."""
        path = self.path(table)
        return self._impl.version(path) if self._impl.exists(path) else None

    def row_count(self, table: str, version: int | None = None) -> int:
        """Rows in `table` (from the commit statistics where they exist)."""
        return self._impl.row_count(self.path(table), version)

    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        """Commits of `table`, newest first, with the shopseg metadata each recorded."""
        return self._impl.history(self.path(table), limit)

    def maintain(
        self,
        table: str,
        *,
        zorder_by: Sequence[str] = (),
        target_file_mb: int = 128,
        retention_hours: float = 168.0,
        commit: CommitInfo | None = None,
    ) -> MaintenanceResult:
        """Compact `table`'s small files (clustered by `zorder_by`), then vacuum old files.

        Compaction is one commit that rewrites data, not rows: every reader
        sees the same rows before and after. Vacuum deletes the files that no
        version younger than `retention_hours` references; time travel to
        versions older than that stops working.
        """
        if not self.exists(table):
            raise DeltaError(f"no Delta table at {self.path(table)}")
        path = self.path(table)
        start = time.perf_counter()
        before = self._impl.live_files(path)
        metadata = (commit or CommitInfo()).metadata(uuid.uuid4().hex, "optimize")
        self._impl.optimize(path, list(zorder_by), target_file_mb * 1024 * 1024, metadata)
        after = self._impl.live_files(path)
        compacted = self.version(table) or 0
        compact_seconds = time.perf_counter() - start
        vacuumed = self._impl.vacuum(path, retention_hours)
        result = MaintenanceResult(
            table=table,
            files_before=before,
            files_after=after,
            files_vacuumed=vacuumed,
            zorder_by=tuple(zorder_by),
            version=compacted,
            seconds=time.perf_counter() - start,
        )
        log.info(
            "maintained %s: %d -> %d live files%s in v%d (%.1f s), %d files older than %g h "
            "vacuumed (%s, %.1f s in all)",
            table,
            before,
            after,
            f" (z-ordered by {', '.join(zorder_by)})" if zorder_by else "",
            compacted,
            compact_seconds,
            vacuumed,
            retention_hours,
            self.writer,
            result.seconds,
        )
        return result
