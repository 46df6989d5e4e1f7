"""The `features` stage's user metrics computed by DuckDB, for the benchmark.

Same definitions as `shopseg.features.build_user_metrics` (without order ids:
frequency counts purchase lines; monetary net of returns), written the way
DuckDB likes them (distinct counts and FILTER clauses rather than Spark's
two-step plan), over the same Parquet files the Delta snapshots list.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from shopseg.features import column_suffix


def snapshot_files(table_path: str) -> list[str]:
    return DeltaTable(table_path).file_uris()


def user_metrics_sql(
    as_of: dt.date,
    lookback_days: int | None,
    categories: Sequence[str],
    demographics: Mapping[str, Sequence[str]],
) -> str:
    start = (
        f"AND e.event_date >= DATE '{as_of - dt.timedelta(days=lookback_days)}'"
        if lookback_days
        else ""
    )
    cat_counts = ",\n".join(
        f"count(*) FILTER (WHERE category = '{c}') AS cat_{i}" for i, c in enumerate(categories)
    )
    cat_shares = ",\n".join(
        f"CASE WHEN n_events > 0 THEN coalesce(cat_{i}, 0) / n_events END "
        f"AS share_{column_suffix(c)}"
        for i, c in enumerate(categories)
    )
    one_hot = ",\n".join(
        f"CASE WHEN {col} = '{v}' THEN 1 ELSE 0 END AS {col}_{column_suffix(v)}"
        for col, values in demographics.items()
        for v in values
    )
    return f"""
WITH ev AS (
    SELECT e.*, i.category
    FROM events e LEFT JOIN items i USING (item_id)
    WHERE e.event_date < DATE '{as_of}' {start}
),
purchase_days AS (
    SELECT user_id, event_date,
           event_date - lag(event_date) OVER (PARTITION BY user_id ORDER BY event_date) AS gap
    FROM (SELECT DISTINCT user_id, event_date FROM ev WHERE event_type = 'purchase')
),
gaps AS (
    SELECT user_id, avg(gap) AS mean_gap, stddev_samp(gap) AS std_gap
    FROM purchase_days GROUP BY user_id
),
per_user AS (
    SELECT user_id,
        min(event_date) AS first_event_date,
        max(event_date) AS last_event_date,
        max(event_date) FILTER (WHERE event_type = 'purchase') AS last_purchase_date,
        count(*) FILTER (WHERE event_type = 'purchase') AS lines,
        sum(amount) FILTER (WHERE event_type = 'purchase') AS purchased,
        count(*) FILTER (WHERE event_type = 'return') AS returns,
        sum(amount) FILTER (WHERE event_type = 'return') AS returned,
        count(DISTINCT event_date) FILTER (WHERE event_type = 'purchase') AS purchase_days,
        count(DISTINCT event_date) AS active_days,
        count(DISTINCT session_id) AS sessions,
        count(*) FILTER (WHERE event_type = 'view') AS views,
        count(*) FILTER (WHERE event_type = 'cart') AS carts,
        count(*) FILTER (WHERE event_type = 'purchase' AND discount > 0) AS discounted,
        sum(dwell_seconds) AS dwell_sum, count(dwell_seconds) AS dwell_n,
        count(*) FILTER (WHERE event_type = 'review') AS reviews,
        sum(rating) FILTER (WHERE event_type = 'review') AS rating_sum,
        count(rating) FILTER (WHERE event_type = 'review') AS rating_n,
        count(*) AS n_events{"," if cat_counts else ""}
        {cat_counts}
    FROM ev GROUP BY user_id
),
profiles AS (
    SELECT user_id, signup_ts, age, gender, region, channel FROM users
    WHERE signup_ts IS NULL OR CAST(signup_ts AS DATE) < DATE '{as_of}'
),
joined AS (
    SELECT coalesce(p.user_id, u.user_id) AS user_id, p.signup_ts, p.age, p.gender,
           p.region, p.channel, u.* EXCLUDE (user_id),
           -- Purchase lines, not orders: the benchmark's snapshot has no order ids.
           u.lines AS frequency
    FROM profiles p FULL OUTER JOIN per_user u ON p.user_id = u.user_id
)
SELECT j.user_id,
    DATE '{as_of}' AS as_of_date,
    DATE '{as_of}' - last_purchase_date AS recency_days,
    DATE '{as_of}' - last_event_date AS inactive_days,
    coalesce(frequency, 0) AS frequency,
    coalesce(purchased, 0.0) - coalesce(returned, 0.0) AS monetary,
    CASE WHEN frequency > 0 THEN coalesce(purchased, 0.0) / frequency END AS avg_order_value,
    CASE WHEN frequency > 0 THEN lines / frequency END AS lines_per_order,
    coalesce(returns, 0) AS returns,
    CASE WHEN purchased > 0 THEN coalesce(returned, 0.0) / purchased END AS return_rate,
    DATE '{as_of}' - least(CAST(signup_ts AS DATE), first_event_date) AS tenure_days,
    coalesce(purchase_days, 0) AS purchase_days,
    g.mean_gap AS mean_days_between_purchases,
    g.std_gap AS std_days_between_purchases,
    coalesce(active_days, 0) AS active_days,
    coalesce(sessions, 0) AS sessions,
    coalesce(views, 0) AS views,
    coalesce(carts, 0) AS carts,
    CASE WHEN views > 0 THEN carts / views END AS cart_rate,
    CASE WHEN views > 0 THEN frequency / views END AS conversion_rate,
    CASE WHEN dwell_n > 0 THEN dwell_sum / dwell_n END AS mean_dwell_seconds,
    CASE WHEN lines > 0 THEN discounted / lines END AS discount_share,
    coalesce(reviews, 0) AS review_count,
    CASE WHEN rating_n > 0 THEN rating_sum / rating_n END AS mean_rating,
    first_event_date, last_purchase_date, last_event_date,
    age, gender, region, channel{"," if cat_shares else ""}
    {cat_shares}{"," if one_hot else ""}
    {one_hot}
FROM joined j LEFT JOIN gaps g ON j.user_id = g.user_id
"""


def duckdb_user_metrics(
    events_files: Sequence[str],
    users_files: Sequence[str],
    items_files: Sequence[str],
    as_of: dt.date,
    lookback_days: int | None,
    categories: Sequence[str],
    demographics: Mapping[str, Sequence[str]],
    threads: int | None = None,
) -> pa.Table:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({list(events_files)!r})")
    con.execute(f"CREATE VIEW users AS SELECT * FROM read_parquet({list(users_files)!r})")
    con.execute(f"CREATE VIEW items AS SELECT * FROM read_parquet({list(items_files)!r})")
    sql = user_metrics_sql(as_of, lookback_days, categories, demographics)
    return con.sql(sql).fetch_arrow_table()
