# Databricks notebook source
# MAGIC %md
# MAGIC # 06 · Customer lifetime value and churn risk
# MAGIC
# MAGIC Runs stage `clv` (BG/NBD for repeat purchases and probability alive,
# MAGIC Gamma-Gamma for spend), then shows the CLV distribution, the probability alive
# MAGIC and the value and at-risk share of each segment. Parameters: `conf`, `set`, `run`.

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
from shopseg.tables import CUSTOMER_VALUE

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["clv"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## CLV distribution (latest valuation)

# COMMAND ----------

spark, lake = open_lakehouse(config)
value = lake.read(CUSTOMER_VALUE.name)
value = value.filter(F.col("as_of_date") == value.agg(F.max("as_of_date")).first()[0])
show(value.select("clv", "p_alive", "expected_transactions").summary())
show(value.groupBy("churn_risk").count().orderBy("churn_risk"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Value and risk per segment

# COMMAND ----------

by_segment = charts.clv_by_segment_data(lake)
print(by_segment.to_string(index=False))
p_alive = charts.p_alive_histogram_data(lake)
show_figure(charts.clv_figure(by_segment, p_alive), "customer_value", figures)
