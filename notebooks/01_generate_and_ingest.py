# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Synthetic shop data
# MAGIC
# MAGIC Generates the synthetic shop (users CSV, catalogue Parquet, events JSON lines by
# MAGIC day) with planted personas, and shows what was planted. Parameters:
# MAGIC `conf` (YAML file) and `set` (`;`-separated `key=value` overrides, for example
# MAGIC `generate.users=5000;lakehouse.root=/tmp/lh`).

# COMMAND ----------

from shopseg.notebook import notebook_config, notebook_params, show
from shopseg.pipeline import open_lakehouse, run_stages
from shopseg.tables import RAW_EVENTS, USER_PERSONAS

params = notebook_params(globals().get("dbutils"), {"conf": "conf/local.yaml", "set": ""})
config = notebook_config(params)

# COMMAND ----------

report = run_stages(config, ["generate"])
for stage in report.stages:
    print(f"{stage.name}: {stage.seconds:.1f} s, MLflow run {stage.run_id}")
    for files in stage.files:
        print(f"  {files.path}: {files.rows:,} rows ({files.format})")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Planted personas

# COMMAND ----------

spark, lake = open_lakehouse(config)
personas = lake.read(USER_PERSONAS.name)
show(personas.groupBy("persona").count().orderBy("persona"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## A few raw event lines, as an export delivers them

# COMMAND ----------

show(spark.read.text(lake.path(RAW_EVENTS)).limit(5))
