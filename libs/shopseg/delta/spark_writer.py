"""Spark's own Delta writer (`format("delta")`), where the JVM has the Delta classes."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shopseg.delta.contract import (
    META_PREFIX,
    UNSUPPORTED_READER_FEATURES,
    ConcurrentWriteError,
    DeltaError,
    HistoryEntry,
    history_field,
    log_reader_uri,
)
from shopseg.spark import parallelism, plain_types, session_conf

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__package__)


# Delta skips recording a commit that adds and removes nothing (an append of
# no rows: an incremental features run with no new batch) by default, so the
# write's id never reaches the history and the write could not name its
# version. One write is one version (the contract; delta-rs commits it too).
RECORD_EMPTY_COMMITS = {"spark.databricks.delta.skipRecordingEmptyCommits": "false"}


def pa_column(actions: Any, name: str) -> list[Any]:
    """One column of deltalake's add actions (an Arrow batch) as a list."""
    import pyarrow as pa

    table = pa.table(actions)
    return table.column(name).to_pylist() if table.num_rows else []


class SparkDeltaWriter:
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
        if set(table.protocol().reader_features or []) & UNSUPPORTED_READER_FEATURES:
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
        writer = plain_types(df).write.format("delta").option("userMetadata", json.dumps(metadata))
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
            with session_conf(self.spark, RECORD_EMPTY_COMMITS):
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
                return int(row["version"]), history_field(row, "operationMetrics") or {}
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

    def delete(self, path: str, predicate: str, metadata: dict[str, str]) -> int:
        """One Delta DELETE of the rows `predicate` (Spark SQL) holds for; rows deleted."""
        settings = {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(metadata)}
        with session_conf(self.spark, settings):
            self._table(path).delete(predicate)
        _version, metrics = self._committed(path, metadata)
        return int(metrics.get("numDeletedRows", 0))

    @staticmethod
    def _user_metadata(row: Any) -> dict[str, Any]:
        """The JSON userMetadata of a history entry (a deltalake dict or a Spark Row)."""
        return json.loads(history_field(row, "userMetadata") or "{}")

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
                max(2, parallelism(self.spark))
            ),
        }
        sql = f"VACUUM delta.`{path}` RETAIN {retention_hours} HOURS"
        with session_conf(self.spark, settings):
            doomed = self.spark.sql(f"{sql} DRY RUN").count()
            self.spark.sql(sql).collect()
        return int(doomed)
