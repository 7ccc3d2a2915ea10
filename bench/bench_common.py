# Copied from the design notes (shared/bench) so the repository stands alone.
"""Shared definitions for the sessionization baselines.

Semantics (every engine must implement exactly this):
  * drop events whose event_type is in EXCLUDED_TYPES;
  * order each user's remaining events by time (ties: any order);
  * a new session starts at a user's first event and whenever
    time - previous_time >= TIMEOUT_MS (a gap equal to the timeout starts a new session);
  * session record: user_id, session_id = start_ms = min time,
    end_ms = max time, length_ms = end_ms - start_ms, event_count;
  * aggregates over sessions:
      daily : day = start_ms // 86_400_000 (UTC day of the session start),
              sessions per day and sum(length_ms) per day
      hist  : bucket = number of edges e in HIST_EDGES_MS with length_ms >= e
              (bucket 0 = [0,10s), 1 = [10s,30s), ..., 9 = [2h, inf))
      users : per user count(sessions), first_seen = min(start_ms),
              last_seen = max(end_ms)
The checksum is order independent, so engines can be compared directly.
"""
import argparse
import hashlib
import json
import os
import resource
import sys
import time

TIMEOUT_MS = 30 * 60 * 1000
EXCLUDED_TYPES = ["Notification Sent", "Email Sent", "Push Delivered"]
HIST_EDGES_MS = [10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
                 1_800_000, 3_600_000, 7_200_000]
DAY_MS = 86_400_000
CK_BASE = 1_700_000_000_000  # subtracted before summing timestamps (no overflow)

EXCL_SQL = ", ".join("'" + t + "'" for t in EXCLUDED_TYPES)


def bucket_sql(col="length_ms", cast="::INTEGER"):
    return " + ".join(f"({col} >= {e}){cast}" for e in HIST_EDGES_MS)


def parse_args(engine, extra=None):
    p = argparse.ArgumentParser(description=f"sessionization baseline: {engine}")
    p.add_argument("--file", required=True, help="events parquet file")
    p.add_argument("--threads", type=int, default=0, help="0 = engine default")
    if extra:
        extra(p)
    return p.parse_args()


def cpu_s():
    """user+system CPU seconds of this process (all threads, incl. embedded engines)"""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Timer:
    """Wall time and process CPU time per phase.  CPU time is less sensitive
    to other tenants on a shared box than wall time."""

    def __init__(self):
        self.t = {}
        self.cpu = {}

    def __call__(self, name):
        timer = self

        class _C:
            def __enter__(self):
                self.s = time.perf_counter()
                self.c = cpu_s()

            def __exit__(self, *a):
                timer.t[name] = time.perf_counter() - self.s
                timer.cpu[name] = cpu_s() - self.c
        return _C()


def make_checksum(sess_stats, daily_rows, hist_rows, user_stats):
    """sess_stats: (n, sum_len, sum_events, sum_start_off)
    daily_rows: iterable of (day, sessions, total_len)
    hist_rows: iterable of (bucket, count)
    user_stats: (n_users, sum_sessions, sum_first_off, sum_last_off)"""
    daily = sorted((int(d), int(c), int(s)) for d, c, s in daily_rows)
    daily_txt = "\n".join(f"{d},{c},{s}" for d, c, s in daily)
    hist = [0] * (len(HIST_EDGES_MS) + 1)
    for b, c in hist_rows:
        hist[int(b)] = int(c)
    ck = dict(
        sessions=int(sess_stats[0]), sum_length_ms=int(sess_stats[1]),
        sum_event_count=int(sess_stats[2]), sum_start_off=int(sess_stats[3]),
        days=len(daily), daily_md5=hashlib.md5(daily_txt.encode()).hexdigest()[:12],
        hist=hist,
        users=int(user_stats[0]), user_sum_sessions=int(user_stats[1]),
        user_sum_first_off=int(user_stats[2]), user_sum_last_off=int(user_stats[3]),
    )
    ck["md5"] = hashlib.md5(json.dumps(ck, sort_keys=True).encode()).hexdigest()[:12]
    return ck


def report(engine, args, events, timer, ck, variant=None):
    sess_s = timer.t.get("sessionize")
    out = dict(
        engine=engine if not variant else f"{engine}:{variant}",
        file=os.path.basename(args.file), events=int(events),
        sessions=ck["sessions"],
        load_s=round(timer.t.get("load", float("nan")), 4),
        sessionize_s=round(sess_s, 4),
        aggregate_s=round(timer.t.get("aggregate", float("nan")), 4),
        sessionize_events_per_s=round(events / sess_s) if sess_s else None,
        cpu_s={k: round(v, 4) for k, v in timer.cpu.items()},
        loadavg_1m=os.getloadavg()[0],
        self_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        checksum=ck,
    )
    print(f"engine={out['engine']} events={events} sessions={ck['sessions']} "
          f"load={out['load_s']:.3f}s sessionize={out['sessionize_s']:.3f}s "
          f"aggregate={out['aggregate_s']:.3f}s sessionize_cpu={timer.cpu.get('sessionize', 0):.3f}s "
          f"({out['sessionize_events_per_s']/1e6:.2f} M events/s sessionize) "
          f"checksum={ck['md5']} sum_len={ck['sum_length_ms']}", file=sys.stderr)
    print("RESULT " + json.dumps(out))
