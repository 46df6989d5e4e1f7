"""The delta-rs writer: Spark tasks write the Parquet files with pyarrow and return
each file's metadata; the driver commits one Delta transaction through `deltalake`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from shopseg.config import is_uri
from shopseg.delta.contract import (
    META_PREFIX,
    UNSUPPORTED_READER_FEATURES,
    ConcurrentWriteError,
    DeltaError,
    HistoryEntry,
    json_field_names,
)
from shopseg.delta.deltars_tasks import FILE_META_SCHEMA, partition_string, write_task

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__package__)


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


# --------------------------------------------------------------------------- writers


class DeltaRsWriter:
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
            return write_task(batches, **options)

        files = df.mapInArrow(task, FILE_META_SCHEMA).collect()
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
            values = {c: partition_string(action[f"partition.{c}"]) for c in parts}
            if wanted(action["path"], values):
                out.append(RemoveAction(action["path"], True, now_ms, action["size_bytes"], values))
        return out

    @staticmethod
    def _removes_for(table: Any, keys: set[tuple[tuple[str, str | None], ...]]) -> list[Any]:
        """Remove actions for the files whose partition values are among `keys`."""
        return DeltaRsWriter._remove_actions(
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
        features = set(table.protocol().reader_features or []) & UNSUPPORTED_READER_FEATURES
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

    def delete(self, path: str, predicate: str, metadata: dict[str, str]) -> int:
        """deltalake's DELETE of the rows `predicate` (SQL) holds for; rows deleted."""
        from deltalake import CommitProperties

        commit = CommitProperties(
            custom_metadata={**metadata, "userMetadata": json.dumps(metadata)}
        )
        result = self._table(path).delete(predicate, commit_properties=commit)
        return int(result.get("num_deleted_rows", 0))

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
