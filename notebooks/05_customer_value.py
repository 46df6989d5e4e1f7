# Databricks notebook source
# MAGIC %md
# MAGIC # 05 · Customer lifetime value, churn risk and propensity
# MAGIC
# MAGIC Runs stage `clv` (BG/NBD for repeat purchases and probability alive,
# MAGIC Gamma-Gamma for spend) and stage `propensity` (calibrated classifiers: who buys
# MAGIC in the next 30 days, which buyer stops buying in the next 90), then shows the CLV
# MAGIC distribution, the probability alive, the value and at-risk share of each segment,
# MAGIC and the propensity models' gain and reliability charts. Parameters: `conf`, `set`,
# MAGIC `run`.

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
from shopseg.tables import CUSTOMER_VALUE, PROPENSITY_SCORES

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["clv", "propensity"])

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

# COMMAND ----------

# MAGIC %md
# MAGIC ## Who will buy, who will churn (propensity)
# MAGIC
# MAGIC Gains: contacting the users with the highest scores first, the share of all
# MAGIC positives reached, for the model and the RFM and BG/NBD baselines, on the latest
# MAGIC labelled cut-off. Reliability: observed rate per probability bin, before and after
# MAGIC isotonic calibration, on users the calibration was not fitted on.

# COMMAND ----------

scores = lake.read(PROPENSITY_SCORES.name)
scores = scores.filter(F.col("as_of_date") == scores.agg(F.max("as_of_date")).first()[0])
show(
    scores.groupBy("target", "decile")
    .agg(F.count("*").alias("users"), F.avg("probability").alias("mean_probability"))
    .orderBy("target", "decile")
)
show_figure(charts.propensity_figure(charts.propensity_eval_data(lake)), "propensity", figures)
