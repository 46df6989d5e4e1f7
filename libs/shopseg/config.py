"""Typed, validated configuration loaded from YAML plus `--set key=value` overrides.

The YAML files in `conf/` are the only place configuration lives. They are
loaded once into a `Config` object of dataclasses; an unknown key or a value
of the wrong type fails with a `ConfigError` that names the key and the file
(or the `--set` argument) it came from. Library code never sees YAML: jobs
pass plain values down.

Relative paths in a file resolve against the folder of that file; relative
paths given with `--set` resolve against the current directory, as a user
typing a path expects. URIs (`s3://`, `dbfs:/`, `file:/`...) are left alone.

Secrets never live here: a section names the environment variable that holds
one (for example `privacy.hash_key_env`), and the value is read at run time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _path_field(default: str | None = None, **kwargs: Any) -> Any:
    return field(default=default, metadata={"path": True}, **kwargs)


def is_uri(path: str) -> bool:
    """True for `scheme:/...` locations (object stores, DBFS, file URIs)."""
    return bool(_URI.match(path))


# --------------------------------------------------------------------------- sections


@dataclass
class LakehouseConf:
    """Where tables live and which Delta writer commits them."""

    root: str = _path_field("lakehouse")
    # auto: Spark's own Delta support when its classes are on the classpath,
    # else delta-rs. `spark` and `delta-rs` force one and fail if unavailable.
    writer: Literal["auto", "spark", "delta-rs"] = "auto"


@dataclass
class SparkConf:
    """Session settings. Everything but `conf` applies in local mode only."""

    master: str | None = None
    app_name: str = "shopseg"
    driver_memory: str = "4g"
    ui: bool = False
    # Shuffle partitions in local mode; default is twice the local cores.
    shuffle_partitions: int | None = None
    checkpoint_dir: str | None = _path_field(None)
    # Extra Spark properties, passed as they are (also on a cluster).
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class MlflowConf:
    """Tracking and registry. Unset URIs default to SQLite inside the lakehouse."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    artifact_root: str | None = _path_field(None)
    experiment_prefix: str = "shopseg"


@dataclass
class LoggingConf:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


DEFAULT_PERSONA_WEIGHTS = {
    "loyal_high_value": 0.12,
    "bargain_hunter": 0.20,
    "one_time_buyer": 0.20,
    "dormant": 0.18,
    "window_shopper": 0.15,
    "new_customer": 0.15,
}


@dataclass
class GenerateConf:
    """Synthetic shop data (stage `generate`)."""

    seed: int = 42
    users: int = 20_000
    items: int = 2_000
    # Average events per user; total events is about users x this.
    events_per_user: float = 50.0
    start_date: dt.date = dt.date(2025, 1, 1)
    end_date: dt.date = dt.date(2025, 12, 31)
    # Share of raw records corrupted on purpose (bad types, unknown event
    # types, future timestamps, duplicates) so ingestion has something to
    # quarantine.
    dirty_fraction: float = 0.001
    personas: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_WEIGHTS))
    # Files per raw output; default lets Spark decide.
    output_partitions: int | None = None


@dataclass
class Config:
    """The whole configuration of one shopseg invocation."""

    lakehouse: LakehouseConf = field(default_factory=LakehouseConf)
    spark: SparkConf = field(default_factory=SparkConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    logging: LoggingConf = field(default_factory=LoggingConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    # Where the values came from (for messages); not a configuration key.
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every key (internal fields left out)."""
        return _to_plain(self)

    def fingerprint(self) -> str:
        """Short stable hash of the resolved configuration, recorded in Delta commits."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- validation


def _check(cond: bool, key: str, origin: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{origin}: {key}: {message}")


def _validate(config: Config) -> None:
    origin = config.source
    g = config.generate
    _check(g.users > 0, "generate.users", origin, "must be positive")
    _check(g.items > 0, "generate.items", origin, "must be positive")
    _check(g.events_per_user > 0, "generate.events_per_user", origin, "must be positive")
    _check(g.start_date < g.end_date, "generate.start_date", origin, "must be before end_date")
    _check(0 <= g.dirty_fraction <= 0.5, "generate.dirty_fraction", origin, "must be within 0..0.5")
    _check(bool(g.personas), "generate.personas", origin, "needs at least one persona")
    unknown = sorted(set(g.personas) - set(DEFAULT_PERSONA_WEIGHTS))
    _check(
        not unknown,
        "generate.personas",
        origin,
        f"unknown persona(s) {unknown}; known: {sorted(DEFAULT_PERSONA_WEIGHTS)}",
    )
    _check(
        all(w >= 0 for w in g.personas.values()) and sum(g.personas.values()) > 0,
        "generate.personas",
        origin,
        "weights must be non-negative and not all zero",
    )
    if g.output_partitions is not None:
        _check(g.output_partitions > 0, "generate.output_partitions", origin, "must be positive")
    sp = config.spark.shuffle_partitions
    _check(sp is None or sp > 0, "spark.shuffle_partitions", origin, "must be positive")
    root = config.lakehouse.root
    if is_uri(root) and not root.startswith("file:"):
        _check(
            config.mlflow.tracking_uri is not None,
            "mlflow.tracking_uri",
            origin,
            "is required when lakehouse.root is not a local path (SQLite needs a local file)",
        )


# --------------------------------------------------------------------------- typing


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal")
        }
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Convert a YAML value to `tp`, or raise ConfigError naming key and origin."""
    torigin = typing.get_origin(tp)

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{origin}: {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )

    if torigin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origin)
            except ConfigError:
                continue
        fail()
    if torigin is Literal:
        if value in typing.get_args(tp):
            return value
        fail()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key, origin)
    if torigin is dict:
        ktype, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            fail()
        out = {}
        for k, v in value.items():
            # Spark properties are strings; YAML reads `4` as an int.
            if vtype is str and isinstance(v, int | float | bool):
                v = str(v).lower() if isinstance(v, bool) else str(v)
            out[str(k)] = _convert(v, vtype, f"{key}.{k}", origin)
        return out
    if torigin is list:
        (vtype,) = typing.get_args(tp)
        if not isinstance(value, list):
            fail()
        return [_convert(v, vtype, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                fail()
        fail()
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: dict[str, Any], prefix: str, origin: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{origin}: unknown key '{where}{unknown[0]}' (known keys here: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key, origin)
    return cls(**kwargs)


# --------------------------------------------------------------------------- loading


def _field_type_at(path: list[str]) -> tuple[Any, list[str], bool, bool]:
    """Walk `path` through the schema.

    Returns the type at the end, the normalised path, whether it is a path
    field, and whether it is a value inside a mapping.

    Inside a mapping of plain values the rest of the path is one key, so
    `spark.conf.spark.sql.shuffle.partitions` names the property
    `spark.sql.shuffle.partitions`.
    """
    tp: Any = Config
    out: list[str] = []
    is_path = False
    i = 0
    while i < len(path):
        part = path[i]
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp) if not f.metadata.get("internal")}
            if part not in fields:
                raise KeyError(".".join(out + [part]))
            is_path = bool(fields[part].metadata.get("path"))
            tp = _hints(tp)[part]
            out.append(part)
            i += 1
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            continue
        if typing.get_origin(tp) is dict:
            vtype = typing.get_args(tp)[1]
            if dataclasses.is_dataclass(vtype):
                out.append(part)
                tp = vtype
                i += 1
                continue
            out.append(".".join(path[i:]))
            return vtype, out, is_path, True
        raise KeyError(".".join(out + [part]))
    return tp, out, is_path, False


def _resolve_paths(raw: Any, tp: Any, base: Path) -> Any:
    """Make relative path fields absolute against `base` (in place on a raw dict)."""
    if not isinstance(raw, dict):
        return raw
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        for f in dataclasses.fields(tp):
            if f.name not in raw:
                continue
            if f.metadata.get("path") and isinstance(raw[f.name], str):
                raw[f.name] = resolve_path(raw[f.name], base)
            else:
                raw[f.name] = _resolve_paths(raw[f.name], hints[f.name], base)
        return raw
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _resolve_paths(raw, inner[0], base) if len(inner) == 1 else raw
    if typing.get_origin(tp) is dict:
        vtype = typing.get_args(tp)[1]
        for k in raw:
            raw[k] = _resolve_paths(raw[k], vtype, base)
    return raw


def resolve_path(value: str, base: Path) -> str:
    """Absolute form of a local path relative to `base`; URIs pass through."""
    if is_uri(value):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is parsed as YAML (so `10` is an int, `true` a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: typing.Iterable[str] = (),
    *,
    cwd: Path | None = None,
) -> Config:
    """Load `path` (YAML), apply `--set` overrides, validate and return a Config.

    Args:
        path: YAML file, or None for the built-in defaults.
        overrides: `key=value` strings, applied in order after the file.
        cwd: directory `--set` paths resolve against (default: the current one).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the bad key and the file or `--set` it came from.
    """
    cwd = cwd or Path.cwd()
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        file = Path(path)
        origin = str(path)
        if not file.is_file():
            raise ConfigError(
                f"config file {path} not found (run from the project root or pass --conf)"
            )
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = _resolve_paths(loaded, Config, file.resolve().parent)
        # Validate the file alone first, so its errors name the file.
        _build(Config, raw, "", origin)
    for text in overrides:
        key, value = parse_override(text)
        try:
            tp, norm, is_path, in_mapping = _field_type_at(key.split("."))
        except KeyError as exc:
            raise ConfigError(f"--set {text}: unknown key '{exc.args[0]}'") from None
        if is_path and isinstance(value, str):
            value = resolve_path(value, cwd)
        if in_mapping and tp is str and isinstance(value, int | float | bool):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        _convert(value, tp, key, f"--set {text}")
        node = raw
        for part in norm[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
        node[norm[-1]] = value
    where = origin if not overrides else f"{origin} (with --set overrides)"
    config = _build(Config, raw, "", where)
    config.source = where
    _apply_defaults(config, base=Path(path).resolve().parent if path else cwd)
    _validate(config)
    return config


def _apply_defaults(config: Config, base: Path) -> None:
    """Defaults that depend on other keys: MLflow and checkpoints inside the lakehouse."""
    root = config.lakehouse.root
    if not is_uri(root) and not Path(root).is_absolute():
        config.lakehouse.root = resolve_path(root, base)
        root = config.lakehouse.root
    local_root = local_dir(root)
    if config.mlflow.tracking_uri is None and local_root is not None:
        config.mlflow.tracking_uri = f"sqlite:///{local_root}/mlflow.db"
    if config.mlflow.artifact_root is None:
        config.mlflow.artifact_root = (
            f"file://{local_root}/mlartifacts" if local_root else f"{root.rstrip('/')}/mlartifacts"
        )
    elif not is_uri(config.mlflow.artifact_root):
        config.mlflow.artifact_root = f"file://{config.mlflow.artifact_root}"
    if config.spark.checkpoint_dir is None:
        config.spark.checkpoint_dir = f"{root.rstrip('/')}/_spark/checkpoints"


def local_dir(root: str) -> str | None:
    """The local filesystem folder of a lakehouse root, or None for a remote one."""
    if root.startswith("file://"):
        return root[len("file://") :]
    if root.startswith("file:"):
        return root[len("file:") :]
    return None if is_uri(root) else root
