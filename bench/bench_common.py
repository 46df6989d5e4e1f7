"""What every measurement of `make bench` shares: sizes and settings, timing,
peak memory, the size's lakehouse, session start-up and the row format.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

SIZES = {"1m": 20_000, "10m": 200_000, "50m": 1_000_000}  # users, ~50 events each
K = 6
KMEANS_MAX_ITER = 20
# Untimed runs before the timed repeats of every measurement, Spark and peer alike.
WARMUP = 1
ALS_RANK, ALS_REG, ALS_ALPHA, ALS_ITER = 32, 0.05, 5.0, 10
# `implicit` weighs its input differently: at Spark's alpha 5 its NDCG@10 on
# the 1M data was 0.196 against Spark's 0.208 (regularization 0.05 to 8 made
# no difference); at 10 it reached 0.205. Equal quality is the condition, so
# the peer runs at 10 (checked again at every size by the bench itself).
PEER_ALS_ALPHA = 10.0
TOP_N = 20
ORDER = [
    "jobs",
    "startup",
    "ingest",
    "features",
    "kmeans",
    "segment_sweep",
    "als",
    "recommend_all",
    "recommend_served_groceries",
    "recommend_served_generated",
    "recommend_served_ratings",
    "recommend_served_invoice_lines",
    "recommend_served_interactions",
    "propensity",
    "propensity_logistic",
    "uplift",
]
SAMPLE_USERS = 1_000
# conf/local.yaml turns whole-stage code generation off for the demo's small
# queries; the sizes are measured with Spark's default (on), as before.
SPARK_SETS = ["spark.conf.spark.sql.codegen.wholeStage=true"]


def log(message: str) -> None:
    print(f"{dt.datetime.now():%H:%M:%S} bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


def reset_peak(pid: int) -> None:
    """Reset a process's peak resident set size (Linux: writing 5 to clear_refs)."""
    # Not Linux, or not permitted: the peak then covers the process's life.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Peaks:
    """Peak memory of this process and of the JVM over a block of work."""

    def __init__(self, jvm_pid: int | None):
        self.jvm_pid = jvm_pid
        self.python = self.jvm = None

    def __enter__(self) -> Peaks:
        reset_peak(os.getpid())
        if self.jvm_pid:
            reset_peak(self.jvm_pid)
        return self

    def __exit__(self, *exc) -> None:
        self.python = peak_mb(os.getpid())
        self.jvm = peak_mb(self.jvm_pid) if self.jvm_pid else None


def timed(
    action: Callable[[], object], repeats: int, warmup: int = WARMUP
) -> tuple[list[float], object, list[float]]:
    """`action` run `warmup` times untimed, then `repeats` times timed.

    Returns the timed seconds, the last result and the warm-up seconds. The
    warm-up runs pay the JVM's compilation, Delta's log replay and file
    listings; both sides of a comparison get the same number.
    """
    warm = []
    for _ in range(warmup):
        started = time.perf_counter()
        action()
        warm.append(time.perf_counter() - started)
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
    return seconds, result, warm


@dataclass
class TimedFits:
    """An iterative fit timed whole and stopped after one iteration (`timed_fits`)."""

    seconds: list[float]
    one_iteration: list[float]
    warm: list[float]
    models: list
    warm_models: list
    memory: Peaks


def timed_fits(
    fit: Callable[[int], object], max_iter: int, repeats: int, pid: int | None
) -> TimedFits:
    """`fit(max_iter)` timed as `timed` does (peak memory of `pid` and this process
    meanwhile), then `fit(1)`: what a fit costs besides its iterations."""
    models: list = []
    with Peaks(pid) as memory:
        seconds, _, warm = timed(lambda: models.append(fit(max_iter)), repeats)
    one_iteration, _, _ = timed(lambda: fit(1), repeats)
    return TimedFits(seconds, one_iteration, warm, models[len(warm) :], models[: len(warm)], memory)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------- data


def run_pipeline(root: Path, *sets: str, stages: str | None = None, quiet: bool = False) -> float:
    """`shopseg run` on `make run`'s configuration into `root` in a subprocess, each of
    `sets` as its own `--set`; the seconds it took (a failed run raises)."""
    command = [
        str(REPO / ".venv" / "bin" / "shopseg"),
        "run",
        "--conf",
        str(REPO / "conf" / "local.yaml"),
    ]
    if stages:
        command += ["--stages", stages]
    for item in (f"lakehouse.root={root}", *sets):
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - started


def build_lakehouse(size: str) -> tuple[Path, float | None]:
    """bench/data/<size> with generate, ingest and features run; built once."""
    root = BENCH / "data" / size
    if (root / "silver" / "user_features" / "_delta_log").is_dir():
        return root, None
    log(f"building the {size} lakehouse under {root} ({SIZES[size]} users)")
    seconds = run_pipeline(
        root, f"generate.users={SIZES[size]}", *SPARK_SETS, stages="generate,ingest,features"
    )
    return root, seconds


STARTUP = """
import time
from shopseg.config import load_config
from shopseg.spark import get_spark
conf = load_config({conf!r}, [])
started = time.perf_counter()
spark = get_spark("bench-startup", conf.spark)
spark.range(1).count()
print("STARTUP", time.perf_counter() - started)
spark.stop()
"""


def startup_seconds(repeats: int) -> list[float]:
    """SparkSession start (first trivial job included) in a fresh process each time."""
    out = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", STARTUP.format(conf=str(REPO / "conf" / "local.yaml"))],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("STARTUP"))
        out.append(float(line.split()[1]))
    return out


# --------------------------------------------------------------------------- iterations and rows


def marginal_per_iteration(full: list[float], one: list[float], iterations: list[int]) -> float:
    """(median full fit - median one-iteration fit) / (median iterations - 1).

    What one more iteration costs, without what every fit pays once.
    """
    extra = median(iterations) - 1
    if extra <= 0:
        return median(one)
    return round(max(median(full) - median(one), 0.0) / extra, 5)


def iteration_detail(
    mine: tuple[list[float], list[float], list[int]],
    peer: tuple[list[float], list[float], list[int]],
) -> dict:
    """Fit times of both sides, whole and stopped after one iteration, and the marginal iteration.

    Each side is (whole-fit seconds, one-iteration-fit seconds, iterations run).
    """
    marginal = marginal_per_iteration(*mine)
    peer_marginal = marginal_per_iteration(*peer)
    return {
        "fit_seconds": [round(s, 3) for s in mine[0]],
        "peer_fit_seconds": [round(s, 4) for s in peer[0]],
        "one_iteration_fit_seconds": [round(s, 3) for s in mine[1]],
        "peer_one_iteration_fit_seconds": [round(s, 4) for s in peer[1]],
        "marginal_seconds_per_iteration": marginal,
        "peer_marginal_seconds_per_iteration": peer_marginal,
        "marginal_ratio": round(marginal / peer_marginal, 2) if peer_marginal else None,
        "seconds_are": "per iteration (whole fit / iterations)",
    }


def row(
    stage: str,
    size: int,
    seconds: list[float],
    peer: str | None,
    peer_seconds: list[float] | None,
    *,
    quality: dict,
    peer_quality: dict | None,
    equal_quality: bool | None,
    throughput: float,
    throughput_unit: str,
    mem: tuple[Peaks, Peaks | None],
    warmup: tuple[list[float], list[float] | None],
    detail: dict,
) -> dict:
    spark_mem, peer_mem = mem
    warm, peer_warm = warmup
    m = median(seconds)
    pm = median(peer_seconds) if peer_seconds else None
    return {
        "stage": stage,
        "size": size,
        "seconds": round(m, 4),
        "repeats": [round(s, 4) for s in seconds],
        "peer": peer,
        "peer_seconds": round(pm, 4) if pm is not None else None,
        "peer_repeats": [round(s, 4) for s in peer_seconds] if peer_seconds else None,
        "warmup_seconds": [round(s, 4) for s in warm],
        "peer_warmup_seconds": [round(s, 4) for s in peer_warm] if peer_warm else None,
        "ratio": round(m / pm, 2) if pm else None,
        "quality": quality,
        "peer_quality": peer_quality,
        "equal_quality": equal_quality,
        "throughput": round(throughput, 1),
        "throughput_unit": throughput_unit,
        "driver_peak_mb": spark_mem.python,
        "jvm_peak_mb": spark_mem.jvm,
        "peer_peak_mb": peer_mem.python if peer_mem else None,
        **detail,
    }
