"""DuckDB peer of the sessions board benchmark (crates/cli/benches/board.rs).

Loads the benchmark's sessions CSV (user_id, start_ms, length_ms, event_count,
open) into a table, then times the board's queries over day ranges: per day
sessions / total length / distinct users, the length histogram, the summary
(sessions, distinct users, total length, nearest-rank median and p90 with
quantile_disc, single-event sessions), the sessions-per-user distribution and
the open sessions. Prints one JSON object: load time, per-range timings of
every repetition, and the figures of the last repetition (for the exact
comparison the Rust side makes). Days are UTC days (the benchmark project's
time zone).
"""

import argparse
import json
import time

import duckdb

DAY_MS = 86_400_000
# Inclusive bounds of the sessions-per-user buckets: 1, 2, 3-5, 6-10, 11+.
PER_USER_BUCKETS = [(1, 1), (2, 2), (3, 5), (6, 10), (11, None)]


def bucket_case(column, bounds):
    """CASE expression: bucket i holds bounds[i-1] <= column < bounds[i]."""
    if not bounds:
        return "0"
    arms = " ".join(f"WHEN {column} < {b} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE {arms} ELSE {len(bounds)} END"


def per_user_case(column):
    arms = []
    for i, (low, high) in enumerate(PER_USER_BUCKETS):
        arms.append(f"WHEN {column} >= {low}" + (f" AND {column} <= {high}" if high is not None else "") + f" THEN {i}")
    return "CASE " + " ".join(arms) + " END"


def board(con, from_day, to_day, bounds):
    """The whole board for one range: the queries a dashboard would run."""
    where = f"day BETWEEN {from_day} AND {to_day}"
    days = con.execute(
        f"SELECT day, count(*), sum(length_ms), count(DISTINCT user_id) FROM s WHERE {where} GROUP BY day ORDER BY day"
    ).fetchall()
    histogram = con.execute(
        f"SELECT {bucket_case('length_ms', bounds)} AS b, count(*) FROM s WHERE {where} GROUP BY b ORDER BY b"
    ).fetchall()
    summary = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), coalesce(sum(length_ms), 0), quantile_disc(length_ms, 0.5), "
        f"quantile_disc(length_ms, 0.9), count(*) FILTER (WHERE event_count = 1) FROM s WHERE {where}"
    ).fetchone()
    per_user = con.execute(
        f"SELECT {per_user_case('n')} AS b, count(*) FROM "
        f"(SELECT user_id, count(*) AS n FROM s WHERE {where} GROUP BY user_id) GROUP BY b ORDER BY b"
    ).fetchall()
    open_sessions = con.execute("SELECT count(*) FROM s WHERE open").fetchone()[0]

    by_day = {d: (n, total, users) for d, n, total, users in days}
    buckets = dict(histogram)
    spu = dict(per_user)
    return {
        "from_day": from_day,
        "days": [
            {"sessions": by_day.get(d, (0, 0, 0))[0], "total_length_ms": int(by_day.get(d, (0, 0, 0))[1]),
             "users": by_day.get(d, (0, 0, 0))[2]}
            for d in range(from_day, to_day + 1)
        ],
        "length_buckets": [buckets.get(i, 0) for i in range(len(bounds) + 1)],
        "sessions": summary[0],
        "users": summary[1],
        "total_length_ms": int(summary[2]),
        "median_length_ms": summary[3],
        "p90_length_ms": summary[4],
        "single_event_sessions": summary[5],
        "sessions_per_user": [spu.get(i, 0) for i in range(len(PER_USER_BUCKETS))],
        "open_sessions": open_sessions,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", required=True)
    parser.add_argument("--range", action="append", required=True, help="FROM_DAY:TO_DAY (days since 1970-01-01)")
    parser.add_argument("--bounds-ms", default="")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bounds = [int(b) for b in args.bounds_ms.split(",") if b]

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(
        f"CREATE TABLE s AS SELECT user_id, start_ms, length_ms, event_count, open, "
        f"(start_ms // {DAY_MS})::INTEGER AS day FROM read_csv('{args.csv}', header = true, "
        "columns = {'user_id': 'INTEGER', 'start_ms': 'BIGINT', 'length_ms': 'BIGINT', "
        "'event_count': 'INTEGER', 'open': 'BOOLEAN'})"
    )
    load_s = time.perf_counter() - started

    ranges = []
    for text in args.range:
        from_day, to_day = (int(part) for part in text.split(":"))
        seconds = []
        figures = None
        for _ in range(args.repeat):
            started = time.perf_counter()
            figures = board(con, from_day, to_day, bounds)
            seconds.append(time.perf_counter() - started)
        ranges.append({"from_day": from_day, "to_day": to_day, "seconds": seconds, "figures": figures})

    print(json.dumps({
        "duckdb_version": duckdb.__version__,
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "load_s": load_s,
        "ranges": ranges,
    }))


if __name__ == "__main__":
    main()
