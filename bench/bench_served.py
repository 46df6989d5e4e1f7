"""The recommend stage's served model against `implicit`'s ALS tuned with as many
trials, on real-layout logs (`make bench-recommend`; issue 60): groceries, a
generated shop, and the tests' rating, invoice-line and order examples.

Each log is ingested and featurised by its configuration, then `shopseg
recommend` runs as a user would run it (timed, Spark start included). The peer
sees the same validation split (`stages.recommend.validation_split` on the same
events: the same training pairs, seen pairs and relevant held-out items) and
gets as many trials as the stage evaluated candidates: `implicit`'s defaults,
then log-uniform draws of factors 8-128, regularization 0.001-10 and
confidence 0.1-100 per median strength, 15 iterations each. Both sides are
scored by the same `ranking_scores` (NDCG@10), and both are chosen on that split.

    .venv/bin/python bench/bench_served.py             # both logs
    .venv/bin/python bench/bench_served.py --logs groceries
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench_common import log  # noqa: E402
from bench_record import record  # noqa: E402

SHOPSEG = [sys.executable, "-m", "shopseg.cli"]
# Two logs of different shape: a real basket log (167 product groups) and a
# generated shop with another seed and shape than the demo's.
# The tests' real-layout examples too (small: a check of the served choice, not of speed).
LOGS = {
    "groceries": (REPO / "conf" / "groceries_example.yaml", [], ["ingest", "features"]),
    "ratings": (REPO / "conf" / "ratings_example.yaml", [], ["ingest", "features"]),
    "invoice_lines": (
        REPO / "conf" / "invoice_lines_example.yaml",
        [],
        ["ingest", "features", "clv", "segment"],
    ),
    "interactions": (REPO / "conf" / "interactions_example.yaml", [], ["ingest", "features"]),
    "generated": (
        REPO / "conf" / "local.yaml",
        [
            "generate.seed=7",
            "generate.users=6000",
            "generate.items=800",
            "generate.events_per_user=30",
            "recommend.search.trials=4",
            "recommend.item_item=true",
            "recommend.ease.l2=[1.0,3.0,10.0]",
        ],
        ["generate", "ingest", "features", "segment"],
    ),
}
PEER_ITERATIONS = 15


def _sets(root: Path, extra: list[str]) -> list[str]:
    out = ["--set", f"lakehouse.root={root}"]
    for s in extra:
        out += ["--set", s]
    return out


def peer_trials(n: int, median_strength: float, seed: int = 11) -> list[tuple[int, float, float]]:
    """`implicit`'s defaults, then `n - 1` log-uniform draws: (factors, regularization, alpha)."""
    rng = np.random.default_rng(seed)

    def draw(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    out = [(100, 0.01, 1.0)]
    scale = median_strength if median_strength > 0 else 1.0
    for _ in range(n - 1):
        factors = max(8, int(round(draw(8, 128) / 8)) * 8)
        out.append((factors, draw(0.001, 10.0), draw(0.1, 100.0) / scale))
    return out


def bench_log(name: str, data: Path) -> dict:
    import pandas as pd
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from pyspark.sql import functions as F
    from threadpoolctl import threadpool_limits

    from shopseg import recommend as rc
    from shopseg import tables as t
    from shopseg.config import load_config
    from shopseg.delta import Lakehouse
    from shopseg.pipeline import latest
    from shopseg.spark import get_spark
    from shopseg.stages.recommend import validation_split

    conf_path, extra, prepare = LOGS[name]
    root = data / name
    sets = _sets(root, extra)
    if not (root / "silver" / "interactions" / "_delta_log").is_dir():
        log(f"{name}: preparing {root} ({', '.join(prepare)})")
        stages = ["run", "--conf", str(conf_path), "--stages", ",".join(prepare)]
        subprocess.run([*SHOPSEG, *stages, *sets], check=True, stdout=subprocess.DEVNULL)
    log(f"{name}: shopseg recommend")
    started = time.perf_counter()
    subprocess.run(
        [*SHOPSEG, "recommend", "--conf", str(conf_path), *sets],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stage_seconds = time.perf_counter() - started

    config = load_config(conf_path, [s for s in sets if s != "--set"])
    spark = get_spark(f"bench-served-{name}", config.spark)
    lake = Lakehouse(spark, config.lakehouse.root)
    evaluation = lake.read(t.RECOMMENDATION_EVAL.name)
    as_of = latest(evaluation, t.AS_OF_DATE)
    rows = evaluation.where((F.col(t.AS_OF_DATE) == F.lit(as_of)) & (F.col("k") == 10)).toPandas()
    served = rows[rows["served"]].iloc[0]
    candidates = len(rows)

    events = lake.read(t.SILVER_EVENTS.name).where(F.col(t.EVENT_DATE) < F.lit(as_of))
    if config.features.lookback_days:
        events = events.where(
            F.col(t.EVENT_DATE) >= F.date_sub(F.lit(as_of), config.features.lookback_days)
        )
    split = validation_split(config, events, as_of)
    train = split.train.select(t.USER_ID, t.ITEM_ID, t.STRENGTH).toPandas()
    seen = split.train_seen.toPandas()
    relevant = split.relevant
    users = pd.Index(sorted(set(train[t.USER_ID]) | set(seen[t.USER_ID])))
    items = pd.Index(sorted(set(train[t.ITEM_ID])))
    shape = (len(users), len(items))
    matrix = sp.csr_matrix(
        (
            train[t.STRENGTH].to_numpy(np.float32),
            (users.get_indexer(train[t.USER_ID]), items.get_indexer(train[t.ITEM_ID])),
        ),
        shape=shape,
    )
    seen = seen[seen[t.ITEM_ID].isin(items)]
    seen_matrix = sp.csr_matrix(
        (
            np.ones(len(seen), np.float32),
            (users.get_indexer(seen[t.USER_ID]), items.get_indexer(seen[t.ITEM_ID])),
        ),
        shape=shape,
    )
    eval_users = relevant.select(t.USER_ID).distinct().toPandas()[t.USER_ID]
    eval_idx = users.get_indexer(eval_users)
    eval_idx = eval_idx[eval_idx >= 0]
    catalog = len(items)
    median_strength = float(np.median(train[t.STRENGTH])) if len(train) else 1.0

    trials = peer_trials(candidates, median_strength)
    best, peer_seconds = None, 0.0
    for factors, reg, alpha in trials:
        started = time.perf_counter()
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=reg,
                alpha=alpha,
                iterations=PEER_ITERATIONS,
                random_state=42,
            )
            model.fit(matrix, show_progress=False)
            ids, _ = model.recommend(
                eval_idx, seen_matrix[eval_idx], N=10, filter_already_liked_items=True
            )
        peer_seconds += time.perf_counter() - started
        recs = pd.DataFrame(
            {
                t.USER_ID: np.repeat(users[eval_idx].to_numpy(), ids.shape[1]),
                "_item": ids.reshape(-1),
                rc.RANK: np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(eval_idx)),
            }
        )
        recs = recs[recs["_item"] >= 0]
        recs[t.ITEM_ID] = items[recs["_item"].to_numpy()]
        ndcg = rc.ranking_scores(
            spark.createDataFrame(recs[[t.USER_ID, t.ITEM_ID, rc.RANK]]), relevant, 10, catalog
        ).ndcg
        log(f"{name}: implicit factors={factors} reg={reg:.3g} alpha={alpha:.3g}: {ndcg:.4f}")
        if best is None or ndcg > best[0]:
            best = (ndcg, factors, reg, alpha)
    n_events = lake.row_count(t.SILVER_EVENTS.name)
    spark.stop()
    ndcg, factors, reg, alpha = best
    return {
        "stage": f"recommend_served_{name}",
        "size": n_events,
        "seconds": round(stage_seconds, 2),
        "repeats": [round(stage_seconds, 2)],
        "peer": "implicit tuned",
        "peer_seconds": round(peer_seconds, 2),
        "peer_repeats": [round(peer_seconds, 2)],
        "ratio": round(stage_seconds / peer_seconds, 2) if peer_seconds else None,
        "quality": {"ndcg_at_10": round(float(served["ndcg"]), 4), "served": served["method"]},
        "peer_quality": {"ndcg_at_10": round(ndcg, 4)},
        "equal_quality": bool(served["ndcg"] >= ndcg),
        "candidates": candidates,
        "served_params": served["params"],
        "peer_best": {"factors": factors, "regularization": reg, "alpha": alpha},
        "best_of_each_method": {
            m: round(float(g["ndcg"].max()), 4) for m, g in rows.groupby("method")
        },
        "users": len(users),
        "items": catalog,
        "evaluated_users": int(len(eval_idx)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="groceries,generated,ratings,invoice_lines,interactions")
    parser.add_argument("--data", default=str(BENCH / "data" / "served"))
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    rows = []
    for name in [n.strip() for n in args.logs.split(",") if n.strip()]:
        if name not in LOGS:
            parser.error(f"unknown log {name!r}; choose from {list(LOGS)}")
        r = bench_log(name, Path(args.data))
        log(
            f"{name}: served {r['quality']} in {r['seconds']} s; implicit tuned "
            f"({r['candidates']} trials) {r['peer_quality']} in {r['peer_seconds']} s"
        )
        rows.append(r)
        record(Path(args.out), Path(args.docs), rows)


if __name__ == "__main__":
    main()
