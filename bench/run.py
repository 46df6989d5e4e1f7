"""`make bench`: each stage against its best single-machine peer, same data, same run.

    .venv/bin/python bench/run.py [--sizes 1m,10m] [--repeats 3]
    BENCH_SIZES=1m,10m,50m make bench

For each size (events: 1m = 20,000 users, 10m = 200,000 users, 50m =
1,000,000 users, ~50 events each) a lakehouse is built once under
`bench/data/<size>` by `shopseg run --stages generate,ingest,features` and
reused by later runs. Then, in one process per size (one SparkSession,
`conf/local.yaml`'s Spark settings), each stage and its peer run once
untimed (`WARMUP`: the JVM compiles its hot code, Delta reads its log, the
peers load theirs) and then `repeats` times on the same data; medians of the
timed runs are reported, the warm-up runs' seconds kept beside them:

- features: the stage's user metrics (`features.build_user_metrics`, to
  Spark's noop sink) against DuckDB SQL over the same Parquet files
  (`features_peer.py`); quality = values that differ (must be 0).
- kmeans: MLlib K-means (k = 6, the segment stage's prepared vectors,
  k-means|| seeding, at most 20 iterations) against scikit-learn's Lloyd
  K-means on the same vectors; quality = inertia (WSSSE). Seconds are per
  iteration (each library reports its own count). The detail adds the
  marginal cost of an iteration: (fit - the same fit stopped after one
  iteration) / (iterations - 1), which leaves out what every fit pays once.
- segment_sweep: the segment stage's whole k sweep (K-means, `conf/local.yaml`'s
  k range and restarts, a uniform sample of `segment.sweep_sample` users when
  there are more, silhouette, Calinski-Harabasz, Davies-Bouldin, stability,
  the choice, the refit on everyone) against scikit-learn running the same
  sweep on the same vectors (`measure_sweep.py`); quality = the chosen k and
  the kept model's WSSSE on every user (equal k, WSSSE within 1%).
- als: MLlib ALS (implicit, rank 32, reg 0.05, alpha 5, 10 iterations, the
  recommend stage's time split) against `implicit`'s ALS with the same
  settings; quality = NDCG@10 of both on the same held-out items, scored by
  `recommend.ranking_scores`. Seconds are per iteration; the detail adds the
  marginal cost of an iteration, as for kmeans.
- recommend_all: top-20 for every user from the ALS factors,
  `recommend.score_top_n` against a NumPy matrix product + argpartition in
  blocks; quality = share of 1,000 sampled users with the same top-20 set.
- ingest: the ingest stage on the raw event files of the size (events
  source only, a fresh lakehouse each run: listing, hashing, parsing,
  validation, deduplication, bronze/events, the quarantine and the log)
  against a DuckDB script applying the same rules to the same files and
  writing loaded rows and quarantine as Parquet (`ingest_peer.py`);
  quality = records read, loaded and quarantined per reason, compared count
  by count (`differing_counts` must be 0).
- propensity: the propensity stage's default GBT (20 depth-4 trees, rate
  0.1) on its `purchase_30d` training rows against LightGBM with the same
  shape on the same vectors (`measure_propensity.py`); quality = average
  precision of both on the same validation cut-off (scikit-learn's).
- uplift: the uplift stage's T-learner (a GBTRegressor per arm, 20 depth-3
  trees, rate 0.1) on a randomized trial of every user with outcomes from
  `simulate_outcomes`' plant, against scikit-uplift's `TwoModels` with two
  LightGBM classifiers of the same shape on the same vectors
  (`measure_uplift.py`); quality = scikit-uplift's Qini AUC and the stage's
  Qini coefficient of both on the same held-out users.
- jobs: the demo pipeline (`make run`'s configuration, a fresh lakehouse
  under bench/data/demo) once; each stage's seconds and its Spark jobs,
  stages and tasks (from its MLflow run). Size-independent, run before the sizes.
- startup: SparkSession start in a fresh process (median of `repeats`);
  its share of the pipeline = startup / (startup + the Spark stages' medians).

Memory: `driver_peak_mb` is the peak resident memory of this Python process
(the driver program) during the Spark side, `jvm_peak_mb` the JVM's (in
local mode the executors run inside it), `peer_peak_mb` this process's peak
during the peer; each peak is reset before each stage (/proc/PID/clear_refs).

Results: `bench/results/latest.json` (one object per stage and size) and
the table between the markers of `docs/benchmarks.md`, both rewritten as
each stage finishes: a long run (50M events, under `timeout`) that is
stopped, or a stage that fails (logged with its traceback; the next stage
still runs, the run then exits non-zero), keeps every row measured before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The bench's modules sit beside this file (also when a test loads it by path).
sys.path.insert(0, str(BENCH))

from bench_common import SIZES, SPARK_SETS, build_lakehouse, log, startup_seconds  # noqa: E402
from bench_jobs import bench_jobs  # noqa: E402
from bench_recommend import bench_als  # noqa: E402
from bench_record import ROW, emit, record, startup_row  # noqa: E402
from bench_stages import (  # noqa: E402
    bench_features,
    bench_ingest,
    bench_kmeans,
    bench_propensity,
    bench_segment_sweep,
    bench_uplift,
)


def run_size(size: str, repeats: int, stages: list[str]) -> list[dict]:
    """Every stage of `stages` on the size's lakehouse; each row is `emit`ted as
    its stage finishes, so a run stopped later (a timeout, a failing stage)
    keeps what it measured."""
    from shopseg import tables as t
    from shopseg.config import load_config
    from shopseg.delta import Lakehouse
    from shopseg.spark import get_spark

    root, build_seconds = build_lakehouse(size)
    config = load_config(REPO / "conf" / "local.yaml", [f"lakehouse.root={root}", *SPARK_SETS])
    spark = get_spark(f"bench-{size}", config.spark)
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    jvm = proc.pid if proc is not None else None
    lake = Lakehouse(spark, config.lakehouse.root)
    n_events = lake.row_count(t.SILVER_EVENTS.name)
    log(f"{size}: {n_events} events in {root}")
    measures = {
        "ingest": bench_ingest,
        "features": bench_features,
        "kmeans": bench_kmeans,
        "segment_sweep": bench_segment_sweep,
        "als": bench_als,
        "propensity": bench_propensity,
        "uplift": bench_uplift,
    }
    rows: list[dict] = []
    failed: list[str] = []
    for stage in stages:
        if stage not in measures:
            continue
        started = time.perf_counter()
        try:
            result = measures[stage](spark, lake, config, n_events, repeats, jvm)
        except Exception:
            # One stage failing (memory at 50M, a peer missing) does not cost
            # the others their results.
            log(f"{size} {stage} failed after {time.perf_counter() - started:.0f} s:")
            traceback.print_exc(file=sys.stderr)
            failed.append(stage)
            continue
        for r in result if isinstance(result, list) else [result]:
            if build_seconds is not None:
                r["lakehouse_build_seconds"] = round(build_seconds, 1)
            log(
                f"{size} {r['stage']}: {r['seconds']} s vs {r['peer']} "
                f"{r['peer_seconds']} s (ratio {r['ratio']}), quality {r['quality']} vs "
                f"{r['peer_quality']}"
            )
            emit(r)
            rows.append(r)
        log(f"{size} {stage} done in {time.perf_counter() - started:.0f} s")
    spark.stop()
    if failed:
        # A non-zero exit: the parent names the size as not finished.
        sys.exit(f"{size}: {', '.join(failed)} failed; the other stages' rows are recorded")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "1m,10m"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--stages",
        default="jobs,startup,ingest,features,kmeans,segment_sweep,als,propensity,uplift",
    )
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    stages = [s.strip() for s in args.stages.split(",")]

    out, docs = Path(args.out), Path(args.docs)
    if "jobs" in stages:
        # Size-independent: the demo pipeline once, its Spark jobs per stage.
        record(out, docs, [bench_jobs()])
    startup = startup_seconds(args.repeats) if "startup" in stages else None
    failed_sizes = []
    for size in sizes:
        # One process per size, so one size's JVM memory does not carry into the next.
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--one-size",
                size,
                "--repeats",
                str(args.repeats),
                "--stages",
                args.stages,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        size_rows: list[dict] = []
        for line in child.stdout:
            if line.startswith(ROW):
                size_rows.append(json.loads(line[len(ROW) :]))
                record(out, docs, size_rows)
            else:
                sys.stderr.write(line)
        if child.wait() != 0:
            failed_sizes.append(size)
            log(f"{size}: the measuring process exited with status {child.returncode}")
        if startup and size_rows:
            size_rows.insert(0, startup_row(startup, size_rows))
            record(out, docs, size_rows)
    log(f"wrote {out} and the table of {docs}")
    if failed_sizes:
        sys.exit(f"bench: sizes {failed_sizes} did not finish; their finished stages are recorded")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one-size":
        one = argparse.ArgumentParser()
        one.add_argument("--one-size")
        one.add_argument("--repeats", type=int)
        one.add_argument("--stages")
        a = one.parse_args()
        run_size(a.one_size, a.repeats, a.stages.split(","))
    else:
        main()
