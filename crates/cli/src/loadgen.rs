//! `sessionizer loadgen`: a load generator for `sessionizer serve`.
//!
//! Worker threads, each with its own HTTP agent (one keep-alive connection),
//! post batches of live events to `POST /v1/events` and time the answers.
//!
//! * Without `--rate` the load is closed-loop: every worker sends its next
//!   batch as soon as the previous one is answered, and latency is measured
//!   from the send.
//! * With `--rate` the load is open-loop: request `k` has an intended send
//!   time `start + k × batch / rate`, a free worker takes the next request and
//!   waits for its time (or sends at once when behind), and latency is measured
//!   from the intended time. A slow answer therefore shows up in the latency of
//!   every request it delayed, instead of quietly lowering the offered load
//!   (coordinated omission).
//!
//! The results go to stdout as one JSON object (and to `--json FILE`);
//! progress goes to stderr once a second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use sessionizer_server::limits::MAX_EVENTS_PER_REQUEST;

use crate::duration::parse_duration_ms;
use crate::{Exit, Failure};

/// Most worker threads (and connections).
const MAX_CONNECTIONS: u32 = 256;
/// Most simulated users.
const MAX_USERS: u64 = 1_000_000_000;
/// Event times are "now" minus up to this much, so the events are live.
const MAX_EVENT_AGE_MS: u64 = 10_000;
/// In open-loop mode, requests still behind schedule are sent for this long
/// after the end of the run; the rest are counted as unsent.
const CATCH_UP_GRACE: Duration = Duration::from_secs(1);
/// Time allowed for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a transport error, so a dead server is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Longest `Retry-After` obeyed (429, 503), in seconds.
const MAX_RETRY_AFTER_S: u64 = 5;

const EVENT_TYPES: [&str; 8] = [
    "App Opened",
    "Page Viewed",
    "Page Viewed",
    "Page Viewed",
    "Button Clicked",
    "Search",
    "Item Added",
    "Purchase Completed",
];
const PAGES: [&str; 8] = ["/", "/home", "/search", "/item", "/cart", "/checkout", "/account", "/help"];

/// Send live events to a running server and measure ingestion throughput and latency.
///
/// Users are drawn uniformly at random from --users ids, so at R events/s each
/// user sends about R×60/users events a minute; event times are the current
/// time minus up to 10 s. Every event has a unique insert id, a random UUID as
/// the SDKs send, drawn from the seed: give each run against the same data a
/// different --seed, or the server will count the events as duplicates.
#[derive(Debug, Args)]
pub(crate) struct LoadgenArgs {
    /// The server's base URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A write key of the project to send to.
    #[arg(long, env = "SESSIONIZER_WRITE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Events per request (1 to 2000).
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Target events per second (open loop); without it, as fast as the server answers.
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    rate: Option<f64>,
    /// How long to send (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration_ms)]
    duration: i64,
    /// Worker threads, each with its own keep-alive connection (1 to 256).
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Number of distinct simulated users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Seed for users, event types, pages and insert ids [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the results to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Validated settings of one run.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    endpoint: String,
    key: String,
    batch: u64,
    rate: Option<f64>,
    duration: Duration,
    connections: u32,
    users: u64,
    seed: u64,
}

fn usage(message: String) -> Exit {
    Exit::new(Failure::Usage, anyhow::anyhow!(message))
}

impl Plan {
    fn from_args(args: &LoadgenArgs, default_seed: u64) -> Result<Plan, Exit> {
        let url = args.url.trim().trim_end_matches('/');
        if !url.starts_with("http://") || url.len() == "http://".len() {
            return Err(usage(format!("invalid --url {:?}: use http://HOST:PORT (plain HTTP)", args.url)));
        }
        let key = match args.key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => key.to_string(),
            _ => return Err(usage("no write key: pass --key or set SESSIONIZER_WRITE_KEY".to_string())),
        };
        if !(1..=MAX_EVENTS_PER_REQUEST as u64).contains(&args.batch) {
            return Err(usage(format!(
                "invalid --batch {}: between 1 and {MAX_EVENTS_PER_REQUEST} events per request",
                args.batch
            )));
        }
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(usage(format!("invalid --rate {rate}: a positive number of events per second")));
        }
        if args.duration <= 0 {
            return Err(usage("invalid --duration: must be longer than 0".to_string()));
        }
        if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
            return Err(usage(format!("invalid --connections {}: between 1 and {MAX_CONNECTIONS}", args.connections)));
        }
        if !(1..=MAX_USERS).contains(&args.users) {
            return Err(usage(format!("invalid --users {}: between 1 and {MAX_USERS}", args.users)));
        }
        Ok(Plan {
            endpoint: format!("{url}/v1/events"),
            key,
            batch: args.batch,
            rate: args.rate,
            duration: Duration::from_millis(args.duration as u64),
            connections: args.connections,
            users: args.users,
            seed: args.seed.unwrap_or(default_seed),
        })
    }
}

/// The open-loop schedule: when request `k` is meant to be sent, relative to the start.
fn intended_offset(k: u64, batch: u64, rate: f64) -> Duration {
    // f64 keeps ~15 significant digits: nanosecond precision for days of schedule.
    Duration::from_secs_f64(k as f64 * batch as f64 / rate)
}

/// How many requests the schedule holds within `duration`.
fn scheduled_requests(duration: Duration, batch: u64, rate: f64) -> u64 {
    let period = batch as f64 / rate;
    let n = (duration.as_secs_f64() / period).ceil() as u64;
    // Guard against rounding at the boundary: request k is in the run when its offset is before the end.
    if n > 0 && intended_offset(n - 1, batch, rate) >= duration { n - 1 } else { n }
}

/// SplitMix64: tiny, fast and good enough for load generation.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One worker's events: a pure function of (seed, worker, the times passed in).
#[derive(Debug)]
struct EventGen {
    rng: Rng,
    users: u64,
}

impl EventGen {
    fn new(seed: u64, worker: u32, users: u64) -> EventGen {
        // Decorrelate the workers' streams: hash (seed, worker) into the starting state.
        let base = Rng::new(seed).next_u64();
        let state = Rng::new(base ^ u64::from(worker).wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64();
        EventGen { rng: Rng::new(state), users }
    }

    /// Writes a request body of `events` events happening just before `now_ms` into `out`.
    fn body(&mut self, events: u64, now_ms: i64, out: &mut String) {
        out.clear();
        out.push_str(r#"{"events":["#);
        for i in 0..events {
            if i > 0 {
                out.push(',');
            }
            let user = self.rng.below(self.users);
            let event_type = EVENT_TYPES[self.rng.below(EVENT_TYPES.len() as u64) as usize];
            let page = PAGES[self.rng.below(PAGES.len() as u64) as usize];
            let time = now_ms - self.rng.below(MAX_EVENT_AGE_MS + 1) as i64;
            // A random UUID, as the SDKs send: the insert-id index then takes
            // each event at a random place, as it does in production.
            let random = (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64());
            let insert_id = uuid::Builder::from_random_bytes(random.to_le_bytes()).into_uuid();
            write!(
                out,
                r#"{{"user_id":"user-{user}","event_type":"{event_type}","time":{time},"insert_id":"{insert_id}","page":"{page}"}}"#
            )
            .expect("writing to a String cannot fail");
        }
        out.push_str("]}");
    }
}

/// A log-linear latency histogram in microseconds (HDR-like): values below
/// 128 µs are exact, larger ones fall in buckets 1/64 of a power of two wide,
/// so a reported percentile is within 1.6% of the true one.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u128,
    max_us: u64,
}

const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
const HISTOGRAM_BUCKETS: usize = (2 * SUB_BUCKETS + (63 - SUB_BUCKET_BITS as u64) * SUB_BUCKETS) as usize;

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; HISTOGRAM_BUCKETS], count: 0, sum_us: 0, max_us: 0 }
    }
}

impl Histogram {
    fn bucket_of(us: u64) -> usize {
        if us < 2 * SUB_BUCKETS {
            return us as usize;
        }
        let high = 63 - u64::from(us.leading_zeros());
        let shift = high - u64::from(SUB_BUCKET_BITS);
        let mantissa = us >> shift;
        (2 * SUB_BUCKETS + (shift - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
    }

    /// The largest value that falls in `bucket`.
    fn upper_bound(bucket: usize) -> u64 {
        let bucket = bucket as u64;
        if bucket < 2 * SUB_BUCKETS {
            return bucket;
        }
        let shift = (bucket - 2 * SUB_BUCKETS) / SUB_BUCKETS + 1;
        let mantissa = (bucket - 2 * SUB_BUCKETS) % SUB_BUCKETS + SUB_BUCKETS;
        // The last buckets reach past u64::MAX.
        u64::try_from((u128::from(mantissa + 1) << shift) - 1).unwrap_or(u64::MAX)
    }

    fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The value at quantile `q` (0..=1) in µs: the smallest recorded value
    /// with at least `q × count` values at or below it (nearest rank), rounded
    /// up to its bucket's upper bound and never above the maximum.
    fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper_bound(bucket).min(self.max_us);
            }
        }
        self.max_us
    }

    fn mean_us(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum_us as f64 / self.count as f64 }
    }
}

/// What one worker (and, merged, the whole run) counted.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    ok_requests: u64,
    events_sent: u64,
    events_acked: u64,
    accepted: u64,
    duplicates: u64,
    /// By HTTP status, or by kind of transport error.
    errors: BTreeMap<String, u64>,
    latency: Histogram,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok_requests += other.ok_requests;
        self.events_sent += other.events_sent;
        self.events_acked += other.events_acked;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.latency.merge(&other.latency);
    }
}

/// State shared by the workers and the progress reporter.
#[derive(Debug, Default)]
struct Shared {
    /// The next request index (open loop).
    next_request: AtomicU64,
    requests: AtomicU64,
    events_acked: AtomicU64,
    errors: AtomicU64,
    finished_workers: AtomicUsize,
    /// Set when going on is pointless (bad key, nothing listening).
    stop: AtomicBool,
    fatal: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn abort(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fatal.get_or_insert(message);
        self.stop.store(true, Ordering::Release);
    }
}

#[derive(Debug, serde::Deserialize)]
struct IngestReply {
    accepted: u64,
    duplicates: u64,
}

fn transport_error_kind(error: &ureq::Error) -> &'static str {
    match error {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => "connect",
        ureq::Error::Io(_) => "io",
        _ => "transport",
    }
}

fn worker(plan: &Plan, shared: &Shared, worker: u32, start: Instant) -> Tally {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .build();
    let agent: ureq::Agent = config.into();
    let authorization = format!("Bearer {}", plan.key);
    let mut events = EventGen::new(plan.seed, worker, plan.users);
    let mut tally = Tally::default();
    let mut body = String::with_capacity(plan.batch as usize * 160 + 16);
    let end = start + plan.duration;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        // When this request counts from: its intended time (open loop) or its send (closed loop).
        let from = match plan.rate {
            Some(rate) => {
                let k = shared.next_request.fetch_add(1, Ordering::Relaxed);
                let offset = intended_offset(k, plan.batch, rate);
                if offset >= plan.duration || Instant::now() >= end + CATCH_UP_GRACE {
                    break;
                }
                let intended = start + offset;
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                intended
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        events.body(plan.batch, jiff::Timestamp::now().as_millisecond(), &mut body);
        let result = agent
            .post(&plan.endpoint)
            .header("Authorization", &authorization)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .and_then(|mut response| {
                let status = response.status().as_u16();
                let retry_after_s = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let bytes = response.body_mut().read_to_vec()?;
                Ok((status, bytes, retry_after_s))
            });
        tally.latency.record(from.elapsed());
        tally.requests += 1;
        tally.events_sent += plan.batch;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((200, bytes, _)) => {
                tally.ok_requests += 1;
                tally.events_acked += plan.batch;
                shared.events_acked.fetch_add(plan.batch, Ordering::Relaxed);
                match serde_json::from_slice::<IngestReply>(&bytes) {
                    Ok(reply) => {
                        tally.accepted += reply.accepted;
                        tally.duplicates += reply.duplicates;
                    }
                    Err(_) => *tally.errors.entry("200 with an unexpected body".into()).or_default() += 1,
                }
            }
            Ok((status, bytes, retry_after_s)) => {
                *tally.errors.entry(status.to_string()).or_default() += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(status, 400 | 401 | 403 | 404 | 405 | 413) {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).trim().to_string();
                    shared.abort(format!("the server answered {status} to POST {}: {text}", plan.endpoint));
                }
                // As the SDKs do: a server that is busy says when to come back.
                // Retrying at once would only measure how fast it refuses.
                if let Some(seconds) = retry_after_s.filter(|_| matches!(status, 429 | 503)) {
                    let wait = Duration::from_secs(seconds.min(MAX_RETRY_AFTER_S));
                    std::thread::sleep(wait.min(end.saturating_duration_since(Instant::now())));
                }
            }
            Err(error) => {
                *tally.errors.entry(transport_error_kind(&error).to_string()).or_default() += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if shared.events_acked.load(Ordering::Relaxed) == 0 {
                    shared.abort(format!("cannot reach {}: {error}", plan.endpoint));
                }
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    tally
}

/// A run's figures.
#[derive(Debug)]
struct Outcome {
    tally: Tally,
    elapsed: Duration,
    /// Open loop: requests in the schedule that were never sent.
    unsent: Option<u64>,
    fatal: Option<String>,
}

fn progress_line(second: u64, acked_total: u64, acked_last: u64, errors: u64) -> String {
    format!("loadgen: {second:>4}s  {acked_last:>9} events/s  {acked_total:>11} acked  {errors:>6} errors")
}

/// Runs the plan: workers on scoped threads, progress from this one.
fn execute(plan: &Plan, quiet: bool) -> Outcome {
    let shared = Shared::default();
    let start = Instant::now();
    let tally = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..plan.connections)
            .map(|w| {
                let shared = &shared;
                scope.spawn(move || {
                    let tally = worker(plan, shared, w, start);
                    shared.finished_workers.fetch_add(1, Ordering::Release);
                    tally
                })
            })
            .collect();
        let mut second = 0;
        let mut last_acked = 0;
        while shared.finished_workers.load(Ordering::Acquire) < plan.connections as usize {
            let next = start + Duration::from_secs(second + 1);
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            second += 1;
            let acked = shared.events_acked.load(Ordering::Relaxed);
            if !quiet {
                let line = progress_line(second, acked, acked - last_acked, shared.errors.load(Ordering::Relaxed));
                drop(writeln!(std::io::stderr().lock(), "{line}"));
            }
            last_acked = acked;
        }
        let mut total = Tally::default();
        for handle in handles {
            total.merge(&handle.join().expect("a loadgen worker panicked"));
        }
        total
    });
    let elapsed = start.elapsed();
    let unsent =
        plan.rate.map(|rate| scheduled_requests(plan.duration, plan.batch, rate).saturating_sub(tally.requests));
    let fatal = shared.fatal.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    Outcome { tally, elapsed, unsent, fatal }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn report(plan: &Plan, outcome: &Outcome) -> serde_json::Value {
    let t = &outcome.tally;
    let seconds = outcome.elapsed.as_secs_f64();
    let latency = &t.latency;
    json!({
        "url": plan.endpoint,
        "seed": plan.seed,
        "connections": plan.connections,
        "batch": plan.batch,
        "users": plan.users,
        "mode": if plan.rate.is_some() { "open-loop" } else { "closed-loop" },
        "target_events_per_s": plan.rate,
        "requests": t.requests,
        "requests_ok": t.ok_requests,
        "events_sent": t.events_sent,
        "events_acked": t.events_acked,
        "events_accepted": t.accepted,
        "events_duplicate": t.duplicates,
        "errors": t.errors,
        "unsent_scheduled_requests": outcome.unsent,
        "duration_s": round3(seconds),
        "events_per_s": round3(t.events_acked as f64 / seconds),
        "requests_per_s": round3(t.requests as f64 / seconds),
        "latency_from": if plan.rate.is_some() { "intended send time" } else { "send time" },
        "latency_ms": {
            "p50": ms(latency.quantile_us(0.50)),
            "p90": ms(latency.quantile_us(0.90)),
            "p99": ms(latency.quantile_us(0.99)),
            "p999": ms(latency.quantile_us(0.999)),
            "max": ms(latency.max_us),
            "mean": round3(latency.mean_us() / 1000.0),
        },
    })
}

fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // Keep it short enough to read and type: insert ids carry it.
    (nanos as u64 ^ u64::from(std::process::id())) % 1_000_000_000
}

pub(crate) fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args, default_seed())?;
    if !args.quiet {
        let load = match plan.rate {
            Some(rate) => format!("{rate} events/s (open loop)"),
            None => "as fast as the server answers".to_string(),
        };
        drop(writeln!(
            std::io::stderr().lock(),
            "loadgen: {} for {:.1}s, {} connections, batches of {}, {} users, seed {}: {load}",
            plan.endpoint,
            plan.duration.as_secs_f64(),
            plan.connections,
            plan.batch,
            plan.users,
            plan.seed
        ));
    }
    let outcome = execute(&plan, args.quiet);
    let results = report(&plan, &outcome);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)? + "\n";
        std::fs::write(path, text)
            .map_err(|e| Exit::new(Failure::OutputError, anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    }
    writeln!(std::io::stdout().lock(), "{results}")
        .map_err(|e| Exit::new(Failure::OutputError, anyhow::anyhow!("cannot write the results: {e}")))?;
    if let Some(unsent) = outcome.unsent.filter(|&n| n > 0)
        && outcome.fatal.is_none()
    {
        drop(writeln!(
            std::io::stderr().lock(),
            "loadgen: warning: the target rate was not kept: {unsent} scheduled requests were never sent, \
             so the latency figures understate the tail (more --connections, or a lower --rate)"
        ));
    }
    if let Some(message) = outcome.fatal {
        return Err(Exit::new(Failure::Unavailable, anyhow::anyhow!(message)).into());
    }
    if outcome.tally.events_acked == 0 {
        return Err(Exit::new(Failure::Unavailable, anyhow::anyhow!("no request was acknowledged")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LoadgenArgs {
        LoadgenArgs {
            url: "http://127.0.0.1:8080/".into(),
            key: Some("sk_test".into()),
            batch: 100,
            rate: None,
            duration: 30_000,
            connections: 8,
            users: 10_000,
            seed: Some(7),
            json: None,
            quiet: true,
        }
    }

    #[test]
    fn flags_are_validated_with_clear_messages() {
        let plan = Plan::from_args(&args(), 1).unwrap();
        assert_eq!(plan.endpoint, "http://127.0.0.1:8080/v1/events");
        assert_eq!(plan.seed, 7);
        assert_eq!(Plan::from_args(&LoadgenArgs { seed: None, ..args() }, 1).unwrap().seed, 1);
        let cases: [(LoadgenArgs, &str); 10] = [
            (LoadgenArgs { batch: 0, ..args() }, "--batch 0"),
            (LoadgenArgs { batch: 2001, ..args() }, "between 1 and 2000"),
            (LoadgenArgs { rate: Some(0.0), ..args() }, "--rate"),
            (LoadgenArgs { rate: Some(f64::NAN), ..args() }, "--rate"),
            (LoadgenArgs { duration: 0, ..args() }, "--duration"),
            (LoadgenArgs { connections: 0, ..args() }, "--connections 0"),
            (LoadgenArgs { connections: 257, ..args() }, "between 1 and 256"),
            (LoadgenArgs { users: 0, ..args() }, "--users"),
            (LoadgenArgs { key: Some(" ".into()), ..args() }, "SESSIONIZER_WRITE_KEY"),
            (LoadgenArgs { url: "https://example.com".into(), ..args() }, "plain HTTP"),
        ];
        for (args, fragment) in cases {
            let error = Plan::from_args(&args, 1).unwrap_err();
            assert_eq!(error.failure, Failure::Usage);
            assert!(error.to_string().contains(fragment), "{error} should mention {fragment}");
        }
        assert!(Plan::from_args(&LoadgenArgs { batch: 2000, connections: 256, rate: Some(0.5), ..args() }, 1).is_ok());
    }

    #[test]
    fn the_open_loop_schedule_is_evenly_spaced() {
        // 10,000 events/s in batches of 100: one request every 10 ms.
        assert_eq!(intended_offset(0, 100, 10_000.0), Duration::ZERO);
        assert_eq!(intended_offset(1, 100, 10_000.0), Duration::from_millis(10));
        assert_eq!(intended_offset(1_000, 100, 10_000.0), Duration::from_secs(10));
        // No drift over a long schedule.
        assert_eq!(intended_offset(360_000, 100, 10_000.0), Duration::from_secs(3_600));
        assert_eq!(intended_offset(3, 1, 3.0), Duration::from_secs(1));
        // Requests whose intended time is before the end: offsets 0, 10, ..., 990 ms.
        assert_eq!(scheduled_requests(Duration::from_secs(1), 100, 10_000.0), 100);
        assert_eq!(scheduled_requests(Duration::from_millis(1_001), 100, 10_000.0), 101);
        // Slower than one request per run: only the one at time 0.
        assert_eq!(scheduled_requests(Duration::from_secs(1), 100, 1.0), 1);
        for (batch, rate) in [(100, 7_777.0), (1, 3.0), (2000, 123_456.7)] {
            let duration = Duration::from_millis(2_345);
            let n = scheduled_requests(duration, batch, rate);
            assert!(intended_offset(n - 1, batch, rate) < duration);
            assert!(intended_offset(n, batch, rate) >= duration);
        }
    }

    #[test]
    fn histogram_buckets_are_exact_small_and_tight_large() {
        for us in [0, 1, 63, 64, 127, 128, 129, 1_000, 25_000, 1_000_000, u64::MAX / 2, u64::MAX] {
            let bucket = Histogram::bucket_of(us);
            assert!(bucket < HISTOGRAM_BUCKETS, "{us}");
            let upper = Histogram::upper_bound(bucket);
            assert!(upper >= us, "{us} above its bucket's bound {upper}");
            assert!((upper - us) as f64 <= us as f64 / SUB_BUCKETS as f64, "{us}: bucket too wide ({upper})");
            if us < 128 {
                assert_eq!(upper, us);
            }
            if bucket > 0 {
                assert!(Histogram::upper_bound(bucket - 1) < us, "{us} belongs to an earlier bucket");
            }
        }
        // Buckets are contiguous and increasing.
        for bucket in 1..HISTOGRAM_BUCKETS {
            let lower = Histogram::upper_bound(bucket - 1) + 1;
            assert_eq!(Histogram::bucket_of(lower), bucket);
        }
    }

    #[test]
    fn percentiles_match_a_sorted_vector_within_bucket_precision() {
        let mut rng = Rng::new(3);
        let mut values: Vec<u64> = (0..10_000).map(|_| 50 + rng.below(200_000)).collect();
        values.extend([5_000_000, 7_000_000]);
        let mut histogram = Histogram::default();
        for &us in &values {
            histogram.record(Duration::from_micros(us));
        }
        values.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1];
            let estimate = histogram.quantile_us(q);
            assert!(estimate >= exact && estimate as f64 <= exact as f64 * 1.016 + 1.0, "q={q}: {estimate} vs {exact}");
        }
        assert_eq!(histogram.quantile_us(1.0), 7_000_000, "the maximum is exact");
        assert_eq!(histogram.max_us, 7_000_000);
        // Nearest rank on a tiny exact sample: 1..=10 ms.
        let mut small = Histogram::default();
        for us in 1..=10 {
            small.record(Duration::from_micros(us));
        }
        assert_eq!(small.quantile_us(0.5), 5);
        assert_eq!(small.quantile_us(0.9), 9);
        assert_eq!(small.quantile_us(0.99), 10);
        assert_eq!(Histogram::default().quantile_us(0.99), 0);
        // Merging equals recording everything in one.
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for (i, &us) in values.iter().enumerate() {
            let half = if i % 2 == 0 { &mut a } else { &mut b };
            half.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.counts, histogram.counts);
        assert_eq!((a.count, a.sum_us, a.max_us), (histogram.count, histogram.sum_us, histogram.max_us));
    }

    #[test]
    fn events_are_deterministic_unique_and_accepted_by_the_server() {
        const NOW: i64 = 1_767_603_600_000;
        let bodies = |seed, worker| {
            let mut generator = EventGen::new(seed, worker, 1_000);
            let mut body = String::new();
            (0..3)
                .map(|i| {
                    generator.body(50, NOW + i, &mut body);
                    body.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(42, 0), bodies(42, 0), "same seed and worker, same events");
        assert_ne!(bodies(42, 0), bodies(42, 1));
        assert_ne!(bodies(42, 0), bodies(43, 0));
        let mut insert_ids = std::collections::HashSet::new();
        let mut users = std::collections::HashSet::new();
        for worker in 0..3 {
            for (i, body) in bodies(42, worker).iter().enumerate() {
                let events = sessionizer_server::parse_batch(body.as_bytes(), NOW + 1_000).expect("a valid batch");
                assert_eq!(events.len(), 50);
                for event in events {
                    assert!(insert_ids.insert(event.insert_id.clone().unwrap()), "insert ids are unique");
                    assert!(event.time_ms <= NOW + i as i64 && event.time_ms >= NOW + i as i64 - 10_000);
                    assert!(EVENT_TYPES.contains(&event.event_type.as_str()));
                    assert!(PAGES.contains(&event.page.as_deref().unwrap()));
                    users.insert(event.user_id.unwrap());
                }
            }
        }
        assert!(
            insert_ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok_and(|uuid| uuid.get_version_num() == 4)),
            "insert ids are random UUIDs, as the SDKs send"
        );
        assert!(users.len() > 300 && users.len() <= 1_000, "users drawn from the pool: {}", users.len());
        assert!(
            users
                .iter()
                .all(|u| u.strip_prefix("user-").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n < 1_000))
        );
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut rng = Rng::new(0);
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1_200).contains(&n)), "{seen:?}");
        assert_eq!(rng.below(1), 0);
    }

    /// The whole path against a real server in this process: open loop, then closed loop.
    #[test]
    fn against_a_real_server() {
        let dir = tempfile::tempdir().unwrap();
        let now = jiff::Timestamp::now().as_millisecond();
        let key = sessionizer_store::Store::open(dir.path()).unwrap().create_project("load", now).unwrap().write_key;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = sessionizer_server::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            write_queue_requests: sessionizer_server::limits::WRITE_QUEUE_REQUESTS,
            rate_limits: sessionizer_server::RateLimits::default(),
            timeouts: sessionizer_server::Timeouts::default(),
            apply: sessionizer_server::ApplyBatching::default(),
        };
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(sessionizer_server::serve(config, async {
                drop(stopped.await);
            }))
        });
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get(&format!("http://127.0.0.1:{port}/readyz")).call().map_or(true, |r| r.status() != 200) {
            assert!(Instant::now() < deadline, "the server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let base = || LoadgenArgs {
            url: format!("http://127.0.0.1:{port}"),
            key: Some(key.clone()),
            batch: 20,
            rate: Some(2_000.0),
            duration: 500,
            connections: 2,
            users: 50,
            seed: Some(1),
            json: None,
            quiet: true,
        };
        let open = Plan::from_args(&base(), 0).unwrap();
        let outcome = execute(&open, true);
        assert!(outcome.fatal.is_none(), "{:?}", outcome.fatal);
        assert_eq!(outcome.tally.errors, BTreeMap::new());
        assert_eq!(outcome.tally.requests + outcome.unsent.unwrap(), 50);
        assert_eq!(outcome.tally.accepted, outcome.tally.events_sent);
        let results = report(&open, &outcome);
        assert_eq!(results["events_acked"], outcome.tally.events_acked);
        assert!(results["latency_ms"]["p50"].as_f64().unwrap() > 0.0);

        // Closed loop with the same seed: every event is a duplicate of the first run's
        // until the first run's counters are passed.
        let closed = Plan::from_args(&LoadgenArgs { rate: None, duration: 300, ..base() }, 0).unwrap();
        let outcome = execute(&closed, true);
        assert!(outcome.fatal.is_none(), "{:?}", outcome.fatal);
        assert!(outcome.tally.requests > 0 && outcome.unsent.is_none());
        assert_eq!(outcome.tally.accepted + outcome.tally.duplicates, outcome.tally.events_acked);
        assert!(outcome.tally.duplicates > 0);

        // A wrong key stops the run at once with the server's answer.
        let bad = Plan::from_args(&LoadgenArgs { key: Some("nope".into()), ..base() }, 0).unwrap();
        let outcome = execute(&bad, true);
        assert!(outcome.fatal.as_deref().unwrap().contains("401"), "{:?}", outcome.fatal);
        assert!(outcome.tally.requests <= 2);

        stop.send(()).unwrap();
        server.join().unwrap().unwrap();
    }
}
