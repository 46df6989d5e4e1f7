"""What each Spark task of the delta-rs writer runs: its rows split by partition
value into Parquet files written with pyarrow, returning each file's metadata
(path, size, partition values, statistics) for the driver's commit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from shopseg.delta.contract import (
    NULL_PARTITION,
    PLAIN_PARTITION_VALUE,
)

if TYPE_CHECKING:
    import pyarrow as pa


def partition_string(value: Any) -> str | None:
    """Delta's serialisation of one partition value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def format_stat(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


# --------------------------------------------------------------------------- executor side


FILE_META_SCHEMA = (
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
            "minValues": {k: format_stat(v) for k, v in self.mins.items()},
            "maxValues": {k: format_stat(v) for k, v in self.maxs.items()},
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
        key = tuple(partition_string(k[i]) for k in keys)
        out.append((key, batch.take(pa.array(rows, pa.int64()))))
    return out


def write_task(
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
            if value is not None and not PLAIN_PARTITION_VALUE.match(value):
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
