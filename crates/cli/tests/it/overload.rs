//! Overload (issue 7): offered 2× and 5× the rate the server sustains, it
//! sheds what it cannot take with `503`/`429` and `Retry-After` (nothing of a
//! shed request is stored), keeps answering reads, and every event it
//! acknowledged is stored exactly once.
//!
//! The sustainable rate is measured first, in the same run (closed loop, the
//! server's own pace); the offered rates are multiples of it, so the test
//! overloads whatever the machine. It asserts behaviour, never speed: the
//! figures it prints (`--nocapture`) go in RELIABILITY.md.
//!
//! ```sh
//! cargo test -p sessionizer --test it overload -- --nocapture
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::server::{TestServer, create_project, free_port, now_ms};

/// Events per request, as SDKs batch.
const BATCH: usize = 100;
/// Users the events spread over.
const USERS: u64 = 2_000;
/// Connections of the closed-loop measurement.
const MEASURE_CLIENTS: usize = 4;
/// Connections of the open-loop phases: enough that the offered rate is not
/// limited by waiting for answers.
const OVERLOAD_CLIENTS: usize = 64;
const MEASURE_TIME: Duration = Duration::from_secs(3);
const PHASE_TIME: Duration = Duration::from_secs(3);
/// The write queue in requests: small, so that overload shows as shedding
/// quickly instead of as a long queue.
const WRITE_QUEUE_REQUESTS: &str = "16";

/// What became of the requests of one phase.
#[derive(Debug, Default)]
struct Outcome {
    /// Insert ids of acknowledged requests.
    acknowledged: Vec<String>,
    /// Insert ids of requests shed with 503 or 429.
    shed: Vec<String>,
    shed_answers: u64,
    shed_without_retry_after: u64,
    /// Requests whose outcome is unknown (transport errors); their events may or may not be stored.
    unknown: Vec<String>,
    other_statuses: Vec<u16>,
    requests: u64,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.acknowledged.extend(other.acknowledged);
        self.shed.extend(other.shed);
        self.shed_answers += other.shed_answers;
        self.shed_without_retry_after += other.shed_without_retry_after;
        self.unknown.extend(other.unknown);
        self.other_statuses.extend(other.other_statuses);
        self.requests += other.requests;
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A batch of live events with unique insert ids `{phase}-{client}-{n}-{i}`.
fn batch(phase: &str, client: usize, n: u64) -> (Vec<String>, String) {
    let now = now_ms();
    let ids: Vec<String> = (0..BATCH).map(|i| format!("{phase}-{client}-{n}-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let user = (client as u64 * 7_919 + n * 104_729 + i as u64 * 31) % USERS;
            json!({"user_id": format!("u{user}"), "event_type": "Page Viewed", "time": now - (i as i64 % 5_000),
                   "insert_id": id})
        })
        .collect();
    (ids, json!({"events": events}).to_string())
}

/// Sends one batch once (no retry: the outcome is what the test records).
fn send_once(agent: &ureq::Agent, url: &str, key: &str, ids: Vec<String>, body: &str, outcome: &mut Outcome) {
    outcome.requests += 1;
    let reply = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {key}"))
        .send(body)
        .map(|response| (response.status().as_u16(), response.headers().contains_key("retry-after")));
    match reply {
        Ok((200, _)) => outcome.acknowledged.extend(ids),
        Ok((503 | 429, retry_after)) => {
            outcome.shed_answers += 1;
            outcome.shed_without_retry_after += u64::from(!retry_after);
            outcome.shed.extend(ids);
        }
        Ok((status, _)) => {
            outcome.other_statuses.push(status);
            outcome.unknown.extend(ids);
        }
        Err(_) => outcome.unknown.extend(ids),
    }
}

/// `clients` threads send for `time`: as fast as answered (`rate` `None`), or
/// open loop at `rate` events/s overall, each request at its scheduled time.
fn run_phase(url: &str, key: &str, phase: &str, clients: usize, rate: Option<f64>, time: Duration) -> (Outcome, f64) {
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (url, key, phase) = (url.to_string(), key.to_string(), phase.to_string());
            std::thread::spawn(move || {
                let agent = agent();
                let mut outcome = Outcome::default();
                // Open loop: this client's requests are every `clients` slots of the schedule.
                let interval = rate.map(|r| Duration::from_secs_f64(BATCH as f64 * clients as f64 / r));
                let mut n = 0u64;
                loop {
                    if let Some(interval) = interval {
                        let due = interval.mul_f64(n as f64) + interval.mul_f64(client as f64 / clients as f64);
                        if due >= time {
                            break;
                        }
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    } else if started.elapsed() >= time {
                        break;
                    }
                    let (ids, body) = batch(&phase, client, n);
                    send_once(&agent, &url, &key, ids, &body, &mut outcome);
                    n += 1;
                }
                outcome
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for thread in threads {
        outcome.add(thread.join().expect("a client thread panicked"));
    }
    let seconds = started.elapsed().as_secs_f64();
    (outcome, seconds)
}

/// Reads while `stop` is not set: a user's sessions and the board summary,
/// in turn; the statuses and latencies of the answers.
fn reader(
    server_url: String,
    read_key: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u16, Duration)>> {
    std::thread::spawn(move || {
        let agent = agent();
        let mut answers = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let path = if n.is_multiple_of(2) {
                format!("/v1/sessions?user_id=u{}", n % USERS)
            } else {
                "/v1/stats/summary".to_string()
            };
            let started = Instant::now();
            let status = agent
                .get(&format!("{server_url}{path}"))
                .header("Authorization", &format!("Bearer {read_key}"))
                .call()
                .map_or(0, |response| response.status().as_u16());
            answers.push((status, started.elapsed()));
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        answers
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn overload_sheds_with_retry_after_keeps_reads_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let project = create_project(dir.path(), "overload");
    let port = free_port();
    // Rate limits off: the shedding tested here is the server's own (a full
    // write queue); rate limits have their own test.
    let server = TestServer::start_with(
        dir.path(),
        port,
        &["--write-queue-requests", WRITE_QUEUE_REQUESTS, "--ingest-rate-limit", "0", "--read-rate-limit", "0"],
    );
    let url = server.url("/v1/events");

    let (measured, seconds) = run_phase(&url, &project.write_key, "m", MEASURE_CLIENTS, None, MEASURE_TIME);
    assert!(measured.unknown.is_empty() && measured.other_statuses.is_empty(), "{:?}", measured.other_statuses);
    let sustainable = measured.acknowledged.len() as f64 / seconds;
    assert!(sustainable > 0.0, "nothing was acknowledged at the server's own pace");

    let mut all = measured;
    let mut report =
        vec![format!("sustainable {sustainable:.0} events/s (closed loop, {MEASURE_CLIENTS} connections)")];
    for (phase, factor) in [("x2", 2.0), ("x5", 5.0)] {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = reader(server.url(""), project.read_key.clone(), stop.clone());
        let offered = sustainable * factor;
        let (outcome, seconds) =
            run_phase(&url, &project.write_key, phase, OVERLOAD_CLIENTS, Some(offered), PHASE_TIME);
        stop.store(true, Ordering::Release);
        let reads = reads.join().expect("the reader panicked");

        assert_eq!(outcome.shed_without_retry_after, 0, "{phase}: every 503 and 429 carries Retry-After");
        assert!(outcome.other_statuses.is_empty(), "{phase}: unexpected statuses {:?}", outcome.other_statuses);
        assert!(!reads.is_empty(), "{phase}: the reader ran");
        let failed_reads: Vec<u16> = reads.iter().map(|&(status, _)| status).filter(|&s| s != 200).collect();
        assert!(failed_reads.is_empty(), "{phase}: reads must keep working under write overload: {failed_reads:?}");
        if factor >= 5.0 {
            assert!(outcome.shed_answers > 0, "{phase}: five times the sustainable rate must be shed in part");
        }
        let mut latencies: Vec<Duration> = reads.iter().map(|&(_, latency)| latency).collect();
        latencies.sort();
        report.push(format!(
            "{phase}: offered {offered:.0} events/s ({:.0}/s sent, {seconds:.1}s): {} requests, acknowledged {} events ({:.0}/s), \
             shed {} requests with 503/429 + Retry-After, {} unknown; {} reads all 200, p50 {:?} p99 {:?}",
            (outcome.requests as usize * BATCH) as f64 / seconds,
            outcome.requests,
            outcome.acknowledged.len(),
            outcome.acknowledged.len() as f64 / seconds,
            outcome.shed_answers,
            outcome.unknown.len() / BATCH,
            reads.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        ));
        all.add(outcome);
    }

    // Every acknowledged event exactly once; nothing of a shed request.
    let export_url = server.url(&format!(
        "/v1/export/events?format=ndjson&from_ms={}&to_ms={}",
        now_ms() - 3_600_000,
        now_ms() + 60_000
    ));
    let response =
        agent().get(&export_url).header("Authorization", &format!("Bearer {}", project.read_key)).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut stored: HashMap<String, u32> = HashMap::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(response.into_body().into_reader())) {
        let row: Value = serde_json::from_str(&line.unwrap()).unwrap();
        *stored.entry(row["insert_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    let lost: Vec<_> = all.acknowledged.iter().filter(|id| !stored.contains_key(*id)).take(5).collect();
    assert!(lost.is_empty(), "acknowledged events missing: {lost:?}");
    let shed: HashSet<&String> = all.shed.iter().collect();
    let stored_shed: Vec<_> = stored.keys().filter(|id| shed.contains(id)).take(5).collect();
    assert!(stored_shed.is_empty(), "events of shed requests were stored: {stored_shed:?}");
    let unknown: HashSet<&String> = all.unknown.iter().collect();
    let acknowledged: HashSet<&String> = all.acknowledged.iter().collect();
    let extra: Vec<_> =
        stored.keys().filter(|id| !unknown.contains(id) && !acknowledged.contains(id)).take(5).collect();
    assert!(extra.is_empty(), "stored events that were never acknowledged: {extra:?}");
    eprintln!(
        "overload test: {}; stored {} events = every acknowledged one once, none of the shed",
        report.join("; "),
        stored.len()
    );
}
