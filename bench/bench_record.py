"""Rows into `bench/results/latest.json` and the table of `docs/benchmarks.md`."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from bench_common import ALS_ITER, ORDER, median

ROW = "BENCH-ROW "


def emit(row: dict) -> None:
    """Hand one finished row to the parent process (`main`) at once."""
    print(ROW + json.dumps(row), flush=True)


def machine() -> dict:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "spark": version("pyspark"),
        "duckdb": version("duckdb"),
        "scikit_learn": version("scikit-learn"),
        "implicit": version("implicit"),
        "numpy": version("numpy"),
        "date": dt.date.today().isoformat(),
    }


START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _quality(q: dict | None) -> str:
    if not q:
        return "-"
    return ", ".join(f"{k} {_fmt(v, 4)}" for k, v in q.items() if not isinstance(v, list | dict))


def results_table(rows: list[dict], host: dict) -> str:
    """The Markdown table of `rows` and the machine they ran on."""
    lines = [
        f"Machine of the last run ({host['date']}): {host['cpu']}, {host['cores']} cores, "
        f"{host['memory_gib']} GiB; Python {host['python']}, Spark {host['spark']}, "
        f"DuckDB {host['duckdb']}, scikit-learn {host['scikit_learn']}, implicit "
        f"{host['implicit']}, NumPy {host['numpy']}. Seconds are medians of "
        f"{len(rows[0]['repeats']) if rows else 0} runs (kmeans and als: per iteration); "
        "each row on the date in its last column (rows of stages not run are kept).",
        "",
        "| stage | events | Spark s | peer | peer s | Spark / peer | quality (Spark) "
        "| quality (peer) | equal quality | driver peak MB | JVM peak MB | peer peak MB "
        "| measured |",
        "|---|---:|---:|---|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        extra = f"; {r['ns_per_score']} ns/score" if "ns_per_score" in r else ""
        peer_extra = f"; {r['peer_ns_per_score']} ns/score" if "peer_ns_per_score" in r else ""
        lines.append(
            f"| {r['stage']} | {r['size']:,} | {_fmt(r['seconds'])}{extra} | {r['peer'] or '-'} "
            f"| {_fmt(r['peer_seconds'])}{peer_extra} | {_fmt(r['ratio'])} "
            f"| {_quality(r['quality'])} | {_quality(r['peer_quality'])} "
            f"| {_fmt(r.get('equal_quality'))} | {_fmt(r.get('driver_peak_mb'))} "
            f"| {_fmt(r.get('jvm_peak_mb'))} | {_fmt(r.get('peer_peak_mb'))} "
            f"| {r.get('measured', '-')} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, rows: list[dict], host: dict) -> None:
    """Replace the text between the result markers of `path` (created if absent)."""
    table = f"{START}\n{results_table(rows, host)}\n{END}"
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise SystemExit(f"{path} lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + table + tail)


def startup_row(startup: list[float], size_rows: list[dict]) -> dict:
    """Session start-up and its share of the size's Spark stages (their medians)."""
    spark_total = sum(
        r["seconds"] * (ALS_ITER if r["stage"] == "als" else 1)
        for r in size_rows
        # The sweep is K-means fits again: its single fit stands for it.
        if r["stage"] not in ("kmeans", "segment_sweep")
    ) + sum(
        r["seconds"] * median(r["quality"]["iterations"])
        for r in size_rows
        if r["stage"] == "kmeans"
    )
    s = median(startup)
    return {
        "stage": "startup",
        "size": size_rows[0]["size"],
        "seconds": round(s, 3),
        "repeats": [round(x, 3) for x in startup],
        "peer": None,
        "peer_seconds": None,
        "ratio": None,
        "quality": {"share_of_pipeline": round(s / (s + spark_total), 3)},
        "peer_quality": None,
    }


def record(out: Path, docs: Path, rows: list[dict]) -> None:
    """Merge `rows` into the results file and rewrite the docs table; rows of the
    stages and sizes not measured this time are kept from earlier runs."""
    today = dt.date.today().isoformat()
    for r in rows:
        r["measured"] = today
    fresh = {(r["stage"], r["size"]) for r in rows}
    kept = []
    if out.is_file():
        kept = [r for r in json.loads(out.read_text()) if (r["stage"], r["size"]) not in fresh]
    merged = sorted(kept + rows, key=lambda r: (r["size"] or 0, ORDER.index(r["stage"])))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    host = machine()
    (out.parent / "machine.json").write_text(json.dumps(host, indent=2) + "\n")
    write_docs(docs, merged, host)
