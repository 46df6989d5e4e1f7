"""The `shopseg` command: run the pipeline or one stage, print the lakehouse summary.

    shopseg run [--conf FILE] [--stages a,b,...] [--set key=value ...]
    shopseg <stage> [--conf FILE] [--set key=value ...]
    shopseg summary [--conf FILE] [--set key=value ...]
    shopseg stream [--conf FILE] [--set key=value ...]
    shopseg cluster up|down|run [--folder DIR] [--conf FILE] [--set key=value ...]

`jobs/<stage>.py` calls `main([<stage>, ...])`, so `spark-submit` runs the
same code. Exit status: 0 done, 1 a stage failed, 2 bad configuration or
arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from shopseg.config import ConfigError, ShopsegError, json_schema, load_config
from shopseg.logs import setup_logging
from shopseg.pipeline import STAGES, parse_stages

DEFAULT_CONF = "conf/local.yaml"
CLUSTER_CONF = "conf/cluster.yaml"
log = logging.getLogger("shopseg.cli")


def _stage_list() -> str:
    width = max(len(s.name) for s in STAGES)
    return "\n".join(f"  {s.name.ljust(width)}  {s.summary}" for s in STAGES)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conf",
        default=DEFAULT_CONF,
        metavar="FILE",
        help=f"YAML configuration (default: {DEFAULT_CONF})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set lakehouse.root=/tmp/lh "
        "(repeatable; the value is read as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopseg",
        description="E-commerce segmentation and precision marketing on Apache Spark.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages, in pipeline order:\n" + _stage_list(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the pipeline (every stage, or --stages)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages, in pipeline order:\n" + _stage_list(),
    )
    _common(run)
    run.add_argument(
        "--stages",
        default=None,
        metavar="A,B,...",
        help="comma-separated stages to run, in pipeline order "
        "(default: the conf's pipeline.stages, else all)",
    )
    for s in STAGES:
        stage_parser = sub.add_parser(s.name, help=f"run stage {s.name}: {s.summary}")
        _common(stage_parser)
        if s.name == "audiences":
            stage_parser.add_argument(
                "--dry-run",
                action="store_true",
                help="print each campaign's eligible, treated and control counts; write nothing",
            )
    _common(sub.add_parser("summary", help="print the lakehouse's tables, runs and models"))
    _common(
        sub.add_parser(
            "stream",
            help="Structured Streaming from the events' landing folder into bronze, the "
            "users' totals and gold/user_segments_current (conf `stream`)",
        )
    )
    schema = sub.add_parser(
        "config-schema",
        help="print the JSON Schema of a configuration file (editors validate conf/*.yaml with it)",
    )
    schema.add_argument("--output", default=None, help="write it to this file instead")
    cluster = sub.add_parser(
        "cluster",
        help="a local cluster (Spark standalone, S3 store, MLflow server): up, run, down",
    )
    cluster.add_argument("action", choices=["up", "down", "run"])
    cluster.add_argument(
        "--folder",
        default=".cluster",
        help="pids, logs, jars and worker folders (default: .cluster)",
    )
    cluster.add_argument(
        "--one-app",
        action="store_true",
        help="run: every stage in one Spark application (jobs/run.py) instead of one each",
    )
    _common(cluster)
    cluster.set_defaults(conf=CLUSTER_CONF)
    return parser


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shopseg import harness

    h = harness.Harness(Path(args.folder).resolve())
    try:
        if args.action == "up":
            state = harness.up(h)
            print(
                f"cluster up in {state['seconds']} s: master {h.master_url}, S3 {h.s3_endpoint} "
                f"(bucket {harness.BUCKET}), MLflow {h.tracking_uri}; logs in {h.folder / 'logs'}"
            )
        elif args.action == "down":
            stopped = harness.down(h)
            print(f"cluster down: stopped {', '.join(stopped) or 'nothing (none was up)'}")
        else:
            config = load_config(args.conf, args.overrides)
            names = parse_stages(",".join(config.pipeline.stages or []) or None)
            started = time.perf_counter()
            if args.one_app:
                overrides = [*args.overrides, f"pipeline.stages=[{','.join(names)}]"]
                harness.submit(h, ["run"], args.conf, overrides)
            else:
                harness.submit(h, names, args.conf, args.overrides)
            print(f"cluster run: {len(names)} stages in {time.perf_counter() - started:.0f} s")
            summary = harness.submit(h, ["summary"], args.conf, args.overrides, quiet=True)
            print(Path(str(summary[0]["out"])).read_text(), end="")
    except (ShopsegError, ConfigError) as exc:
        print(f"shopseg cluster {args.action} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _config_schema(output: str | None) -> int:
    import json

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        print(text, end="")
    else:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


def _stream(config) -> int:
    from shopseg import stream

    try:
        stream.run(config)
    except Exception as exc:
        log.exception("shopseg stream failed")
        print(f"shopseg stream failed: {exc}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    """The `shopseg` console script: `main`'s status as the process's exit status, raised
    here (a Databricks python_wheel_task calls the entry point and ignores what it
    returns, so a failed stage would otherwise pass)."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shopseg` console script and of `jobs/<stage>.py`."""
    args = build_parser().parse_args(argv)
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "config-schema":
        return _config_schema(args.output)
    try:
        overrides = list(args.overrides)
        if getattr(args, "dry_run", False):
            overrides.append("audiences.dry_run=true")
        config = load_config(args.conf, overrides)
        if args.command == "run":
            default = ",".join(config.pipeline.stages or [])
            names = parse_stages(args.stages or default or None)
        elif args.command in ("summary", "stream"):
            names = []
        else:
            names = [args.command]
    except (ConfigError, KeyError) as exc:
        print(f"shopseg: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)

    from shopseg.pipeline import format_summary, open_lakehouse, run_stages

    if args.command == "stream":
        return _stream(config)
    if not names:
        _, lakehouse = open_lakehouse(config)
        format_summary(config, lakehouse)
        return 0
    try:
        report = run_stages(config, names)
    except (ShopsegError, FileNotFoundError) as exc:
        # Expected problems (a bad source, a refused write): the message says it all.
        print(f"shopseg {args.command} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.exception("shopseg %s failed", args.command)
        print(f"shopseg {args.command} failed: {exc}", file=sys.stderr)
        return 1
    _, lakehouse = open_lakehouse(config)
    format_summary(config, lakehouse, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
