//! The crash test of issue 3: a load generator sends batches with insert ids
//! while the server is killed with SIGKILL several times and restarted on the
//! same data directory and port. At the end every acknowledged event is
//! stored exactly once, nothing else is stored, and the stored sessions equal
//! `sessionizer sessionize` over the exported events.
//!
//! The CI run kills the server 5 times. A long run, e.g. 200 kills:
//!
//! ```sh
//! CRASH_KILLS=200 cargo test -p sessionizer --test it crash -- --nocapture
//! ```
//!
//! `CRASH_SEED` picks another seed (the events and the kill timing derive
//! from it; what the test asserts does not). `CRASH_KEEP=1` keeps the data
//! directory, the export and the CLI's output (kept anyway when the test fails).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessionizer_engine::UserKey;
use sessionizer_store::{Store, StoredSession};

use super::BIN;
use super::server::{TestServer, create_project, free_port, now_ms};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// Concurrent load-generating clients.
const CLIENTS: u64 = 4;
/// Users, and the devices they share (users `u` and `u + DEVICES` use the same device).
const USERS: u64 = 300;
const DEVICES: u64 = 240;
/// Kills in the CI run; `CRASH_KILLS` overrides.
const DEFAULT_KILLS: usize = 5;
const DEFAULT_SEED: u64 = 0x5e55_1015;
/// A batch not acknowledged within this long (the server being back) fails the test.
const RETRY_DEADLINE: Duration = Duration::from_secs(120);

/// SplitMix64: small, seeded, good enough for test data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn derived(seed: u64, a: u64, b: u64) -> Rng {
        let mut rng = Rng(seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not valid")),
        Err(_) => default,
    }
}

/// An event as the test sent it (what the export must give back).
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    user_id: Option<String>,
    device_id: Option<String>,
    event_type: &'static str,
    time_ms: i64,
    page: Option<String>,
    passive: bool,
}

impl Sent {
    fn json(&self, insert_id: &str) -> Value {
        let mut event = json!({"event_type": self.event_type, "time": self.time_ms, "insert_id": insert_id});
        for (name, value) in [("user_id", &self.user_id), ("device_id", &self.device_id), ("page", &self.page)] {
            if let Some(value) = value {
                event[name] = json!(value);
            }
        }
        if self.passive {
            event["passive"] = json!(true);
        }
        event
    }

    fn of_row(row: &Value) -> Option<Sent> {
        let text = |name: &str| row[name].as_str().map(str::to_string);
        let name = row["event_type"].as_str()?;
        let event_type = *EVENT_TYPES.iter().chain(&[PASSIVE_TYPE, EXCLUDED_TYPE]).find(|t| **t == name)?;
        Some(Sent {
            user_id: text("user_id"),
            device_id: text("device_id"),
            event_type,
            time_ms: row["time_ms"].as_i64()?,
            page: text("page"),
            passive: row["passive"].as_bool()?,
        })
    }
}

const EVENT_TYPES: [&str; 4] = ["Page Viewed", "Button Clicked", "Scrolled", "Purchase Completed"];
const PASSIVE_TYPE: &str = "Background Sync";
/// In the default excluded list of both the server and the CLI.
const EXCLUDED_TYPE: &str = "Notification Sent";

/// Each user is active in bursts (up to 12 minutes) separated by 12 to 50
/// minutes, so that around the 30-minute timeout some neighbouring bursts are
/// one session and some are two, over the 8 hours before the test started.
/// Events arrive in random order, so starts move back and sessions merge as
/// late events come in; a few stragglers land in the gaps and bridge them.
#[derive(Debug)]
struct Workload {
    seed: u64,
    bursts: Vec<Vec<(i64, i64)>>,
}

impl Workload {
    fn new(seed: u64, now: i64) -> Workload {
        let end = now - 2 * MIN;
        let bursts = (0..USERS)
            .map(|user| {
                let mut rng = Rng::derived(seed, 1, user);
                let mut t = now - 8 * HOUR + rng.range(0, HOUR);
                let mut bursts = Vec::new();
                while t < end {
                    let width = rng.range(0, 12 * MIN);
                    bursts.push((t, (t + width).min(end)));
                    t += width + rng.range(12 * MIN, 50 * MIN);
                }
                bursts
            })
            .collect();
        Workload { seed, bursts }
    }

    /// Batch `batch` of client `client`: 20 to 50 events of 1 to 4 users,
    /// with unique insert ids. The same arguments give the same batch.
    fn batch(&self, client: u64, batch: u64) -> Vec<(String, Sent)> {
        let mut rng = Rng::derived(self.seed, 2 + client, batch);
        let users: Vec<u64> = (0..rng.range(1, 4)).map(|_| rng.below(USERS)).collect();
        let size = rng.range(20, 50);
        (0..size)
            .map(|index| {
                let user = users[rng.below(users.len() as u64) as usize];
                let bursts = &self.bursts[user as usize];
                let time_ms = if rng.percent(5) {
                    rng.range(bursts[0].0, bursts[bursts.len() - 1].1)
                } else {
                    let (start, end) = bursts[rng.below(bursts.len() as u64) as usize];
                    rng.range(start, end)
                };
                let device = format!("d{}", user % DEVICES);
                // 10% anonymous (device only: a different session key), else
                // the user, on its device most of the time.
                let (user_id, device_id) = if rng.percent(10) {
                    (None, Some(device))
                } else {
                    (Some(format!("u{user}")), rng.percent(70).then_some(device))
                };
                let roll = rng.below(100);
                let (event_type, passive) = match roll {
                    0..5 => (EXCLUDED_TYPE, false),
                    5..13 => (PASSIVE_TYPE, true),
                    _ => (EVENT_TYPES[rng.below(EVENT_TYPES.len() as u64) as usize], false),
                };
                let page = rng.percent(80).then(|| format!("/p{}", rng.below(5)));
                let sent = Sent { user_id, device_id, event_type, time_ms, page, passive };
                (format!("c{client}-b{batch}-e{index}"), sent)
            })
            .collect()
    }
}

/// What happened to one batch.
#[derive(Debug, Default)]
struct BatchLog {
    ids: Vec<String>,
    /// `(accepted, duplicates)` of the 200 answer, if any.
    acknowledged: Option<(u64, u64)>,
    /// Some attempt's outcome is unknown (the connection broke).
    had_unknown: bool,
    /// A definite answer other than 200 and 503 (nothing stored, not retried).
    rejected: Option<u16>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    ok: u64,
    failed: u64,
    unknown: u64,
    retries: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.failed += other.failed;
        self.unknown += other.unknown;
        self.retries += other.retries;
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends one batch like an SDK: retried with the same insert ids after an
/// unknown outcome or a 503, until acknowledged.
fn send(agent: &ureq::Agent, url: &str, write_key: &str, body: &str, log: &mut BatchLog, counts: &mut Counts) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        counts.requests += 1;
        let reply = agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Authorization", &format!("Bearer {write_key}"))
            .send(body)
            .and_then(|mut response| {
                let status = response.status().as_u16();
                Ok((status, response.body_mut().read_to_string()?))
            });
        match reply {
            Ok((200, text)) => {
                counts.ok += 1;
                let answer: Value = serde_json::from_str(&text).expect("a JSON answer");
                let (accepted, duplicates) =
                    (answer["accepted"].as_u64().unwrap(), answer["duplicates"].as_u64().unwrap());
                log.acknowledged = Some((accepted, duplicates));
                return;
            }
            Ok((503, _)) => counts.failed += 1,
            Ok((status, text)) => {
                counts.failed += 1;
                eprintln!("crash test: a batch was rejected with {status}: {text}");
                log.rejected = Some(status);
                return;
            }
            Err(_) => {
                counts.unknown += 1;
                log.had_unknown = true;
            }
        }
        assert!(started.elapsed() < RETRY_DEADLINE, "a batch was not acknowledged within {RETRY_DEADLINE:?}");
        counts.retries += 1;
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// One session as both sides show it: key, id, uid, bounds, count, entry and exit.
type SessionKey =
    (Option<String>, Option<String>, i64, String, i64, i64, u64, String, Option<String>, String, Option<String>);

fn stored_key(session: &StoredSession) -> SessionKey {
    (
        session.user.user_id().map(str::to_string),
        session.user.device_id().map(str::to_string),
        session.session_id,
        session.session_uid.to_string(),
        session.start_ms,
        session.end_ms,
        session.event_count,
        session.entry_event_type.clone(),
        session.entry_page.clone(),
        session.exit_event_type.clone(),
        session.exit_page.clone(),
    )
}

fn cli_key(session: &Value) -> SessionKey {
    let text = |name: &str| session[name].as_str().map(str::to_string);
    (
        text("user_id"),
        text("device_id"),
        session["session_id"].as_i64().unwrap(),
        text("session_uid").unwrap(),
        session["start_ms"].as_i64().unwrap(),
        session["end_ms"].as_i64().unwrap(),
        session["event_count"].as_u64().unwrap(),
        text("entry_event_type").unwrap(),
        text("entry_page"),
        text("exit_event_type").unwrap(),
        text("exit_page"),
    )
}

/// Downloads `url` to `path`, streaming: an export may be larger than what
/// ureq reads into a string (10 MB).
fn download(url: &str, key: &str, path: &Path) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut response =
        agent.get(url).header("Authorization", &format!("Bearer {key}")).call().expect("the export answers");
    let status = response.status().as_u16();
    let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    std::io::copy(&mut body, &mut file).expect("the whole export arrives");
    std::io::Write::flush(&mut file).unwrap();
    assert_eq!(status, 200, "{}", std::fs::read_to_string(path).unwrap_or_default());
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn crash_test_sigkill_during_ingest_loses_and_duplicates_nothing() {
    let kills: usize = env_or("CRASH_KILLS", DEFAULT_KILLS);
    let seed: u64 = env_or("CRASH_SEED", DEFAULT_SEED);
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let project = create_project(&data, "crash");
    let port = free_port();
    let t0 = now_ms();
    let workload = Arc::new(Workload::new(seed, t0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://127.0.0.1:{port}/v1/events");

    let mut server = TestServer::start(&data, port);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (workload, stop, url, key) = (workload.clone(), stop.clone(), url.clone(), project.write_key.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut sent = HashMap::new();
                let mut logs = Vec::new();
                let mut counts = Counts::default();
                let mut batch = 0;
                while !stop.load(Ordering::Acquire) {
                    let events = workload.batch(client, batch);
                    let body = json!({"events": events.iter().map(|(id, e)| e.json(id)).collect::<Vec<_>>()});
                    let mut log =
                        BatchLog { ids: events.iter().map(|(id, _)| id.clone()).collect(), ..Default::default() };
                    send(&agent, &url, &key, &body.to_string(), &mut log, &mut counts);
                    sent.extend(events);
                    logs.push(log);
                    batch += 1;
                }
                (sent, logs, counts)
            })
        })
        .collect();

    // The killer: SIGKILL at seeded random moments, restart on the same
    // directory and port (start waits for /readyz), then a little more load.
    let mut timing = Rng::derived(seed, 0, 0);
    let mut downtime = Duration::ZERO;
    let mut kills_while_loading = 0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(timing.range(150, 600) as u64));
        server.kill();
        let down = Instant::now();
        // One restart in four is killed again while it starts and loads.
        if timing.percent(25) {
            let mut loading = TestServer::spawn(&data, port);
            std::thread::sleep(Duration::from_millis(timing.range(0, 100) as u64));
            loading.kill();
            kills_while_loading += 1;
        }
        server = TestServer::start(&data, port);
        downtime += down.elapsed();
    }
    std::thread::sleep(Duration::from_millis(timing.range(200, 500) as u64));
    stop.store(true, Ordering::Release);

    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut logs: Vec<BatchLog> = Vec::new();
    let mut counts = Counts::default();
    for client in clients {
        let (client_sent, client_logs, client_counts) = client.join().expect("a client thread panicked");
        sent.extend(client_sent);
        logs.extend(client_logs);
        counts.add(client_counts);
    }
    let ingest_elapsed = began.elapsed();

    let mut problems: Vec<String> = Vec::new();
    let mut problem = |message: String| {
        if problems.len() < 50 {
            eprintln!("crash test: {message}");
        }
        problems.push(message);
    };

    // Each answer is all-or-nothing: a batch is one transaction. All
    // duplicates only after an attempt whose outcome was unknown.
    let mut acknowledged: HashSet<&str> = HashSet::new();
    let mut rejected: HashSet<&str> = HashSet::new();
    let (mut accepted_events, mut duplicate_events) = (0, 0);
    for log in &logs {
        let size = log.ids.len() as u64;
        match log.acknowledged {
            Some((accepted, duplicates)) => {
                accepted_events += accepted;
                duplicate_events += duplicates;
                let whole = (accepted, duplicates) == (size, 0) || (accepted, duplicates) == (0, size);
                if !whole {
                    problem(format!("batch {}: {accepted} accepted, {duplicates} duplicates of {size}", log.ids[0]));
                }
                if duplicates > 0 && !log.had_unknown {
                    problem(format!("batch {}: {duplicates} duplicates on its first definite answer", log.ids[0]));
                }
                acknowledged.extend(log.ids.iter().map(String::as_str));
            }
            None => rejected.extend(log.ids.iter().map(String::as_str)),
        }
    }
    if let Some(log) = logs.iter().find(|log| log.rejected.is_some()) {
        problem(format!("batch {} was rejected with {:?}", log.ids[0], log.rejected));
    }

    // The export: every acknowledged event exactly once, nothing else.
    let from_ms = t0 - 24 * HOUR;
    let to_ms = now_ms() + 2 * HOUR;
    let export_path = dir.path().join("export.ndjson");
    let export_url = server.url(&format!("/v1/export/events?format=ndjson&from_ms={from_ms}&to_ms={to_ms}"));
    download(&export_url, &project.read_key, &export_path);
    let rows = read_ndjson(&export_path);
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for row in &rows {
        let Some(id) = row["insert_id"].as_str() else {
            problem(format!("an exported event without insert id: {row}"));
            continue;
        };
        *seen.entry(id).or_default() += 1;
        match sent.get(id) {
            None => problem(format!("exported event {id} was never sent: {row}")),
            Some(expected) if Sent::of_row(row).as_ref() != Some(expected) => {
                problem(format!("exported event {id} differs from what was sent ({expected:?}): {row}"))
            }
            Some(_) => {}
        }
    }
    for (id, count) in &seen {
        if *count > 1 {
            problem(format!("event {id} is stored {count} times"));
        }
        if rejected.contains(id) {
            problem(format!("event {id} of a rejected batch is stored"));
        }
    }
    let lost = acknowledged.iter().filter(|id| !seen.contains_key(*id)).count();
    if lost > 0 {
        let some: Vec<_> = acknowledged.iter().filter(|id| !seen.contains_key(*id)).take(5).collect();
        problem(format!("{lost} acknowledged events are not stored, e.g. {some:?}"));
    }

    // The stored sessions equal `sessionizer sessionize` over the export.
    assert!(server.terminate().success(), "a clean stop");
    let store = Store::open_reader(&data).unwrap();
    let stored_project = store.projects().unwrap().into_iter().find(|p| p.public_id == project.id).unwrap();
    let stored = store.all_sessions(stored_project.id).unwrap();
    let (cli_sessions, cli_events) = (dir.path().join("sessions.ndjson"), dir.path().join("events.ndjson"));
    let output = Command::new(BIN)
        .args(["sessionize", export_path.to_str().unwrap(), "--time-field", "time_ms", "--project", &project.id])
        .args(["-o", cli_sessions.to_str().unwrap(), "--events-out", cli_events.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected = read_ndjson(&cli_sessions);
    compare_sessions(&stored, &expected, &mut problem);

    // Each exported event names the session the CLI puts it in.
    let cli_session_of: HashMap<String, Value> = read_ndjson(&cli_events)
        .into_iter()
        .map(|row| (row["insert_id"].as_str().unwrap().to_string(), row["session_id"].clone()))
        .collect();
    let mut wrong_session = 0;
    for row in &rows {
        let id = row["insert_id"].as_str().unwrap_or_default();
        if cli_session_of.get(id) != Some(&row["session_id"]) {
            wrong_session += 1;
            if wrong_session <= 5 {
                problem(format!(
                    "exported event {id} is in session {}, the CLI says {:?}",
                    row["session_id"],
                    cli_session_of.get(id)
                ));
            }
        }
    }
    if wrong_session > 5 {
        problem(format!("{wrong_session} exported events name another session than the CLI"));
    }

    let sessions_by_user = stored.iter().filter(|s| s.user.user_id().is_some()).count();
    eprintln!(
        "crash test (seed {seed:#x}): {kills} kills (and {kills_while_loading} while loading), {:.1}s down; requests {} ({} ok, {} failed, {} unknown, {} retries); \
         {} batches, {} events sent, {accepted_events} accepted, {duplicate_events} acknowledged as duplicates; \
         {} stored; {} sessions ({sessions_by_user} of users, {} of devices); ingest {:.1}s, total {:.1}s",
        downtime.as_secs_f64(),
        counts.requests,
        counts.ok,
        counts.failed,
        counts.unknown,
        counts.retries,
        logs.len(),
        sent.len(),
        rows.len(),
        stored.len(),
        stored.len() - sessions_by_user,
        ingest_elapsed.as_secs_f64(),
        began.elapsed().as_secs_f64(),
    );
    if std::env::var_os("CRASH_KEEP").is_some() {
        eprintln!("crash test: data kept in {}", dir.keep().display());
    } else if !problems.is_empty() {
        let kept = dir.keep();
        panic!("{} problems (first: {}); data kept in {}", problems.len(), problems[0], kept.display());
    }
}

/// The store's sessions and the CLI's are the same sessions. The store
/// leaves a key's last session open (no end reason) while it may still grow;
/// every other end reason must agree.
fn compare_sessions(stored: &[StoredSession], cli: &[Value], problem: &mut impl FnMut(String)) {
    let by_key = |key: &SessionKey| (key.0.clone(), key.1.clone());
    let store_keys: BTreeMap<SessionKey, Option<&str>> =
        stored.iter().map(|s| (stored_key(s), s.end_reason.as_deref())).collect();
    let cli_keys: BTreeMap<SessionKey, &str> =
        cli.iter().map(|s| (cli_key(s), s["end_reason"].as_str().unwrap())).collect();
    assert_eq!(store_keys.len(), stored.len(), "no two stored sessions are equal");
    let mut differing: HashSet<(Option<String>, Option<String>)> = HashSet::new();
    for key in store_keys.keys().filter(|k| !cli_keys.contains_key(*k)) {
        differing.insert(by_key(key));
    }
    for key in cli_keys.keys().filter(|k| !store_keys.contains_key(*k)) {
        differing.insert(by_key(key));
    }
    let mut differing: Vec<_> = differing.into_iter().collect();
    differing.sort();
    for (user_id, device_id) in differing.iter().take(5) {
        // One line per session: start, end, count, entry and exit.
        let of = |keys: Vec<&SessionKey>| -> String {
            keys.into_iter()
                .filter(|k| k.0 == *user_id && k.1 == *device_id)
                .map(|k| {
                    format!("\n    {} .. {} ({} events) {:?} {:?} .. {:?} {:?}", k.4, k.5, k.6, k.7, k.8, k.9, k.10)
                })
                .collect()
        };
        let (store, cli) = (of(store_keys.keys().collect()), of(cli_keys.keys().collect()));
        problem(format!("sessions of {user_id:?}/{device_id:?} differ:\n  store:{store}\n  cli:{cli}"));
    }
    if differing.len() > 5 {
        problem(format!("{} keys have different sessions in the store and the CLI", differing.len()));
    }
    let last_of_key: HashMap<UserKey, i64> = stored.iter().fold(HashMap::new(), |mut last, s| {
        let entry = last.entry(s.user.clone()).or_insert(s.start_ms);
        *entry = (*entry).max(s.start_ms);
        last
    });
    let mut reasons = 0;
    for session in stored {
        let cli_reason = cli_keys.get(&stored_key(session));
        match (&session.end_reason, cli_reason) {
            (Some(reason), Some(cli_reason)) if reason != cli_reason => {
                reasons += 1;
                if reasons <= 5 {
                    problem(format!("end reason of {:?}: store {reason}, CLI {cli_reason}", stored_key(session)));
                }
            }
            (None, _) if last_of_key[&session.user] != session.start_ms => {
                problem(format!("{:?} is open but not its key's last session", stored_key(session)))
            }
            _ => {}
        }
    }
    if reasons > 5 {
        problem(format!("{reasons} sessions end for another reason in the store than in the CLI"));
    }
}
