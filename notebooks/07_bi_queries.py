# Databricks notebook source
# MAGIC %md
# MAGIC # 07 · BI queries on the gold tables
# MAGIC
# MAGIC Every output is a Delta table: Spark SQL reads it by path, and so do DuckDB,
# MAGIC Power BI, Tableau and pandas (through `deltalake`). These are the questions a
# MAGIC marketer asks, as plain SQL. Parameters: `conf`, `set`.

# COMMAND ----------

from shopseg.notebook import notebook_config, notebook_params, show
from shopseg.pipeline import open_lakehouse

params = notebook_params(globals().get("dbutils"), {"conf": "conf/local.yaml", "set": ""})
config = notebook_config(params)
spark, lake = open_lakehouse(config)
for name in (
    "gold/user_segments",
    "gold/segment_profiles",
    "gold/customer_value",
    "gold/campaign_results",
    "gold/recommendations",
):
    lake.read(name).createOrReplaceTempView(name.split("/")[1])

# COMMAND ----------

# MAGIC %md
# MAGIC ## How big is each segment now, and what is it worth?

# COMMAND ----------

show(
    spark.sql("""
    SELECT p.segment_name, p.size, ROUND(p.share * 100, 1) AS share_pct,
           ROUND(p.mean_clv, 2) AS mean_clv, ROUND(p.at_risk_share * 100, 1) AS at_risk_pct,
           p.strategy
    FROM segment_profiles p
    WHERE p.as_of_date = (SELECT MAX(as_of_date) FROM segment_profiles)
    ORDER BY p.size DESC
    """)
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Which campaigns worked, and where? (interval above zero = a measured effect)

# COMMAND ----------

show(
    spark.sql("""
    SELECT campaign_id, segment_name, treated_users, control_users,
           ROUND(uplift * 100, 2) AS uplift_pts,
           ROUND(uplift_low * 100, 2) AS low_pts, ROUND(uplift_high * 100, 2) AS high_pts,
           uplift_low > 0 AS significant
    FROM campaign_results
    WHERE send_date = (SELECT MAX(send_date) FROM campaign_results)
    ORDER BY campaign_id, segment_name
    """)
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The most valuable customers at high risk of churning, with their segment

# COMMAND ----------

show(
    spark.sql("""
    SELECT v.user_id, s.segment_name, ROUND(v.clv, 2) AS clv, ROUND(v.p_alive, 3) AS p_alive
    FROM customer_value v
    JOIN user_segments s
      ON s.user_id = v.user_id AND s.as_of_date = (SELECT MAX(as_of_date) FROM user_segments)
    WHERE v.as_of_date = (SELECT MAX(as_of_date) FROM customer_value) AND v.churn_risk = 'high'
    ORDER BY v.clv DESC
    LIMIT 20
    """)
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Outside Spark: the same table through DuckDB (what a BI connector does)

# COMMAND ----------

try:
    import duckdb
    from deltalake import DeltaTable
except ImportError:
    print("duckdb is not installed here; `pip install duckdb` to run this cell")
else:
    local = lake.local_path("gold/segment_profiles")
    if local is None:
        print("the lakehouse is remote: point DuckDB's delta extension at it instead")
    else:
        profiles = DeltaTable(local).to_pyarrow_dataset()
        print(
            duckdb.sql(
                "SELECT segment_name, SUM(size) AS users FROM profiles GROUP BY 1 ORDER BY 2 DESC"
            )
        )
