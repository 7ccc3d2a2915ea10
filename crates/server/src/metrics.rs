//! Prometheus metrics, kept in atomics and rendered in the text exposition
//! format. A handful of fixed series does not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! put {
    ($($arg:tt)*) => {
        writeln!($($arg)*).expect("writing to a String cannot fail")
    };
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A latency histogram.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS_S.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            put!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        put!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        put!(out, "{name}_sum{{{labels}}} {sum}");
        put!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Why events were turned away.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RejectReason {
    Invalid,
    TooLarge,
    Unauthorized,
    Busy,
    Unavailable,
    DiskFull,
    RateLimited,
    /// The body could not be read: it timed out, or the client went away.
    BodyRead,
}

const REJECT_REASONS: [(RejectReason, &str); 8] = [
    (RejectReason::Invalid, "invalid"),
    (RejectReason::TooLarge, "too_large"),
    (RejectReason::Unauthorized, "unauthorized"),
    (RejectReason::Busy, "busy"),
    (RejectReason::Unavailable, "unavailable"),
    (RejectReason::DiskFull, "disk_full"),
    (RejectReason::BodyRead, "body_read"),
    (RejectReason::RateLimited, "rate_limited"),
];

/// Every metric the server exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) ingested_events: AtomicU64,
    pub(crate) duplicate_events: AtomicU64,
    rejected: [AtomicU64; REJECT_REASONS.len()],
    pub(crate) ingest_latency: Histogram,
    pub(crate) read_latency: Histogram,
    pub(crate) commit_latency: Histogram,
    pub(crate) commits: AtomicU64,
    pub(crate) apply_latency: Histogram,
    pub(crate) write_queue_depth: AtomicI64,
    pub(crate) unapplied_events: AtomicI64,
    pub(crate) open_sessions: AtomicU64,
    pub(crate) engine_users: AtomicU64,
    pub(crate) engine_events: AtomicU64,
}

impl Metrics {
    pub(crate) fn reject(&self, reason: RejectReason, events: u64) {
        self.rejected[reason as usize].fetch_add(events, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            put!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            put!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        counter(
            &mut out,
            "sessionizer_ingested_events_total",
            "Events stored (acknowledged).",
            self.ingested_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "sessionizer_duplicate_events_total",
            "Events ignored as duplicates of a stored insert id.",
            self.duplicate_events.load(Ordering::Relaxed),
        );
        put!(
            out,
            "# HELP sessionizer_rejected_events_total Events turned away, by reason (a request that cannot be read at all counts as one).\n# TYPE sessionizer_rejected_events_total counter"
        );
        for (reason, name) in REJECT_REASONS {
            put!(
                out,
                "sessionizer_rejected_events_total{{reason=\"{name}\"}} {}",
                self.rejected[reason as usize].load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "sessionizer_commits_total",
            "Durable appends to the ingest log (each groups many requests).",
            self.commits.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "sessionizer_write_queue_depth",
            "Ingestion requests waiting for the writer.",
            self.write_queue_depth.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "sessionizer_unapplied_events",
            "Acknowledged events in the ingest log not yet applied to events and sessions.",
            self.unapplied_events.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "sessionizer_open_sessions",
            "Sessions not yet concluded, held by the live engine.",
            self.open_sessions.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "sessionizer_engine_users",
            "Users held by the live engine.",
            self.engine_users.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "sessionizer_engine_events",
            "Events held by the live engine.",
            self.engine_events.load(Ordering::Relaxed) as i64,
        );
        put!(
            out,
            "# HELP sessionizer_request_duration_seconds Request latency.\n# TYPE sessionizer_request_duration_seconds histogram"
        );
        self.ingest_latency.render(&mut out, "sessionizer_request_duration_seconds", "route=\"ingest\",");
        self.read_latency.render(&mut out, "sessionizer_request_duration_seconds", "route=\"read\",");
        put!(
            out,
            "# HELP sessionizer_commit_duration_seconds Time to make a group of requests durable in the ingest log.\n# TYPE sessionizer_commit_duration_seconds histogram"
        );
        self.commit_latency.render(&mut out, "sessionizer_commit_duration_seconds", "");
        put!(
            out,
            "# HELP sessionizer_apply_duration_seconds Time to apply a batch of logged events to events and sessions.\n# TYPE sessionizer_apply_duration_seconds histogram"
        );
        self.apply_latency.render(&mut out, "sessionizer_apply_duration_seconds", "");
        out
    }
}
