# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Synthetic shop data and ingestion
# MAGIC
# MAGIC Generates the synthetic shop (users CSV, catalogue Parquet, events JSON lines by
# MAGIC day) with planted personas, ingests it into bronze, and shows what was
# MAGIC quarantined and why. Parameters: `conf` (YAML file) and `set` (`;`-separated
# MAGIC `key=value` overrides, for example `generate.users=5000;lakehouse.root=/tmp/lh`).

# COMMAND ----------

from pyspark.sql import functions as F

from shopseg.notebook import notebook_config, notebook_params, show
from shopseg.pipeline import open_lakehouse, run_stages
from shopseg.tables import INGEST_LOG, QUARANTINE, RAW_EVENTS, USER_PERSONAS

params = notebook_params(globals().get("dbutils"), {"conf": "conf/local.yaml", "set": ""})
config = notebook_config(params)

# COMMAND ----------

report = run_stages(config, ["generate", "ingest"])
for stage in report.stages:
    print(f"{stage.name}: {stage.seconds:.1f} s, MLflow run {stage.run_id}")
    for files in stage.files:
        print(f"  {files.path}: {files.rows:,} rows ({files.format})")
    for write in stage.writes:
        print(f"  {write.table} v{write.version}: {write.rows:,} rows")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Planted personas

# COMMAND ----------

spark, lake = open_lakehouse(config)
show(lake.read(USER_PERSONAS.name).groupBy("persona").count().orderBy("persona"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## A few raw event lines, as an export delivers them

# COMMAND ----------

show(spark.read.text(lake.path(RAW_EVENTS)).limit(5))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Accounting: records read = loaded + quarantined + unchanged, per source

# COMMAND ----------

show(
    lake.read(INGEST_LOG.name)
    .groupBy("batch_id", "source")
    .agg(
        F.count("*").alias("files"),
        F.sum("records_read").alias("read"),
        F.sum("loaded").alias("loaded"),
        F.sum("quarantined").alias("quarantined"),
        F.sum("unchanged").alias("unchanged"),
    )
    .orderBy("batch_id", "source")
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Quarantine: why records were rejected, with an example of each

# COMMAND ----------

if lake.exists(QUARANTINE.name):
    show(
        lake.read(QUARANTINE.name)
        .groupBy("source", "reason")
        .agg(F.count("*").alias("records"), F.first("record").alias("example"))
        .orderBy("source", F.desc("records"))
    )
else:
    print("nothing was quarantined")
