"""Stage `maintain`: compact small files (Z-ORDER by user), vacuum old ones.

Not part of `shopseg run`: run it on its own schedule (`shopseg maintain`,
for example nightly after the pipeline, or weekly), because vacuum ends time
travel to versions older than `maintain.retention_hours`.
"""

from __future__ import annotations

import datetime as dt

from shopseg import tables
from shopseg.delta import CommitInfo
from shopseg.pipeline import StageContext


def _tables(ctx: StageContext) -> list[str]:
    wanted = ctx.config.maintain.tables
    if wanted is None:
        return [spec.name for spec in tables.TABLES if ctx.lakehouse.exists(spec.name)]
    missing = [name for name in wanted if not ctx.lakehouse.exists(name)]
    if missing:
        raise FileNotFoundError(
            f"maintain.tables names table(s) {missing} that do not exist under {ctx.lakehouse.root}"
        )
    return list(wanted)


def _zorder_columns(ctx: StageContext, name: str) -> list[str]:
    """`maintain.zorder_by` where the table has every column, none a partition column."""
    wanted = ctx.config.maintain.zorder_by
    try:
        partitioned = set(tables.table(name).partition_by)
    except KeyError:
        partitioned = set()
    columns = set(ctx.lakehouse.read(name).columns)
    if wanted and set(wanted) <= columns and not set(wanted) & partitioned:
        return list(wanted)
    return []


def purge_quarantine(ctx: StageContext, days: int, commit: CommitInfo) -> None:
    """Delete the quarantined records ingested more than `days` days ago: the
    quarantine holds raw records, kept only as long as someone may inspect them."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    # An ISO instant with its zone: both writers' SQL compare it as a timestamp.
    predicate = f"{tables.INGESTED_AT} < '{cutoff:%Y-%m-%dT%H:%M:%SZ}'"
    deleted = ctx.lakehouse.delete(tables.QUARANTINE.name, predicate, commit=commit)
    ctx.run.log_metrics({"quarantine_rows_purged": deleted})
    ctx.log.info(
        "%s: %d records ingested before %s (maintain.quarantine_days %d) deleted",
        tables.QUARANTINE.name, deleted, f"{cutoff:%Y-%m-%d %H:%M}", days,
    )  # fmt: skip


def run(ctx: StageContext) -> None:
    conf = ctx.config.maintain
    commit = CommitInfo(stage=ctx.name, run_id=ctx.run.run_id, config_hash=ctx.config.fingerprint())
    names = _tables(ctx)
    ctx.log.info(
        "maintaining %d tables: compaction to ~%d MB files, vacuum after %g h",
        len(names),
        conf.target_file_mb,
        conf.retention_hours,
    )
    if conf.quarantine_days is not None and tables.QUARANTINE.name in names:
        purge_quarantine(ctx, conf.quarantine_days, commit)
    totals = {"files_before": 0, "files_after": 0, "files_vacuumed": 0}
    for name in names:
        result = ctx.lakehouse.maintain(
            name,
            zorder_by=_zorder_columns(ctx, name),
            target_file_mb=conf.target_file_mb,
            retention_hours=conf.retention_hours,
            commit=commit,
        )
        for key in totals:
            totals[key] += getattr(result, key)
        ctx.run.log_metrics(
            {
                f"files_before.{name}": result.files_before,
                f"files_after.{name}": result.files_after,
                f"files_vacuumed.{name}": result.files_vacuumed,
            }
        )
    ctx.run.log_metrics(totals)
    ctx.log.info(
        "maintained %d tables: %d -> %d live files, %d old files vacuumed",
        len(names),
        totals["files_before"],
        totals["files_after"],
        totals["files_vacuumed"],
    )
