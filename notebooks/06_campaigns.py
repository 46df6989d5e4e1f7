# Databricks notebook source
# MAGIC %md
# MAGIC # 06 · Campaigns, measured uplift and uplift targeting
# MAGIC
# MAGIC Runs `audiences` (who gets which campaign, with a random holdout per
# MAGIC campaign), `simulate_outcomes` (synthetic responses; on real data skip it and
# MAGIC point `evaluate.outcomes_table` at your events), `evaluate` (uplift of the
# MAGIC treated over the holdout, with intervals) and `uplift` (whom the randomized
# MAGIC trial's offer changes: uplift models, and targeting by expected gain against
# MAGIC propensity, a segment rule and random). Parameters: `conf`, `set`, `run`.

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
from shopseg.tables import CAMPAIGN_AUDIENCES

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["audiences", "simulate_outcomes", "evaluate", "uplift"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Audience sizes: treated and holdout users per campaign

# COMMAND ----------

spark, lake = open_lakehouse(config)
audiences = lake.read(CAMPAIGN_AUDIENCES.name)
latest_send = audiences.agg(F.max("send_date")).first()[0]
show(
    audiences.filter(F.col("send_date") == F.lit(latest_send))
    .groupBy("campaign_id", "variant")
    .count()
    .orderBy("campaign_id", "variant")
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Uplift: conversion of treated minus holdout users, with its interval

# COMMAND ----------

results = charts.uplift_data(lake)
columns = ["campaign_id", "segment_name", "treated_users", "control_users", "uplift"]
print(results[[*columns, "uplift_low", "uplift_high", "revenue_uplift"]].to_string())
show_figure(charts.uplift_figure(results), "campaign_uplift", figures)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Whom the offer changes: uplift models from the randomized trial
# MAGIC
# MAGIC Qini curves of the learners on the trial's held-out users, the chosen
# MAGIC learner's measured uplift by predicted decile and, on synthetic data, the
# MAGIC planted incremental conversions of each way to choose the same number of
# MAGIC contacts (`planted_optimum` is the ceiling).

# COMMAND ----------

evaluation = charts.uplift_eval_data(lake)
targeting = charts.uplift_targeting_data(lake)
deciles = evaluation[evaluation["curve"] == "decile"]
print(deciles[["method", "x", "y", "low", "high", "users"]].to_string(index=False))
if targeting is not None:
    print(targeting.to_string(index=False))
show_figure(charts.uplift_model_figure(evaluation, targeting), "uplift_model", figures)
