# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Synthetic shop data and ingestion
# MAGIC
# MAGIC Generates the synthetic shop (users CSV, catalogue Parquet, events JSON lines by
# MAGIC day) with planted personas, ingests it into bronze, and shows what was
# MAGIC quarantined and why. Parameters: `conf` (YAML file), `set` (`;`-separated
# MAGIC `key=value` overrides, for example `generate.users=5000;lakehouse.root=/tmp/lh`)
# MAGIC and `run` (`yes`/`no`: `no` only reads what the stages last wrote).

# COMMAND ----------

from pyspark.sql import functions as F

from shopseg.notebook import notebook_config, notebook_params, run_notebook_stages, show
from shopseg.pipeline import open_lakehouse
from shopseg.tables import INGEST_LOG, QUARANTINE, RAW_EVENTS, USER_PERSONAS

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)

# COMMAND ----------

run_notebook_stages(params, config, ["generate", "ingest"])

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
