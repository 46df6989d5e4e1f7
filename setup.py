"""Installs the shopseg library (libs/shopseg) and its `shopseg` console script.

pyspark is an extra: a cluster or Databricks runtime brings its own Spark, so
`pip install shopseg` there must not pull a second one. Locally,
`pip install -e '.[spark,dev]'` (what `make run` does) adds Spark and the
test tools.
"""

from setuptools import find_packages, setup

setup(
    name="shopseg",
    version="0.1.0",
    description="E-commerce customer segmentation and precision marketing on Apache Spark",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": "libs"},
    packages=find_packages("libs"),
    package_data={"shopseg": ["resources/*"]},
    install_requires=[
        "deltalake>=1.6,<2",
        "mlflow>=3.10,<4",
        # pyspark 4.2 does not yet fully support pandas 3.
        "pandas>=2.2,<3",
        "pyarrow>=18",
        "numpy>=1.26",
        "pyyaml>=6",
        # Configuration models (already a dependency of mlflow); field
        # docstrings as schema descriptions came in 2.7.
        "pydantic>=2.7,<3",
        "matplotlib>=3.8",
    ],
    extras_require={
        # delta-spark 4.4.0 pins pyspark<=4.2.0, and its Spark package
        # (io.delta:delta-spark_2.13:4.4.0, fetched by the session factory) is
        # on Maven Central; 4.4.1's is not. pyspark's `connect` extra (grpc):
        # mlflow.spark.log_model imports pyspark.sql.connect, which without it
        # calls sys.exit(0) in any process whose main module has no file
        # (`python -c`, a script on stdin, pytest-xdist's workers), ending a
        # pipeline silently with status 0 at its first model.
        "spark": ["pyspark[connect]==4.2.0", "delta-spark==4.4.0"],
        # moto serves S3 for the local cluster harness (`make cluster-up`, the
        # cluster test); boto3 creates its bucket.
        "dev": [
            "pytest>=8",
            "ruff>=0.6",
            "duckdb>=1.1",
            "polars>=1.0",
            "moto[server]>=5.1",
            "boto3>=1.35",
            # The propensity tests check their metrics against scikit-learn's.
            "scikit-learn>=1.4",
            # conf/*.yaml checked against the configuration's JSON Schema.
            "jsonschema>=4",
            # databricks.yml checked against the bundle's job models, which Databricks
            # generates from its bundle JSON schema.
            "databricks-bundles>=1.22",
        ],
        # `make bench`'s peers (DuckDB comes with dev).
        "bench": [
            "scikit-learn>=1.4",
            "implicit>=0.7",
            "scipy>=1.11",
            "threadpoolctl>=3",
            "lightgbm>=4.3",
            "scikit-uplift>=0.5",
            # xgboost.spark beside MLlib's GBT (docs/benchmarks.md); CPU-only wheel.
            "xgboost-cpu>=3.2",
        ],
    },
    entry_points={"console_scripts": ["shopseg=shopseg.cli:entry"]},
)
