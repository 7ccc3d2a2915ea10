#!/usr/bin/env python3
# Copied from the design notes (shared/bench) so the repository stands alone.
"""DuckDB baseline: LAG window + running SUM (gaps-and-islands) in SQL."""
import duckdb

from bench_common import (CK_BASE, EXCL_SQL, TIMEOUT_MS, Timer, bucket_sql,
                          make_checksum, parse_args, report)


def extra(p):
    p.add_argument("--format", choices=["parquet", "ndjson"], default="parquet",
                   help="load from parquet (default) or the .ndjson twin")


args = parse_args("duckdb", extra)
con = duckdb.connect()  # in-memory database
if args.threads:
    con.execute(f"SET threads = {args.threads}")
con.execute("SET preserve_insertion_order = false")
T = Timer()

src = args.file
if args.format == "ndjson":
    src = args.file.replace("_u64.parquet", ".parquet").replace(".parquet", ".ndjson")
    reader = (f"read_json('{src}', format='newline_delimited', columns="
              "{user_id: 'VARCHAR', event_type: 'VARCHAR', time: 'BIGINT', insert_id: 'VARCHAR'})")
else:
    reader = f"read_parquet('{src}')"

with T("load"):
    con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}")
n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]

# NB: the running SUM uses the default RANGE frame, so rows with equal time
# (peers) get the same session number even if the two windows order ties
# differently.  ROWS framing here would be a correctness bug on ties.
SESSIONIZE = f"""
CREATE TABLE sessions AS
WITH flagged AS (
  SELECT user_id, time,
         CASE WHEN time - LAG(time) OVER (PARTITION BY user_id ORDER BY time) < {TIMEOUT_MS}
              THEN 0 ELSE 1 END AS is_new
  FROM events
  WHERE event_type NOT IN ({EXCL_SQL})
), numbered AS (
  SELECT user_id, time,
         SUM(is_new) OVER (PARTITION BY user_id ORDER BY time) AS sess_no
  FROM flagged
)
SELECT user_id,
       MIN(time) AS session_id,
       MIN(time) AS start_ms,
       MAX(time) AS end_ms,
       MAX(time) - MIN(time) AS length_ms,
       COUNT(*) AS event_count
FROM numbered
GROUP BY user_id, sess_no
"""
with T("sessionize"):
    con.execute(SESSIONIZE)

with T("aggregate"):
    daily = con.execute(f"""SELECT start_ms // 86400000 AS day, count(*) AS sessions,
                                   sum(length_ms) AS total_len
                            FROM sessions GROUP BY day ORDER BY day""").fetchall()
    hist = con.execute(f"""SELECT {bucket_sql()} AS bucket, count(*)
                           FROM sessions GROUP BY bucket ORDER BY bucket""").fetchall()
    con.execute("""CREATE TABLE user_stats AS
                   SELECT user_id, count(*) AS n_sessions, min(start_ms) AS first_seen,
                          max(end_ms) AS last_seen
                   FROM sessions GROUP BY user_id""")

sess_stats = con.execute(f"""SELECT count(*), sum(length_ms), sum(event_count),
                                    sum(start_ms - {CK_BASE}) FROM sessions""").fetchone()
user_stats = con.execute(f"""SELECT count(*), sum(n_sessions), sum(first_seen - {CK_BASE}),
                                    sum(last_seen - {CK_BASE}) FROM user_stats""").fetchone()
ck = make_checksum(sess_stats, daily, hist, user_stats)
report("duckdb", args, n_events, T, ck, variant="ndjson" if args.format == "ndjson" else None)
