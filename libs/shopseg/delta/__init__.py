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
deltalake, DuckDB and Polars read alike. Nothing outside this package knows
which writer ran.

The package: `contract` (write modes, results, errors, commit metadata, helpers
both writers use), `spark_writer`, `deltars_writer`, and `lakehouse` (the one
interface the stages use). Every public name is importable from `shopseg.delta`.
"""

from shopseg.delta.contract import (
    DELTA_RS_SCHEMES,
    META_PREFIX,
    NULL_PARTITION,
    WRITE_MODES,
    CommitInfo,
    ConcurrentWriteError,
    DeltaError,
    HistoryEntry,
    MaintenanceResult,
    WriteMode,
    WriteResult,
    check_delta_rs_root,
    file_sizing,
    json_field_names,
    log_reader_uri,
    sized_for_write,
)
from shopseg.delta.deltars_writer import DeltaRsWriter
from shopseg.delta.lakehouse import Lakehouse
from shopseg.delta.spark_writer import SparkDeltaWriter, pa_column

__all__ = [
    "DELTA_RS_SCHEMES",
    "META_PREFIX",
    "NULL_PARTITION",
    "WRITE_MODES",
    "CommitInfo",
    "ConcurrentWriteError",
    "DeltaError",
    "DeltaRsWriter",
    "HistoryEntry",
    "Lakehouse",
    "MaintenanceResult",
    "SparkDeltaWriter",
    "WriteMode",
    "WriteResult",
    "check_delta_rs_root",
    "file_sizing",
    "json_field_names",
    "log_reader_uri",
    "pa_column",
    "sized_for_write",
]
