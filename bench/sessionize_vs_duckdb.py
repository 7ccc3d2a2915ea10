#!/usr/bin/env python3
"""Benchmark: `sessionizer sessionize` against the DuckDB baseline, same file, same run.

Steps:
  1. make the data set with gen_events.py (skipped when the file exists);
  2. build sessionizer in release mode;
  3. alternate DuckDB and sessionizer runs (--repeat times each) on the same Parquet file;
  4. check that both found the same sessions (the order-independent checksum of
     bench_common.py, computed for sessionizer's output by DuckDB SQL), and
  5. print the medians: events/s for each, the ratios, and peak memory.

Usage (from the repository root):
  pip install -r bench/requirements.txt
  python3 bench/sessionize_vs_duckdb.py --events 10000000 --repeat 3

Goals (docs/benchmarks.md): end to end (Parquet in, sessions Parquet out) >= 5x DuckDB's
load + sessionize; the sessionize step alone >= 10x DuckDB's sessionize step.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_common import CK_BASE, EXCLUDED_TYPES, bucket_sql, make_checksum  # noqa: E402
from gen_events import size_label  # noqa: E402


def run_measured(cmd, **kwargs):
    """Runs cmd; returns (wall seconds, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, **kwargs)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def sessionizer_checksum(sessions_parquet):
    import duckdb
    con = duckdb.connect()
    con.execute(f"CREATE VIEW sessions AS SELECT user_id, start_ms, end_ms, length_ms, event_count "
                f"FROM read_parquet('{sessions_parquet}')")
    daily = con.execute("""SELECT start_ms // 86400000 AS day, count(*), sum(length_ms)
                           FROM sessions GROUP BY day""").fetchall()
    hist = con.execute(f"SELECT {bucket_sql()} AS bucket, count(*) FROM sessions GROUP BY bucket").fetchall()
    sess_stats = con.execute(f"""SELECT count(*), sum(length_ms), sum(event_count), sum(start_ms - {CK_BASE})
                                 FROM sessions""").fetchone()
    user_stats = con.execute(f"""SELECT count(*), sum(n), sum(first_seen - {CK_BASE}), sum(last_seen - {CK_BASE})
                                 FROM (SELECT user_id, count(*) AS n, min(start_ms) AS first_seen,
                                              max(end_ms) AS last_seen FROM sessions GROUP BY user_id)""").fetchone()
    return make_checksum(sess_stats, daily, hist, user_stats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=3, help="runs of each engine (medians are reported)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "bench", "out"))
    p.add_argument("--binary", default=None, help="a built sessionizer binary (default: cargo build --release)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--cross-check", action="store_true",
                   help="only check that both find the same sessions (no speed figures: e.g. a debug binary in tests)")
    args = p.parse_args()

    data = os.path.join(args.data_dir, f"events_{size_label(args.events)}_s{args.seed}.parquet")
    if not os.path.exists(data):
        print(f"generating {data} ...", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(HERE, "gen_events.py"), "--events", str(args.events),
                        "--seed", str(args.seed), "--out-dir", args.data_dir, "--formats", "parquet"], check=True)
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "-p", "sessionizer", "--quiet"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "sessionizer")

    out_sessions = os.path.join(args.data_dir, "sessionizer_sessions.parquet")
    stats_json = os.path.join(args.data_dir, "sessionizer_stats.json")
    duck, ours = [], []
    for i in range(args.repeat):
        wall, rss, out = run_measured([sys.executable, os.path.join(HERE, "baseline_duckdb.py"), "--file", data],
                                      stderr=subprocess.DEVNULL)
        result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
        duck.append(dict(e2e_s=result["load_s"] + result["sessionize_s"], sessionize_s=result["sessionize_s"],
                         rss_mb=rss, checksum=result["checksum"], events=result["events"]))
        wall, rss, _ = run_measured([binary, "sessionize", data, "-o", out_sessions, "--quiet",
                                     "--exclude-event-types", ",".join(EXCLUDED_TYPES), "--stats-json", stats_json])
        with open(stats_json) as f:
            stats = json.load(f)
        ours.append(dict(e2e_s=wall, sessionize_s=stats["timings_s"]["prepare"] + stats["timings_s"]["sessionize"],
                         timings=stats["timings_s"], rss_mb=rss, sessions=stats["sessions"]))
        print(f"run {i + 1}/{args.repeat}: duckdb e2e {duck[-1]['e2e_s']:.2f}s sessionize {duck[-1]['sessionize_s']:.2f}s"
              f" | sessionizer e2e {ours[-1]['e2e_s']:.2f}s sessionize {ours[-1]['sessionize_s']:.3f}s"
              f" {json.dumps(stats['timings_s'])}", file=sys.stderr)

    ck_duck = duck[-1]["checksum"]
    ck_ours = sessionizer_checksum(out_sessions)
    same = ck_duck == ck_ours
    events = duck[-1]["events"]
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    figures = dict(
        events=events, sessions=ck_ours["sessions"], repeat=args.repeat, loadavg_1m=os.getloadavg()[0],
        same_sessions=same, checksum_duckdb=ck_duck["md5"], checksum_sessionizer=ck_ours["md5"],
        duckdb=dict(e2e_s=med(duck, "e2e_s"), sessionize_s=med(duck, "sessionize_s"), peak_rss_mb=max(r["rss_mb"] for r in duck)),
        sessionizer=dict(e2e_s=med(ours, "e2e_s"), sessionize_s=med(ours, "sessionize_s"),
                         peak_rss_mb=max(r["rss_mb"] for r in ours)),
    )
    for name in ("duckdb", "sessionizer"):
        f = figures[name]
        f["e2e_events_per_s"] = round(events / f["e2e_s"])
        f["sessionize_events_per_s"] = round(events / f["sessionize_s"])
    figures["ratio_e2e"] = round(figures["duckdb"]["e2e_s"] / figures["sessionizer"]["e2e_s"], 2)
    figures["ratio_sessionize"] = round(figures["duckdb"]["sessionize_s"] / figures["sessionizer"]["sessionize_s"], 2)
    d, s = figures["duckdb"], figures["sessionizer"]
    print(f"events: {events:,}  sessions: {figures['sessions']:,}  same sessions as DuckDB: {same}"
          f" (checksum {ck_ours['md5']} vs {ck_duck['md5']})")
    if args.cross_check:
        if not same:
            print(json.dumps(dict(duckdb=ck_duck, sessionizer=ck_ours), indent=1), file=sys.stderr)
        sys.exit(0 if same else 1)
    print(f"{'':14}{'end to end':>22}{'sessionize step':>24}{'peak RSS':>12}")
    print(f"{'DuckDB':14}{d['e2e_s']:>9.2f}s {d['e2e_events_per_s'] / 1e6:>7.2f}M ev/s"
          f"{d['sessionize_s']:>10.3f}s {d['sessionize_events_per_s'] / 1e6:>7.2f}M ev/s{d['peak_rss_mb']:>9.0f} MiB")
    print(f"{'sessionizer':14}{s['e2e_s']:>9.2f}s {s['e2e_events_per_s'] / 1e6:>7.2f}M ev/s"
          f"{s['sessionize_s']:>10.3f}s {s['sessionize_events_per_s'] / 1e6:>7.2f}M ev/s{s['peak_rss_mb']:>9.0f} MiB")
    print(f"ratio (DuckDB time / sessionizer time): end to end {figures['ratio_e2e']}x (goal 5x), "
          f"sessionize step {figures['ratio_sessionize']}x (goal 10x); medians of {args.repeat} runs, "
          f"load average {figures['loadavg_1m']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if not same:
        print("MISMATCH: sessionizer and DuckDB found different sessions", file=sys.stderr)
        print(json.dumps(dict(duckdb=ck_duck, sessionizer=ck_ours), indent=1), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
