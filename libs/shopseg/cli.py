"""The `shopseg` command: run the pipeline or one stage, print the lakehouse summary.

    shopseg run [--conf FILE] [--stages a,b,...] [--set key=value ...]
    shopseg <stage> [--conf FILE] [--set key=value ...]
    shopseg summary [--conf FILE] [--set key=value ...]

`jobs/<stage>.py` calls `main([<stage>, ...])`, so `spark-submit` runs the
same code. Exit status: 0 done, 1 a stage failed, 2 bad configuration or
arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shopseg.config import ConfigError, ShopsegError, load_config
from shopseg.logs import setup_logging
from shopseg.pipeline import STAGES, parse_stages

DEFAULT_CONF = "conf/local.yaml"
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shopseg` console script and of `jobs/<stage>.py`."""
    args = build_parser().parse_args(argv)
    try:
        overrides = list(args.overrides)
        if getattr(args, "dry_run", False):
            overrides.append("audiences.dry_run=true")
        config = load_config(args.conf, overrides)
        if args.command == "run":
            default = ",".join(config.pipeline.stages or [])
            names = parse_stages(args.stages or default or None)
        elif args.command == "summary":
            names = []
        else:
            names = [args.command]
    except (ConfigError, KeyError) as exc:
        print(f"shopseg: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)

    from shopseg.pipeline import format_summary, open_lakehouse, run_stages

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
