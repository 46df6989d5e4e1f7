"""Configuration: typed loading, validation naming key and file, overrides, paths."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from shopseg.config import ConfigError, load_config

from .conftest import LOCAL_CONF, REPO


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / "conf" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_local_conf_loads_with_embedded_defaults():
    config = load_config(LOCAL_CONF)
    assert config.lakehouse.root == str(REPO / "lakehouse")
    assert config.mlflow.tracking_uri == f"sqlite:///{REPO / 'lakehouse'}/mlflow.db"
    assert config.mlflow.artifact_root == f"file://{REPO / 'lakehouse'}/mlartifacts"
    assert config.spark.checkpoint_dir == f"{REPO / 'lakehouse'}/_spark/checkpoints"
    assert config.generate.users == 20_000
    assert config.generate.start_date == dt.date(2025, 1, 1)


def test_defaults_serialise_as_their_declared_types():
    """Every run logs its config: a default of another type than its field (an int
    where floats are declared) made pydantic warn in each stage's log."""
    import warnings

    config = load_config(LOCAL_CONF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = config.model_dump(mode="json")
    assert dumped["uplift"]["gbt"]["maxIter"] == 20.0


@pytest.mark.parametrize("name", ["cluster.yaml", "databricks.yaml"])
def test_example_confs_load(name: str):
    config = load_config(REPO / "conf" / name)
    assert "://" in config.lakehouse.root or config.lakehouse.root.startswith("dbfs:")
    assert config.mlflow.tracking_uri and not config.mlflow.tracking_uri.startswith("sqlite")


def test_unknown_key_names_key_and_file(tmp_path: Path):
    path = write(tmp_path, "lakehouse:\n  rot: /tmp/x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "lakehouse.rot" in str(err.value)


def test_ill_typed_value_names_key_and_file(tmp_path: Path):
    path = write(tmp_path, "generate:\n  users: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: generate\.users: expected an integer"):
        load_config(path)


def test_bool_is_not_an_integer(tmp_path: Path):
    path = write(tmp_path, "generate:\n  users: true\n")
    with pytest.raises(ConfigError, match="generate.users"):
        load_config(path)


def test_literal_choices_are_enforced(tmp_path: Path):
    path = write(tmp_path, "lakehouse:\n  writer: parquet\n")
    with pytest.raises(ConfigError, match="lakehouse.writer: expected one of"):
        load_config(path)


def test_value_rules_name_the_key(tmp_path: Path):
    path = write(tmp_path, "generate:\n  start_date: 2025-02-01\n  end_date: 2025-01-01\n")
    with pytest.raises(ConfigError, match="generate.start_date: must be before end_date"):
        load_config(path)
    path = write(tmp_path, "generate:\n  personas: {martian: 1.0}\n")
    with pytest.raises(ConfigError, match="unknown persona"):
        load_config(path)
    path = write(tmp_path, "clv:\n  mode: score\n  holdout_end: 2025-06-30\n")
    with pytest.raises(ConfigError, match="clv.holdout_end: checks a fitted forecast"):
        load_config(path)


def test_set_overrides_nested_keys_with_yaml_types():
    config = load_config(
        LOCAL_CONF, ["generate.users=123", "generate.dirty_fraction=0", "spark.ui=true"]
    )
    assert config.generate.users == 123
    assert config.generate.dirty_fraction == 0.0
    assert config.spark.ui is True
    assert "--set" in config.source


def test_set_lakehouse_root_resolves_against_cwd_and_moves_defaults(tmp_path: Path):
    config = load_config(LOCAL_CONF, ["lakehouse.root=rel/lh"], cwd=tmp_path)
    assert config.lakehouse.root == str(tmp_path / "rel" / "lh")
    assert config.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'rel' / 'lh'}/mlflow.db"


def test_file_paths_resolve_against_the_file(tmp_path: Path):
    path = write(tmp_path, "lakehouse:\n  root: ../data/lh\n")
    config = load_config(path, cwd=Path("/"))
    assert config.lakehouse.root == str(tmp_path / "data" / "lh")


def test_set_unknown_key_fails_naming_it():
    with pytest.raises(ConfigError, match=r"--set generate\.userz=5: unknown key 'generate.userz'"):
        load_config(LOCAL_CONF, ["generate.userz=5"])


def test_set_ill_typed_value_fails_naming_it():
    with pytest.raises(ConfigError, match=r"--set generate\.seed=abc: generate\.seed"):
        load_config(LOCAL_CONF, ["generate.seed=abc"])


def test_set_spark_property_with_dots():
    config = load_config(LOCAL_CONF, ["spark.conf.spark.sql.shuffle.partitions=7"])
    # Merged into the file's own properties, not replacing them.
    assert config.spark.conf == {
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.shuffle.partitions": "7",
    }


def test_uri_root_needs_a_tracking_uri():
    with pytest.raises(ConfigError, match="mlflow.tracking_uri"):
        load_config(LOCAL_CONF, ["lakehouse.root=s3a://bucket/lh"])
    config = load_config(
        LOCAL_CONF, ["lakehouse.root=s3a://bucket/lh", "mlflow.tracking_uri=http://mlflow:5000"]
    )
    # The tracking server decides where artifacts go (MLflow has no s3a://).
    assert config.mlflow.artifact_root is None
    assert config.spark.checkpoint_dir == "s3a://bucket/lh/_spark/checkpoints"
    with pytest.raises(ConfigError, match="mlflow.artifact_root.*not Hadoop's s3a"):
        load_config(
            LOCAL_CONF,
            [
                "lakehouse.root=s3a://bucket/lh",
                "mlflow.tracking_uri=http://mlflow:5000",
                "mlflow.artifact_root=s3a://bucket/lh/mlartifacts",
            ],
        )


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_follows_values():
    a = load_config(LOCAL_CONF).fingerprint()
    assert a == load_config(LOCAL_CONF).fingerprint()
    assert a != load_config(LOCAL_CONF, ["generate.seed=7"]).fingerprint()


def test_set_takes_text_values_as_written():
    from shopseg.config import parse_override

    assert parse_override("sources.a.path=/data/in dir #2/x+%é.txt") == (
        "sources.a.path",
        "/data/in dir #2/x+%é.txt",
    )
    assert parse_override("generate.users=10") == ("generate.users", 10)
    assert parse_override("segment.algorithms=[kmeans]") == ("segment.algorithms", ["kmeans"])
    assert parse_override("a.b='quoted #text'") == ("a.b", "quoted #text")


def _as_json(value):
    """A loaded YAML document as JSON sees it (dates as ISO text)."""
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value.isoformat() if isinstance(value, dt.date) else value


def test_the_committed_schema_is_the_models_and_every_conf_file_meets_it(tmp_path: Path):
    import json

    import jsonschema
    import yaml

    from shopseg.cli import main

    out = tmp_path / "schema.json"
    assert main(["config-schema", "--output", str(out)]) == 0
    committed = REPO / "conf" / "shopseg.schema.json"
    assert out.read_text() == committed.read_text(), (
        "conf/shopseg.schema.json is stale: shopseg config-schema --output conf/shopseg.schema.json"
    )
    validator = jsonschema.Draft202012Validator(json.loads(out.read_text()))
    files = sorted(p for p in (REPO / "conf").glob("*.yaml") if p.name != "campaigns.yaml")
    assert len(files) >= 5
    for path in files:
        text = path.read_text()
        assert text.startswith("# yaml-language-server: $schema=shopseg.schema.json"), path.name
        errors = [e.message for e in validator.iter_errors(_as_json(yaml.safe_load(text)))]
        assert errors == [], (path.name, errors)
    # What the loader refuses, the schema flags too (an editor shows it while typing).
    bad = {"generate": {"users": "many", "userz": 5}, "segment": {"k_min": 1}}
    flagged = {tuple(e.absolute_path) for e in validator.iter_errors(bad)}
    assert flagged == {("generate", "users"), ("generate",), ("segment", "k_min")}


def test_the_config_logged_to_mlflow_carries_no_secret(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(
        """
spark:
  conf:
    spark.hadoop.fs.s3a.access.key: AKIAEXAMPLE
    spark.hadoop.fs.s3a.secret.key: wJalrXUtnFEMI
    spark.sql.shuffle.partitions: "4"
mlflow:
  tracking_uri: "https://alice:hunter2@mlflow.example/"
lakehouse: {root: /tmp/lh}
"""
    )
    config = load_config(conf, [])
    logged = json.dumps(config.to_logged_dict(), default=str)
    for secret in ("AKIAEXAMPLE", "wJalrXUtnFEMI", "hunter2", "alice:"):
        assert secret not in logged
    assert config.to_logged_dict()["spark"]["conf"]["spark.sql.shuffle.partitions"] == "4"
    assert config.to_logged_dict()["mlflow"]["tracking_uri"] == "https://[redacted]@mlflow.example/"
    # The configuration itself still holds them: only what is logged is redacted.
    assert config.spark.conf["spark.hadoop.fs.s3a.secret.key"] == "wJalrXUtnFEMI"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("segment.features=[{name: x, expr: 'frequency; DROP TABLE t'}]", "a ';' would end"),
        ("propensity.features=[{name: x, expr: 'recency -- comment'}]", "SQL comments"),
        ("uplift.features=[{name: x, expr: '(SELECT max(monetary) FROM t)'}]", "a subquery"),
        ("segment.features=[{name: x, expr: 'monetary, secret AS y'}]", "more than one"),
        ("sources.users.columns.age.expr='age) FROM t'", "closes more than was opened"),
    ],
)
def test_config_expressions_are_one_expression_each(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LOCAL_CONF, [override])


def test_every_shipped_and_default_expression_is_one_expression():
    from shopseg.config import (
        DEFAULT_PROPENSITY_FEATURES,
        DEFAULT_SEGMENT_FEATURES,
        DEFAULT_UPLIFT_FEATURES,
        DEFAULT_UPLIFT_RULES,
        load_campaigns,
    )
    from shopseg.config.base import _one_expression

    defaults = [*DEFAULT_SEGMENT_FEATURES, *DEFAULT_PROPENSITY_FEATURES, *DEFAULT_UPLIFT_FEATURES]
    texts = [e for _, e, _ in defaults if e] + [w for _, w, _ in DEFAULT_UPLIFT_RULES]
    assert len(texts) > 10
    for text in texts:
        assert _one_expression(text) == text
    campaigns = load_campaigns(REPO / "conf" / "campaigns.yaml")
    assert all(c.exclude.opted_out for c in campaigns)
