# shopseg: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JAVA_HINT := sudo apt-get install -y openjdk-17-jre-headless

.PHONY: run test test-fast lint install check-java package clean bench bench-recommend cluster-up cluster-down cluster-run test-cluster

run: check-java install
	@start=$$(date +%s); \
	$(BIN)/shopseg run --conf conf/local.yaml; status=$$?; \
	echo "pipeline time (after installation): $$(( $$(date +%s) - start )) s"; exit $$status

test: check-java install
	$(BIN)/pytest

# The cluster module (tests/test_cluster.py, ~5 minutes alone): Spark
# standalone, moto's S3, an MLflow server, started and stopped by the tests.
# Not in `make test`: beside the suite it took the fresh-clone run from ~18 to
# 19.9-21.0 minutes (docs/cluster-and-databricks.md).
test-cluster: check-java install
	$(BIN)/pytest -m cluster tests/test_cluster.py

# The quick suite only (CI runs everything, slow end-to-end tests included).
test-fast: check-java install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check libs tests jobs notebooks bench
	$(BIN)/ruff format --check libs tests jobs notebooks bench

install: $(STAMP)

# Reinstall only when the package definition changes. uv (from PyPI, into the
# venv) installs the same packages as pip, in parallel: 31 s here against pip's
# ~80 s. Unlike pip, uv does not compile bytecode unless asked, and where
# PYTHONDONTWRITEBYTECODE is set (as on this machine) no process writes it
# either: every Python process (the driver, each Spark worker, each test's
# subprocess) then compiles mlflow, pyspark and pandas from source again
# (importing them took 15 s here, 6 s compiled; compiling adds ~45 s once).
$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "shopseg needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) -V 2>&1))"; exit 1; }
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(BIN)/pip install --quiet --disable-pip-version-check uv && \
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[spark,dev]' && \
	touch $(STAMP) && \
	echo "installation time: $$(( $$(date +%s) - start )) s (into $(VENV))"

# Each stage against its single-machine peer at 1M and 10M events (50M:
# BENCH_SIZES=1m,10m,50m). Builds bench/data/<size> once (10M: ~9 min here),
# then runs both sides; results in bench/results/latest.json and the table of
# docs/benchmarks.md.
BENCH_SIZES ?= 1m,10m
bench: check-java install
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[spark,dev,bench]'
	$(BIN)/python bench/run.py --sizes $(BENCH_SIZES)
	$(BIN)/python bench/bench_served.py

# The served recommender against `implicit` tuned with as many trials, on the
# groceries log and a generated one (bench/bench_served.py; ~10 minutes).
bench-recommend: check-java install
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[spark,dev,bench]'
	$(BIN)/python bench/bench_served.py

# A real cluster on 127.0.0.1 (docs/cluster-and-databricks.md): Spark standalone master
# and two workers, moto's S3 server with the lakehouse bucket, an MLflow
# server. Pids and logs under .cluster/; cluster-run submits every stage with
# spark-submit (conf/cluster.yaml) and prints the summary.
cluster-up: check-java install
	$(BIN)/shopseg cluster up

cluster-down: install
	$(BIN)/shopseg cluster down

cluster-run: check-java install
	$(BIN)/shopseg cluster run

check-java:
	@command -v java >/dev/null 2>&1 || \
	  { echo "shopseg needs Java 17 or newer for Spark, and none is installed. Install it with:"; \
	    echo "  $(JAVA_HINT)"; exit 1; }
	@v=$$(java -version 2>&1 | awk -F'"' '/version/ {print $$2; exit}' | sed 's/^1\.//' | cut -d. -f1); \
	[ "$$v" -ge 17 ] 2>/dev/null || \
	  { echo "shopseg needs Java 17 or newer for Spark; found Java $$v. Install it with:"; \
	    echo "  $(JAVA_HINT)"; exit 1; }

# dist/shopseg.zip for spark-submit --py-files, and a wheel for Databricks.
package: install
	rm -rf dist && mkdir -p dist
	cd libs && ../$(BIN)/python -c 'import pathlib, zipfile; \
	z = zipfile.ZipFile("../dist/shopseg.zip", "w", zipfile.ZIP_DEFLATED); \
	[z.write(p) for p in sorted(pathlib.Path("shopseg").rglob("*")) if "__pycache__" not in p.parts]'
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	@ls -l dist

clean:
	rm -rf lakehouse spark-warehouse metastore_db .pytest_cache dist
