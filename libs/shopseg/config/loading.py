"""The whole configuration (`Config`) and how it is loaded: YAML, `--set`, paths, defaults."""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from shopseg.config.base import (
    LAKEHOUSE_ROOT,
    PATH,
    ConfigError,
    Problem,
    Section,
    _is_section,
    _unwrap,
    check,
    child,
    config_error,
    is_uri,
)
from shopseg.config.campaigns import AudiencesConf, EvaluateConf, SimulateOutcomesConf
from shopseg.config.customers import FeaturesConf, RecommendConf, SegmentConf
from shopseg.config.models import ClvConf, PropensityConf, UpliftConf
from shopseg.config.platform import (
    DEFAULT_IDENTIFIER_ACTIONS,
    PLAIN_NAME,
    GenerateConf,
    IngestConf,
    LakehouseConf,
    LoggingConf,
    MaintainConf,
    MlflowConf,
    PipelineConf,
    PrivacyConf,
    SourceConf,
    SparkConf,
    StreamConf,
)


class Config(Section):
    """The whole configuration of one shopseg invocation."""

    lakehouse: LakehouseConf = Field(default_factory=LakehouseConf)
    spark: SparkConf = Field(default_factory=SparkConf)
    mlflow: MlflowConf = Field(default_factory=MlflowConf)
    logging: LoggingConf = Field(default_factory=LoggingConf)
    pipeline: PipelineConf = Field(default_factory=PipelineConf)
    generate: GenerateConf = Field(default_factory=GenerateConf)
    sources: dict[str, SourceConf] = Field(default_factory=dict)
    ingest: IngestConf = Field(default_factory=IngestConf)
    privacy: PrivacyConf = Field(default_factory=PrivacyConf)
    features: FeaturesConf = Field(default_factory=FeaturesConf)
    segment: SegmentConf = Field(default_factory=SegmentConf)
    recommend: RecommendConf = Field(default_factory=RecommendConf)
    audiences: AudiencesConf = Field(default_factory=AudiencesConf)
    simulate_outcomes: SimulateOutcomesConf = Field(default_factory=SimulateOutcomesConf)
    evaluate: EvaluateConf = Field(default_factory=EvaluateConf)
    clv: ClvConf = Field(default_factory=ClvConf)
    propensity: PropensityConf = Field(default_factory=PropensityConf)
    uplift: UpliftConf = Field(default_factory=UpliftConf)
    maintain: MaintainConf = Field(default_factory=MaintainConf)
    stream: StreamConf = Field(default_factory=StreamConf)
    _source: str = PrivateAttr("<defaults>")

    @property
    def source(self) -> str:
        """Where the values came from (a file, `--set`), for messages."""
        return self._source

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every key."""
        return self.model_dump()

    def to_logged_dict(self) -> dict[str, Any]:
        """`to_dict` with what looks like a secret redacted (`redact_secrets`): what
        MLflow and the logs may keep."""
        return redact_secrets(self.to_dict())

    def fingerprint(self) -> str:
        """Short stable hash of the resolved configuration, recorded in Delta commits."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def rules(self) -> None:
        types_by_table: dict[str, dict[str, tuple[str, str]]] = {}
        for name, src in self.sources.items():
            check(bool(PLAIN_NAME.match(name)), f"sources.{name}", "name must be lower_snake_case")
            seen = types_by_table.setdefault(src.table, {})
            for col, spec in src.columns.items():
                key = f"sources.{name}.columns.{col}"
                if col in seen and seen[col][0] != spec.type:
                    raise Problem(
                        f"{key}.type",
                        f"{spec.type} conflicts with {seen[col][1]} ({seen[col][0]}); "
                        f"sources feeding {src.table} must agree",
                    )
                seen.setdefault(col, (spec.type, key))
        columns = {c for src in self.sources.values() for c in [*src.columns, *src.constants]}
        unknown = sorted(set(self.privacy.identifiers) - columns - set(DEFAULT_IDENTIFIER_ACTIONS))
        check(
            not unknown,
            "privacy.identifiers",
            f"{unknown}: no source has such a column (a typo would leave the real one "
            f"unprotected); the sources' columns are {sorted(columns)}",
        )
        if self.ingest.sources is not None:
            unknown = sorted(set(self.ingest.sources) - set(self.sources))
            check(not unknown, "ingest.sources", f"unknown source(s) {unknown}")
        root = self.lakehouse.root
        if is_uri(root) and not root.startswith("file:"):
            check(
                self.mlflow.tracking_uri is not None,
                "mlflow.tracking_uri",
                "is required when lakehouse.root is not a local path (SQLite needs a local file)",
            )


# --------------------------------------------------------------------------- secrets

REDACTED = "[redacted]"
# Keys that name a secret (spark.hadoop.fs.s3a.secret.key, db password, api_token, ...).
SECRET_KEY = re.compile(
    r"secret|passw|token|credential|private[._-]?key|access[._-]?key|api[._-]?key|signature",
    re.IGNORECASE,
)
# user:password@ in a URI (jdbc:postgresql://u:p@host/db, s3://AKIA...:...@bucket).
URI_PASSWORD = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")


def redact_secrets(value: Any, key: str = "") -> Any:
    """`value` with every entry under a secret-looking key and every URI's password
    replaced by REDACTED, at any depth."""
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v, key) for v in value]
    if value is not None and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return URI_PASSWORD.sub(f"{REDACTED}@", value)
    return value


# --------------------------------------------------------------------------- loading


def _field_type_at(path: list[str]) -> tuple[Any, list[str], bool, bool]:
    """Walk `path` through the sections.

    Returns the type at the end (constraints included), the normalised path,
    whether it is a path field, and whether it is a value inside a mapping.
    Inside a mapping of plain values the rest of the path is one key, so
    `spark.conf.spark.sql.shuffle.partitions` names the property
    `spark.sql.shuffle.partitions`.
    """
    tp: Any = Config
    out: list[str] = []
    is_path = False
    for i, part in enumerate(path):
        base, _ = _unwrap(tp)
        values = typing.get_args(base)[1] if typing.get_origin(base) is dict else None
        if values is not None and not _is_section(_unwrap(values)[0]):
            return values, [*out, ".".join(path[i:])], is_path, True
        found = child(tp, part)
        if found is None:
            raise KeyError(".".join([*out, part]))
        tp, metadata, info = found
        is_path = info is not None and _is_path(info)
        if metadata:
            tp = Annotated[(tp, *metadata)]
        out.append(part)
    return tp, out, is_path, False


def _is_path(info: FieldInfo) -> bool:
    """A field marked `PathStr` (alone or `| None`): a local path to resolve."""
    return PATH in info.metadata or PATH in _unwrap(info.annotation)[1]


def _check_override(text: str, value: Any, tp: Any, norm: list[str]) -> None:
    """Validate one `--set` value alone, so its error names the argument."""
    base, _ = _unwrap(tp)
    try:
        if _is_section(base) and value is not None:
            base.model_validate(value)
        else:
            TypeAdapter(tp, config=ConfigDict(strict=True)).validate_python(value)
    except ValidationError as exc:
        raise config_error(exc, f"--set {text}", Config, norm) from None


def _resolve_paths(raw: Any, tp: Any, base: Path) -> Any:
    """Make relative path fields absolute against `base` (in place on a raw dict)."""
    tp, _ = _unwrap(tp)
    if not isinstance(raw, dict):
        return raw
    if _is_section(tp):
        for name, info in tp.model_fields.items():
            if name not in raw:
                continue
            if _is_path(info) and isinstance(raw[name], str):
                raw[name] = resolve_path(raw[name], base)
            else:
                raw[name] = _resolve_paths(raw[name], info.annotation, base)
    elif typing.get_origin(tp) is dict:
        vtype = typing.get_args(tp)[1]
        for k in raw:
            raw[k] = _resolve_paths(raw[k], vtype, base)
    return raw


def resolve_path(value: str, base: Path) -> str:
    """Absolute form of a local path relative to `base`; URIs and `${lakehouse.root}/...`
    (filled in once the root is known) pass through."""
    if is_uri(value) or value.startswith(LAKEHOUSE_ROOT):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


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
    if isinstance(parsed, str) and not value.strip().startswith(("'", '"')):
        # YAML would cut `/data/in dir #2` at the " #" (a comment): take text as written.
        parsed = value.strip()
    return key, parsed


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
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
    return _resolve_paths(loaded, Config, file.resolve().parent)


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
    raw = _read_file(path) if path is not None else {}
    origin = str(path) if path is not None else "<defaults>"
    overrides = list(overrides)
    for text in overrides:
        key, value = parse_override(text)
        try:
            tp, norm, is_path, in_mapping = _field_type_at(key.split("."))
        except KeyError as exc:
            raise ConfigError(f"--set {text}: unknown key '{exc.args[0]}'") from None
        if is_path and isinstance(value, str):
            value = resolve_path(value, cwd)
        if in_mapping and _unwrap(tp)[0] is str and isinstance(value, int | float | bool):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        _check_override(text, value, tp, norm)
        node = raw
        for part in norm[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
        node[norm[-1]] = value
    where = origin if not overrides else f"{origin} (with --set overrides)"
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, where, Config) from None
    config._source = where
    _apply_defaults(config, base=Path(path).resolve().parent if path else cwd)
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
        # A remote lakehouse goes with a tracking server, which decides where
        # artifacts go (and serves them): clients then need no bucket access.
        if local_root:
            config.mlflow.artifact_root = f"file://{local_root}/mlartifacts"
    elif not is_uri(config.mlflow.artifact_root):
        config.mlflow.artifact_root = f"file://{config.mlflow.artifact_root}"
    if config.spark.checkpoint_dir is None:
        config.spark.checkpoint_dir = f"{root.rstrip('/')}/_spark/checkpoints"
    for source in config.sources.values():
        if source.path.startswith(LAKEHOUSE_ROOT):
            source.path = root.rstrip("/") + source.path[len(LAKEHOUSE_ROOT) :]


def local_dir(root: str) -> str | None:
    """The local filesystem folder of a lakehouse root, or None for a remote one."""
    if root.startswith("file://"):
        return root[len("file://") :]
    if root.startswith("file:"):
        return root[len("file:") :]
    return None if is_uri(root) else root


def json_schema() -> dict[str, Any]:
    """JSON Schema of a configuration file, for editors that validate conf/*.yaml."""
    schema = Config.model_json_schema()
    schema["title"] = "shopseg configuration"
    return schema
