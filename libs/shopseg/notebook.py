"""Helpers that keep notebooks thin and runnable both on Databricks and as local scripts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shopseg.config import Config, load_config


def notebook_params(dbutils: Any, defaults: Mapping[str, str]) -> dict[str, str]:
    """Parameters as Databricks widgets; where `dbutils` is absent, `SHOPSEG_NB_<NAME>`
    environment variables, else the defaults."""
    if dbutils is not None:
        for name, value in defaults.items():
            dbutils.widgets.text(name, value)
        return {name: dbutils.widgets.get(name) for name in defaults}
    return {
        name: os.environ.get(f"SHOPSEG_NB_{name.upper()}", value)
        for name, value in defaults.items()
    }


def notebook_config(params: Mapping[str, str]) -> Config:
    """Config from the `conf` parameter and `set` (`;`-separated key=value overrides).

    A relative `conf` is looked up from the current folder upwards, so the
    same default works from the project root and from `notebooks/`.
    """
    conf = Path(params["conf"])
    if not conf.is_absolute():
        for folder in (Path.cwd(), *Path.cwd().parents):
            if (folder / conf).is_file():
                conf = folder / conf
                break
    overrides = [item.strip() for item in params.get("set", "").split(";") if item.strip()]
    return load_config(conf, overrides)


def show(df: Any, rows: int = 20) -> None:
    """Databricks' `display` where it exists, else a plain `show`."""
    import builtins

    display = getattr(builtins, "display", None)
    if display is not None:
        display(df)
    else:
        df.show(rows, truncate=False)


def run_requested(params: Mapping[str, str]) -> bool:
    """The `run` parameter: `yes` (default) runs the notebook's stages, `no` only reads."""
    value = params.get("run", "yes").strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"notebook parameter run must be yes or no, not {value!r}")
    return value == "yes"


def run_notebook_stages(params: Mapping[str, str], config: Config, stages: list[str]) -> None:
    """A notebook's stage cell: runs `stages` (unless the `run` parameter is `no`) and
    prints each one's time, MLflow run, the files it wrote and the table versions."""
    if not run_requested(params):
        print(f"run=no: reading what {', '.join(stages)} last wrote")
        return
    from shopseg.pipeline import run_stages

    for stage in run_stages(config, stages).stages:
        print(f"{stage.name}: {stage.seconds:.1f} s, MLflow run {stage.run_id}")
        for files in stage.files:
            print(f"  {files.path}: {files.rows:,} rows ({files.format})")
        for write in stage.writes:
            print(f"  {write.table} v{write.version}: {write.rows:,} rows")


def figures_folder(config: Config) -> str:
    """Where notebooks save their charts outside Databricks: `<lakehouse>/reports/notebooks`."""
    return f"{config.lakehouse.root}/reports/notebooks"


def show_figure(fig: Any, name: str, folder: str | Path) -> Path | None:
    """Databricks' `display` where it exists, else the figure saved as `<folder>/<name>.png`."""
    import builtins

    display = getattr(builtins, "display", None)
    if display is not None:
        display(fig)
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"chart {name}: {path}")
    return path
