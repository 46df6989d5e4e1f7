# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Recommendations
# MAGIC
# MAGIC Runs stage `recommend` (ALS on implicit feedback, evaluated on each user's
# MAGIC held-out last days against popularity baselines), then compares the methods and
# MAGIC puts one user's history next to their recommendations. Parameters: `conf`,
# MAGIC `set`, `run` (`yes`/`no`), `user_id` (empty: a user with the most interactions).

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
from shopseg.tables import BRONZE_ITEMS, RECOMMENDATIONS, SILVER_EVENTS

params = notebook_params(
    globals().get("dbutils"),
    {"conf": "conf/local.yaml", "set": "", "run": "yes", "user_id": ""},
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["recommend"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## ALS against the baselines, on the same held-out interactions

# COMMAND ----------

spark, lake = open_lakehouse(config)
scores = charts.recommendation_metrics_data(lake)
print(scores[["method", "params", "precision", "recall", "ndcg", "map", "coverage"]].to_string())
show_figure(charts.recommendation_metrics_figure(scores), "recommendation_metrics", figures)

# COMMAND ----------

# MAGIC %md
# MAGIC ## One user's history next to their recommendations

# COMMAND ----------

events = lake.read(SILVER_EVENTS.name).where("item_id IS NOT NULL")
if params["user_id"]:
    user = int(params["user_id"])
else:
    user = events.groupBy("user_id").count().orderBy(F.desc("count"), "user_id").first()[0]
items = (
    lake.read(BRONZE_ITEMS.name).select("item_id", "category", "price").dropDuplicates(["item_id"])
)
print(f"user {user}")
show(
    events.filter(F.col("user_id") == user)
    .groupBy("item_id")
    .agg(F.count("*").alias("events"), F.collect_set("event_type").alias("types"))
    .join(items, "item_id", "left")
    .orderBy(F.desc("events"))
    .limit(15)
)
recs = lake.read(RECOMMENDATIONS.name)
show(
    recs.filter(F.col("user_id") == user)
    .filter(F.col("as_of_date") == recs.agg(F.max("as_of_date")).first()[0])
    .join(items, "item_id", "left")
    .orderBy("rank")
    .select("rank", "item_id", "category", "price", "score", "source")
)
