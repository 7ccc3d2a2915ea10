#!/usr/bin/env python3
"""Benchmark: `sessionizer serve` ingestion under load, driven by `sessionizer loadgen`.

Steps:
  1. build sessionizer in release mode (CARGO_TARGET_DIR, default ~/.cache/sessionizer/target);
  2. create a fresh data directory and a project in a temporary directory;
  3. start `sessionizer serve` on a free loopback port and wait for GET /readyz;
  4. (a) closed loop: `sessionizer loadgen` as fast as the server answers, batches of --batch,
     for --duration seconds: the sustained throughput with durable acknowledgements;
  5. (b) open loop: loadgen at half the rate measured in (a), same duration: latency
     p50/p99, measured from each request's intended send time;
  6. read the server's peak RSS (VmHWM), its RSS before and after, and the /metrics gauges
     sessionizer_open_sessions and sessionizer_engine_events;
  7. stop the server with SIGTERM and print a table and the goals.

The load generator runs on the same machine as the server and competes with it for CPU;
the table shows how much CPU each used.

Usage (from the repository root; Python 3.11 standard library only):
  python3 bench/ingest_bench.py --duration 20
  python3 bench/ingest_bench.py --duration 20 --json bench/out/ingest.json
  python3 bench/ingest_bench.py --serve-arg=--apply-batch-events --serve-arg=50000   # any serve setting

Goals (docs/benchmarks.md): at least 200,000 events/s sustained with durable acks;
p99 under 25 ms at half that rate.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

GOAL_EVENTS_PER_S = 200_000
GOAL_P99_MS = 25.0


def log(message):
    print(f"ingest_bench: {message}", file=sys.stderr, flush=True)


def build(target_dir):
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    log(f"cargo build --release -p sessionizer (CARGO_TARGET_DIR={target_dir})")
    subprocess.run(["cargo", "build", "--release", "-p", "sessionizer"], cwd=ROOT, env=env, check=True)
    return os.path.join(target_dir, "release", "sessionizer")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    """(status, body text); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


def proc_status_kib(pid, field):
    """A memory line of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def proc_cpu_s(pid):
    """User + system CPU seconds of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_io_write_bytes(pid):
    """Bytes the process caused to be written to storage (/proc/PID/io write_bytes), or None."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


DRAIN_TIMEOUT_S = 120  # longest wait for the ingest log's backlog after (a)


def metric_value(text, name):
    """An unlabelled series of the Prometheus text format (`name value` or `name{} value`)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{} "):
            return float(line.split()[1])
    return None


class Server:
    """A `sessionizer serve` child process, stopped with SIGTERM."""

    def __init__(self, binary, data_dir, port, log_path, extra_args=()):
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        env = dict(os.environ, SESSIONIZER_LOG=os.environ.get("SESSIONIZER_LOG", "warn"))
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", data_dir, "--listen", f"127.0.0.1:{port}", *extra_args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            status, _ = http_get(self.base + "/readyz", timeout=1.0)
            if status == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def metrics(self):
        status, text = http_get(self.base + "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        return text

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s=120.0):
        """SIGTERM, then wait; SIGKILL if it does not stop. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log("the server did not stop within the timeout after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def run_loadgen(binary, server, key, args, seed, rate=None):
    """Runs loadgen; returns its JSON results with the CPU seconds of loadgen and of the server and the
    bytes the server wrote to storage during the run added."""
    cmd = [binary, "loadgen", "--url", server.base, "--batch", str(args.batch),
           "--duration", f"{args.duration}s", "--connections", str(args.connections),
           "--users", str(args.users), "--seed", str(seed)]
    if rate is not None:
        cmd += ["--rate", f"{rate:.0f}"]
    if args.quiet:
        cmd.append("--quiet")
    env = dict(os.environ, SESSIONIZER_WRITE_KEY=key)
    server_cpu = proc_cpu_s(server.pid)
    written = proc_io_write_bytes(server.pid)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    server_cpu = proc_cpu_s(server.pid) - server_cpu
    if written is not None:
        written = proc_io_write_bytes(server.pid) - written
    if code != 0:
        raise RuntimeError(f"loadgen failed ({code}): {' '.join(cmd)}\n{out.decode(errors='replace')}")
    results = json.loads(out)
    results["loadgen_cpu_s"] = usage.ru_utime + usage.ru_stime
    results["server_cpu_s"] = server_cpu
    results["server_write_bytes"] = written
    return results


def fmt_int(x):
    return f"{x:,.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase (default 20)")
    p.add_argument("--batch", type=int, default=100, help="events per request (default 100)")
    p.add_argument("--connections", type=int, default=8, help="loadgen connections (default 8)")
    p.add_argument("--users", type=int, default=100_000, help="distinct simulated users (default 100,000)")
    p.add_argument("--binary", default=None, help="a built sessionizer binary (default: cargo build --release)")
    p.add_argument("--port", type=int, default=None, help="port to serve on (default: a free one)")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    p.add_argument("--quiet", action="store_true", help="no loadgen progress on stderr")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--open-loop-rate", type=float, default=None,
                   help="events/s of the open-loop phase (b) instead of half the measured max: "
                        "compares the latency of two builds at the same rate")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="an extra argument for `sessionizer serve` (repeat it: --serve-arg=--apply-delay --serve-arg=10s)")
    args = p.parse_args()
    if args.duration <= 0:
        sys.exit("--duration must be positive")
    if args.open_loop_rate is not None and args.open_loop_rate <= 0:
        sys.exit("--open-loop-rate must be positive")

    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/sessionizer/target")
    binary = os.path.abspath(args.binary) if args.binary else build(target_dir)
    work = tempfile.mkdtemp(prefix="sessionizer-ingest-bench-")
    data_dir = os.path.join(work, "data")
    server = None
    try:
        created = subprocess.run([binary, "project", "create", "--data", data_dir, "--name", "bench"],
                                 check=True, capture_output=True, text=True)
        key = json.loads(created.stdout)["write_key"]
        port = args.port or free_port()
        server = Server(binary, data_dir, port, os.path.join(work, "server.log"), args.serve_arg)
        server.wait_ready()
        rss_start_kib = proc_status_kib(server.pid, "VmRSS")
        log(f"server ready on {server.base} (pid {server.pid}, RSS {rss_start_kib / 1024:.1f} MiB)")

        log(f"(a) max rate: closed loop, batches of {args.batch}, {args.connections} connections, "
            f"{args.duration:g} s")
        max_run = run_loadgen(binary, server, key, args, seed=1)
        acked_rate = max_run["events_per_s"]
        if acked_rate <= 0:
            raise RuntimeError("no events were acknowledged in the max-rate run")
        # Acknowledged events wait in the ingest log until the writer applies
        # them to events and sessions; what it applied during (a) is the
        # sustained rate (builds without an ingest log applied everything).
        after_a = server.metrics()
        unapplied_a = metric_value(after_a, "sessionizer_unapplied_events")
        applied_a = (metric_value(after_a, "sessionizer_ingested_events_total") or 0) - (unapplied_a or 0)
        max_rate = min(acked_rate, applied_a / max_run["duration_s"])
        drain_started = time.monotonic()
        while unapplied_a and time.monotonic() - drain_started < DRAIN_TIMEOUT_S:
            time.sleep(0.2)
            unapplied_a = metric_value(server.metrics(), "sessionizer_unapplied_events")
        drain_s = time.monotonic() - drain_started
        # The applied count moves in whole batches (up to 50,000 events), so
        # also: every event of (a) over the time until the last was applied.
        writer_rate = max_run["events_accepted"] / (max_run["duration_s"] + drain_s)
        log(f"(a) acknowledged {acked_rate:,.0f} events/s, applied {max_rate:,.0f} events/s; "
            f"the backlog drained in {drain_s:.1f} s")
        half_rate = args.open_loop_rate if args.open_loop_rate else max_rate / 2
        log(f"(b) half the measured max (or --open-loop-rate): open loop at {half_rate:,.0f} events/s, {args.duration:g} s")
        half_run = run_loadgen(binary, server, key, args, seed=2, rate=half_rate)

        time.sleep(1.5)  # the writer refreshes its gauges every 500 ms
        metrics = server.metrics()
        open_sessions = metric_value(metrics, "sessionizer_open_sessions") or 0
        engine_events = metric_value(metrics, "sessionizer_engine_events") or 0
        engine_users = metric_value(metrics, "sessionizer_engine_users") or 0
        ingested = metric_value(metrics, "sessionizer_ingested_events_total") or 0
        commits = metric_value(metrics, "sessionizer_commits_total") or 0
        commit_s = metric_value(metrics, "sessionizer_commit_duration_seconds_sum") or 0
        rss_end_kib = proc_status_kib(server.pid, "VmRSS")
        hwm_kib = proc_status_kib(server.pid, "VmHWM")
        db_bytes = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir)
                       if os.path.isfile(os.path.join(data_dir, f)))
    except BaseException:
        if server is not None:
            code = server.stop()
            log(f"server stopped (exit {code}); its log:\n{server.log_tail()}")
            server = None
        raise
    finally:
        if server is not None:
            stop_started = time.monotonic()
            exit_code = server.stop()
            stop_s = time.monotonic() - stop_started
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"data kept in {work}")

    per_session_bytes = (rss_end_kib - rss_start_kib) * 1024 / open_sessions if open_sessions else None
    throughput_ok = max_rate >= GOAL_EVENTS_PER_S
    p99 = half_run["latency_ms"]["p99"]
    latency_ok = p99 < GOAL_P99_MS
    half_kept = not half_run.get("unsent_scheduled_requests")

    def row(name, run):
        lat = run["latency_ms"]
        errors = sum(run["errors"].values())
        seconds = run["duration_s"]
        written = run["server_write_bytes"]
        per_event = f"{written / run['events_acked']:,.0f}" if written is not None and run["events_acked"] else "?"
        return (f"{name:<28} {fmt_int(run['events_per_s']):>11} {lat['p50']:>8.2f} {lat['p90']:>8.2f} "
                f"{lat['p99']:>8.2f} {lat['p999']:>8.2f} {lat['max']:>8.1f} {errors:>6} "
                f"{run['server_cpu_s'] / seconds:>7.2f} {run['loadgen_cpu_s'] / seconds:>7.2f} {per_event:>9}")

    out = sys.stdout
    print(file=out)
    print(f"sessionizer serve ingestion: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{args.duration:g} s per phase, batches of {args.batch}, {args.connections} connections, "
          f"{args.users:,} users", file=out)
    print(f"{'':<28} {'events/s':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} "
          f"{'max ms':>8} {'errors':>6} {'srv CPU':>7} {'gen CPU':>7} {'B/event':>9}", file=out)
    print(row("(a) max rate, closed loop", max_run), file=out)
    print(row(f"(b) {fmt_int(half_rate)}/s, open loop", half_run), file=out)
    print("(CPU: cores used on average by the server and by the load generator; "
          "B/event: bytes the server wrote to storage per acknowledged event)", file=out)
    print(f"sustained: {fmt_int(max_rate)} events/s applied to events and sessions during (a) "
          f"(acknowledged: {fmt_int(acked_rate)}/s; the difference waited in the ingest log, "
          f"which drained {drain_s:.1f} s after (a))", file=out)
    print(f"writer: {fmt_int(writer_rate)} events/s (the events of (a) over the time until the last was applied; "
          f"the sustained figure moves in whole batches of up to 50,000 events)", file=out)
    print(file=out)
    print(f"events stored: {fmt_int(ingested)} in {fmt_int(commits)} commits "
          f"({ingested / commits if commits else 0:,.0f} events per commit, "
          f"{commit_s * 1000 / commits if commits else 0:.1f} ms per commit on average)", file=out)
    print(f"open sessions: {fmt_int(open_sessions)}; engine holds {fmt_int(engine_events)} events "
          f"of {fmt_int(engine_users)} users", file=out)
    print(f"server RSS: {rss_start_kib / 1024:.1f} MiB at start, {rss_end_kib / 1024:.1f} MiB at end, "
          f"peak {hwm_kib / 1024:.1f} MiB; data directory {db_bytes / 2**20:.0f} MiB", file=out)
    if per_session_bytes is not None:
        print(f"memory per open session: at most {per_session_bytes / 1024:.1f} KiB "
              f"((RSS end - RSS start) / open sessions; an upper bound: it includes SQLite's page cache)",
              file=out)
    print(f"server stopped by SIGTERM in {stop_s:.1f} s, exit code {exit_code}", file=out)
    print(file=out)
    print(f"goal: >= {fmt_int(GOAL_EVENTS_PER_S)} events/s sustained with durable acks: "
          f"{fmt_int(max_rate)} -> {'MET' if throughput_ok else 'NOT MET'}", file=out)
    if args.open_loop_rate:
        note = f" (measured at --open-loop-rate {fmt_int(half_rate)}/s, not at half the goal's rate)"
    else:
        note = "" if throughput_ok else f" (measured at half the measured max, {fmt_int(half_rate)}/s, not at 100,000/s)"
    print(f"goal: p99 < {GOAL_P99_MS:g} ms at half that rate: {p99:.2f} ms{note} -> "
          f"{'MET' if latency_ok and throughput_ok else 'NOT MET'}", file=out)
    if not half_kept:
        print(f"warning: the open-loop run could not keep its schedule "
              f"({half_run['unsent_scheduled_requests']} requests unsent)", file=out)

    if args.json:
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "duration_s": args.duration,
            "batch": args.batch,
            "connections": args.connections,
            "users": args.users,
            "max_rate": max_run,
            "sustained_events_per_s": max_rate,
            "acknowledged_events_per_s": acked_rate,
            "backlog_drain_s": drain_s,
            "writer_events_per_s": writer_rate,
            "half_rate": half_run,
            "events_stored": ingested,
            "commits": commits,
            "commit_seconds_total": commit_s,
            "open_sessions": open_sessions,
            "engine_events": engine_events,
            "engine_users": engine_users,
            "rss_start_kib": rss_start_kib,
            "rss_end_kib": rss_end_kib,
            "peak_rss_kib": hwm_kib,
            "data_dir_bytes": db_bytes,
            "memory_per_open_session_bytes_upper_bound": per_session_bytes,
            "server_exit_code": exit_code,
            "goals": {
                "events_per_s": GOAL_EVENTS_PER_S,
                "events_per_s_met": throughput_ok,
                "p99_ms": GOAL_P99_MS,
                "p99_ms_at_half_rate": p99,
                "p99_met": latency_ok and throughput_ok,
            },
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
