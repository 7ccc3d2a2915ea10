#!/usr/bin/env python3
"""The embedded store's board queries at N sessions: SQLite against DuckDB.

Builds the same synthetic sessions table (the server's `sessions` schema) in
a SQLite file and a DuckDB file, then times the queries the dashboard needs:

  daily      sessions and total length per day (one month)
  histogram  sessions per length bucket (one month)
  summary    count, average, median and p90 length (one month)
  user       one user's usage (count, first, last, total): a point lookup
  filtered   the 100 latest sessions longer than 30 minutes (one month)

For SQLite it also times the same daily and histogram answers read from
rollup tables (per day counts and sums; per day length-bucket counts), which
is how a row store would serve the board.

Usage: python3 bench/storage_choice.py [--sessions 10000000] [--repeat 3] [--json FILE]
Needs numpy and duckdb (bench/requirements.txt); sqlite3 is Python's own.
"""
import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time

import duckdb
import numpy as np

DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAYS = 90
BOUNDS_MS = [10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000]


def sessions(n, seed=42):
    rng = np.random.default_rng(seed)
    # 1M users, mildly skewed (a few heavy users, most light).
    users = np.minimum(rng.lognormal(0, 1.0, n) * 150_000, 999_999).astype(np.int64)
    start = T0 + rng.integers(0, DAYS * DAY_MS, n)
    length = np.minimum(rng.lognormal(11.5, 1.6, n).astype(np.int64), 8 * 3_600_000)
    count = 1 + (length // 60_000) + rng.integers(0, 5, n)
    return users, start, length, count


def bucket_case(column):
    parts = " ".join(f"WHEN {column} < {b} THEN {i}" for i, b in enumerate(BOUNDS_MS))
    return f"CASE {parts} ELSE {len(BOUNDS_MS)} END"


def queries(month_from, month_to, user, int_div):
    where = f"project = 1 AND start_ms >= {month_from} AND start_ms < {month_to}"
    length = "(end_ms - start_ms)"
    return {
        "daily": f"SELECT start_ms {int_div} {DAY_MS} AS day, count(*), sum({length}) FROM sessions WHERE {where} GROUP BY day ORDER BY day",
        "histogram": f"SELECT {bucket_case(length)} AS b, count(*) FROM sessions WHERE {where} GROUP BY b ORDER BY b",
        "user": f"SELECT count(*), min(start_ms), max(end_ms), sum({length}) FROM sessions WHERE project = 1 AND user_kind = 0 AND user_key = 'user-{user}'",
        "filtered": f"SELECT user_key, start_ms, {length} FROM sessions WHERE {where} AND {length} >= 1800000 ORDER BY start_ms DESC LIMIT 100",
    }


def timed(run, repeat):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


SCHEMA = """CREATE TABLE sessions (
    project INTEGER NOT NULL, user_kind INTEGER NOT NULL, user_key TEXT NOT NULL, session_id INTEGER NOT NULL,
    session_uid TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, last_event_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL, end_reason TEXT, concluded INTEGER NOT NULL, entry_event_type TEXT NOT NULL,
    entry_page TEXT, exit_event_type TEXT NOT NULL, exit_page TEXT, revision INTEGER NOT NULL,
    PRIMARY KEY (project, user_kind, user_key, session_id))"""


def rows(users, start, length, count):
    for u, s, l, c in zip(users.tolist(), start.tolist(), length.tolist(), count.tolist()):
        yield (1, 0, f"user-{u}", s, f"uid-{u}-{s}", s, s + l, s + l, c, "inactivity", 1, "Page Viewed", "/", "Page Viewed", "/", 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    users, start, length, count = sessions(args.sessions)
    month_from, month_to = T0 + 30 * DAY_MS, T0 + 60 * DAY_MS
    # A typical user: the median session count.
    per_user = np.bincount(users)
    typical_user = int(np.argsort(per_user)[len(per_user) - len(per_user[per_user > 0]) // 2])
    qs = queries(month_from, month_to, typical_user, "/")  # SQLite: integer division
    duck_qs = queries(month_from, month_to, typical_user, "//")  # DuckDB: `/` is float division
    results = {"sessions": args.sessions, "sqlite_version": sqlite3.sqlite_version, "duckdb_version": duckdb.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        # SQLite: the server's schema and pragmas.
        path = os.path.join(tmp, "s.db")
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA cache_size = -262144")
        con.execute(SCHEMA + " WITHOUT ROWID")
        con.execute("CREATE INDEX sessions_start ON sessions (project, start_ms)")
        started = time.perf_counter()
        con.executemany("INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        rows(users, start, length, count))
        con.commit()
        results["sqlite_load_s"] = time.perf_counter() - started
        # Rollups a row store would maintain as sessions change.
        con.execute(f"CREATE TABLE daily AS SELECT project, start_ms / {DAY_MS} AS day, count(*) AS n, "
                    f"sum(end_ms - start_ms) AS total FROM sessions GROUP BY 1, 2")
        con.execute(f"CREATE TABLE buckets AS SELECT project, start_ms / {DAY_MS} AS day, "
                    f"{bucket_case('(end_ms - start_ms)')} AS b, count(*) AS n FROM sessions GROUP BY 1, 2, 3")
        con.commit()
        day_from, day_to = month_from // DAY_MS, month_to // DAY_MS
        rollups = {
            "daily (rollup)": f"SELECT day, n, total FROM daily WHERE project = 1 AND day >= {day_from} AND day < {day_to} ORDER BY day",
            "histogram (rollup)": f"SELECT b, sum(n) FROM buckets WHERE project = 1 AND day >= {day_from} AND day < {day_to} GROUP BY b ORDER BY b",
        }
        sqlite_summary = (
            f"SELECT count(*), avg(end_ms - start_ms) FROM sessions WHERE project = 1 AND start_ms >= {month_from} AND start_ms < {month_to}")

        def sqlite_percentiles():
            lengths = [r[0] for r in con.execute(
                f"SELECT end_ms - start_ms AS l FROM sessions WHERE project = 1 AND start_ms >= {month_from} "
                f"AND start_ms < {month_to} ORDER BY l")]
            return lengths[len(lengths) // 2], lengths[int(len(lengths) * 0.9)]

        sq = {name: timed(lambda q=q: con.execute(q).fetchall(), args.repeat) for name, q in qs.items()}
        sq["summary"] = timed(lambda: (con.execute(sqlite_summary).fetchall(), sqlite_percentiles()), args.repeat)
        sq.update({name: timed(lambda q=q: con.execute(q).fetchall(), args.repeat) for name, q in rollups.items()})
        results["sqlite_file_mb"] = os.path.getsize(path) / 1e6
        con.close()

        # DuckDB: the same table.
        dpath = os.path.join(tmp, "s.duckdb")
        dcon = duckdb.connect(dpath)
        dcon.execute("SET threads = 2")
        started = time.perf_counter()
        dcon.execute(SCHEMA.replace("TEXT", "VARCHAR").replace("INTEGER", "BIGINT"))
        import pyarrow as pa
        arrow_sessions = pa.table({
            "project": np.ones(len(users), dtype=np.int64), "user_kind": np.zeros(len(users), dtype=np.int64),
            "user_key": pa.array([f"user-{u}" for u in users.tolist()]), "session_id": start,
            "session_uid": pa.array([f"uid-{u}-{s}" for u, s in zip(users.tolist(), start.tolist())]),
            "start_ms": start, "end_ms": start + length, "last_event_ms": start + length, "event_count": count,
            "end_reason": pa.array(["inactivity"] * len(users)), "concluded": np.ones(len(users), dtype=np.int64),
            "entry_event_type": pa.array(["Page Viewed"] * len(users)), "entry_page": pa.array(["/"] * len(users)),
            "exit_event_type": pa.array(["Page Viewed"] * len(users)), "exit_page": pa.array(["/"] * len(users)),
            "revision": np.ones(len(users), dtype=np.int64),
        })
        # Duplicate (user, start) pairs from the generator: keep one, as the primary key demands.
        dcon.execute("INSERT INTO sessions SELECT DISTINCT ON (project, user_kind, user_key, session_id) * FROM arrow_sessions")
        results["duckdb_load_s"] = time.perf_counter() - started
        dk = {name: timed(lambda q=q: dcon.execute(q).fetchall(), args.repeat) for name, q in duck_qs.items()}
        dk["summary"] = timed(lambda: dcon.execute(
            f"SELECT count(*), avg(end_ms - start_ms), median(end_ms - start_ms), quantile_cont(end_ms - start_ms, 0.9) "
            f"FROM sessions WHERE project = 1 AND start_ms >= {month_from} AND start_ms < {month_to}").fetchall(), args.repeat)
        dcon.close()
        results["duckdb_file_mb"] = os.path.getsize(dpath) / 1e6
    results["sqlite_s"], results["duckdb_s"] = sq, dk
    print(f"{args.sessions:,} sessions; SQLite {sqlite3.sqlite_version}, DuckDB {duckdb.__version__}; medians of {args.repeat}")
    print(f"{'query':<22}{'SQLite':>12}{'DuckDB':>12}")
    for name in list(qs) + ["summary"] + list(rollups):
        duck = f"{dk[name] * 1000:10.1f}ms" if name in dk else f"{'-':>12}"
        print(f"{name:<22}{sq[name] * 1000:10.1f}ms{duck}")
    print(f"load: SQLite {results['sqlite_load_s']:.1f}s ({results['sqlite_file_mb']:.0f} MB), "
          f"DuckDB {results['duckdb_load_s']:.1f}s ({results['duckdb_file_mb']:.0f} MB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
