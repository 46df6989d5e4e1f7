"""The Delta layer: both writers, one contract, read back by four engines."""

from __future__ import annotations

import datetime as dt
import decimal
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shopseg.delta import CommitInfo, DeltaError, Lakehouse

SCHEMA = (
    "id long, n int, amount double, name string, day date, ts timestamp, flag boolean, "
    "price decimal(10,2)"
)
ROWS = [
    (1, 10, 1.5, "a", dt.date(2025, 1, 1), dt.datetime(2025, 1, 1, 8, 30), True,
     decimal.Decimal("9.99")),
    (2, None, 0.0, None, dt.date(2025, 1, 1), dt.datetime(2025, 1, 1, 23, 59, 59), False,
     decimal.Decimal("0.00")),
    (3, -4, -2.25, "c", dt.date(2025, 1, 2), None, None, None),
]  # fmt: skip


WRITERS = ["delta-rs", "spark"]


@pytest.fixture(params=WRITERS)
def writer(request, has_spark_delta) -> str:
    """Each writer in turn; a writer that is not available fails the test, never skips it."""
    if request.param == "spark":
        assert has_spark_delta, (
            "Delta Lake's Spark classes are missing: the test session could not fetch "
            "io.delta:delta-spark (see the warning of shopseg.spark at session start)"
        )
    return request.param


@pytest.fixture
def lake(writer, spark, lake_root) -> Lakehouse:
    return Lakehouse(spark, str(lake_root), writer)


@pytest.fixture
def rows_df(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def test_roundtrip_through_spark_deltalake_duckdb_and_polars(lake, rows_df):
    result = lake.write(rows_df, "silver/things", "overwrite", partition_by=["day"])
    assert (result.version, result.rows) == (0, 3)
    path = lake.path("silver/things")

    assertDataFrameEqual(lake.read("silver/things"), rows_df)

    frame = DeltaTable(path).to_pandas().sort_values("id")
    assert frame["id"].tolist() == [1, 2, 3]
    assert frame["name"].tolist()[0] == "a" and frame["name"].isna().tolist()[1]
    assert str(frame["day"].tolist()[2]) == "2025-01-02"
    assert frame["ts"].tolist()[1] == pd_ts("2025-01-01 23:59:59")

    dataset = DeltaTable(path).to_pyarrow_dataset()  # noqa: F841 - DuckDB reads it by name
    got = duckdb.sql(
        "select count(*), sum(n), min(ts), sum(price) from dataset where day = '2025-01-01'"
    ).fetchall()[0]
    assert got[0] == 2 and got[1] == 10
    assert got[2] == dt.datetime(2025, 1, 1, 8, 30, tzinfo=dt.UTC)
    assert got[3] == decimal.Decimal("9.99")

    polars_frame = pl.read_delta(path).sort("id")
    assert polars_frame["amount"].to_list() == [1.5, 0.0, -2.25]
    assert polars_frame["flag"].to_list() == [True, False, None]


def pd_ts(text: str):
    import pandas as pd

    return pd.Timestamp(text, tz="UTC")


def test_each_write_is_one_version(lake, spark, rows_df):
    lake.write(rows_df, "t", "overwrite")
    more = spark.createDataFrame([r for r in ROWS[:2]], SCHEMA).withColumn("id", F.col("id") + 10)
    assert lake.write(more, "t", "append").version == 1
    assert lake.write(rows_df.limit(1), "t", "overwrite").version == 2
    assert lake.version("t") == 2
    assert lake.read("t", version=0).count() == 3
    assert lake.read("t", version=1).count() == 5
    assert lake.read("t").count() == 1
    assert [lake.row_count("t", v) for v in (0, 1, 2)] == [3, 5, 1]


def test_overwrite_partitions_replaces_only_those_present(lake, spark, rows_df):
    lake.write(rows_df, "p", "overwrite", partition_by=["day"])
    replacement = spark.createDataFrame(
        [(7, 1, 1.0, "new", dt.date(2025, 1, 2), None, True, None)], SCHEMA
    )
    result = lake.write(replacement, "p", "overwrite_partitions", partition_by=["day"])
    assert result.version == 1
    got = {(r.id, str(r.day)) for r in lake.read("p").collect()}
    assert got == {(1, "2025-01-01"), (2, "2025-01-01"), (7, "2025-01-02")}
    # What another engine sees is the same.
    assert sorted(DeltaTable(lake.path("p")).to_pandas()["id"].tolist()) == [1, 2, 7]


def test_read_by_timestamp(lake, rows_df):
    lake.write(rows_df, "t", "overwrite")
    time.sleep(0.05)
    lake.write(rows_df.limit(1), "t", "overwrite")
    history = {h.version: h.timestamp for h in lake.history("t")}
    assert lake.read("t", timestamp=history[0]).count() == 3
    assert lake.read("t", timestamp=history[1] + dt.timedelta(seconds=1)).count() == 1
    with pytest.raises(DeltaError, match="before the first commit"):
        lake.read("t", timestamp=history[0] - dt.timedelta(days=1))


def test_commit_records_stage_run_and_config(lake, rows_df):
    info = CommitInfo(stage="features", run_id="run123", config_hash="abc", extra={"k": "v"})
    lake.write(rows_df, "t", "overwrite", commit=info)
    entry = lake.history("t")[0]
    assert entry.metadata["shopseg.stage"] == "features"
    assert entry.metadata["shopseg.mlflow_run_id"] == "run123"
    assert entry.metadata["shopseg.config_hash"] == "abc"
    assert entry.metadata["shopseg.k"] == "v"
    assert entry.metadata["shopseg.mode"] == "overwrite"


def test_additive_schema_change_evolves_and_type_change_fails_naming_both(lake, rows_df):
    lake.write(rows_df, "t", "overwrite")
    with pytest.raises(DeltaError, match=r"t: incompatible .*n: int in the table, string in"):
        lake.write(rows_df.withColumn("n", F.col("n").cast("string")), "t", "append")
    assert lake.version("t") == 0

    lake.write(rows_df.withColumn("extra", F.lit(7)).filter("id = 1"), "t", "append")
    assert lake.read("t").columns == [*rows_df.columns, "extra"]
    got = sorted((r.id, -1 if r.extra is None else r.extra) for r in lake.read("t").collect())
    assert got == [(1, -1), (1, 7), (2, -1), (3, -1)]
    frame = DeltaTable(lake.path("t")).to_pandas()
    assert int(frame["extra"].notna().sum()) == 1, "deltalake sees the new column too"


def test_overwrite_schema_replaces_it(lake, rows_df):
    lake.write(rows_df, "t", "overwrite")
    lake.write(
        rows_df.select("id", F.lit("x").alias("tag")), "t", "overwrite", overwrite_schema=True
    )
    assert lake.read("t").columns == ["id", "tag"]


def test_append_matches_columns_by_name(lake, rows_df):
    lake.write(rows_df, "t", "overwrite")
    reordered = rows_df.select(*reversed(rows_df.columns)).withColumn("id", F.col("id") + 100)
    lake.write(reordered, "t", "append")
    assert lake.read("t").filter("id = 101").first()["name"] == "a"


def test_empty_write_is_a_version(lake, spark):
    result = lake.write(spark.createDataFrame([], SCHEMA), "empty", "overwrite")
    assert (result.version, result.rows) == (0, 0)
    assert lake.read("empty").count() == 0
    assert lake.read("empty").columns == [f.split()[0] for f in SCHEMA.split(", ")]
    # An append of no rows to a table (an increment without new batches) is a
    # version too: Spark's Delta skips such commits unless told otherwise.
    again = lake.write(spark.createDataFrame([], SCHEMA), "empty", "append")
    assert (again.version, again.rows, lake.version("empty")) == (1, 0, 1)


def test_null_partition_values_roundtrip(lake, spark):
    df = spark.createDataFrame([(1, "a"), (2, None)], "id long, segment string")
    lake.write(df, "t", "overwrite", partition_by=["segment"])
    assertDataFrameEqual(lake.read("t"), df)


def test_partition_rules(lake, spark, rows_df):
    with pytest.raises(DeltaError, match="partition column 'ts' has type timestamp"):
        lake.write(rows_df, "t", "overwrite", partition_by=["ts"])
    with pytest.raises(DeltaError, match="needs partition_by"):
        lake.write(rows_df, "t", "overwrite_partitions")
    with pytest.raises(DeltaError, match="not in the data"):
        lake.write(rows_df, "t", "overwrite", partition_by=["nope"])


def test_unplain_partition_value_is_refused_and_nothing_commits(spark, lake_root):
    lake = Lakehouse(spark, str(lake_root), "delta-rs")
    ok = spark.createDataFrame([(1, "a")], "id long, segment string")
    lake.write(ok, "t", "overwrite", partition_by=["segment"])
    bad = spark.createDataFrame([(2, "a b/c")], "id long, segment string")
    with pytest.raises(Exception, match="may only contain letters"):
        lake.write(bad, "t", "append", partition_by=["segment"])
    assert lake.version("t") == 0


def test_delta_rs_writer_splits_files_and_records_stats(spark, lake_root):
    lake = Lakehouse(spark, str(lake_root), "delta-rs", max_rows_per_file=40, row_group_rows=16)
    df = spark.range(0, 200, numPartitions=2).withColumn("day", F.lit(dt.date(2025, 3, 1)))
    result = lake.write(df, "t", "overwrite", partition_by=["day"])
    assert result.rows == 200
    assert result.files >= 5
    actions = pa.table(DeltaTable(lake.path("t")).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in actions) == 200
    assert min(a["min.id"] for a in actions) == 0 and max(a["max.id"] for a in actions) == 199
    assert lake.read("t").agg(F.sum("id")).first()[0] == sum(range(200))


def test_files_are_sized_by_the_data_not_by_the_partitions_it_arrives_in(lake, spark):
    # 200 partitions, as after a shuffle on a cluster, and cached, which
    # adaptive execution does not merge: a write used to make 200 files.
    df = (
        spark.range(0, 2_000, numPartitions=200)
        .withColumn("day", F.date_add(F.lit(dt.date(2025, 3, 1)), (F.col("id") % 3).cast("int")))
        .cache()
    )
    assert df.rdd.getNumPartitions() == 200
    assert lake.write(df, "flat").files == 1
    result = lake.write(df, "by_day", partition_by=["day"])
    files = pa.table(DeltaTable(lake.path("by_day")).get_add_actions(flatten=True)).to_pylist()
    assert result.files == len(files) == 3
    assert sorted(f["partition.day"] for f in files) == [
        dt.date(2025, 3, 1),
        dt.date(2025, 3, 2),
        dt.date(2025, 3, 3),
    ]
    assert lake.read("by_day").count() == 2_000
    df.unpersist()


def test_unknown_table_is_named(lake):
    with pytest.raises(DeltaError, match="no Delta table at .*nothing/here"):
        lake.read("nothing/here")
    assert lake.version("nothing/here") is None


def test_forcing_spark_writer_without_classes_fails_clearly(spark, lake_root, monkeypatch):
    import shopseg.spark

    monkeypatch.setattr(shopseg.spark, "delta_classes_available", lambda _spark: False)
    assert Lakehouse(spark, str(lake_root), "auto").writer == "delta-rs"
    with pytest.raises(DeltaError, match="Delta Lake classes are not on the Spark classpath"):
        Lakehouse(spark, str(lake_root), "spark")


# --------------------------------------------------------------------------- killed writers
# A writer killed at any moment leaves either no commit or a whole one: the
# commit is the single step that publishes anything. Tested at the two
# moments that matter, in-process: tasks dying mid-write, and the driver
# dying after every data file is written but before the commit.


def _killed_before_commit(*args, **kwargs):
    raise KeyboardInterrupt("killed before the commit")


@pytest.mark.parametrize(
    ("writer", "when"),
    # Spark's commit happens in the JVM, out of a test's reach in-process:
    # there the tasks die mid-write.
    [("delta-rs", "before-commit"), ("delta-rs", "during-write"), ("spark", "during-write")],
    indirect=["writer"],
)
def test_killed_writer_leaves_the_previous_version(spark, writer, lake_root, monkeypatch, when):
    import deltalake

    lake = Lakehouse(spark, str(lake_root), writer, max_rows_per_file=100)
    lake.write(spark.range(5).withColumn("v", F.lit(0.5)), "t", "overwrite")
    table_dir = Path(lake.path("t"))
    before = {p.name for p in table_dir.glob("*.parquet")}
    if when == "before-commit":
        df = spark.range(0, 1000, numPartitions=2).withColumn("v", F.lit(1.0))
        monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", _killed_before_commit)
        with pytest.raises(KeyboardInterrupt):
            lake.write(df, "t", "overwrite")
        monkeypatch.undo()
    else:
        # One task, Arrow batches of 100 rows, failing at id 900: whether its
        # first files reach the disk first is a race; no commit happens either way.
        dying = spark.range(0, 1000, numPartitions=1).withColumn(
            "v", F.when(F.col("id") < 900, F.lit(1.0)).otherwise(F.raise_error(F.lit("killed")))
        )
        key = "spark.sql.execution.arrow.maxRecordsPerBatch"
        saved = spark.conf.get(key)
        spark.conf.set(key, "100")
        try:
            with pytest.raises(Exception, match="killed"):
                lake.write(dying, "t", "overwrite")
        finally:
            spark.conf.set(key, saved)

    if when == "before-commit":
        orphans = {p.name for p in table_dir.glob("*.parquet")} - before
        assert orphans, "the killed writer should have left data files behind"
    assert DeltaTable(str(table_dir)).version() == 0
    assert lake.read("t").count() == 5
    assert DeltaTable(str(table_dir)).to_pandas().shape[0] == 5
    # The next write commits normally and the orphans never show up in it.
    assert lake.write(spark.range(3).withColumn("v", F.lit(1.0)), "t", "overwrite").version == 1
    assert lake.read("t").count() == 3


# --------------------------------------------------------------------------- concurrent writers


def _commits_meanwhile(table_path: str, rows: pa.Table):
    """A column whose computation commits `rows` to the table once, mid-job.

    The write that computes it has already read its snapshot, so another
    process's commit lands between that read and its own commit: the race
    two concurrent runs can have, made certain.
    """
    from pyspark.sql.functions import pandas_udf

    flag = Path(table_path).parent / f"{Path(table_path).name}.committed-meanwhile"

    @pandas_udf("string")
    def tag(values):
        from deltalake import write_deltalake

        if not flag.exists():
            flag.touch()
            write_deltalake(table_path, rows, mode="append")
        return values

    return tag


@pytest.mark.parametrize("mode", ["overwrite_partitions", "replace_rows"])
def test_concurrent_partition_overwrites_one_wins_the_other_fails(lake, spark, mode):
    """Two writers replace the same date: the one that commits second read a stale
    snapshot and must fail, not add its rows next to the winner's."""
    from shopseg.delta import ConcurrentWriteError

    day = dt.date(2025, 1, 1)

    def snapshot(users: range, tag: str):
        return spark.createDataFrame(
            [(u, day, tag) for u in users], "user_id long, d date, tag string"
        ).coalesce(1)

    lake.write(snapshot(range(3), "old"), "t", "overwrite_partitions", partition_by=["d"])
    winner = pa.table(
        {"user_id": [0, 1, 2], "d": [day] * 3, "tag": ["winner"] * 3},
        schema=pa.schema([("user_id", pa.int64()), ("d", pa.date32()), ("tag", pa.string())]),
    )
    tag = _commits_meanwhile(lake.path("t"), winner)
    loser = snapshot(range(3), "loser").withColumn("tag", tag("tag"))
    options = {"partition_by": ["d"]}
    if mode == "replace_rows":
        options["replace_rows"] = ("d", [day.isoformat()])
    write_mode = "overwrite_partitions" if mode == "overwrite_partitions" else "append"
    with pytest.raises(ConcurrentWriteError, match=r"t: concurrent write conflict"):
        lake.write(loser, "t", write_mode, **options)
    rows = DeltaTable(lake.path("t")).to_pandas()
    assert sorted(rows["user_id"]) == [0, 0, 1, 1, 2, 2], "the old rows and the winner's"
    assert set(rows["tag"]) == {"old", "winner"}, "none of the loser's rows"
    assert DeltaTable(lake.path("t")).version() == 1
    assert lake.read("t").count() == 6


def test_concurrent_appends_both_commit(spark, lake_root, monkeypatch):
    from shopseg.delta import DeltaRsWriter

    lake = Lakehouse(spark, str(lake_root), "delta-rs")
    lake.write(spark.range(2), "t", "append")
    other = Lakehouse(spark, str(lake_root), "delta-rs")
    calls = []

    def stale_table(self, path, version=None):
        table = DeltaTable(path, version=version)
        if not calls:
            calls.append(1)
            other.write(spark.range(10, 12), "t", "append")  # lands after the snapshot
        return table

    monkeypatch.setattr(DeltaRsWriter, "_table", stale_table)
    lake.write(spark.range(20, 22), "t", "append")
    assert sorted(DeltaTable(lake.path("t")).to_pandas()["id"]) == [0, 1, 10, 11, 20, 21]


@pytest.mark.parametrize("root", ["s3a://bucket/lakehouse", "dbfs:/lakehouse", "hdfs://nn/lh"])
def test_delta_rs_refuses_roots_it_cannot_write_before_any_job(spark, root, monkeypatch):
    import shopseg.spark

    with pytest.raises(DeltaError) as caught:
        Lakehouse(spark, root, "delta-rs")
    message = str(caught.value)
    assert root in message and "delta-rs" in message
    assert "Set lakehouse.writer to 'spark' or 'auto'" in message
    # Without Delta's Spark classes the way out is to bring them.
    monkeypatch.setattr(shopseg.spark, "delta_classes_available", lambda _spark: False)
    with pytest.raises(DeltaError, match=r"--packages io\.delta"):
        Lakehouse(spark, root, "delta-rs")


@pytest.mark.parametrize("root", ["/tmp/lh", "file:///tmp/lh", "s3://bucket/lh", "gs://b/lh"])
def test_delta_rs_accepts_roots_it_writes(spark, root):
    assert Lakehouse(spark, root, "delta-rs").writer == "delta-rs"


# --------------------------------------------------------------------------- maintenance


def test_maintain_compacts_zorders_and_vacuums_keeping_every_row(lake, spark):
    for i in range(4):
        batch = spark.range(i * 10, i * 10 + 10).withColumnRenamed("id", "user_id")
        lake.write(batch.withColumn("v", F.lit(i)).coalesce(1), "t", "append")
    want = sorted(tuple(r) for r in lake.read("t").collect())
    result = lake.maintain("t", zorder_by=["user_id"], retention_hours=0)
    assert (result.files_before, result.files_after) == (4, 1)
    assert result.files_vacuumed == 4, "the four compacted files are gone from disk"
    assert result.version == 4, "compaction is one commit (vacuum logs its own after it)"
    assert sorted(tuple(r) for r in lake.read("t").collect()) == want
    assert sorted(DeltaTable(lake.path("t")).to_pandas()["user_id"]) == list(range(40))
    assert len(list(Path(lake.path("t")).glob("*.parquet"))) == 1
    assert {h.version: h.operation for h in lake.history("t")}[4] == "OPTIMIZE"
    # A second run finds nothing to do and removes nothing it still needs.
    again = lake.maintain("t", retention_hours=0)
    assert (again.files_before, again.files_after, again.files_vacuumed) == (1, 1, 0)
    assert lake.read("t").count() == 40


def test_delete_removes_the_matching_rows_in_one_commit(lake, spark):
    rows = spark.createDataFrame(
        [(1, dt.datetime(2025, 1, 1)), (2, dt.datetime(2026, 6, 1)), (3, None)],
        "n int, ingested_at timestamp",
    )
    lake.write(rows, "t", "overwrite")
    assert lake.delete("t", "ingested_at < '2026-01-01T00:00:00Z'") == 1
    assert sorted(r.n for r in lake.read("t").collect()) == [2, 3]
    assert lake.version("t") == 1 and lake.history("t")[0].operation == "DELETE"
    assert lake.read("t", version=0).count() == 3, "the old version stays until vacuum"
    # Nothing to delete: no commit.
    assert lake.delete("t", "n > 10") == 0 and lake.version("t") == 1


def test_maintain_keeps_files_younger_than_the_retention(lake, spark):
    for i in range(3):
        lake.write(spark.range(i, i + 1).coalesce(1), "t", "append")
    result = lake.maintain("t", retention_hours=168)
    assert (result.files_before, result.files_after, result.files_vacuumed) == (3, 1, 0)
    # The replaced files stay for readers of the older versions.
    assert len(list(Path(lake.path("t")).glob("*.parquet"))) == 4
    assert lake.read("t", version=1).count() == 2


def test_equality_filters_on_strings_find_their_rows_through_arrow_datasets(lake, spark):
    """DuckDB over delta-rs's Arrow dataset prunes files by their statistics: a
    string column without min/max once made `= '(all)'` match nothing."""
    rows = spark.createDataFrame([("(all)", 1), ("b", 2), (None, 3)], "seg string, n int")
    lake.write(rows.coalesce(1), "t", "overwrite")
    con = duckdb.connect()
    con.register("t", DeltaTable(lake.path("t")).to_pyarrow_dataset())
    assert con.sql("SELECT n FROM t WHERE seg = '(all)'").fetchall() == [(1,)]
    assert con.sql("SELECT n FROM t WHERE seg > 'a'").fetchall() == [(2,)]


def test_upsert_inserts_new_keys_updates_changed_rows_and_leaves_the_others(lake, spark):
    schema = "user_id long, segment string, since date"
    day1, day2 = dt.date(2025, 6, 1), dt.date(2025, 6, 2)
    first = [(1, "a", day1), (2, "b", day1), (3, None, day1)]
    assert (
        lake.upsert(
            spark.createDataFrame(first, schema), "cur", ["user_id"], compare=["segment"]
        ).version
        == 0
    )
    # User 1 unchanged (its new `since` must not be written), 2 moves, 3 stays
    # null (null equals null), 4 is new.
    later = [(1, "a", day2), (2, "c", day2), (3, None, day2), (4, "a", day2)]
    result = lake.upsert(
        spark.createDataFrame(later, schema), "cur", ["user_id"], compare=["segment"]
    )
    assert (result.version, result.rows, result.mode) == (1, 2, "merge")
    got = {r.user_id: (r.segment, r.since) for r in lake.read("cur").collect()}
    assert got == {1: ("a", day1), 2: ("c", day2), 3: (None, day1), 4: ("a", day2)}
    assert lake.read("cur", version=0).count() == 3
