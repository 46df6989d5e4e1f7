"""What both writers and their callers share: write modes, results, errors, the
commit metadata, and the helpers both writers use.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shopseg.config import ShopsegError, local_dir
from shopseg.files import arrow_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__package__)


WriteMode = Literal["append", "overwrite", "overwrite_partitions"]
WRITE_MODES = ("append", "overwrite", "overwrite_partitions")

# Partition values become folder names. Plain characters only: delta-rs takes
# add paths literally while the Delta spec reads them as URIs, so anything
# needing escaping would be read back differently by different engines.
PLAIN_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
PARTITION_TYPES = ("string", "date", "integer", "long", "short", "byte", "boolean")
# Reader features the file-list reader cannot honour (it would return wrong rows).
UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping", "v2Checkpoint"}

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


def join_path(root: str, table: str) -> str:
    return f"{root.rstrip('/')}/{table.strip('/')}"


def history_field(row: Any, name: str) -> Any:
    """A field of a history entry: a dict from deltalake, a Row from Spark."""
    return row.get(name) if isinstance(row, dict) else row[name]


def json_field_names(schema_json: str) -> list[str]:
    return [f["name"] for f in json.loads(schema_json)["fields"]]


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
