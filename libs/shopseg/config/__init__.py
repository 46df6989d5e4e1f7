"""Typed, validated configuration loaded from YAML plus `--set key=value` overrides.

The YAML files in `conf/` are the only place configuration lives. They are
loaded once into a `Config`, a tree of pydantic models (the sections); an
unknown key, a value of the wrong type or out of range, or a broken rule
between keys fails with a `ConfigError` that names the file (or the `--set`
argument), the dotted key and the problem. Library code never sees YAML:
jobs pass plain values down. `shopseg config-schema` prints the JSON Schema
of the files, generated from the same models.

Relative paths in a file resolve against the folder of that file; relative
paths given with `--set` resolve against the current directory, as a user
typing a path expects. URIs (`s3://`, `dbfs:/`, `file:/`...) are left alone.

Secrets never live here: a section names the environment variable that holds
one (for example `privacy.hash_key_env`), and the value is read at run time.

Modules: `base` (the section base, value types, errors), `platform` (where it
runs and what it reads), `customers` (features, segments, recommendations),
`models` (lifetime value, propensity, uplift), `campaigns` (campaigns,
audiences, outcomes), `loading` (the whole `Config` and `load_config`).
"""

from shopseg.config.base import (
    LAKEHOUSE_ROOT,
    ConfigError,
    ShopsegError,
    is_uri,
)
from shopseg.config.campaigns import (
    DEFAULT_BASE_CONVERSION,
    DEFAULT_ORDER_VALUE,
    DEFAULT_PLANTED_LIFT,
    DEFAULT_UPLIFT_RULES,
    AudiencesConf,
    CampaignConf,
    CampaignExclusions,
    CampaignTarget,
    EvaluateConf,
    PropensityCondition,
    SimulateOutcomesConf,
    UpliftCondition,
    UpliftRule,
    load_campaigns,
)
from shopseg.config.customers import (
    DEFAULT_PROFILE_FEATURES,
    DEFAULT_RFM_RULES,
    DEFAULT_SEGMENT_FEATURES,
    DEFAULT_SEGMENT_NAMES,
    FEATURE_MODES,
    SEGMENT_ALGORITHMS,
    SEGMENT_MODES,
    AlsSearch,
    EaseConf,
    FeaturesConf,
    ItemsFromEvents,
    RecommendConf,
    RfmConf,
    RfmRule,
    SegmentConf,
    SegmentFeature,
    SegmentName,
)
from shopseg.config.loading import (
    Config,
    json_schema,
    load_config,
    local_dir,
    parse_override,
    resolve_path,
)
from shopseg.config.models import (
    DEFAULT_PROPENSITY_FEATURES,
    DEFAULT_UPLIFT_FEATURES,
    PROPENSITY_MODEL_PARAMS,
    ClvConf,
    ExperimentConf,
    ExperimentTreatment,
    PropensityConf,
    PropensityModel,
    PropensityTarget,
    UpliftConf,
)
from shopseg.config.platform import (
    DEFAULT_IDENTIFIER_ACTIONS,
    DEFAULT_PERSONA_WEIGHTS,
    EPOCH_FORMATS,
    STREAM_INTERVAL,
    TEXT_FORMATS,
    ColumnConf,
    ColumnType,
    DriftConf,
    GenerateConf,
    IngestConf,
    LakehouseConf,
    LoggingConf,
    MaintainConf,
    MlflowConf,
    PipelineConf,
    PrivacyAction,
    PrivacyConf,
    SourceConf,
    SourceFormat,
    SparkConf,
    StreamConf,
)

__all__ = [
    "AlsSearch",
    "EaseConf",
    "AudiencesConf",
    "CampaignConf",
    "CampaignExclusions",
    "CampaignTarget",
    "ClvConf",
    "ColumnConf",
    "ColumnType",
    "Config",
    "ConfigError",
    "DEFAULT_BASE_CONVERSION",
    "DEFAULT_IDENTIFIER_ACTIONS",
    "DEFAULT_ORDER_VALUE",
    "DEFAULT_PERSONA_WEIGHTS",
    "DEFAULT_PLANTED_LIFT",
    "DEFAULT_PROFILE_FEATURES",
    "DEFAULT_PROPENSITY_FEATURES",
    "DEFAULT_RFM_RULES",
    "DEFAULT_SEGMENT_FEATURES",
    "DEFAULT_SEGMENT_NAMES",
    "DEFAULT_UPLIFT_FEATURES",
    "DEFAULT_UPLIFT_RULES",
    "DriftConf",
    "EPOCH_FORMATS",
    "EvaluateConf",
    "ExperimentConf",
    "ExperimentTreatment",
    "FEATURE_MODES",
    "FeaturesConf",
    "GenerateConf",
    "IngestConf",
    "ItemsFromEvents",
    "LAKEHOUSE_ROOT",
    "LakehouseConf",
    "LoggingConf",
    "MaintainConf",
    "MlflowConf",
    "PROPENSITY_MODEL_PARAMS",
    "PipelineConf",
    "PrivacyAction",
    "PrivacyConf",
    "PropensityCondition",
    "PropensityConf",
    "PropensityModel",
    "PropensityTarget",
    "RecommendConf",
    "RfmConf",
    "RfmRule",
    "SEGMENT_ALGORITHMS",
    "SEGMENT_MODES",
    "STREAM_INTERVAL",
    "SegmentConf",
    "SegmentFeature",
    "SegmentName",
    "ShopsegError",
    "SimulateOutcomesConf",
    "SourceConf",
    "SourceFormat",
    "SparkConf",
    "StreamConf",
    "TEXT_FORMATS",
    "UpliftCondition",
    "UpliftConf",
    "UpliftRule",
    "is_uri",
    "json_schema",
    "load_campaigns",
    "load_config",
    "local_dir",
    "parse_override",
    "resolve_path",
]
