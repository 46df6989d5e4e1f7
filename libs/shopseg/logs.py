"""Logging setup and stage timing."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Configure the `shopseg` loggers once (idempotent)."""
    root = logging.getLogger("shopseg")
    root.setLevel(level)
    if not any(getattr(h, "_shopseg", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._shopseg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    # MLflow and py4j are chatty at INFO.
    for name in ("py4j", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def timed(log: logging.Logger, what: str) -> Iterator[dict[str, float]]:
    """Log how long the block took; the dict gets `seconds` when it ends."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start
        log.info("%s in %.1f s", what, out["seconds"])
