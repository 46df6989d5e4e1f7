"""Stages, the context a stage runs in, the runner and the end-of-run summary.

A stage module (`shopseg.stages.<name>`) has `run(ctx)`: it reads its input
tables through `ctx.read`, calls library functions, and writes its outputs
through `ctx.write`. `ctx` records every table version read and written in
the stage's MLflow run and in the Delta commits, and logs rows and timings.
The same stage code runs under `shopseg run`, `shopseg <stage>` and
`spark-submit jobs/<stage>.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shopseg import tables, tracking
from shopseg.config import Config, local_dir
from shopseg.delta import CommitInfo, Lakehouse, WriteMode, WriteResult
from shopseg.spark import SparkWork, work_done

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its name, what it does, and the module holding `run(ctx)`."""

    name: str
    summary: str
    module: str
    # Part of `shopseg run` without --stages (maintenance runs on its own schedule).
    in_pipeline: bool = True


# In data-flow order. Later stages are added here as they land.
STAGES: tuple[Stage, ...] = (
    Stage(
        "generate",
        "synthetic shop data: users CSV, items Parquet, events JSON lines, ground truth",
        "shopseg.stages.generate",
    ),
    Stage(
        "ingest",
        "configured sources -> bronze tables, bad records -> bronze/quarantine",
        "shopseg.stages.ingest",
    ),
    Stage(
        "features",
        "silver/events, silver/user_features (RFM, behaviour), silver/interactions",
        "shopseg.stages.features",
    ),
    Stage(
        "clv",
        "BG/NBD + Gamma-Gamma: gold/customer_value (p_alive, expected purchases, CLV, risk)",
        "shopseg.stages.clv",
    ),
    Stage(
        "propensity",
        "calibrated MLlib classifiers on point-in-time rows: gold/propensity_scores (buy, churn)",
        "shopseg.stages.propensity",
    ),
    Stage(
        "segment",
        "K-means / bisecting K-means segments: gold/user_segments, profiles, transitions, tree",
        "shopseg.stages.segment",
    ),
    Stage(
        "recommend",
        "ALS on implicit feedback vs baselines: gold/recommendations, similar_items, eval",
        "shopseg.stages.recommend",
    ),
    Stage(
        "audiences",
        "campaign audiences with A/B holdouts: gold/campaign_audiences, exports per campaign",
        "shopseg.stages.audiences",
    ),
    Stage(
        "simulate_outcomes",
        "synthetic data only: purchases after the latest send with a planted lift per persona",
        "shopseg.stages.simulate_outcomes",
    ),
    Stage(
        "evaluate",
        "measured uplift per campaign and segment with intervals: gold/campaign_results",
        "shopseg.stages.evaluate",
    ),
    Stage(
        "uplift",
        "T-learner / transformed-outcome GBT from a randomized send: gold/uplift_scores, eval",
        "shopseg.stages.uplift",
    ),
    Stage(
        "report",
        "one self-contained HTML report with the charts of the gold tables (reports/)",
        "shopseg.stages.report",
    ),
    Stage(
        "maintain",
        "compact small files (Z-ORDER by user_id), vacuum old ones; not in `run` by default",
        "shopseg.stages.maintain",
        in_pipeline=False,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")


@dataclass
class FilesOutput:
    """Plain files a stage wrote (raw exports), reported next to the Delta tables."""

    path: str
    format: str
    rows: int


def committed_rows(df: DataFrame, log: DataFrame | None) -> DataFrame:
    """The rows of `df` whose batch has rows in `log` (none without a log)."""
    from pyspark.sql import functions as F

    if log is None:
        return df.limit(0)
    batches = log.select(tables.BATCH_ID).distinct()
    return df.join(F.broadcast(batches), tables.BATCH_ID, "left_semi")


@dataclass
class StageContext:
    """What a stage gets: config, session, lakehouse, its MLflow run, its logger."""

    name: str
    config: Config
    spark: SparkSession
    lakehouse: Lakehouse
    run: tracking.StageRun
    log: logging.Logger
    pipeline_id: str
    writes: list[WriteResult] = field(default_factory=list)
    files: list[FilesOutput] = field(default_factory=list)

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """Read a table (pinned to a version, so what is logged is what is read).

        A table whose rows a log commits (`tables.committed_by`: every bronze
        table, by bronze/ingest_log) holds only the rows of committed batches.
        """
        if version is None:
            version = self.lakehouse.version(table)
            if version is None:
                raise FileNotFoundError(
                    f"stage {self.name} needs table {table}, which does not exist under "
                    f"{self.lakehouse.root}; run the stage that writes it first"
                )
        df = self.lakehouse.read(table, version=version)
        rows = self.lakehouse.row_count(table, version)
        self.run.log_input(table, version, rows)
        committed = ""
        log_table = tables.committed_by(table)
        if log_table is not None:
            log_version = self.lakehouse.version(log_table)
            log = (
                None if log_version is None else self.lakehouse.read(log_table, version=log_version)
            )
            df = committed_rows(df, log)
            committed = (
                f", no batch committed: {log_table} does not exist"
                if log_version is None
                else f", the batches committed in {log_table} v{log_version}"
            )
        self.log.info("read %s v%d (%d rows%s)", table, version, rows, committed)
        return df

    def read_back(self, result: WriteResult) -> DataFrame:
        """The version this stage just wrote (logged as an output, so not as an input)."""
        return self.lakehouse.read(result.table, version=result.version)

    def write(
        self,
        df: DataFrame,
        table: str,
        mode: WriteMode = "overwrite",
        *,
        partition_by: Sequence[str] = (),
        overwrite_schema: bool = False,
        replace_rows: tuple[str, Sequence[str]] | None = None,
    ) -> WriteResult:
        """Write one version of `table`, recording stage, run id and config hash in the commit.

        `replace_rows`: see `Lakehouse.write`."""
        result = self.lakehouse.write(
            df,
            table,
            mode,
            partition_by=partition_by,
            commit=self._commit(),
            overwrite_schema=overwrite_schema,
            replace_rows=replace_rows,
        )
        self.run.log_output(result)
        self.writes.append(result)
        return result

    def upsert(
        self, df: DataFrame, table: str, key: Sequence[str], *, compare: Sequence[str]
    ) -> WriteResult:
        """Insert or update `table`'s rows by `key` (see `Lakehouse.upsert`)."""
        result = self.lakehouse.upsert(df, table, key, compare=compare, commit=self._commit())
        self.run.log_output(result)
        self.writes.append(result)
        return result

    def _commit(self) -> CommitInfo:
        return CommitInfo(
            stage=self.name,
            run_id=self.run.run_id,
            config_hash=self.config.fingerprint(),
            extra={"pipeline_id": self.pipeline_id},
        )

    def record_files(self, path: str, fmt: str, rows: int) -> None:
        """Report plain files the stage wrote (not Delta): logged and in the summary."""
        self.files.append(FilesOutput(path, fmt, rows))
        self.run.log_metrics({f"rows.{path}": rows})
        self.log.info("wrote %s (%s): %d rows", path, fmt, rows)


@dataclass
class StageReport:
    name: str
    seconds: float
    run_id: str
    writes: list[WriteResult]
    files: list[FilesOutput]
    work: SparkWork | None = None
    """The Spark jobs, stages and tasks the stage ran (None over Spark Connect)."""


@dataclass
class PipelineReport:
    pipeline_id: str
    stages: list[StageReport]
    startup_seconds: float
    seconds: float


def latest(df: DataFrame, column: str, at_most: Any = None) -> Any:
    """The largest value of `column` (at most `at_most`), or None for no rows."""
    from pyspark.sql import functions as F

    if at_most is not None:
        df = df.filter(F.col(column) <= F.lit(at_most))
    return df.agg(F.max(column)).first()[0]


def parse_stages(text: str | None) -> list[str]:
    """`a,b` -> [a, b] in pipeline order; None or empty -> every stage of the pipeline."""
    if not text:
        return [s.name for s in STAGES if s.in_pipeline]
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGE_NAMES]
    if unknown:
        raise KeyError(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGE_NAMES)}")
    return [s for s in STAGE_NAMES if s in wanted]


def open_lakehouse(config: Config) -> tuple[SparkSession, Lakehouse]:
    """The session and lakehouse a run uses (and MLflow pointed at its store)."""
    from shopseg.spark import get_spark

    spark = get_spark(
        config.spark.app_name, config.spark, delta=config.lakehouse.writer != "delta-rs"
    )
    tracking.configure(config.mlflow)
    lakehouse = Lakehouse(
        spark,
        config.lakehouse.root,
        config.lakehouse.writer,
        target_file_bytes=config.lakehouse.target_file_mb << 20,
    )
    return spark, lakehouse


def stage_lock(lakehouse: Lakehouse, name: str) -> contextlib.AbstractContextManager[None]:
    """One run of stage `name` at a time on a local lakehouse.

    Two runs of one stage read the same snapshot and write the same tables:
    the second is refused before it opens its MLflow run or reads a table,
    with the conflict named (`files.LockHeld`), so it commits nothing and a
    rerun after the first ends succeeds. The kernel releases the lock when
    its holder dies, even on kill -9. On an object store nothing is locked
    and Delta's optimistic concurrency refuses the conflicting commit.
    """
    from shopseg import files

    return files.exclusive_lock(lakehouse.local_path("_locks"), name)


def run_stages(config: Config, names: Sequence[str]) -> PipelineReport:
    """Run the named stages in order, each as one MLflow run; stop at the first failure."""
    started = time.perf_counter()
    spark, lakehouse = open_lakehouse(config)
    startup = time.perf_counter() - started
    pipeline_id = uuid.uuid4().hex[:12]
    log.info(
        "pipeline %s: stages %s, lakehouse %s (%s writer), config %s [%s]",
        pipeline_id,
        ", ".join(names),
        lakehouse.root,
        lakehouse.writer,
        config.source,
        config.fingerprint(),
    )
    reports = []
    for name in names:
        spec = stage(name)
        module = importlib.import_module(spec.module)
        stage_log = logging.getLogger(f"shopseg.stages.{name}")
        tags = {tracking.PIPELINE_TAG: pipeline_id, tracking.CONFIG_TAG: config.fingerprint()}
        with (
            stage_lock(lakehouse, name),
            tracking.stage_run(config.mlflow, name, tags) as run,
        ):
            ctx = StageContext(name, config, spark, lakehouse, run, stage_log, pipeline_id)
            section = getattr(config, name, None)
            if section is not None:
                run.log_params(_plain(section), prefix=f"{name}.")
            run.log_dict(config.to_logged_dict(), "config.json")
            stage_log.info("stage %s started", name)
            t0 = time.perf_counter()
            before = work_done(spark)
            module.run(ctx)
            seconds = time.perf_counter() - t0
            work = None if before is None else work_done(spark) - before
            run.log_metrics({"stage_seconds": seconds})
            if work is not None:
                run.log_metrics(
                    {"spark_jobs": work.jobs, "spark_stages": work.stages,
                     "spark_tasks": work.tasks}
                )  # fmt: skip
        stage_log.info(
            "stage %s finished in %.1f s (%s): read %s; wrote %s",
            name,
            seconds,
            "jobs not counted over Spark Connect" if work is None else work.describe(),
            ", ".join(f"{i['table']} v{i['version']}" for i in run.inputs) or "nothing",
            ", ".join(
                [f"{w.table} v{w.version} ({w.rows} rows)" for w in ctx.writes]
                + [f"{f.path} ({f.rows} rows)" for f in ctx.files]
            )
            or "nothing",
        )
        reports.append(StageReport(name, seconds, run.run_id, ctx.writes, ctx.files, work))
    return PipelineReport(pipeline_id, reports, startup, time.perf_counter() - started)


def _plain(section: Any) -> dict[str, Any]:
    return section.model_dump(mode="json")


# --------------------------------------------------------------------------- summary


def table_rows(lakehouse: Lakehouse) -> list[dict[str, Any]]:
    """Each contract table that exists: name, version, rows, owner."""
    out = []
    for spec in tables.TABLES:
        version = lakehouse.version(spec.name)
        if version is None:
            continue
        out.append(
            {
                "table": spec.name,
                "version": version,
                "rows": lakehouse.row_count(spec.name),
                "owner": spec.owner,
            }
        )
    return out


def customer_value_summary(lakehouse: Lakehouse) -> str | None:
    """One line on the latest gold/customer_value snapshot, if there is one."""
    from pyspark.sql import functions as F

    if not lakehouse.exists(tables.CUSTOMER_VALUE.name):
        return None
    values = lakehouse.read(tables.CUSTOMER_VALUE.name)
    as_of = latest(values, tables.AS_OF_DATE)
    if as_of is None:
        return None
    row = (
        values.filter(F.col(tables.AS_OF_DATE) == F.lit(as_of))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("clv").alias("clv"),
            F.sum("expected_transactions").alias("transactions"),
            F.avg((F.col("churn_risk") == "high").cast("double")).alias("at_risk"),
        )
        .first()
    )
    # Purchases without amounts leave every clv null: transactions are still valued.
    value = "unknown (no amounts)" if row.clv is None else f"{row.clv:,.2f}"
    return (
        f"Customer value ({as_of}): {row.customers:,} customers, total expected value "
        f"{value}, {row.transactions:,.1f} expected transactions, "
        f"{100 * row.at_risk:.1f}% at high churn risk"
    )


def validation_k(ks) -> int:
    """The k a recommendation evaluation ranked by: NDCG@10 rows are added beside
    any other k (gold/recommendation_eval)."""
    ks = set(ks)
    return max(ks - {10}, default=10)


def recommendation_summary(lakehouse: Lakehouse) -> str | None:
    """One line on what the latest recommendations were served by, why, and by how much."""
    from pyspark.sql import functions as F

    if not lakehouse.exists(tables.RECOMMENDATION_EVAL.name):
        return None
    scores = lakehouse.read(tables.RECOMMENDATION_EVAL.name)
    if "served" not in scores.columns:
        return None
    as_of = latest(scores, tables.AS_OF_DATE)
    rows = scores.filter(F.col(tables.AS_OF_DATE) == F.lit(as_of)).collect()
    k = validation_k(r.k for r in rows)
    rows = [r for r in rows if r.k == k]
    served = [r for r in rows if r.served]
    if not served:
        return None
    won = served[0]
    best = {}
    for r in rows:
        if r.method != won.method and (r.method not in best or r.ndcg > best[r.method].ndcg):
            best[r.method] = r
    top = max(r.ndcg for r in rows)
    why = "the validation winner" if won.ndcg >= top else "tied with the best, and cheaper"
    line = (
        f"Recommendations ({as_of}): served by {won.method}"
        + (f" ({won.params})" if won.params else "")
        + f", {why} (NDCG@{k} {won.ndcg:.4f})"
    )
    if "popular" in best:
        line += f", {won.ndcg - best['popular'].ndcg:+.4f} over popularity"
    if best:
        runner = max(best.values(), key=lambda r: r.ndcg)
        line += f", {won.ndcg - runner.ndcg:+.4f} over the runner-up {runner.method}"
    others = ", ".join(f"{m} {r.ndcg:.4f}" for m, r in sorted(best.items()))
    return line + (f"; best of each other method: {others}" if others else "")


def mlflow_ui_command(config: Config) -> str:
    """How to look at the runs: the server's address, or the UI over the local store."""
    uri = config.mlflow.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} (the tracking server serves the UI)"
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"


def format_summary(
    config: Config,
    lakehouse: Lakehouse,
    report: PipelineReport | None = None,
    emit: Callable[[str], None] = print,
) -> None:
    """Print what the lakehouse holds: tables, files, MLflow runs and models, how to look."""
    import mlflow
    from mlflow import MlflowClient

    emit("")
    if report is not None:
        emit(
            f"shopseg pipeline {report.pipeline_id} finished in {report.seconds:.1f} s "
            f"(Spark start {report.startup_seconds:.1f} s; "
            + ", ".join(f"{s.name} {s.seconds:.1f} s" for s in report.stages)
            + ")"
        )
    where = local_dir(lakehouse.root) or lakehouse.root
    emit(f"Lakehouse: {where}  (Delta writer: {lakehouse.writer})")
    rows = table_rows(lakehouse)
    if rows:
        width = max(len(r["table"]) for r in rows)
        emit(f"  {'table'.ljust(width)}  {'version':>7}  {'rows':>12}  written by")
        for r in rows:
            emit(f"  {r['table'].ljust(width)}  {r['version']:>7}  {r['rows']:>12,}  {r['owner']}")
    else:
        emit("  no Delta tables yet")
    for line in (customer_value_summary(lakehouse), recommendation_summary(lakehouse)):
        if line:
            emit(line)
    files = [f for s in (report.stages if report else []) for f in s.files]
    if files:
        emit("Raw files written by this run:")
        for f in files:
            emit(f"  {f.path.ljust(20)}  {f.format:<24}  {f.rows:>12,} rows")
    emit(f"MLflow tracking: {config.mlflow.tracking_uri}")
    if report is not None:
        runs = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`{tracking.PIPELINE_TAG}` = '{report.pipeline_id}'",
            output_format="list",
        )
        for run in sorted(runs, key=lambda r: r.info.start_time):
            seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
            emit(
                f"  run {run.info.run_id}  {run.data.tags.get(tracking.STAGE_TAG, '?'):<10} "
                f"{run.info.status:<9} {seconds:6.1f} s"
            )
    models = MlflowClient().search_registered_models()
    if models:
        emit("Registered models:")
        for m in models:
            latest = max((int(v.version) for v in m.latest_versions), default=0)
            aliases = ", ".join(f"@{a}" for a in (m.aliases or {}))
            emit(f"  {m.name}  latest version {latest}  {aliases}")
    else:
        emit("Registered models: none yet")
    emit(f"Open the MLflow UI:  {mlflow_ui_command(config)}")
    report_file = latest_report(lakehouse)
    if report_file:
        emit(f"Report: {report_file}")


def latest_report(lakehouse: Lakehouse) -> str | None:
    """The newest `reports/report_<as_of>.html` of a local lakehouse, if any."""
    from pathlib import Path

    root = local_dir(lakehouse.root)
    if root is None:
        return None
    found = sorted(Path(root, "reports").glob("report_*.html"))
    return str(found[-1]) if found else None
