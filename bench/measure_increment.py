"""What one day's increment costs against a full run of the same stages.

    .venv/bin/python bench/measure_increment.py --size 1m [--days 1]

On the raw files of `bench/data/<size>` (built by `make bench`), in a fresh
lakehouse under `bench/data/<size>/increment/` whose raw folders link to the
size's: the last `days` day folders of events are held back; `ingest` and
`features` (mode full) and `segment` (fit) run on the rest; then the held
back days arrive one at a time and `ingest`, `features` (mode auto, which
runs incrementally) and `segment` (mode score) run for each. Every stage's
seconds come from its own report; one process, one SparkSession
(conf/local.yaml). Prints one JSON object. The lakehouse after the full run
is kept in `increment-full-<days>/`; `--reuse-full` starts from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from shopseg.config import load_config
from shopseg.logs import setup_logging
from shopseg.pipeline import run_stages

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_common import SPARK_SETS  # noqa: E402


def stage_seconds(report) -> dict[str, float]:
    return {s.name: round(s.seconds, 1) for s in report.stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1m")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument(
        "--reuse-full",
        action="store_true",
        help="start from the lakehouse the last full run of this size and --days left",
    )
    args = parser.parse_args()
    data = REPO / "bench" / "data" / args.size
    if not (data / "raw" / "events").is_dir():
        raise SystemExit(f"{data}/raw/events does not exist: run `make bench` first")
    root = data / "increment"
    shutil.rmtree(root, ignore_errors=True)
    (root / "raw" / "events").mkdir(parents=True)
    for name in ("users", "items", "ground_truth"):
        (root / "raw" / name).symlink_to(data / "raw" / name)
    days = sorted(p for p in (data / "raw" / "events").iterdir() if p.is_dir())
    held = days[-args.days :]
    for day in days[: -args.days]:
        (root / "raw" / "events" / day.name).symlink_to(day)

    config = load_config(REPO / "conf" / "local.yaml", [f"lakehouse.root={root}", *SPARK_SETS])
    setup_logging(config.logging.level)
    # The lakehouse after the full run is kept beside it, so that changes to
    # the increments can be measured again without the full run (--reuse-full).
    kept = root.with_name(f"increment-full-{args.days}")
    if args.reuse_full and (kept / "full.json").exists():
        shutil.rmtree(root)
        shutil.copytree(kept, root, symlinks=True)
        full = json.loads((kept / "full.json").read_text())
    else:
        full = stage_seconds(run_stages(config, ["ingest", "features", "segment"]))
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(root, kept, symlinks=True)
        (kept / "full.json").write_text(json.dumps(full))
    increments = []
    score = load_config(
        REPO / "conf" / "local.yaml", [f"lakehouse.root={root}", "segment.mode=score"]
    )
    for day in held:
        (root / "raw" / "events" / day.name).symlink_to(day)
        increments.append(stage_seconds(run_stages(score, ["ingest", "features", "segment"])))
    runs = [{k: str(v) for k, v in r.asDict().items()} for r in feature_runs(root)]
    median = {s: statistics.median(i[s] for i in increments) for s in increments[0]}
    print(
        json.dumps(
            {
                "size": args.size,
                "full": full,
                "increments": increments,
                "increment_median": median,
                "features_share": round(median["features"] / full["features"], 3),
                "feature_runs": runs,
            },
            indent=2,
        )
    )


def feature_runs(root: Path) -> list:
    """silver/feature_runs as recorded (mode, events added, users recomputed)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    runs = spark.read.format("delta").load(str(root / "silver" / "feature_runs"))
    return runs.drop("batches", "categories").orderBy("run_at").collect()


if __name__ == "__main__":
    main()
