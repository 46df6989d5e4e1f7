# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Features and RFM
# MAGIC
# MAGIC Builds `silver/events`, `silver/user_features` and `silver/interactions` from
# MAGIC bronze (stage `features`), then shows the feature distributions and the RFM
# MAGIC grid of the latest snapshot. Parameters: `conf`, `set` (`;`-separated
# MAGIC `key=value` overrides) and `run` (`yes` runs the stage, `no` only reads).

# COMMAND ----------

from pyspark.sql import functions as F

from shopseg import charts
from shopseg.notebook import (
    figures_folder,
    notebook_config,
    notebook_params,
    run_notebook_stages,
    show,
    show_figure,
)
from shopseg.pipeline import open_lakehouse
from shopseg.tables import USER_FEATURES

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["features"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Feature distributions (latest snapshot)

# COMMAND ----------

spark, lake = open_lakehouse(config)
features = lake.read(USER_FEATURES.name)
as_of = features.agg(F.max("as_of_date")).first()[0]
snapshot = features.filter(F.col("as_of_date") == F.lit(as_of))
print(f"snapshot {as_of}: {snapshot.count():,} users")
show(
    snapshot.select(
        "recency_days", "frequency", "monetary", "avg_order_value", "sessions", "views",
        "conversion_rate", "discount_share", "mean_dwell_seconds", "tenure_days",
    ).summary("count", "mean", "25%", "50%", "75%", "max")
)  # fmt: skip

# COMMAND ----------

# MAGIC %md
# MAGIC ## RFM: the grid of recency and frequency scores, and the named RFM segments

# COMMAND ----------

show_figure(
    charts.rfm_grid_figure(charts.rfm_grid_data(lake, min_group=config.privacy.min_group_size)),
    "rfm_grid",
    figures,
)
show(
    snapshot.where("rfm_segment IS NOT NULL")
    .groupBy("rfm_segment")
    .agg(
        F.count("*").alias("users"),
        F.round(F.avg("monetary"), 2).alias("mean_monetary"),
        F.round(F.avg("recency_days"), 1).alias("mean_recency_days"),
    )
    .orderBy(F.desc("users"))
)
