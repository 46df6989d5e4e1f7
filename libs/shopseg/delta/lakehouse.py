"""`Lakehouse`: Delta tables under one root, whichever writer commits them."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shopseg.config import local_dir
from shopseg.delta.contract import (
    PARTITION_TYPES,
    WRITE_MODES,
    CommitInfo,
    DeltaError,
    HistoryEntry,
    MaintenanceResult,
    WriteMode,
    WriteResult,
    check_delta_rs_root,
    file_sizing,
    join_path,
    sized_for_write,
)
from shopseg.delta.deltars_writer import DeltaRsWriter
from shopseg.delta.spark_writer import SparkDeltaWriter
from shopseg.spark import session_conf

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__package__)


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
            self._impl: DeltaRsWriter | SparkDeltaWriter = SparkDeltaWriter(spark)
        else:
            check_delta_rs_root(self.root, has_delta)
            self._impl = DeltaRsWriter(spark, max_rows_per_file, row_group_rows)

    @property
    def writer(self) -> str:
        """Which writer commits: `spark` or `delta-rs`."""
        return self._impl.name

    def path(self, table: str) -> str:
        return join_path(self.root, table)

    def local_path(self, table: str) -> str | None:
        """The table's folder on this machine, or None when the lakehouse is remote."""
        base = local_dir(self.root)
        return join_path(base, table) if base else None

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
            if spark_type not in PARTITION_TYPES:
                raise DeltaError(
                    f"{table}: partition column {col!r} has type {spark_type}; "
                    f"use one of {PARTITION_TYPES}"
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

    def delete(self, table: str, predicate: str, *, commit: CommitInfo | None = None) -> int:
        """Delete the rows of `table` that `predicate` (a Spark SQL condition both
        writers parse, e.g. `ingested_at < '2026-01-01'`) holds for, in one commit;
        none when no row matches. Returns the rows deleted. The files holding them
        stay for time travel until `maintain` vacuums them."""
        if not self.exists(table):
            raise DeltaError(f"no Delta table at {self.path(table)}")
        if not self.read(table).filter(predicate).limit(1).count():
            return 0
        metadata = (commit or CommitInfo()).metadata(uuid.uuid4().hex, "delete")
        return self._impl.delete(self.path(table), predicate, metadata)

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
