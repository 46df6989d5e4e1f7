"""The DuckDB peer of `make bench`'s `ingest` row: a JSON-lines source validated in SQL.

The same rules as the ingest stage, from the same `SourceConf` (written again
in SQL, not shared code): every non-blank line is a record; a line that is
not a JSON object is `malformed_record`; each column's field is read as text
(blank = missing), parsed to its type (integers also from `12.0`), and
checked in the configuration's column order: `bad_type`, `missing` (required
and key columns), `out_of_range` (min, then max), `unknown_value`, `future`
(after the ingest time plus the tolerance); the failed checks of a record
are joined by `;`. Among the valid records the first of each key in file
order (path, then line) is loaded, the others are `duplicate_key`. Loaded
rows and the quarantine are written as Parquet, as the stage writes bronze.

`accounting(result)` gives the counts the bench compares with the stage's:
records read, loaded, and quarantined per reason.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

SQL_TYPES = {"long": "BIGINT", "int": "INTEGER", "double": "DOUBLE", "timestamp": "TIMESTAMP"}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parsed(raw: str, kind: str) -> str:
    if kind == "string":
        return raw
    if kind in ("long", "int"):
        target = SQL_TYPES[kind]
        text = f"trim({raw})"
        # A whole number as text, else a double that is whole (`12.0`).
        digits = f"regexp_full_match({text}, '[+-]?[0-9]+')"
        whole = f"CASE WHEN {digits} THEN TRY_CAST({text} AS {target}) END"
        as_double = f"TRY_CAST({text} AS DOUBLE)"
        is_whole = f"{as_double} = floor({as_double})"
        integral = f"CASE WHEN {is_whole} THEN TRY_CAST({as_double} AS {target}) END"
        return f"coalesce({whole}, {integral})"
    if kind == "timestamp":
        return f"TRY_CAST(TRY_CAST(trim({raw}) AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST(trim({raw}) AS {SQL_TYPES[kind]})"


def validation_sql(
    files_glob: str, source, ingested_at: dt.datetime, tolerance_minutes: int
) -> str:
    """One row per record: the file, the line number, each typed column and `reason`."""
    unsupported = [c for c, spec in source.columns.items() if spec.expr or spec.format]
    if source.format != "json" or source.constants or unsupported:
        raise ValueError(
            "the DuckDB peer reads JSON-lines sources whose columns are fields by name "
            f"(not {source.format}, constants {list(source.constants)}, columns {unsupported})"
        )
    limit = ingested_at + dt.timedelta(minutes=tolerance_minutes)
    columns, checks = [], []
    for target, spec in source.columns.items():
        field = spec.source or target
        raw = f"nullif(try(json_extract_string(line, {_quote('$.' + field)})), '')"
        value = f'"{target}"'
        columns.append(f'{_parsed(raw, spec.type)} AS {value}, {raw} AS "_raw_{target}"')
        checks.append(f"CASE WHEN \"_raw_{target}\" IS NOT NULL AND {value} IS NULL "
                      f"THEN 'bad_type:{target}' END")  # fmt: skip
        if spec.required or target in source.key:
            checks.append(f"CASE WHEN \"_raw_{target}\" IS NULL THEN 'missing:{target}' END")
        if spec.min is not None:
            checks.append(f"CASE WHEN {value} < {spec.min} THEN 'out_of_range:{target}' END")
        if spec.max is not None:
            checks.append(f"CASE WHEN {value} > {spec.max} THEN 'out_of_range:{target}' END")
        if spec.allowed:
            allowed = ", ".join(_quote(a) for a in spec.allowed)
            checks.append(f"CASE WHEN {value} IS NOT NULL AND {value} NOT IN ({allowed}) "
                          f"THEN 'unknown_value:{target}' END")  # fmt: skip
        if spec.type in ("date", "timestamp"):
            checks.append(f"CASE WHEN {value} > TIMESTAMP '{limit:%Y-%m-%d %H:%M:%S}' "
                          f"THEN 'future:{target}' END")  # fmt: skip
    key = ", ".join(f'"{k}"' for k in source.key)
    return f"""
WITH files AS (
  SELECT filename, content FROM read_text({_quote(files_glob)})
), split AS (
  SELECT filename, regexp_split_to_array(content, '\\r\\n|\\n|\\r') AS parts FROM files
), lines AS (
  -- Two unnests of lists of one length in one SELECT are zipped, row by row.
  SELECT * FROM (
    SELECT filename, unnest(range(1, len(parts) + 1)) AS line_no, unnest(parts) AS line
    FROM split
  ) WHERE trim(line) <> ''
), parsed AS (
  SELECT filename, line_no, line,
         coalesce(try(json_type(line)), '') <> 'OBJECT' AS malformed
  FROM lines
), typed AS (
  SELECT filename, line_no, malformed, {", ".join(columns)}
  FROM (SELECT filename, line_no, malformed,
               CASE WHEN malformed THEN NULL ELSE line END AS line FROM parsed)
), checked AS (
  SELECT *, CASE WHEN malformed THEN 'malformed_record'
                 ELSE concat_ws(';', {", ".join(checks)}) END AS reason
  FROM typed
)
SELECT * EXCLUDE (reason),
       CASE WHEN reason = '' AND row_number() OVER (
              PARTITION BY {key}, reason = '' ORDER BY filename, line_no) > 1
            THEN 'duplicate_key' ELSE reason END AS reason
FROM checked
"""


def run(files_glob: str, source, out: Path, tolerance_minutes: int = 5) -> dict:
    """Validate, write `loaded.parquet` and `quarantine.parquet` under `out`, account."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    # Spill beside the output, bounded: a runaway plan fails instead of filling the disk.
    con.execute(f"SET temp_directory = {_quote(str(out / '_spill'))}")
    con.execute("SET max_temp_directory_size = '4GB'")
    sql = validation_sql(files_glob, source, dt.datetime.now(dt.UTC), tolerance_minutes)
    con.execute(f"CREATE TEMP TABLE result AS {sql}")
    kept = ", ".join(f'"{c}"' for c in source.columns)
    out.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"COPY (SELECT {kept} FROM result WHERE reason = '') TO "
        f"{_quote(str(out / 'loaded.parquet'))} (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT filename, line_no, reason FROM result WHERE reason <> '') TO "
        f"{_quote(str(out / 'quarantine.parquet'))} (FORMAT parquet)"
    )
    counts = accounting(con)
    con.close()
    return counts


def accounting(con) -> dict:
    read, loaded = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE reason = '') FROM result"
    ).fetchone()
    reasons = dict(
        con.execute(
            "SELECT reason, count(*) FROM result WHERE reason <> '' GROUP BY reason"
        ).fetchall()
    )
    return {"records_read": read, "loaded": loaded, "quarantined": reasons}
