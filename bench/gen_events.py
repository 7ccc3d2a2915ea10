#!/usr/bin/env python3
# Copied from the design notes (shared/bench) so the repository stands alone.
"""Deterministic synthetic product-analytics event generator.

Writes N events for U users over D days, in *arrival order* (as a stream would
deliver them), to Parquet (for the engines) and NDJSON
({"user_id","event_type","time","insert_id"} per line).

Model (all vectorised numpy, seeded -> byte-identical output for same args):
  * Zipf-Mandelbrot activity: user of rank r gets weight 1/(r+q)^s
    (s=--zipf-s, q=--zipf-q); per-user counts ~ Multinomial(N_session, w).
    Rank is decoupled from the id (ids are a random permutation).
  * Bursts: each session-type event starts a new "intended" burst with prob
    1/--mean-burst (first event of a user always does).  Burst start times are
    a random day in [0,D) plus a diurnal time of day (Normal(15h, 4h) mod 24h,
    shifted by a per-user timezone offset).  Within a burst gaps are
    lognormal (median --gap-median-s, sigma --gap-sigma); a small tail of those
    exceeds 30 min and splits the burst, and overlapping bursts merge, exactly
    like real data -- the ground truth is whatever sessionisation computes.
  * Event types: Zipf over a 14-name vocabulary for in-session events; a
    fraction --excluded-frac of events are "non-session" server-side events
    (Notification Sent / Email Sent / Push Delivered) at uniform random times
    over the user's period (they would break sessions if not excluded).
  * Out-of-order: a fraction --ooo-frac of events (chosen among events whose
    next same-user event is < 1h later) arrive *after* that next event, with
    lateness <= 1 h, i.e. their timestamp is earlier than the previous arrival
    for that user by at most 1 h.  The file is ordered by arrival time.

Usage:
  python gen_events.py --events 10000000 --seed 42 --out-dir /tmp/benchdata
  -> /tmp/benchdata/events_10M_s42.parquet, events_10M_s42_u64.parquet,
     events_10M_s42.ndjson, events_10M_s42.meta.json
"""
import argparse
import json
import os
import sys
import time as _time

import numpy as np

SESSION_TYPES = [
    "Page Viewed", "Button Clicked", "Search Performed", "Product Viewed",
    "Add To Cart", "Scroll", "Video Played", "Video Paused", "Form Submitted",
    "Checkout Started", "Purchase Completed", "Login", "Share", "Error Shown",
]
EXCLUDED_TYPES = ["Notification Sent", "Email Sent", "Push Delivered"]
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def size_label(n):
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}K"
    return str(n)


def hex_ids(rng, n):
    """n random 32-hex-char ids as a numpy 'S32' array (vectorised)."""
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.empty((n, 32), dtype=np.uint8)
    chunk = 4_000_000
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        raw = rng.integers(0, 256, size=(b - a, 16), dtype=np.uint8)
        out[a:b, 0::2] = lut[raw >> 4]
        out[a:b, 1::2] = lut[raw & 15]
    return out.view("S32").reshape(n)


def seg_starts(keys_sorted):
    """boolean mask: True where a new run of equal keys starts."""
    m = np.empty(len(keys_sorted), dtype=bool)
    if len(m):
        m[0] = True
        m[1:] = keys_sorted[1:] != keys_sorted[:-1]
    return m


def generate(args):
    rng = np.random.default_rng(args.seed)
    N, U, D = args.events, args.users, args.days
    span = D * DAY_MS
    t0 = args.start_ms

    n_excl = int(round(N * args.excluded_frac))
    n_sess = N - n_excl

    # ---- user activity (Zipf-Mandelbrot), rank decoupled from id ----------
    ranks = np.arange(1, U + 1, dtype=np.float64)
    w = 1.0 / (ranks + args.zipf_q) ** args.zipf_s
    w /= w.sum()
    counts = rng.multinomial(n_sess, w)              # per rank
    rank_to_uid = rng.permutation(U).astype(np.int64)
    tz_off = rng.integers(-8, 9, size=U) * HOUR_MS   # per rank

    # session-type events grouped by user rank
    ev_rank = np.repeat(np.arange(U, dtype=np.int64), counts)
    first_of_user = seg_starts(ev_rank)
    new_burst = (rng.random(n_sess) < 1.0 / args.mean_burst) | first_of_user
    burst_id = np.cumsum(new_burst) - 1
    n_bursts = int(burst_id[-1]) + 1 if n_sess else 0
    burst_rank = ev_rank[new_burst]

    # burst start: random day + diurnal time of day (+ user tz offset)
    day = rng.integers(0, D, size=n_bursts)
    tod = (rng.normal(15 * HOUR_MS, 4 * HOUR_MS, size=n_bursts) % DAY_MS).astype(np.int64)
    bstart = (day * DAY_MS + tod + tz_off[burst_rank]) % span
    # order bursts by start time within each user (burst ids of a user are
    # contiguous, so a lexsort by (user, start) keeps them grouped)
    order = np.lexsort((bstart, burst_rank))
    bstart_sorted = np.empty_like(bstart)
    bstart_sorted[:] = bstart[order]

    # within-burst offsets: lognormal gaps, segmented cumsum
    gaps = np.exp(rng.normal(np.log(args.gap_median_s * 1000.0), args.gap_sigma, size=n_sess))
    gaps = gaps.astype(np.int64)
    gaps[new_burst] = 0
    cs = np.cumsum(gaps)
    base = cs[new_burst]                               # cumsum at burst start
    offs = cs - base[burst_id]
    ev_time = bstart_sorted[burst_id] + offs
    del gaps, cs, base, offs, order

    # event types for session events: Zipf over vocabulary
    k = len(SESSION_TYPES)
    tw = 1.0 / np.arange(1, k + 1) ** 1.1
    tw /= tw.sum()
    ev_type = rng.choice(k, size=n_sess, p=tw).astype(np.int16)

    # ---- excluded (non-session) events: uniform times, same user mix -------
    ex_rank = rng.choice(U, size=n_excl, p=w).astype(np.int64)
    ex_time = rng.integers(0, span, size=n_excl, dtype=np.int64)
    ex_type = (k + rng.choice(len(EXCLUDED_TYPES), size=n_excl, p=[0.6, 0.3, 0.1])).astype(np.int16)

    rank_all = np.concatenate([ev_rank, ex_rank]); del ev_rank, ex_rank
    time_all = np.concatenate([ev_time, ex_time]) + t0; del ev_time, ex_time
    type_all = np.concatenate([ev_type, ex_type]); del ev_type, ex_type

    # ---- out-of-order arrivals --------------------------------------------
    # sort by (user, time) to find each event's next same-user event
    o = np.lexsort((time_all, rank_all))
    r_s = rank_all[o]
    t_s = time_all[o]
    nxt_gap = np.full(N, np.iinfo(np.int64).max, dtype=np.int64)
    same = r_s[1:] == r_s[:-1]
    g = t_s[1:] - t_s[:-1]
    nxt_gap[:-1] = np.where(same, g, nxt_gap[:-1])
    eligible = np.flatnonzero(nxt_gap < HOUR_MS - 1000)
    n_ooo = min(int(round(N * args.ooo_frac)), len(eligible))
    pick = rng.choice(eligible, size=n_ooo, replace=False)
    # lateness in (next_gap, 1h]: arrives after the next same-user event
    lo = nxt_gap[pick] + 1
    late = lo + (rng.random(n_ooo) * (HOUR_MS - lo)).astype(np.int64)
    arrival_s = t_s.copy()
    arrival_s[pick] += late
    arrival = np.empty_like(arrival_s)
    arrival[o] = arrival_s
    del r_s, t_s, nxt_gap, same, g, arrival_s, lo, late

    # ---- arrival order -------------------------------------------------------
    a = np.argsort(arrival, kind="stable")
    rank_all = rank_all[a]
    time_all = time_all[a]
    type_all = type_all[a]
    del a, arrival
    uid_all = rank_to_uid[rank_all]
    del rank_all

    # measured out-of-order fraction (per user: time < max time seen so far)
    o2 = np.argsort(uid_all, kind="stable")       # keeps arrival order per user
    tu = time_all[o2]
    uu = uid_all[o2]
    # out of order = timestamp earlier than the previous arrival of that user
    prev_same = np.zeros(N, dtype=bool)
    prev_same[1:] = uu[1:] == uu[:-1]
    ooo_prev = int(np.count_nonzero(prev_same[1:] & (tu[1:] < tu[:-1])))
    del o2, tu, uu, prev_same

    insert_id = hex_ids(rng, N)
    meta = dict(
        events=N, users=U, active_users=int(np.count_nonzero(counts)) ,
        days=D, seed=args.seed, start_ms=t0, zipf_s=args.zipf_s, zipf_q=args.zipf_q,
        mean_burst=args.mean_burst, gap_median_s=args.gap_median_s,
        gap_sigma=args.gap_sigma, excluded_frac=args.excluded_frac,
        excluded_events=n_excl, ooo_frac_target=args.ooo_frac,
        ooo_picked=n_ooo, ooo_vs_prev_arrival=ooo_prev,
        top_user_share=float(counts.max() / max(1, n_sess)),
        intended_bursts=n_bursts,
    )
    return uid_all, type_all, time_all, insert_id, meta


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=None, help="default events/100")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start-ms", type=int, default=1_704_067_200_000)  # 2024-01-01Z
    p.add_argument("--zipf-s", type=float, default=0.9)
    p.add_argument("--zipf-q", type=float, default=10.0)
    p.add_argument("--mean-burst", type=float, default=12.0)
    p.add_argument("--gap-median-s", type=float, default=20.0)
    p.add_argument("--gap-sigma", type=float, default=1.3)
    p.add_argument("--excluded-frac", type=float, default=0.05)
    p.add_argument("--ooo-frac", type=float, default=0.02)
    p.add_argument("--out-dir", default="/tmp/benchdata")
    p.add_argument("--formats", default="parquet,u64,ndjson",
                   help="comma list of parquet (string user ids), u64 (parquet, uint64 user ids), ndjson")
    args = p.parse_args()
    if args.users is None:
        args.users = max(1, args.events // 100)
    fmts = set(args.formats.split(","))
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"events_{size_label(args.events)}_s{args.seed}")

    t = _time.perf_counter()
    uid, etype, etime, iid, meta = generate(args)
    print(f"generated in {_time.perf_counter() - t:.1f}s", file=sys.stderr)

    import pyarrow as pa
    import pyarrow.parquet as pq

    vocab = pa.array(SESSION_TYPES + EXCLUDED_TYPES, type=pa.string())
    # user ids as strings "user_<id>" via a dictionary of U strings
    udict = pa.array([f"user_{i}" for i in range(args.users)], type=pa.string())
    user_col = pa.DictionaryArray.from_arrays(pa.array(uid.astype(np.int32)), udict).cast(pa.string())
    type_col = pa.DictionaryArray.from_arrays(pa.array(etype.astype(np.int32)), vocab).cast(pa.string())
    iid_col = pa.array(iid).cast(pa.string())
    tbl = pa.table({"user_id": user_col, "event_type": type_col,
                    "time": pa.array(etime, type=pa.int64()), "insert_id": iid_col})
    t = _time.perf_counter()
    if "parquet" in fmts:
        pq.write_table(tbl, stem + ".parquet", row_group_size=1 << 20, compression="zstd")
    if "u64" in fmts:
        t64 = tbl.set_column(0, "user_id", pa.array(uid.astype(np.uint64)))
        pq.write_table(t64, stem + "_u64.parquet", row_group_size=1 << 20, compression="zstd")
        del t64
    print(f"parquet written in {_time.perf_counter() - t:.1f}s", file=sys.stderr)
    if "ndjson" in fmts:
        t = _time.perf_counter()
        try:
            import polars as pl
            pl.from_arrow(tbl).write_ndjson(stem + ".ndjson")
        except ImportError:  # slow pure-python fallback
            with open(stem + ".ndjson", "w") as f:
                for u, ty, ti, ii in zip(user_col.to_pylist(), type_col.to_pylist(),
                                         etime.tolist(), iid_col.to_pylist()):
                    f.write(json.dumps({"user_id": u, "event_type": ty, "time": ti, "insert_id": ii},
                                       separators=(",", ":")) + "\n")
        print(f"ndjson written in {_time.perf_counter() - t:.1f}s", file=sys.stderr)
    with open(stem + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
