# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Customer segments
# MAGIC
# MAGIC Runs stage `segment` (K-means and bisecting K-means swept over k, the number
# MAGIC of segments chosen by measurement), then shows the sweep, the profiles as lifts
# MAGIC against the population, a 2-D PCA view of a sample coloured by segment, and the
# MAGIC moves since the previous snapshot. Parameters: `conf`, `set`, `run` (`yes`/`no`).

# COMMAND ----------

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

params = notebook_params(
    globals().get("dbutils"), {"conf": "conf/local.yaml", "set": "", "run": "yes"}
)
config = notebook_config(params)
figures = figures_folder(config)

# COMMAND ----------

run_notebook_stages(params, config, ["segment"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## The k sweep: silhouette and stability per algorithm (chosen fit circled)

# COMMAND ----------

spark, lake = open_lakehouse(config)
sweep = charts.sweep_data(lake)
print(sweep.to_string(index=False))
show_figure(charts.sweep_figure(sweep), "segment_sweep", figures)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Profiles: each segment's median against the population's

# COMMAND ----------

show(
    lake.read("gold/segment_profiles").select(
        "as_of_date", "segment_name", "size", "share", "description", "strategy", "rules"
    )
)
show_figure(
    charts.profile_heatmap_figure(charts.profile_lifts_data(lake)), "segment_profiles", figures
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## A 2-D view: principal axes of the segmentation features, a sample of users

# COMMAND ----------

points = charts.pca_data(lake, config.segment.features, rows=2000, seed=config.segment.seed)
show_figure(charts.pca_figure(points), "segment_pca", figures)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Sizes over snapshots, and the moves since the previous one

# COMMAND ----------

sizes = charts.segment_sizes_data(lake)
show_figure(charts.segment_sizes_figure(sizes), "segment_sizes", figures)
print(charts.transitions_data(lake).to_string())
