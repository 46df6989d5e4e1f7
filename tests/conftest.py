"""Shared fixtures: one Spark session for the whole run, tmp lakehouses, small configs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from shopseg import tracking
from shopseg.config import Config, SparkConf, load_config
from shopseg.spark import delta_classes_available, get_spark

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONF = REPO / "conf" / "local.yaml"


@pytest.fixture(scope="session")
def spark():
    settings = SparkConf(
        master="local[2]",
        shuffle_partitions=2,
        ui=False,
        driver_memory="2g",
        # The suite's data are small and its queries many, so compiling each
        # plan's whole-stage code buys little. Measured on the propensity stage
        # (400 users, warm): 66.7 s with it, 56.6 and 67.2 s without, within
        # this machine's noise; kept off as harmless, not as a proven saving.
        conf={"spark.sql.codegen.wholeStage": "false"},
    )
    # Delta's Spark package is fetched (then cached by Ivy) like in `make run`.
    session = get_spark("shopseg-tests", settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, its schema migrated once for the session."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def migrated_tracking_stores(monkeypatch, mlflow_template):
    """Each new lakehouse's SQLite store starts as a copy of the migrated template.

    MLflow builds a new SQLite store by running its schema migrations: 1.6-5.6 s
    here, paid by every test whose stage runs in a fresh lakehouse (a copy:
    0.08 s). The stores MLflow builds itself are still exercised by the
    subprocess tests (the console script, spark-submit), which this cannot reach.
    """
    configure = tracking.configure

    def from_template(conf):
        uri = conf.tracking_uri or ""
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///") :])
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mlflow_template, path)
        configure(conf)

    monkeypatch.setattr(tracking, "configure", from_template)


@pytest.fixture(scope="session")
def has_spark_delta(spark) -> bool:
    return delta_classes_available(spark)


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lakehouse"


# Stage tests on small data write through delta-rs: a small Delta commit costs
# ~0.4 s there and 1.5-2 s through Spark's Delta on 2 cores (five Spark jobs
# per commit), which would add minutes to the suite. Both writers are held to
# one contract in test_delta.py, and the end-to-end runs (the default
# pipeline, CDNOW, ingest's own tests, the interaction log) use the default,
# Spark's Delta.
FAST_WRITER = "lakehouse.writer=delta-rs"

# Small synthetic data: enough users per persona for behaviour checks, quick to build.
SMALL_GENERATE = (
    "generate.users=3000",
    "generate.items=400",
    "generate.events_per_user=30",
)


@pytest.fixture
def small_config(lake_root: Path):
    """Build a Config from conf/local.yaml with a tmp lakehouse and small sizes."""

    def make(*overrides: str) -> Config:
        return load_config(
            LOCAL_CONF,
            [
                f"lakehouse.root={lake_root}",
                "spark.master=local[2]",
                FAST_WRITER,
                *SMALL_GENERATE,
                *overrides,
            ],
        )

    return make


# The default pipeline in CI: conf/local.yaml as `make run` runs it, at half
# its users (10,000 users, ~500k events), a K-means sweep from 4 to 8 (the
# plant has 6 personas; both algorithms are swept in test_segment.py) and
# one ALS grid point of 5 iterations, on the fast writer, to keep the
# suite under 15 minutes; `make run` itself runs the full default. (At 6,000
# users, or with 2 restarts per k, the sweep picked k = 7 or 8 and the ARI
# fell below 0.8.) E-mail addresses are hashed (the other identifiers
# dropped), so the privacy checks read the same lakehouse.
HASH_KEY_ENV = "SHOPSEG_TEST_HASH_KEY"
# Ingest refuses keys under 32 bytes.
TEST_HASH_KEY = "shopseg-test-key-of-at-least-32-bytes"
DEFAULT_LAKE_SETS = (
    "generate.users=10000",
    "segment.algorithms=[kmeans]",
    "segment.k_min=4",
    "segment.k_max=8",
    # Half the demo's restarts (with the bisecting start, 5 fits a k against
    # 8): the default pipeline's tests (k within 1 of the plant's 6, ARI >=
    # 0.8) passed with it in four fresh clones on 2026-12-05.
    "segment.restarts=3",
    "recommend.alphas=[5.0]",
    # Half the default ALS iterations: the stage's contract, not the model's
    # quality at convergence, is what these tests read (quality: make run).
    "recommend.max_iter=5",
    # Logistic regression against boosted trees: the choice between families
    # is exercised, the random forest (the demo's costliest fit) is not.
    "propensity.models=[{kind: logistic, params: {regParam: [0.001], elasticNetParam: [0.5], "
    "maxIter: [20]}}, {kind: gbt, params: {maxIter: [10], maxDepth: [4]}}]",
    "privacy.identifiers.email=hash",
    f"privacy.hash_key_env={HASH_KEY_ENV}",
    FAST_WRITER,
    "spark.master=local[2]",
)


@pytest.fixture(scope="session")
def default_lake(spark, tmp_path_factory) -> Path:
    """The whole pipeline once on `make run`'s configuration, for slow tests."""
    from shopseg.cli import main

    root = tmp_path_factory.mktemp("default") / "lakehouse"
    args = ["--conf", str(LOCAL_CONF), "--set", f"lakehouse.root={root}"]
    for item in DEFAULT_LAKE_SETS:
        args += ["--set", item]
    os.environ[HASH_KEY_ENV] = TEST_HASH_KEY
    try:
        assert main(["run", *args]) == 0
    finally:
        del os.environ[HASH_KEY_ENV]
    # As the run left them (later tests run stages on this lakehouse again).
    (root.parent / "table_counts.json").write_text(json.dumps(table_counts(root)))
    return root


def table_counts(root: Path) -> dict[str, int]:
    """Rows of every Delta table under a lakehouse root, by its path below the root."""
    from deltalake import DeltaTable

    return {
        str(log.parent.relative_to(root)): DeltaTable(str(log.parent)).count()
        for log in sorted(root.glob("**/_delta_log"))
    }
