"""`shopseg stream`: events reach the users' totals and segments as their files land.

A Structured Streaming file source watches the landing folder of one source
(`stream.source`, default `events`), `stream.max_files_per_trigger` files per
micro-batch, its progress in a checkpoint under the lakehouse. Each
micro-batch, in `foreachBatch`:

1. ingests exactly its files with the ingest stage's validation, quarantine,
   deduplication and accounting (`stages.ingest.run(ctx, only=...)`): one
   ingest batch, committed by its `bronze/ingest_log` rows;
2. adds their events to silver/events and silver/user_activity and
   recomputes the changed users' totals (`stages.features.advance`);
3. scores the changed users with the segment champion and merges them into
   gold/user_segments_current (`stream.segments`).

Exactly once: a micro-batch that dies is replayed from the checkpoint with
the same files; ingest skips the files its log holds and removes the rows of
a batch that never committed, and `features` adds only batches no run has
recorded, replacing what a dead run appended. Each step is an MLflow run
like a stage's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseg import features as fx
from shopseg import files, tracking
from shopseg import segment as sg
from shopseg import tables as t
from shopseg.config import Config, ConfigError
from shopseg.delta import Lakehouse
from shopseg.pipeline import StageContext, open_lakehouse, stage_lock

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("shopseg.stream")

LINE_FORMATS = ("json", "csv", "whitespace", "fixed_width")


@contextmanager
def _step(
    name: str, config: Config, spark: SparkSession, lakehouse: Lakehouse, pipeline_id: str
) -> Iterator[StageContext]:
    """One step of a micro-batch as its own MLflow run (a stage's context)."""
    tags = {tracking.PIPELINE_TAG: pipeline_id, tracking.CONFIG_TAG: config.fingerprint()}
    # The stage's lock: a `shopseg features` (or ingest) beside the stream
    # writes the same tables from the same snapshot.
    with stage_lock(lakehouse, name), tracking.stage_run(config.mlflow, name, tags) as run:
        logger = logging.getLogger(f"shopseg.stages.{name}")
        yield StageContext(name, config, spark, lakehouse, run, logger, pipeline_id)


def checkpoint_path(config: Config, lakehouse: Lakehouse) -> str:
    return config.stream.checkpoint or lakehouse.path("_checkpoints/stream")


def score_changed(ctx: StageContext, built: Any) -> int:
    """Score the users `built` recomputed with the segment champion and merge them
    into gold/user_segments_current. Returns the rows inserted or updated."""
    from shopseg.stages.features import bronze_table
    from shopseg.stages.segment import load_champion

    conf = ctx.config
    model, version, names, _algorithm, _k = load_champion(ctx)
    totals = ctx.read_back(built.totals)
    users = bronze_table(ctx, t.BRONZE_USERS.name)
    every = fx.metrics_from_totals(
        totals, users, built.as_of, built.categories, conf.features.demographics
    ).cache()
    # RFM cuts among all users (one row each), scores for the changed ones.
    cuts = fx.rfm_cuts(every, conf.features.rfm.quantile_error)
    changed = every.join(built.changed, t.USER_ID, "left_semi")
    scored_features = fx.with_rfm_scores(
        changed, cuts, conf.features.rfm.segments, conf.features.rfm.no_purchase_segment
    )
    clusterer = model.stages[-1]
    centers = [list(map(float, c)) for c in clusterer.clusterCenters()]
    scored = sg.with_distance(model.transform(scored_features), centers, clusterer.getFeaturesCol())
    # Outliers by the latest snapshot's distance cut per segment.
    segments = ctx.read(t.USER_SEGMENTS.name)
    latest = segments.agg(F.max(t.AS_OF_DATE)).first()[0]
    cut = (
        segments.filter(F.col(t.AS_OF_DATE) == F.lit(latest))
        .groupBy(t.SEGMENT_ID)
        .agg(F.max(F.when(~F.col("is_outlier"), F.col("distance"))).alias("_cut"))
    )
    current = (
        scored.withColumn(t.SEGMENT_NAME, sg.names_column(names))
        .join(F.broadcast(cut), t.SEGMENT_ID, "left")
        .select(
            t.USER_ID,
            t.SEGMENT_ID,
            t.SEGMENT_NAME,
            F.coalesce(F.col("distance") > F.col("_cut"), F.lit(False)).alias("is_outlier"),
            F.lit(version).alias(t.MODEL_VERSION),
            F.lit(built.as_of).alias("since"),
        )
    )
    compare = [t.SEGMENT_ID, t.SEGMENT_NAME, "is_outlier", t.MODEL_VERSION]
    merged = ctx.upsert(current, t.USER_SEGMENTS_CURRENT.name, [t.USER_ID], compare=compare)
    every.unpersist()
    return merged.rows


def process(
    config: Config, spark: SparkSession, lakehouse: Lakehouse
) -> Callable[[DataFrame, int], None]:
    """The `foreachBatch` function: ingest, advance the features, merge segments."""
    from shopseg.stages import features as features_stage
    from shopseg.stages import ingest as ingest_stage

    source = config.stream.source

    def run(batch: DataFrame, epoch: int) -> None:
        paths = {r[t.SOURCE_FILE] for r in batch.select(t.SOURCE_FILE).distinct().collect()}
        if not paths:
            return
        started = time.perf_counter()
        pipeline_id = f"stream-{epoch}-{uuid.uuid4().hex[:6]}"
        log.info("micro-batch %d: %d file(s): %s", epoch, len(paths), ", ".join(sorted(paths)))
        with _step("ingest", config, spark, lakehouse, pipeline_id) as ctx:
            ingest_stage.run(ctx, only={source: paths})
        with _step("features", config, spark, lakehouse, pipeline_id) as ctx:
            built = features_stage.advance(ctx)
        try:
            merged = None
            if config.stream.segments:
                with _step("segment", config, spark, lakehouse, pipeline_id) as ctx:
                    merged = score_changed(ctx, built)
        finally:
            if built.changed is not None:
                built.changed.unpersist()
        log.info(
            "micro-batch %d done in %.1f s: %d events added, %d users recomputed, as of %s%s",
            epoch,
            time.perf_counter() - started,
            built.added,
            built.recomputed,
            built.as_of,
            f", {merged} segment rows merged" if merged is not None else "",
        )

    return run


def start(config: Config) -> StreamingQuery:
    """Start the stream (the caller waits on or stops the returned query)."""
    name = config.stream.source
    if name not in config.sources:
        raise ConfigError(
            f"stream.source: {name!r} is not a configured source "
            f"(sources: {sorted(config.sources)})"
        )
    src = config.sources[name]
    if src.format not in LINE_FORMATS:
        raise ConfigError(
            f"stream.source: {name} is {src.format}; the stream reads line-based sources "
            f"({', '.join(LINE_FORMATS)}); run `ingest` for the others"
        )
    spark, lakehouse = open_lakehouse(config)
    checkpoint = checkpoint_path(config, lakehouse)
    landed = (
        spark.readStream.format("text")
        .option("maxFilesPerTrigger", config.stream.max_files_per_trigger)
        .option("recursiveFileLookup", "true")
        .load(src.path)
        .select(files.canonical_file_path(F.col("_metadata.file_path")).alias(t.SOURCE_FILE))
    )
    writer = (
        landed.writeStream.foreachBatch(process(config, spark, lakehouse))
        .option("checkpointLocation", checkpoint)
        .queryName(f"shopseg-{name}")
    )
    if config.stream.trigger == "availableNow":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=config.stream.trigger)
    query = writer.start()
    log.info(
        "stream %s: watching %s (%d file(s) per trigger, trigger %s), checkpoint %s",
        query.name,
        src.path,
        config.stream.max_files_per_trigger,
        config.stream.trigger,
        checkpoint,
    )
    return query


def run(config: Config) -> None:
    """`shopseg stream`: run until the files are processed (availableNow) or stopped."""
    query = start(config)
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        log.info("stopping the stream")
        query.stop()
    if query.exception() is not None:
        raise RuntimeError(f"stream {query.name} failed: {query.exception()}")
